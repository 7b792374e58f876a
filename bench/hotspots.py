"""Where the time goes, from py-spy's collapsed stacks (`py-spy record --format raw`).

    python -m bench.hotspots FILE.raw [--top 30] [--under daemon/]

Prints the functions with the most samples on CPU: self (the frame itself was running)
and inclusive (the frame was anywhere on the stack), as shares of all samples.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def tally(stacks: list[tuple[list[str], int]]) -> tuple[Counter[str], Counter[str], int]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for frames, count in stacks:
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return own, inclusive, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--under", default=None,
                        help="inclusive list: only frames whose file contains this")
    args = parser.parse_args()
    own, inclusive, total = tally(load(args.file))
    print(f"{total} samples")
    print("\nself:")
    for frame, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    print("\ninclusive:")
    shown = 0
    for frame, count in inclusive.most_common():
        if args.under and args.under not in frame:
            continue
        print(f"  {100 * count / total:5.1f} %  {frame}")
        shown += 1
        if shown >= args.top:
            break


if __name__ == "__main__":
    main()

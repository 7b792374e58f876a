"""Where the time goes, from py-spy's collapsed stacks (`py-spy record --format raw`).

    python -m bench.hotspots FILE.raw [--top 30] [--under daemon/]

Prints the functions with the most samples on CPU: self (the frame itself was running)
and inclusive (the frame was anywhere on the stack), as shares of the busy samples, and
the busy samples by stage of the daemon's hot path (first matching stage wins). Samples
whose leaf is a wait (an idle executor thread, the selector's poll) are left out: py-spy
does not always see those threads as idle.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

IDLE_LEAVES = ("_worker (concurrent/futures/thread.py", "EpollSelector.select (selectors.py")

# (stage, substring of a frame): the daemon's hot path, in the order a message meets it.
STAGES = [
    ("provider call (HTTP, aiohttp)", "Provider.send ("),
    ("render (templates, message)", "build_message ("),
    ("pacer and gates", "._admit ("),
    ("claims (SQL)", "._fill ("),
    ("outcome writes (SQL)", "write_batch ("),
    ("outcome bookkeeping", "._outcome ("),
    ("recording buffer", "Recorder."),
    ("API requests", "aiohttp/web_protocol.py"),
    ("asyncpg protocol", "asyncpg/"),
    ("HTTP client I/O callbacks", "aiohttp/client_proto.py"),
    ("socket writes", "selector_events.py:10"),
]


def load(path: Path) -> list[tuple[list[str], int]]:
    """The busy stacks (root first) and their sample counts."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stack = frames.split(";")
            if not stack[-1].startswith(IDLE_LEAVES):
                stacks.append((stack, int(count)))
    return stacks


def by_stage(stacks: list[tuple[list[str], int]]) -> Counter[str]:
    stages: Counter[str] = Counter()
    for frames, count in stacks:
        joined = ";".join(frames)
        stage = next((name for name, marker in STAGES if marker in joined), "other (loop, tasks)")
        stages[stage] += count
    return stages


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
    stacks = load(args.file)
    own, inclusive, total = tally(stacks)
    print(f"{total} busy samples")
    print("\nby stage:")
    for stage, count in by_stage(stacks).most_common():
        print(f"  {100 * count / total:5.1f} %  {stage}")
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

"""`campaignd profiles import FILE [--audience ID] [--format ndjson|csv]`: streamed upload,
with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO, TextIO

from daemon.cli.client import Client, add_client_arguments, run
from daemon.cli.common import fail

CHUNK_BYTES = 256 * 1024
MEDIA_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv"}
_SUFFIXES = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson"}


class Progress:
    """`importing people.csv  42%  12.0/28.5 MiB` on stderr, redrawn in place (TTY only)."""

    def __init__(self, name: str, total: int, stream: TextIO) -> None:
        self.name = name
        self.total = max(total, 1)
        self.stream = stream
        self.enabled = stream.isatty()
        self.sent = 0
        self._shown = -1

    def advance(self, size: int) -> None:
        self.sent += size
        percent = min(100, self.sent * 100 // self.total)
        if self.enabled and percent != self._shown:
            self._shown = percent
            bar = "#" * (percent // 4)
            mib = 1024 * 1024
            self.stream.write(f"\rimporting {self.name} [{bar:25}] {percent:3d}%  "
                              f"{self.sent / mib:.1f}/{self.total / mib:.1f} MiB")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


async def file_chunks(handle: BinaryIO, progress: Progress) -> AsyncIterator[bytes]:
    """The file in chunks, read off the event loop."""
    while True:
        chunk = await asyncio.to_thread(handle.read, CHUNK_BYTES)
        if not chunk:
            return
        progress.advance(len(chunk))
        yield chunk


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    found = _SUFFIXES.get(args.file.suffix.lower())
    if found is None:
        fail(f"{args.file}: say --format ndjson or --format csv (unknown suffix)")
    return found


def _import(args: argparse.Namespace) -> int:
    fmt = _format(args)
    try:
        handle = args.file.open("rb")
    except OSError as exc:
        fail(f"cannot read {args.file}: {exc.strerror}")
    params = {"audience": args.audience} if args.audience else None

    async def work(client: Client) -> int:
        progress = Progress(args.file.name, args.file.stat().st_size, sys.stderr)
        try:
            result = await client.call(
                "POST", "/v1/profiles/import", data=file_chunks(handle, progress),
                headers={"Content-Type": MEDIA_TYPES[fmt]}, params=params,
            )
        finally:
            progress.finish()
        print(f"imported {result['imported']} of {result['received']} lines "
              f"({result['created']} new, {result['updated']} updated, "
              f"{result['rejected']} rejected)")
        if args.audience:
            print(f"added {result['added_to_audience']} to audience {args.audience}")
        for error in result["errors"]:
            print(f"  line {error['line']}: {error['reason']}")
        if result["rejected"] > len(result["errors"]):
            print(f"  ... and {result['rejected'] - len(result['errors'])} more")
        return 0

    with handle:
        return run(args, work)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("profiles", help="bulk-import profiles")
    actions = parser.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    importing = actions.add_parser("import", help="upsert profiles from an NDJSON or CSV file")
    importing.add_argument("file", type=Path)
    importing.add_argument("--audience", help="also add every imported profile to this audience")
    importing.add_argument("--format", choices=sorted(MEDIA_TYPES),
                           help="default: from the suffix (.csv, .ndjson, .jsonl)")
    add_client_arguments(importing)
    importing.set_defaults(func=_import)

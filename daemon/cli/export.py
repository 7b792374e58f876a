"""`campaignd runs export RUN [--status S] [--reason R] [--format csv|ndjson] > file`: every
matching recipient outcome, streamed from the daemon to stdout as it arrives, with a
progress count on stderr (a live line on a terminal, a summary line otherwise)."""

from __future__ import annotations

import argparse
import sys
from typing import BinaryIO, TextIO
from urllib.parse import quote

from daemon.cli.client import ApiError, Client, add_client_arguments, answer_of, run
from daemon.infra.clock import SystemClock

MEDIA = {"csv": "text/csv", "ndjson": "application/x-ndjson"}
PROGRESS_EVERY = 0.25  # seconds between progress redraws on a terminal
CHUNK = 64 * 1024


class RecordCounter:
    """Counts the records of a CSV or NDJSON stream as it passes, chunk by chunk. A CSV
    newline ends a record only outside quotes (quotes come in pairs in RFC 4180, so an even
    count of them so far means outside); the CSV header line is not counted."""

    def __init__(self, csv: bool) -> None:
        self.csv = csv
        self.lines = 0
        self._quotes = 0

    def feed(self, chunk: bytes) -> None:
        if not self.csv:
            self.lines += chunk.count(b"\n")
            return
        start = 0
        while (newline := chunk.find(b"\n", start)) != -1:
            self._quotes += chunk.count(b'"', start, newline)
            if self._quotes % 2 == 0:
                self.lines += 1
            start = newline + 1
        self._quotes += chunk.count(b'"', start)

    @property
    def records(self) -> int:
        return max(self.lines - 1, 0) if self.csv else self.lines


async def export(client: Client, args: argparse.Namespace, out: BinaryIO, err: TextIO) -> int:
    """Stream the run's recipients into `out`; returns how many were written."""
    params = {name: value for name, value in (("status", args.status),
                                              ("reason", args.reason)) if value}
    path = f"/v1/runs/{quote(args.run, safe='')}/recipients"
    clock = SystemClock()
    counter = RecordCounter(args.format == "csv")
    tty = err.isatty()
    drawn = clock.monotonic()
    async with client.session.get(path, params=params,
                                  headers={"Accept": MEDIA[args.format]}) as response:
        if response.status >= 400:
            raise ApiError(response.status, answer_of(await response.text()))
        async for chunk in response.content.iter_chunked(CHUNK):
            out.write(chunk)
            counter.feed(chunk)
            if tty and clock.monotonic() - drawn >= PROGRESS_EVERY:
                drawn = clock.monotonic()
                err.write(f"\r\x1b[2Kexported {counter.records:,} recipients")
                err.flush()
    out.flush()
    err.write(("\r\x1b[2K" if tty else "") + f"exported {counter.records:,} recipients\n")
    return counter.records


def _export(args: argparse.Namespace) -> int:
    async def work(client: Client) -> int:
        await export(client, args, sys.stdout.buffer, sys.stderr)
        return 0

    return run(args, work)


def register(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "export", help="every recipient outcome of a run, as CSV or NDJSON, to stdout")
    parser.add_argument("run", help="the run id (run_...)")
    parser.add_argument("--status", choices=("pending", "sent", "failed", "excluded"))
    parser.add_argument("--reason", help="an exclusion or failure reason")
    parser.add_argument("--format", choices=tuple(MEDIA), default="csv")
    add_client_arguments(parser)
    parser.set_defaults(func=_export)

"""The stand-in gateway: an aiohttp server in its own process that answers 200 at once
and records each message's idempotency key, campaign, run and arrival time.

    python -m bench.gateway [--port 0] [--uvloop]

prints `{"port": N}` on its first stdout line, then serves:
  POST /hook, or any path outside /_      a message: recorded, answered `200 {}`
  GET  /_dump?since=N                     the records from index N, column by column
  GET  /_count                            how many so far, and the last arrival
  POST /_reset                            forget everything

Arrival times are `time.time()` (to compare with the daemon's `scheduled_for`) and
`time.monotonic()` (system-wide on Linux: the bench process reads the same clock).
The gateway raises its own CPU priority when it may (root: nice -15), so that a busy box
(the daemon, PostgreSQL and the bench share two cores) delays its timestamps less: an
arrival is stamped when the gateway's loop gets to it, and a gateway kept off the CPU for
10 ms would stamp 20 calls of a 2,000/s stream at once, a burst the sender did not make.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bench.loops import run_loop

try:
    import orjson

    def _loads(raw: bytes) -> Any:
        return orjson.loads(raw)

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)
except ImportError:  # pragma: no cover - orjson is in the venv; stay runnable without it

    def _loads(raw: bytes) -> Any:
        return json.loads(raw)

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class Records:
    """Column-wise arrival records (cheap to append, cheap to dump)."""

    key: list[str | None] = field(default_factory=list)
    campaign: list[str | None] = field(default_factory=list)
    run: list[str | None] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    mono: list[float] = field(default_factory=list)

    def add(self, key: str | None, campaign: str | None, run: str | None) -> None:
        self.wall.append(time.time())
        self.mono.append(time.monotonic())
        self.key.append(key)
        self.campaign.append(campaign)
        self.run.append(run)

    def clear(self) -> None:
        for column in (self.key, self.campaign, self.run, self.wall, self.mono):
            column.clear()

    def since(self, start: int) -> dict[str, Any]:
        return {
            "n": len(self.key),
            "since": start,
            "key": self.key[start:],
            "campaign": self.campaign[start:],
            "run": self.run[start:],
            "wall": self.wall[start:],
            "mono": self.mono[start:],
        }


RECORDS = web.AppKey("records", Records)
STALL = web.AppKey("stall", list)  # [monotonic time until which answers are held]
OK_BODY = b"{}"


async def message(request: web.Request) -> web.Response:
    raw = await request.read()
    campaign = run = None
    key = request.headers.get("Idempotency-Key")
    try:
        document = _loads(raw)
    except ValueError:
        document = None
    if isinstance(document, dict):
        campaign = document.get("campaign_id")
        run = document.get("run_id")
        key = key or document.get("id")
    request.app[RECORDS].add(key, campaign, run)
    if (left := request.app[STALL][0] - time.monotonic()) > 0:
        await asyncio.sleep(left)
    return web.Response(body=OK_BODY, content_type="application/json")


async def stall(request: web.Request) -> web.Response:
    """Hold every answer until `seconds` from now (a provider that stalls, then answers
    everything at once); arrivals are still recorded when they come."""
    request.app[STALL][0] = time.monotonic() + float(request.query.get("seconds", "0"))
    return web.Response(body=OK_BODY, content_type="application/json")


async def dump(request: web.Request) -> web.Response:
    start = int(request.query.get("since", "0"))
    return web.Response(body=_dumps(request.app[RECORDS].since(start)),
                        content_type="application/json")


async def count(request: web.Request) -> web.Response:
    records = request.app[RECORDS]
    body = {"n": len(records.key), "last_wall": records.wall[-1] if records.wall else None}
    return web.Response(body=_dumps(body), content_type="application/json")


async def reset(request: web.Request) -> web.Response:
    request.app[RECORDS].clear()
    return web.Response(body=OK_BODY, content_type="application/json")


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[RECORDS] = Records()
    app[STALL] = [0.0]
    app.router.add_get("/_dump", dump)
    app.router.add_get("/_count", count)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/_stall", stall)
    app.router.add_post("/{tail:.*}", message)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    sys.stdout.write(json.dumps({"port": bound}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def prompt_stamps() -> None:
    """Nice -15 when allowed (CFS: runnable, it gets a core at once), else as it is."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--asyncio", action="store_true", help="plain asyncio, not uvloop")
    args = parser.parse_args()
    # Hundreds of thousands of live records: keep the cyclic GC from stalling the loop.
    gc.set_threshold(100_000, 50, 100)
    prompt_stamps()
    run_loop(serve(args.host, args.port), uvloop_wanted=not args.asyncio)


if __name__ == "__main__":
    main()

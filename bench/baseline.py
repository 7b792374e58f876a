"""The baseline: a minimal aiohttp client loop posting the daemon's webhook bodies.

    python -m bench.baseline --url URL --count N [--rate R] [--concurrency 64] [--uvloop]

No database, no templates, no limiter: one keep-alive session (the webhook provider's
settings: `concurrency` connections), one JSON body encoded per message with its
`Idempotency-Key`. Unpaced (closed loop: `concurrency` workers as fast as they go) or
paced at `--rate` (open loop, a 5 ms ticker issuing what is due). On the daemon's event
loop (`--uvloop` when its default, `engine.event_loop = "auto"`, picks uvloop: see
`like_the_daemon`), so that the ratio compares the work, not the loops. Prints
`{"pid": ...}` at start and one JSON object with the counts and its own CPU time at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from typing import Any

import aiohttp

from bench.loops import loop_name, run_loop

TICK = 0.005
# As the webhook provider encodes its bodies (one encoder, not one per json.dumps call).
ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def like_the_daemon() -> list[str]:
    """The loop option that runs the baseline on the loop the bench's daemon uses (its
    default config, this interpreter)."""
    from daemon.cli.main import event_loop

    return ["--uvloop"] if event_loop("auto")[1] == "uvloop" else []


def body(run_id: str, index: int) -> tuple[str, bytes]:
    """The message `index` as the webhook provider would POST it: (key, JSON body)."""
    key = f"{run_id}:{index}"
    document: dict[str, Any] = {
        "id": key,
        "campaign_id": "baseline",
        "run_id": run_id,
        "channel": "email",
        "profile_id": f"p{index:08d}",
        "to": {"email": f"user{index}@example.test"},
        "content": {
            "from": "bench@example.test",
            "subject": f"Hi Ann{index % 1000}",
            "text": "Your code is X1. See you soon.",
        },
    }
    return key, ENCODER.encode(document).encode()


class Sender:
    def __init__(self, url: str, run_id: str, concurrency: int) -> None:
        self.url = url
        self.run_id = run_id
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self.sent = 0
        self.errors = 0

    async def post(self, index: int) -> None:
        key, data = body(self.run_id, index)
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        try:
            async with self.session.post(self.url, data=data, headers=headers) as response:
                await response.read()
                ok = 200 <= response.status < 300
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            self.sent += 1
        else:
            self.errors += 1

    async def closed_loop(self, count: int, concurrency: int) -> None:
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while issued < count:
                index = issued
                issued += 1
                await self.post(index)

        async with asyncio.TaskGroup() as group:
            for n in range(concurrency):
                group.create_task(worker(), name=f"baseline.worker{n}")

    async def paced(self, count: int, rate: float, concurrency: int) -> None:
        slots = asyncio.Semaphore(concurrency)
        issued = 0
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def one(index: int) -> None:
            async with slots:
                await self.post(index)

        async with asyncio.TaskGroup() as group:
            while issued < count:
                due = min(count, int((loop.time() - began) * rate) + 1)
                while issued < due:
                    group.create_task(one(issued))
                    issued += 1
                await asyncio.sleep(TICK)


async def send(args: argparse.Namespace) -> dict[str, Any]:
    sender = Sender(args.url, args.run_id, args.concurrency)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    cpu_before = time.process_time()
    began = time.monotonic()
    try:
        if args.rate:
            await sender.paced(args.count, args.rate, args.concurrency)
        else:
            await sender.closed_loop(args.count, args.concurrency)
    finally:
        await sender.session.close()
    seconds = time.monotonic() - began
    cpu = time.process_time() - cpu_before
    return {
        "loop": loop_name(args.uvloop),
        "mode": "paced" if args.rate else "closed",
        "configured_per_s": args.rate,
        "concurrency": args.concurrency,
        "sent": sender.sent,
        "errors": sender.errors,
        "seconds": round(seconds, 3),
        "per_s": round(sender.sent / seconds, 1) if seconds else None,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1000": round(cpu * 1000 / sender.sent, 4) if sender.sent else None,
        "cpu_share": round(cpu / seconds, 3) if seconds else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=None, help="paced at this rate")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--run-id", default="baseline")
    parser.add_argument("--uvloop", action="store_true", help="on uvloop (as the daemon)")
    args = parser.parse_args()
    gc.set_threshold(100_000, 20, 20)  # as the daemon does (daemon/cli/main.py)
    result = run_loop(send(args), uvloop_wanted=args.uvloop)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

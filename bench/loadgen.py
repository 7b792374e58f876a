"""The trigger load generator: paced POSTs at increasing rates, in its own process.

    python -m bench.loadgen --url URL [--token T] --rates 250,500,1000 --step 4 \
        [--closed 4] [--concurrency 256]

Each step is open loop: a 2 ms ticker issues the requests due at step_start + i / rate,
whatever the answers do, and each latency runs from its issue (so a server that falls
behind shows it in the latency: no coordinated omission).
Steps go up until one is not sustained (fewer than 99 % answered 2xx within the step
plus one second, or p99 above 100 ms), but always up to `--at-least`. `--closed S`
adds a closed-loop step: `concurrency` workers as fast as they go for S seconds, the
raw ceiling. Each request is a trigger
with one inline recipient and a unique profile id. uvloop when installed: the
instrument should not be the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
from collections import Counter
from typing import Any

import aiohttp

from bench.loops import loop_name, run_loop
from bench.stats import summary_ms

TICK = 0.002
SUSTAINED_SHARE = 0.99
SUSTAINED_P99 = 0.1


class Load:
    def __init__(self, url: str, token: str | None, concurrency: int) -> None:
        self.url = url
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        self.next_id = 0

    def body(self) -> bytes:
        self.next_id += 1
        n = self.next_id
        return (
            f'{{"context":{{"promo":"X{n}"}},"recipients":[{{"profile_id":"t{n}",'
            f'"email":"trigger{n}@example.test","attributes":{{"first_name":"Tom"}}}}]}}'
        ).encode()

    async def post(self, issued_at: float, latencies: list[float], statuses: Counter[str]) -> None:
        try:
            async with self.session.post(self.url, data=self.body()) as response:
                await response.read()
                statuses[str(response.status)] += 1
                if 200 <= response.status < 300:
                    latencies.append(time.monotonic() - issued_at)
        except (aiohttp.ClientError, TimeoutError) as exc:
            statuses[type(exc).__name__] += 1

    async def paced_step(self, rate: float, seconds: float) -> dict[str, Any]:
        count = max(1, int(rate * seconds))
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        tasks: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        issued = 0
        while issued < count:
            now = time.monotonic()
            due = min(count, int((now - began) * rate) + 1)
            while issued < due:
                task = asyncio.create_task(self.post(now, latencies, statuses))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                issued += 1
            await asyncio.sleep(TICK)
        # Answers that take longer than a second past the step are not "sustained".
        late_limit = began + seconds + 1.0
        answered_in_time = 0
        if tasks:
            await asyncio.wait(set(tasks), timeout=max(0.0, late_limit - time.monotonic()))
        answered_in_time = len(latencies)
        if tasks:
            await asyncio.wait(set(tasks), timeout=30)
        elapsed = time.monotonic() - began
        ok = len(latencies)
        latency = summary_ms(latencies)
        p99 = latency["p99_ms"]
        return {
            "offered_per_s": rate,
            "requests": count,
            "ok": ok,
            "statuses": dict(statuses),
            "achieved_per_s": round(ok / max(elapsed, seconds), 1),
            "answered_in_time": answered_in_time,
            **latency,
            "sustained": (
                answered_in_time >= SUSTAINED_SHARE * count
                and p99 is not None and p99 <= SUSTAINED_P99 * 1000
            ),
        }

    async def closed_step(self, seconds: float, workers: int) -> dict[str, Any]:
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop_at:
                await self.post(time.monotonic(), latencies, statuses)

        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for n in range(workers):
                group.create_task(worker(), name=f"loadgen.worker{n}")
        elapsed = time.monotonic() - began
        return {
            "workers": workers,
            "ok": len(latencies),
            "statuses": dict(statuses),
            "achieved_per_s": round(len(latencies) / elapsed, 1),
            **summary_ms(latencies),
        }


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    load = Load(args.url, args.token, args.concurrency)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    steps = []
    try:
        for rate in args.rates:
            step = await load.paced_step(rate, args.step)
            steps.append(step)
            if not step["sustained"] and rate >= args.at_least:
                break
        closed = await load.closed_step(args.closed, args.workers) if args.closed else None
    finally:
        await load.session.close()
    sustained = [s["offered_per_s"] for s in steps if s["sustained"]]
    return {
        "loop": loop_name(not args.asyncio),
        "steps": steps,
        "sustained_per_s": max(sustained) if sustained else 0,
        "closed": closed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("--rates", type=lambda s: [float(r) for r in s.split(",")],
                        required=True)
    parser.add_argument("--step", type=float, default=4.0, help="seconds per step")
    parser.add_argument("--closed", type=float, default=0.0, help="closed-loop seconds")
    parser.add_argument("--at-least", type=float, default=0.0,
                        help="run every step up to this rate, sustained or not")
    parser.add_argument("--workers", type=int, default=64, help="closed-loop workers")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--asyncio", action="store_true", help="plain asyncio, not uvloop")
    args = parser.parse_args()
    gc.set_threshold(100_000, 20, 20)
    result = run_loop(generate(args), uvloop_wanted=not args.asyncio)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

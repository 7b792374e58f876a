"""The downstream system, in its own process: `python -m tests.acceptance.faults.gateway`
prints its port, records each POST's arrival (CLOCK_MONOTONIC, comparable across
processes) and Idempotency-Key, serves them at GET /arrivals (their number at GET /count),
and on POST /_stall?seconds=S (or /stall, as the bench gateway's) holds every answer until S
seconds from then (a provider that stalls, then answers all at once)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import time

from aiohttp import web


async def main() -> None:
    gc.set_threshold(100_000, 20, 20)
    # Stamps as prompt as the box allows (nice -15 when permitted, as bench.gateway): what is
    # measured is the sender, not this process waiting for a core behind the daemon's.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -15)
    arrivals: list[tuple[float, str]] = []
    stalled_until = 0.0

    async def send(request: web.Request) -> web.Response:
        arrivals.append((time.monotonic(), request.headers.get("Idempotency-Key", "")))
        await request.read()
        if (left := stalled_until - time.monotonic()) > 0:
            await asyncio.sleep(left)
        return web.json_response({"id": f"gw-{len(arrivals)}"})

    async def stall(request: web.Request) -> web.Response:
        nonlocal stalled_until
        stalled_until = time.monotonic() + float(request.query["seconds"])
        return web.json_response({"until": stalled_until})

    async def listing(_: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def count(_: web.Request) -> web.Response:
        return web.json_response(len(arrivals))

    app = web.Application()
    app.router.add_post("/send", send)
    app.router.add_post("/stall", stall)
    app.router.add_post("/_stall", stall)
    app.router.add_get("/arrivals", listing)
    app.router.add_get("/count", count)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sys.stdout.write(f"{runner.addresses[0][1]}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

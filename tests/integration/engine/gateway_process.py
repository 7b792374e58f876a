"""A gateway stand-in in its own process (so its event loop does not share the engine's):
`python -m tests.integration.engine.gateway_process` prints its port, records each POST's
arrival time (CLOCK_MONOTONIC, comparable across processes) and Idempotency-Key, and
serves them at GET /arrivals; POST /held/N/S stamps its first N requests S seconds late."""

from __future__ import annotations

import asyncio
import gc
import sys
import time

from aiohttp import web


async def main() -> None:
    gc.set_threshold(100_000, 20, 20)
    arrivals: list[tuple[float, str]] = []

    async def send(request: web.Request) -> web.Response:
        arrivals.append((time.monotonic(), request.headers.get("Idempotency-Key", "")))
        await request.read()
        return web.json_response({"id": f"gw-{len(arrivals)}"})

    held = 0

    async def send_held(request: web.Request) -> web.Response:
        """The first `count` requests are stamped `seconds` late (a gateway whose own loop
        is late to its handler, as a starved one is), then answered."""
        nonlocal held
        if held < int(request.match_info["count"]):
            held += 1
            await asyncio.sleep(float(request.match_info["seconds"]))
        return await send(request)

    async def listing(_: web.Request) -> web.Response:
        return web.json_response(arrivals)

    app = web.Application()
    app.router.add_post("/send", send)
    app.router.add_post("/held/{count}/{seconds}", send_held)
    app.router.add_get("/arrivals", listing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

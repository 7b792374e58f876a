"""The ceiling for trigger ingestion: a bare aiohttp handler doing a trigger's HTTP work.

    python -m bench.bare_server [--uvloop]

Parses the JSON body, checks it has one recipient, answers 202 with a run-like JSON
object: no auth, no validation model, no database. Runs on asyncio like the daemon.
Prints `{"port": N}` on its first stdout line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys

from aiohttp import web

from bench.loops import run_loop

_RUN_IDS = itertools.count(1)


async def trigger(request: web.Request) -> web.Response:
    document = await request.json()
    if not isinstance(document, dict) or len(document.get("recipients", [])) != 1:
        raise web.HTTPUnprocessableEntity()
    run_id = f"run_{next(_RUN_IDS):012d}"
    body = {
        "run_id": run_id,
        "campaign_id": request.match_info["campaign"],
        "status": "scheduled",
        "scheduled_for": "2026-01-01T00:00:00Z",
        "links": {"run": f"/v1/runs/{run_id}"},
    }
    return web.json_response(body, status=202)


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/campaigns/{campaign}/triggers", trigger)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    run_loop(serve(args.host, args.port), uvloop_wanted=args.uvloop)


if __name__ == "__main__":
    main()

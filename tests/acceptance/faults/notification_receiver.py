"""The operator's system, in its own process:
`python -m tests.acceptance.faults.notification_receiver SECRET [PORT]` prints its port,
verifies every POST with the `standardwebhooks` reference package (401 if it does not
verify), records each at GET /received (webhook-id, verified, body), and answers 500 to
the next N requests after POST /fail?count=N."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


async def main(secret: str, port: int) -> None:
    verifier = Webhook(secret)
    received: list[dict[str, Any]] = []
    failing = 0

    async def event(request: web.Request) -> web.Response:
        nonlocal failing
        raw = await request.read()
        entry: dict[str, Any] = {"webhook_id": request.headers.get("webhook-id"),
                                 "timestamp": request.headers.get("webhook-timestamp")}
        try:
            entry["body"] = verifier.verify(raw, dict(request.headers))
            entry["verified"] = True
        except WebhookVerificationError as exc:
            entry.update(verified=False, error=str(exc))
            received.append(entry)
            return web.Response(status=401)
        entry["answered"] = 500 if failing > 0 else 200
        failing = max(0, failing - 1)
        received.append(entry)
        return web.Response(status=entry["answered"])

    async def fail(request: web.Request) -> web.Response:
        nonlocal failing
        failing = int(request.query["count"])
        return web.json_response({"failing": failing})

    async def listing(_: web.Request) -> web.Response:
        return web.json_response(received)

    app = web.Application()
    app.router.add_post("/events", event)
    app.router.add_post("/fail", fail)
    app.router.add_get("/received", listing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    sys.stdout.write(f"{runner.addresses[0][1]}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0))

"""Liveness, readiness and metrics: /healthz and /readyz (no credentials), /metrics (an admin
token, unless `server.public_metrics`: its labels name campaigns)."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.api.auth import authenticate, check_scope
from daemon.api.context import context
from daemon.api.problems import problem
from daemon.infra import migrate
from daemon.models import TokenScope
from daemon.store import campaigns

READY_TIMEOUT = 2.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and its event loop answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: not stopping, the database answers and the schema is current."""
    ctx = context(request)
    if ctx.lifecycle.stopping:
        raise problem(503, "shutting_down", "the daemon is shutting down")
    try:
        async with asyncio.timeout(READY_TIMEOUT), ctx.pool.acquire() as connection:
            todo = await migrate.pending(connection)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        detail = f"the database is not reachable: {exc}"
        raise problem(503, "database_unavailable", detail) from None
    if todo:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in todo)
        raise problem(503, "migrations_pending", f"migrations not applied: {names}")
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; 401/403 without an admin token unless the config makes it public."""
    ctx = context(request)
    if not ctx.config.server.public_metrics:
        check_scope(await authenticate(request), TokenScope.ADMIN)
    try:  # the campaign status gauge is the database's; a scrape never fails for it
        async with asyncio.timeout(1.0):
            by_status = await campaigns.count_by_status(ctx.pool)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        by_status = {}
    for status, count in by_status.items():
        ctx.metrics.campaigns.labels(status.value).set(count)
    ctx.metrics.event_loop_tasks.set(len(asyncio.all_tasks()))
    body = generate_latest(ctx.metrics.registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

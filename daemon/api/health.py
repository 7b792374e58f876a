"""Liveness, readiness and metrics: /healthz, /readyz, /metrics (no credentials)."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from daemon.api.context import context
from daemon.api.problems import problem
from daemon.infra import migrate
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
    ctx = context(request)
    try:  # the campaign status gauge is the database's; a scrape never fails for it
        async with asyncio.timeout(1.0):
            by_status = await campaigns.count_by_status(ctx.pool)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        by_status = {}
    for status, count in by_status.items():
        ctx.metrics.campaigns.labels(status.value).set(count)
    body = generate_latest(ctx.metrics.registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

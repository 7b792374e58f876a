"""The aiohttp application: middlewares (problems, lifecycle, metrics) and every route module."""

from __future__ import annotations

from aiohttp import web

from daemon.api import (
    audiences,
    campaigns,
    control,
    health,
    openapi,
    pools,
    profiles,
    receipts,
    rerun,
    runs,
    triggers,
    unsubscribe,
)
from daemon.api.context import CONTEXT, AppContext, context
from daemon.api.problems import Handler, problem, problem_middleware
from daemon.ui import routes as ui_routes

# Paths that keep answering while the daemon drains (so systemd and probes see it).
_ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})


@web.middleware
async def lifecycle_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Once stopping, new requests get 503 (probes excepted): clients retry elsewhere."""
    if context(request).lifecycle.stopping and request.path not in _ALWAYS_OPEN:
        raise problem(503, "shutting_down", "the daemon is shutting down; retry shortly")
    return await handler(request)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    context(request).metrics.http_requests.labels(request.method, str(response.status)).inc()
    return response


def build_app(ctx: AppContext) -> web.Application:
    """The application with every route; `ctx` is reachable from handlers via `context()`."""
    app = web.Application(
        middlewares=[metrics_middleware, problem_middleware, lifecycle_middleware],
        client_max_size=ctx.config.server.max_trigger_bytes,
    )
    app[CONTEXT] = ctx
    for module in ROUTE_MODULES:
        module.add_routes(app)
    ui_routes.add_routes(app)  # not in ROUTE_MODULES: the /ui pages stay out of OpenAPI
    return app


ROUTE_MODULES = [health, openapi, campaigns, control, triggers, runs, rerun, profiles, audiences,
                 pools, unsubscribe, receipts]

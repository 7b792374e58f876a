"""Bearer-token authentication and scopes.

`admin` may do everything; `trigger` may trigger and read runs. Handlers say
what they need with `@requires(scope)`. Token lookups are cached for a few
seconds (a revoked token stops working within `TOKEN_CACHE_SECONDS`); each lookup also
records when the token was last used (to the minute: `tokens list` shows it).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from daemon.api.context import context
from daemon.api.problems import problem
from daemon.models import TokenScope
from daemon.store import tokens

SCOPE_KEY = web.RequestKey("campaignd.scope", TokenScope)

HandlerFn = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise problem(401, detail="send Authorization: Bearer <token>")
    return token.strip()


async def scope_of(request: web.Request, token: str) -> TokenScope | None:
    """The scope of `token` (None: unknown or revoked), through the daemon's token cache."""
    ctx = context(request)
    key = hashlib.sha256(token.encode()).hexdigest()
    now = ctx.clock.monotonic()
    hit, scope = ctx.token_cache.get(key, now)
    if not hit:
        scope = await tokens.scope_of(ctx.pool, token, ctx.clock.now())
        ctx.token_cache.put(key, scope, now)
    return scope


async def authenticate(request: web.Request) -> TokenScope:
    """The scope of the request's bearer token; 401 problem when missing/unknown/revoked."""
    scope = await scope_of(request, _bearer(request))
    if scope is None:
        raise problem(401, detail="unknown or revoked token")
    request[SCOPE_KEY] = scope
    return scope


def check_scope(granted: TokenScope, needed: TokenScope) -> None:
    if granted is not TokenScope.ADMIN and granted is not needed:
        raise problem(403, detail=f"this needs a token with scope {needed.value!r}")


def requires(needed: TokenScope) -> Callable[[HandlerFn], HandlerFn]:
    """Decorate a handler: it runs only for a token of scope `needed` (or admin)."""

    def decorate(handler: HandlerFn) -> HandlerFn:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            check_scope(await authenticate(request), needed)
            return await handler(request)

        wrapper.required_scope = needed  # type: ignore[attr-defined]  # read by the OpenAPI builder
        return wrapper

    return decorate

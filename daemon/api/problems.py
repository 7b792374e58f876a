"""Every error as application/problem+json (RFC 9457), with a stable machine `code`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import asyncpg
from aiohttp import web

from daemon.errors import FieldError, Problem
from daemon.infra.logs import get_logger
from daemon.store import after_error

log = get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"

# The code for an HTTP status when nothing more precise was said.
DEFAULT_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(
    status: int,
    code: str | None = None,
    detail: str | None = None,
    errors: list[FieldError] | None = None,
    title: str | None = None,
) -> Problem:
    """A Problem with the standard title for `status` and the default code unless given."""
    return Problem(
        status=status,
        code=code or DEFAULT_CODES.get(status, "error"),
        title=title or HTTPStatus(status).phrase,
        detail=detail,
        errors=errors or [],
    )


def render(p: Problem, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, object] = {
        "type": f"https://campaignd.dev/problems/{p.code}",
        "title": p.title,
        "status": p.status,
        "detail": p.detail or p.title,
        "code": p.code,
        "errors": [{"loc": e.loc, "msg": e.msg} for e in p.errors],
    }
    return web.Response(
        status=p.status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _from_http_exception(exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:
        return exc  # redirects and successes raised as exceptions pass through
    detail = None
    if exc.status == 405 and isinstance(exc, web.HTTPMethodNotAllowed):
        detail = f"allowed: {', '.join(sorted(exc.allowed_methods))}"
        headers = {"Allow": ", ".join(sorted(exc.allowed_methods))}
        return render(problem(exc.status, detail=detail), headers)
    if exc.status == 413:
        detail = "the request body is larger than this endpoint accepts"
    return render(problem(exc.status, detail=detail))


# What PostgreSQL (or asyncpg) raises when the server is gone, shutting down or starting up.
# InternalClientError: a pooled connection that a lost server left mid-operation.
_DATABASE_LOST = (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                  asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
                  asyncpg.InternalClientError)


def database_lost(exc: BaseException) -> bool:
    """Whether `exc` means the database is unreachable (not a bug of ours): a lost or refused
    connection, a server shutting down or starting up, a pooled connection found closed."""
    if isinstance(exc, _DATABASE_LOST):
        return True
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc) or "closing" in str(exc)
    if isinstance(exc, OSError):  # refused, reset: only when asyncpg was connecting or talking
        frame = exc.__traceback__
        while frame is not None:
            if "/asyncpg/" in frame.tb_frame.f_code.co_filename:
                return True
            frame = frame.tb_next
    return False


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into problem+json; an unexpected exception is logged and is a 500."""
    try:
        return await handler(request)
    except Problem as exc:
        return render(exc)
    except web.HTTPException as exc:
        return _from_http_exception(exc)
    except Exception as exc:
        if database_lost(exc):
            after_error(exc)  # a broken pooled connection: the pool replaces them
            log.warning("request.database_unavailable", method=request.method,
                        path=request.path, error=str(exc) or type(exc).__name__)
            return render(problem(503, "database_unavailable",
                                  "the database is not reachable; retry shortly"),
                          {"Retry-After": "1"})
        log.exception("request.failed", method=request.method, path=request.path)
        return render(problem(500, detail="an unexpected error occurred; see the daemon log"))

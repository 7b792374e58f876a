"""Routes declared once, with what the OpenAPI document says about them.

A route module lists its `Operation`s and calls `register(app, operations)` from its
`add_routes`: that adds the aiohttp routes and records the operations in the app,
where `/openapi.json` finds them. A route can then not exist undocumented.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from daemon.models import TokenScope

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: a model (JSON), raw content types, or nothing (204)."""

    description: str
    model: type[BaseModel] | None = None
    headers: tuple[str, ...] = ()  # e.g. "Location"
    # OpenAPI links: operationId -> the path parameter `id`, as a runtime expression.
    links: tuple[tuple[str, str], ...] = ()
    # Other media types of the answer (documented as strings): media type -> description.
    media: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeaderParam:
    name: str
    description: str
    max_length: int = 255


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    replies: dict[int, Reply]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    # Streamed bodies: media type -> description (documented as strings).
    stream_types: dict[str, str] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    headers: tuple[HeaderParam, ...] = ()
    public: bool = False  # no credential at all
    token_scope: TokenScope | None = None  # when the handler checks it itself (no @requires)
    signed: bool = False  # Standard Webhooks signatures accepted instead of a token
    description: str = ""

    @property
    def scope(self) -> TokenScope | None:
        """The token scope the handler requires (from `@requires`), None when public."""
        if self.public:
            return None
        if self.token_scope is not None:
            return self.token_scope
        scope: Any = getattr(self.handler, "required_scope", None)
        return scope if isinstance(scope, TokenScope) else TokenScope.ADMIN


OPERATIONS = web.AppKey("campaignd.operations", list[Operation])


def register(app: web.Application, operations: list[Operation]) -> None:
    """Add each operation's route, and remember it for the OpenAPI document."""
    if OPERATIONS not in app:
        app[OPERATIONS] = []
    for operation in operations:
        app.router.add_route(operation.method, operation.path, operation.handler)
        app[OPERATIONS].append(operation)


def json_answer(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response from plain data (datetimes already rendered by the caller)."""
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

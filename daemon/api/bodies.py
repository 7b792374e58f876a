"""Reading request bodies within a size limit, with clear 413/415 problems.

JSON bodies are decoded by `daemon.api.validation.read_body` (400 on anything that
is not storable JSON)."""

from __future__ import annotations

from aiohttp import web

from daemon.api.problems import problem

JSON_TYPES = frozenset({"application/json"})


def require_content_type(request: web.Request, accepted: frozenset[str]) -> str:
    """The request's media type if it is one of `accepted`, else a 415 problem."""
    media_type = request.content_type
    if media_type not in accepted:
        raise problem(
            415,
            detail=f"Content-Type must be one of: {', '.join(sorted(accepted))} "
            f"(got {media_type or 'none'})",
        )
    return media_type


async def read_limited(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, refusing with 413 past `max_bytes` (checked before and while reading)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise problem(413, detail=f"the body is larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise problem(413, detail=f"the body is larger than {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)

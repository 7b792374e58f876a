"""Reading request bodies: JSON within a size limit, with clear 400/413/415 problems."""

from __future__ import annotations

import json
from typing import Any

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


async def read_json(request: web.Request, max_bytes: int, *, allow_empty: bool = False) -> Any:
    """The JSON body (415 on another type, 413 past `max_bytes`, 400 if malformed).

    With `allow_empty`, an absent body reads as None whatever its Content-Type.
    """
    if allow_empty and not request.body_exists:
        return None
    require_content_type(request, JSON_TYPES)
    raw = await read_limited(request, max_bytes)
    if allow_empty and not raw.strip():
        return None
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise problem(400, "malformed_json", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise problem(400, "malformed_json", f"invalid JSON at {where}: {exc.msg}") from None
    except RecursionError:
        raise problem(400, "malformed_json", "the JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise problem(400, "malformed_json", f"invalid JSON: {exc}") from None

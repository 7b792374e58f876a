"""What the two streamed endpoints share: the body's format, its chunks, a broken stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from daemon.api.bodies import require_content_type
from daemon.api.problems import problem
from daemon.imports import MEDIA_TYPES, Format, LineError, Tally

CHUNK_BYTES = 64 * 1024
STREAM_TYPES = {
    "application/x-ndjson": "One JSON object per line.",
    "text/csv": "A header line, then one record per line (RFC 4180 quoting).",
}


def body_format(request: web.Request) -> Format:
    """ndjson or csv from the Content-Type (415 for anything else)."""
    return MEDIA_TYPES[require_content_type(request, frozenset(MEDIA_TYPES))]


def chunks(request: web.Request) -> AsyncIterator[bytes]:
    return request.content.iter_chunked(CHUNK_BYTES)


@contextmanager
def broken_stream() -> Iterator[None]:
    """A body cut short (client gone, bad chunking) is the client's error: 400, not 500."""
    try:
        yield
    except (ConnectionResetError, HttpProcessingError) as exc:
        raise problem(400, "body_incomplete", f"the body ended early: {exc}") from None


def line_errors(tally: Tally, more: list[LineError] | None = None) -> list[dict[str, object]]:
    """The first 100 refused lines, by line number."""
    errors = sorted([*tally.errors, *(more or [])], key=lambda e: e.line)[:100]
    return [{"line": e.line, "reason": e.reason} for e in errors]

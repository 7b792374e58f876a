"""Recipient outcomes as a stream (SPEC §9.4): `GET /v1/runs/{id}/recipients` with
`Accept: text/csv` or `application/x-ndjson`.

Every matching recipient (the JSON list's filters), in send order, read through a
server-side cursor (`store.runs.stream_recipients`) and written batch by batch to a chunked
response: the daemon holds one batch whatever the run's size, and a slow reader slows the
cursor (each write waits for the socket to drain). Once the first byte is sent an error can
no longer be a problem+json: the connection is closed without the final chunk, so the
client sees a truncated transfer, never a short file that looks whole.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import aclosing
from typing import Any

from aiohttp import web

from daemon.api.context import context
from daemon.api.views import recipient_view
from daemon.infra.logs import get_logger
from daemon.store import Record, runs

log = get_logger(__name__)

CSV = "text/csv"
NDJSON = "application/x-ndjson"
STREAM_TYPES = {
    CSV: "One header line, then one recipient per record (RFC 4180), in send order.",
    NDJSON: "One recipient (the JSON list's item) per line, in send order.",
}
FIELDS = ("position", "profile_id", "status", "reason", "error", "attempts",
          "provider_message_id", "updated_at")
BATCH = 1000


def negotiated(request: web.Request) -> str | None:
    """The streamed type the client prefers (highest q, then the order given), or None for
    JSON (the default: no Accept, `*/*`, or JSON preferred)."""
    best: tuple[float, int, str] | None = None
    for index, item in enumerate(request.headers.get("Accept", "").split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0 or media not in (CSV, NDJSON, "application/json"):
            continue
        if best is None or q > best[0]:
            best = (q, index, media)
    return best[2] if best is not None and best[2] != "application/json" else None


def _csv_chunk(rows: list[Record], header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(FIELDS)
    for row in rows:
        view = recipient_view(row)
        writer.writerow(["" if view[name] is None else view[name] for name in FIELDS])
    return out.getvalue().encode()


def _ndjson_chunk(rows: list[Record]) -> bytes:
    return "".join(json.dumps(recipient_view(row), separators=(",", ":"), ensure_ascii=False)
                   + "\n" for row in rows).encode()


async def stream(request: web.Request, media: str, run_id: str, status: str | None,
                 reason: str | None, after: int, delivery: str | None = None
                 ) -> web.StreamResponse:
    """Write every matching recipient of the (existing) run as `media`."""
    ctx = context(request)
    response = web.StreamResponse(headers={
        "Content-Type": f"{media}; charset=utf-8" if media == CSV else media,
        "Cache-Control": "no-store",
    })
    response.enable_chunked_encoding()
    await response.prepare(request)
    count = 0
    info: dict[str, Any] = {"run_id": run_id, "format": media, "status": status,
                            "reason": reason}
    try:
        if media == CSV:
            await response.write(_csv_chunk([], header=True))
        async with aclosing(runs.stream_recipients(ctx.pool, run_id, status, reason, after,
                                                   batch=BATCH, delivery=delivery)) as batches:
            async for rows in batches:
                chunk = _csv_chunk(rows, False) if media == CSV else _ndjson_chunk(rows)
                await response.write(chunk)
                count += len(rows)
        await response.write_eof()
    except Exception as exc:
        if isinstance(exc, ConnectionResetError):  # the client went away
            log.info("export.aborted", recipients=count, **info)
        else:
            log.exception("export.failed", recipients=count, **info)
        if request.transport is not None:  # no final chunk: the client sees a truncation
            request.transport.close()
        return response
    log.info("export.finished", recipients=count, **info)
    return response

"""What the HTTP providers (webhook, twilio, fcm) share: session, Retry-After, statuses."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from daemon import __version__
from daemon.errors import TransientError
from daemon.providers.base import REQUEST_SENT

USER_AGENT = f"campaignd/{__version__}"
# Bodies of answers are read up to this size: enough for any id or error JSON,
# bounded against a peer that streams forever.
MAX_ANSWER_BYTES = 64 * 1024
REASON_BODY_CHARS = 200


def new_session(
    *, concurrency: int, timeout: float, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """One keep-alive session per provider: at most `concurrency` connections to its host."""
    return aiohttp.ClientSession(
        connector=_ReportingConnector(limit=concurrency, limit_per_host=concurrency),
        timeout=aiohttp.ClientTimeout(total=timeout),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        raise_for_status=False,
    )


class _ReportingConnector(aiohttp.TCPConnector):
    """Tells the engine's `REQUEST_SENT` hook when a request has its connection, i.e. when
    it goes out: a new connection takes 7–15 ms to open (a run's first calls, after a
    restart or an outage), a call waiting for one is late by as much. (Not an aiohttp
    trace: any trace config costs ~20 µs per request, measured, ~7 % of the daemon's CPU
    at 2,000/s; this costs one call.)"""

    async def connect(self, req: ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> Connection:  # noqa: ASYNC109
        connection = await super().connect(req, traces, timeout)
        report = REQUEST_SENT.get()
        if report is not None:
            report(asyncio.get_running_loop().time())
        return connection


def is_transient_status(status: int) -> bool:
    """HTTP statuses worth a retry (SPEC §3.4): 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110: an HTTP-date is always GMT
        return None
    return max(0.0, (when - now).total_seconds())


async def read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, at most MAX_ANSWER_BYTES of it."""
    return await response.content.read(MAX_ANSWER_BYTES)


def json_object(body: bytes) -> dict[str, Any] | None:
    """`body` parsed as a JSON object, or None if it is not one."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def snippet(body: bytes) -> str:
    """The start of an answer's body for a failure reason: one line, bounded."""
    text = body[: REASON_BODY_CHARS * 4].decode("utf-8", errors="replace")
    return " ".join(text.split())[:REASON_BODY_CHARS]


def status_reason(status: int, body: bytes) -> str:
    """`http_<status>: <start of the body>` (or just `http_<status>` for an empty body)."""
    text = snippet(body)
    return f"http_{status}: {text}" if text else f"http_{status}"


def connection_failure(exc: BaseException) -> TransientError:
    """A TransientError for a timeout or a connection that failed (never the URL's secrets)."""
    if isinstance(exc, TimeoutError):
        return TransientError("timeout")
    # The class name says what happened (ClientConnectorError, ServerDisconnectedError, ...);
    # the message of some aiohttp errors includes the URL, which may carry a token: left out.
    return TransientError(f"connection_error: {type(exc).__name__}")

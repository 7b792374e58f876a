"""The `webhook` provider: one JSON POST per message, signed per Standard Webhooks.

Body: `{"id", "campaign_id", "run_id", "channel", "profile_id", "to", "content"}`
where `id` is the message's idempotency key (also sent as `Idempotency-Key`
and, with a `secret`, as `webhook-id`). A push message with several tokens is
one POST per token (like FCM), each with its own id (`<key>.<n>`) so that a
receiver deduplicating on it does not drop the second token.

2xx = sent; 408, 429, 5xx, a timeout or a connection error = transient
(`Retry-After` honoured); any other status = permanent, reason
`http_<status>: <start of the body>`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra import webhook_signing
from daemon.infra.clock import Clock, SystemClock
from daemon.infra.logs import get_logger
from daemon.models import Channel
from daemon.providers import http
from daemon.providers.base import Message, SendResult
from daemon.providers.settings import WebhookProviderSettings

log = get_logger(__name__)

# One encoder for every body (`json.dumps` with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _recipients(message: Message) -> list[tuple[str, dict[str, str]]]:
    """(id, `to` object) per POST for `message`: one, or one per push token."""
    key = message.idempotency_key
    to = message.to
    if message.channel is Channel.PUSH:
        tokens = to.push_tokens
        if len(tokens) == 1:
            return [(key, {"push_token": tokens[0]})]
        return [(f"{key}.{n}", {"push_token": token}) for n, token in enumerate(tokens)]
    if message.channel is Channel.EMAIL and to.email:
        return [(key, {"email": to.email})]
    if message.channel is Channel.SMS and to.phone:
        return [(key, {"phone": to.phone})]
    return []


class WebhookProvider:
    """POSTs each message as JSON to the configured URL."""

    writes_unsubscribe_url = False  # the engine signs it only if a template reads it

    def __init__(
        self, name: str, settings: WebhookProviderSettings, *, clock: Clock | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._signing_key: bytes | None = None
        if settings.secret is not None:
            self._signing_key = webhook_signing.signing_key(settings.secret.get_secret_value())
        # Sent with every POST: given to the session once, not merged per request.
        self._static_headers = {
            **{name: value.get_secret_value() for name, value in settings.headers.items()},
            "Content-Type": "application/json",
        }

    def __repr__(self) -> str:
        # The URL without its query string or user info, which may hold a token.
        parts = urlsplit(self.settings.url)
        url = (
            f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        )
        return f"WebhookProvider(name={self.name!r}, url={url!r})"

    async def start(self) -> None:
        if self._session is None:
            self._session = http.new_session(
                concurrency=self.settings.concurrency, timeout=self.settings.timeout,
                headers=self._static_headers,
            )

    async def send(self, message: Message) -> SendResult:
        posts = _recipients(message)
        if not posts:
            raise PermanentError(f"no_address: no {message.channel.value} address")
        if len(posts) == 1:
            message_id, to = posts[0]
            return await self._post(message_id, message, to)
        outcomes = await asyncio.gather(
            *(self._post(message_id, message, to) for message_id, to in posts),
            return_exceptions=True,
        )
        return _combine(outcomes)

    async def _post(self, message_id: str, message: Message, to: dict[str, str]) -> SendResult:
        session = self._session
        if session is None:
            raise RuntimeError(f"provider {self.name} used before start()")
        body = _body(message_id, message, to)
        headers = {"Idempotency-Key": message_id}
        if self._signing_key is not None:
            headers.update(self._signature_headers(message_id, body))
        try:
            async with session.post(self.settings.url, data=body, headers=headers) as response:
                answer = await http.read_answer(response)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise http.connection_failure(exc) from None
        if 200 <= status < 300:
            # Most receivers answer `{}` or nothing: parsed only when it may hold an id.
            parsed = http.json_object(answer) if b'"id"' in answer else None
            answer_id = parsed.get("id") if parsed else None
            if isinstance(answer_id, str | int) and not isinstance(answer_id, bool):
                return SendResult(provider_message_id=str(answer_id))
            return SendResult(provider_message_id=message_id)
        reason = http.status_reason(status, answer)
        if http.is_transient_status(status):
            raise TransientError(
                reason, retry_after=http.parse_retry_after(retry_after, self._clock.now())
            )
        raise PermanentError(reason)

    def _signature_headers(self, message_id: str, body: bytes) -> dict[str, str]:
        assert self._signing_key is not None
        timestamp = int(self._clock.now().timestamp())
        return webhook_signing.headers(self._signing_key, message_id, timestamp, body)

    async def probe(self) -> None:
        """Nothing is sent: a POST would be a message. Reachability shows on the first send."""

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _body(message_id: str, message: Message, to: dict[str, str]) -> bytes:
    document: dict[str, Any] = {
        "id": message_id,
        "campaign_id": message.campaign_id,
        "run_id": message.run_id,
        "channel": message.channel.value,
        "profile_id": message.profile_id,
        "to": to,
        "content": message.content,
    }
    return _ENCODER.encode(document).encode()


def _combine(outcomes: list[SendResult | BaseException]) -> SendResult:
    """Sent if any POST was accepted; else transient if any was, else the first permanent."""
    failures: list[ProviderError] = []
    for outcome in outcomes:
        if isinstance(outcome, SendResult):
            return outcome
        if not isinstance(outcome, ProviderError):
            raise outcome  # a bug or a cancellation: not ours to classify
        failures.append(outcome)
    transient = [error for error in failures if isinstance(error, TransientError)]
    if transient:
        waits = [error.retry_after for error in transient if error.retry_after is not None]
        raise TransientError(transient[0].reason, retry_after=max(waits) if waits else None)
    raise failures[0]

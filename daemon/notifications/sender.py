"""One attempt at one event: a Standard Webhooks-signed POST, and what follows from its answer.

A 2xx delivers the event. Anything else (another status, a timeout, a connection error)
schedules the next attempt after an exponential backoff (`retry_first`, doubled per
attempt up to `retry_max`, with jitter; a longer `Retry-After` is honoured), until
`retry_for` after the event: then one last attempt at that moment, and after it the event
is `failed`. Every attempt sends the same body with the same `webhook-id`; only
`webhook-timestamp` (the attempt's time) and so the signature change.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import aiohttp

from daemon.infra import webhook_signing
from daemon.infra.clock import Clock
from daemon.infra.config import NotificationsSection
from daemon.models import NotificationStatus
from daemon.providers import http
from daemon.store.notifications import Attempt, Outgoing

JITTER = 0.25  # a retry waits between 75 % and 100 % of its backoff


def backoff(settings: NotificationsSection, failures: int, random: float) -> float:
    """Seconds before the next attempt after `failures` failed ones (`random` in [0, 1))."""
    delay: float = min(settings.retry_first * 2.0 ** min(failures - 1, 60), settings.retry_max)
    return delay * (1 - JITTER * random)


def next_attempt(settings: NotificationsSection, event: Outgoing, now: datetime,
                 random: float, retry_after: float | None) -> datetime | None:
    """When to try `event` again after a failed attempt at `now` (None: give up)."""
    give_up_at = event.created_at + timedelta(seconds=settings.retry_for)
    if now >= give_up_at:
        return None
    delay = backoff(settings, event.attempts + 1, random)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_max))
    return min(now + timedelta(seconds=delay), give_up_at)


class Sender:
    """POSTs events to `[notifications] url`, signed with its `secret`."""

    def __init__(self, settings: NotificationsSection, clock: Clock,
                 random: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._random = random
        self._key = webhook_signing.signing_key(settings.secret.get_secret_value())
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        self._session = http.new_session(
            concurrency=16, timeout=self.settings.timeout,
            headers={"Content-Type": "application/json"})
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def attempt(self, event: Outgoing) -> tuple[Attempt, int | None]:
        """POST `event` once; what it did (and the HTTP status, if one came)."""
        assert self._session is not None, "Sender used outside `async with`"
        timestamp = int(self._clock.now().timestamp())
        headers = webhook_signing.headers(self._key, event.webhook_id, timestamp, event.body)
        status: int | None = None
        retry_after: float | None = None
        try:
            async with self._session.post(self.settings.url, data=event.body,
                                          headers=headers) as response:
                answer = await http.read_answer(response)
                status = response.status
                retry_after = http.parse_retry_after(response.headers.get("Retry-After"),
                                                     self._clock.now())
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = http.connection_failure(exc).reason
        else:
            if 200 <= status < 300:
                return Attempt(event.id, NotificationStatus.DELIVERED, None, None), status
            error = http.status_reason(status, answer)
        now = self._clock.now()
        retry_at = next_attempt(self.settings, event, now, self._random(), retry_after)
        if retry_at is None:
            return Attempt(event.id, NotificationStatus.FAILED, None, error), status
        return Attempt(event.id, NotificationStatus.PENDING, retry_at, error), status

"""The retry schedule of a notification: doubling with jitter, capped, Retry-After, and one
last attempt at the end of `retry_for`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from daemon.infra.config import NotificationsSection
from daemon.models import NotificationEvent
from daemon.notifications.sender import backoff, next_attempt
from daemon.store.notifications import Outgoing

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CREATED = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
SETTINGS = NotificationsSection.model_validate(
    {"url": "http://x", "secret": SECRET, "retry_first": 5.0, "retry_max": 3600.0})


def event(attempts: int) -> Outgoing:
    return Outgoing(1, "msg_1", NotificationEvent.RUN_FINISHED, "c1", "r1", b"{}", attempts,
                    CREATED)


def test_the_backoff_doubles_up_to_its_cap_and_jitter_only_shortens_it() -> None:
    assert [backoff(SETTINGS, n, 0.0) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert backoff(SETTINGS, 30, 0.0) == 3600.0
    assert backoff(SETTINGS, 10_000, 0.0) == 3600.0  # no overflow after many attempts
    assert backoff(SETTINGS, 1, 0.999) > 0.75 * 5


def test_retry_after_waits_longer_but_never_beyond_the_cap() -> None:
    now = CREATED + timedelta(seconds=1)
    assert next_attempt(SETTINGS, event(0), now, 0.0, 60.0) == now + timedelta(seconds=60)
    assert next_attempt(SETTINGS, event(0), now, 0.0, 1.0) == now + timedelta(seconds=5)
    assert next_attempt(SETTINGS, event(0), now, 0.0, 1e9) == now + timedelta(hours=1)


def test_the_last_attempt_is_at_the_end_of_the_retry_period_then_none() -> None:
    end = CREATED + timedelta(hours=24)
    near_end = end - timedelta(minutes=10)
    assert next_attempt(SETTINGS, event(20), near_end, 0.0, None) == end
    assert next_attempt(SETTINGS, event(21), end, 0.0, None) is None

"""The run page's ETA: the pending recipients at the rate, in the send windows' open time,
never past the deadline."""

from datetime import UTC, datetime, timedelta

from daemon.planning import windows
from daemon.ui.routes import eta

SUNDAY_NOON = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_without_windows_it_is_pending_over_rate() -> None:
    assert eta(SUNDAY_NOON, 600, 10, (), None) == SUNDAY_NOON + timedelta(minutes=1)


def test_it_never_passes_the_deadline() -> None:
    deadline = SUNDAY_NOON + timedelta(seconds=30)
    assert eta(SUNDAY_NOON, 600, 10, (), deadline) == deadline


def test_no_rate_no_eta() -> None:
    assert eta(SUNDAY_NOON, 600, None, (), None) is None


def test_it_counts_only_the_open_time_of_the_windows() -> None:
    # Open 12:00-12:01 every day: 120 s of sending needs today's minute and tomorrow's.
    chosen = windows.from_stored([{"timezone": "UTC", "days": ["mon", "tue", "wed", "thu",
                                   "fri", "sat", "sun"], "from": "12:00", "to": "12:01"}])
    finish = eta(SUNDAY_NOON, 1200, 10, chosen, None)
    assert finish == SUNDAY_NOON + timedelta(days=1, minutes=1)

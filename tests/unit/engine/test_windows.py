"""Send windows as instants: the zone's real offsets, DST both ways, 30-minute zones,
unions, the next opening and the capacity they give a throttled run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from daemon.models import ExclusionReason
from daemon.planning.planner import plan_run
from daemon.planning.windows import (
    DAYS,
    Window,
    next_opening,
    open_intervals,
    open_seconds,
    open_until,
    parse_clock,
)

PARIS = "Europe/Paris"
HOUR = 3600.0


def window(start: str, end: str, zone: str = PARIS, days: tuple[str, ...] = DAYS) -> Window:
    return Window.parse(zone, days, start, end)


def local_day(zone: str, year: int, month: int, day: int) -> tuple[datetime, datetime]:
    """[local midnight, next local midnight) of that date, as instants."""
    tz = ZoneInfo(zone)
    start = datetime(year, month, day, tzinfo=tz)
    end = datetime(year, month, day, tzinfo=tz) + timedelta(days=1)
    return start.astimezone(UTC), end.replace(tzinfo=tz).astimezone(UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


class TestSpringForward:
    """Paris, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC); the day has 23 hours."""

    day = local_day(PARIS, 2026, 3, 29)

    def test_whole_day_has_23_hours(self) -> None:
        assert open_seconds([window("00:00", "24:00")], *self.day) == 23 * HOUR

    def test_a_window_inside_the_missing_hour_never_opens(self) -> None:
        assert open_intervals([window("02:00", "03:00")], *self.day) == []
        assert open_intervals([window("02:15", "02:45")], *self.day) == []

    def test_a_window_over_the_gap_counts_real_time(self) -> None:
        # 01:30 CET (00:30 UTC) to 03:30 CEST (01:30 UTC): one real hour.
        assert open_intervals([window("01:30", "03:30")], *self.day) == [
            (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 1, 30))]

    def test_a_window_that_starts_in_the_gap_opens_at_the_transition(self) -> None:
        assert open_intervals([window("02:30", "04:00")], *self.day) == [
            (utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 2, 0))]

    def test_office_hours_are_twelve_hours_in_the_new_offset(self) -> None:
        assert open_intervals([window("08:00", "20:00")], *self.day) == [
            (utc(2026, 3, 29, 6, 0), utc(2026, 3, 29, 18, 0))]


class TestFallBack:
    """Paris, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:00-03:00 occurs
    twice and the day has 25 hours."""

    day = local_day(PARIS, 2026, 10, 25)

    def test_whole_day_has_25_hours(self) -> None:
        assert open_seconds([window("00:00", "24:00")], *self.day) == 25 * HOUR

    def test_the_repeated_hour_is_open_twice(self) -> None:
        assert open_intervals([window("02:00", "03:00")], *self.day) == [
            (utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 2, 0))]
        assert open_intervals([window("02:30", "02:45")], *self.day) == [
            (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 0, 45)),
            (utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 1, 45))]

    def test_office_hours_are_twelve_hours_in_the_new_offset(self) -> None:
        assert open_intervals([window("08:00", "20:00")], *self.day) == [
            (utc(2026, 10, 25, 7, 0), utc(2026, 10, 25, 19, 0))]

    def test_a_window_over_the_transition_is_thirteen_hours(self) -> None:
        assert open_seconds([window("00:00", "12:00")], *self.day) == 13 * HOUR


class TestHalfHourZones:
    def test_a_fixed_half_hour_offset(self) -> None:
        day = local_day("Asia/Kolkata", 2026, 6, 1)
        assert open_intervals([window("09:00", "17:00", "Asia/Kolkata")], *day) == [
            (utc(2026, 6, 1, 3, 30), utc(2026, 6, 1, 11, 30))]

    def test_lord_howe_moves_its_clock_by_half_an_hour(self) -> None:
        # 2026-10-04 02:00 (+10:30) becomes 02:30 (+11): a 23.5-hour day.
        zone = "Australia/Lord_Howe"
        assert open_seconds([window("00:00", "24:00", zone)],
                            *local_day(zone, 2026, 10, 4)) == 23.5 * HOUR
        assert open_intervals([window("02:00", "02:30", zone)],
                              *local_day(zone, 2026, 10, 4)) == []
        # 2026-04-05 02:00 (+11) becomes 01:30 (+10:30): a 24.5-hour day.
        assert open_seconds([window("00:00", "24:00", zone)],
                            *local_day(zone, 2026, 4, 5)) == 24.5 * HOUR
        assert open_seconds([window("01:30", "02:00", zone)],
                            *local_day(zone, 2026, 4, 5)) == 1 * HOUR


class TestWeeks:
    weekdays = window("08:00", "20:00", days=("mon", "tue", "wed", "thu", "fri"))

    def test_the_next_opening_skips_the_weekend(self) -> None:
        friday_night = datetime(2026, 12, 4, 20, 30, tzinfo=ZoneInfo(PARIS))
        assert next_opening([self.weekdays], friday_night) == utc(2026, 12, 7, 7, 0)

    def test_open_now_is_its_own_next_opening_and_says_when_it_closes(self) -> None:
        monday_noon = utc(2026, 12, 7, 11, 0)
        assert next_opening([self.weekdays], monday_noon) == monday_noon
        assert open_until([self.weekdays], monday_noon) == utc(2026, 12, 7, 19, 0)
        assert open_until([self.weekdays], utc(2026, 12, 7, 19, 0)) is None

    def test_a_union_merges_overlaps_and_keeps_gaps(self) -> None:
        morning, evening = window("08:00", "12:00"), window("11:00", "14:00")
        late = window("18:00", "19:00", "Europe/London")
        day = local_day(PARIS, 2026, 12, 7)
        assert open_intervals([morning, evening, late], *day) == [
            (utc(2026, 12, 7, 7, 0), utc(2026, 12, 7, 13, 0)),
            (utc(2026, 12, 7, 18, 0), utc(2026, 12, 7, 19, 0))]

    def test_no_day_means_never(self) -> None:
        never = Window.parse(PARIS, [], "08:00", "20:00")
        assert next_opening([never], utc(2026, 12, 7)) is None


@pytest.mark.parametrize("text", ["8:00", "24:01", "12:60", "ab:cd", "1200", "-1:00",
                                  "12:00:60", "24:00:01", "12:00:0", "12:00:00:00"])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_clock(text)


def test_times_of_day_are_seconds_after_midnight() -> None:
    assert parse_clock("08:30") == 8 * 3600 + 30 * 60
    assert parse_clock("08:30:15") == 8 * 3600 + 30 * 60 + 15
    assert parse_clock("24:00") == parse_clock("24:00:00") == 86400


def test_the_capacity_counts_only_open_time() -> None:
    # Triggered Monday 18:00 Paris, 12-hour cap: open 18:00-20:00 only (2 h) at 10/s.
    weekdays = window("08:00", "20:00", days=("mon", "tue", "wed", "thu", "fri"))
    start = utc(2026, 12, 7, 17, 0)
    plan = plan_run(scheduled_for=start, now=start, rate=10, time_cap=12 * HOUR,
                    end_at=None, windows=[weekdays])
    assert plan.deadline == start + timedelta(hours=12)
    assert plan.deadline_reason is ExclusionReason.TIME_CAP
    assert plan.capacity == 10 * 2 * 3600


def test_without_windows_the_capacity_is_unchanged() -> None:
    start = utc(2026, 12, 7, 17, 0)
    plan = plan_run(scheduled_for=start, now=start, rate=10, time_cap=12 * HOUR, end_at=None)
    assert plan.capacity == 10 * 12 * 3600


def test_the_seed_example_a_day_window_and_the_twelve_hours() -> None:
    # 09:00 trigger, window 08:00-20:00, 165/s, 10,000,000 recipients (docs/windows.md).
    day = window("08:00", "20:00")
    start = datetime(2026, 12, 8, 9, 0, tzinfo=ZoneInfo(PARIS)).astimezone(UTC)
    plan = plan_run(scheduled_for=start, now=start, rate=165, time_cap=12 * HOUR,
                    end_at=None, windows=[day])
    assert plan.capacity == 6_534_000  # 11 h open before the 21:00 deadline
    assert 10_000_000 - plan.capacity == 3_466_000

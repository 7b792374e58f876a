"""Properties of the window arithmetic (hypothesis): open time is additive over any split of
an interval, a plan never counts closed time, every counted instant is open, and the next
opening and `open_until` agree with the intervals; across DST zones and 30-minute offsets."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.planning.planner import plan_run
from daemon.planning.windows import (
    DAYS,
    Window,
    next_opening,
    open_intervals,
    open_micros,
    open_until,
)

ZONES = ["Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "UTC"]
BASE = datetime(2026, 1, 1, tzinfo=UTC)
SPAN = timedelta(days=400)  # both DST transitions of 2026 and of 2027's spring


@st.composite
def windows(draw: st.DrawFn) -> list[Window]:
    chosen = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 24 * 60 - 1))
        end = draw(st.integers(start + 1, 24 * 60))
        days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
        zone = draw(st.sampled_from(ZONES))
        chosen.append(Window.parse(zone, days, f"{start // 60:02d}:{start % 60:02d}",
                                   f"{end // 60:02d}:{end % 60:02d}"))
    return chosen


instants = st.integers(0, int(SPAN.total_seconds())).map(lambda s: BASE + timedelta(seconds=s))
lengths = st.integers(0, 3 * 24 * 3600).map(lambda s: timedelta(seconds=s))


@settings(max_examples=150, deadline=None)
@given(windows(), instants, lengths, st.floats(0, 1))
def test_open_time_is_the_sum_over_the_pieces(chosen: list[Window], start: datetime,
                                              length: timedelta, cut: float) -> None:
    end = start + length
    middle = start + timedelta(seconds=int(length.total_seconds() * cut))
    whole = open_micros(chosen, start, end)
    assert whole == open_micros(chosen, start, middle) + open_micros(chosen, middle, end)
    assert 0 <= whole <= length // timedelta(microseconds=1)


@settings(max_examples=150, deadline=None)
@given(windows(), instants, lengths)
def test_every_counted_instant_is_open_and_the_intervals_sum_to_the_open_time(
    chosen: list[Window], start: datetime, length: timedelta
) -> None:
    end = start + length
    intervals = open_intervals(chosen, start, end)
    total = sum(((b - a) for a, b in intervals), timedelta())
    assert total // timedelta(microseconds=1) == open_micros(chosen, start, end)
    for a, b in intervals:
        assert start <= a < b <= end
        assert open_until(chosen, a) is not None  # open at its first instant
        middle = a + (b - a) / 2
        assert open_until(chosen, middle) is not None
    for (_, b), (c, _) in itertools.pairwise(intervals):
        assert b < c  # disjoint, sorted, merged


@settings(max_examples=100, deadline=None)
@given(windows(), instants, st.integers(1, 2000))
def test_a_plan_never_counts_closed_time(chosen: list[Window], start: datetime,
                                         rate: int) -> None:
    plan = plan_run(scheduled_for=start, now=start, rate=rate, time_cap=12 * 3600.0,
                    end_at=None, windows=chosen)
    assert plan.deadline is not None and plan.capacity is not None
    open_us = open_micros(chosen, plan.started_at, plan.deadline)
    assert plan.capacity == rate * open_us // 1_000_000
    assert plan.capacity <= rate * 12 * 3600


@settings(max_examples=100, deadline=None)
@given(windows(), instants)
def test_the_next_opening_is_open_and_nothing_before_it_is(chosen: list[Window],
                                                           at: datetime) -> None:
    if open_until(chosen, at) is not None:
        return  # open now: nothing to wait for (the other properties cover open time)
    opening = next_opening(chosen, at)
    assert opening is not None and opening > at  # every window here opens within a week
    assert open_micros(chosen, at, opening) == 0
    assert open_until(chosen, opening) is not None

"""The planner: deadlines from the cap or the end, capacity, end reasons, retries, sizes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from daemon.infra.clock import FakeClock
from daemon.models import EndReason, ExclusionReason
from daemon.planning import planner

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
HOUR = 3600.0
TWELVE_HOURS = 12 * HOUR


def test_a_throttled_run_is_capped_at_twelve_hours_when_the_end_is_later() -> None:
    plan = planner.plan_run(scheduled_for=T0, now=T0, rate=165, time_cap=TWELVE_HOURS,
                            end_at=T0 + timedelta(days=2))
    assert plan.deadline == T0 + timedelta(hours=12)
    assert plan.deadline_reason is ExclusionReason.TIME_CAP
    assert plan.capacity == 165 * 12 * 3600


def test_the_campaign_end_is_the_deadline_when_it_comes_first() -> None:
    plan = planner.plan_run(scheduled_for=T0, now=T0, rate=10, time_cap=TWELVE_HOURS,
                            end_at=T0 + timedelta(minutes=30))
    assert (plan.deadline, plan.deadline_reason) == (T0 + timedelta(minutes=30),
                                                     ExclusionReason.CAMPAIGN_END)
    assert plan.capacity == 10 * 30 * 60


def test_an_unthrottled_run_ends_at_the_campaign_end_or_never() -> None:
    windowed = planner.plan_run(scheduled_for=T0, now=T0, rate=None, time_cap=TWELVE_HOURS,
                                end_at=T0 + timedelta(hours=30))
    assert (windowed.deadline, windowed.deadline_reason, windowed.capacity) == (
        T0 + timedelta(hours=30), ExclusionReason.CAMPAIGN_END, None)
    open_ended = planner.plan_run(scheduled_for=T0, now=T0, rate=None, time_cap=TWELVE_HOURS,
                                  end_at=None)
    assert (open_ended.deadline, open_ended.deadline_reason, open_ended.capacity) == (
        None, None, None)


def test_a_configured_cap_shorter_than_twelve_hours_applies() -> None:
    plan = planner.plan_run(scheduled_for=T0, now=T0, rate=3, time_cap=2.5, end_at=None)
    assert plan.deadline == T0 + timedelta(seconds=2.5)
    assert plan.capacity == 7  # floor(3 × 2.5)


def test_a_late_start_counts_from_now_and_a_prepared_one_from_its_schedule() -> None:
    late = planner.plan_run(scheduled_for=T0, now=T0 + timedelta(minutes=5), rate=1,
                            time_cap=60, end_at=None)
    assert late.started_at == T0 + timedelta(minutes=5)
    early = planner.plan_run(scheduled_for=T0, now=T0 - timedelta(seconds=2), rate=1,
                             time_cap=60, end_at=None)
    assert early.started_at == T0
    assert early.deadline == T0 + timedelta(seconds=60)


def test_a_run_starting_after_its_campaign_ended_can_send_nothing() -> None:
    plan = planner.plan_run(scheduled_for=T0, now=T0 + timedelta(hours=1), rate=100,
                            time_cap=TWELVE_HOURS, end_at=T0 + timedelta(minutes=1))
    assert plan.expired and plan.capacity == 0
    assert plan.deadline_reason is ExclusionReason.CAMPAIGN_END
    unthrottled = planner.plan_run(scheduled_for=T0, now=T0 + timedelta(hours=1), rate=None,
                                   time_cap=TWELVE_HOURS, end_at=T0)
    assert unthrottled.capacity == 0


@pytest.mark.parametrize(("rate", "seconds", "expected"), [
    (1, 0.999999, 0), (1, 1.0, 1), (2000, TWELVE_HOURS, 86_400_000), (165, 0.5, 82),
    (7, 1e-6, 0), (2000, 0.000_5, 1),
])
def test_capacity_is_the_exact_floor(rate: int, seconds: float, expected: int) -> None:
    assert planner.capacity(rate, T0, T0 + timedelta(seconds=seconds)) == expected


def test_capacity_with_the_fake_clock_following_a_run() -> None:
    clock = FakeClock(T0)
    started = clock.now()
    clock.advance(HOUR)
    assert planner.capacity(165, started, clock.now()) == 165 * 3600


@pytest.mark.parametrize(("excluded", "cancelled", "expected"), [
    ({}, False, EndReason.DELIVERED),
    ({"opted_out": 3, "duplicate": 1}, False, EndReason.DELIVERED),
    ({"time_cap": 7}, False, EndReason.TIME_CAP),
    ({"campaign_end": 2}, False, EndReason.CAMPAIGN_END),
    ({"time_cap": 7}, True, EndReason.CANCELLED),
])
def test_the_end_reason(excluded: dict[str, int], cancelled: bool, expected: EndReason) -> None:
    assert planner.end_reason(excluded, cancelled=cancelled) is expected


def test_a_failed_run_ends_with_error() -> None:
    assert planner.end_reason({}, failed=True) is EndReason.ERROR


def test_backoff_is_exponential_with_full_jitter_and_a_ceiling() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (10, 300.0), (500, 300.0)]:
        delays = [planner.backoff_delay(attempt, 1.0, 300.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # the jitter spans the whole range


def test_a_transient_error_is_retried_until_the_attempts_run_out() -> None:
    decision = planner.after_transient(attempts=2, max_attempts=5, now=T0, delay=3.0,
                                       retry_after=None, deadline=None)
    assert decision.retry_at == T0 + timedelta(seconds=3)
    last = planner.after_transient(attempts=5, max_attempts=5, now=T0, delay=3.0,
                                   retry_after=None, deadline=None)
    assert last.exhausted and last.retry_at is None


def test_retry_after_wins_over_a_shorter_backoff() -> None:
    decision = planner.after_transient(attempts=1, max_attempts=5, now=T0, delay=0.5,
                                       retry_after=30.0, deadline=None)
    assert decision.retry_at == T0 + timedelta(seconds=30)


def test_a_retry_that_would_start_after_the_deadline_is_not_made() -> None:
    decision = planner.after_transient(attempts=1, max_attempts=5, now=T0, delay=10.0,
                                       retry_after=None, deadline=T0 + timedelta(seconds=5))
    assert decision.past_deadline and decision.retry_at is None and not decision.exhausted


@pytest.mark.parametrize(("rate", "concurrency"), [(1, 64), (40, 64), (2000, 256), (None, 64),
                                                   (2000, 4)])
def test_the_pipeline_sizes_stay_within_their_bounds(rate: int | None, concurrency: int) -> None:
    sizes = planner.pipeline_sizes(rate, concurrency)
    assert 1 <= sizes.senders <= concurrency
    assert 10 <= sizes.claim_batch <= 250
    assert sizes.window == sizes.senders + 4 * sizes.claim_batch
    assert sizes.low_water == 2 * sizes.claim_batch
    assert sizes.duplicate_bound == sizes.senders + 2 * sizes.flush_batch


def test_eta() -> None:
    assert planner.eta_seconds(330, 165) == 2.0
    assert planner.eta_seconds(10, None) is None


# -- re-plans (SPEC §9.1) -----------------------------------------------------------------------


def test_a_replan_counts_the_seconds_left_before_the_unmoved_deadline() -> None:
    deadline = T0 + timedelta(hours=12)
    # The worked example of docs/live-control.md: resumed at 11:00 (10 h left) at 100/s.
    assert planner.replan_capacity(100, T0 + timedelta(hours=2), deadline) == 3_600_000
    # At 12:00 at 150/s: 9 h left.
    assert planner.replan_capacity(150, T0 + timedelta(hours=3), deadline) == 4_860_000
    # Exactly floor(rate × seconds left), to the microsecond.
    now = deadline - timedelta(seconds=10, microseconds=500_000)
    assert planner.replan_capacity(3, now, deadline) == 31  # 3 × 10.5 = 31.5
    assert planner.replan_capacity(3, deadline, deadline) == 0
    assert planner.replan_capacity(3, deadline + timedelta(seconds=1), deadline) == 0


def test_a_replan_with_send_windows_counts_only_open_time() -> None:
    from daemon.planning.windows import Window

    paris = Window.parse("Europe/Paris", None, "08:00", "20:00")
    # 2026-03-01 is a Sunday in winter time (UTC+1): 07:00–19:00 UTC open.
    now = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)  # 19:00 Paris: one open hour left today
    deadline = now + timedelta(hours=12)  # 06:00 UTC next day: closed by then
    assert planner.replan_capacity(10, now, deadline, (paris,)) == 10 * 3600
    closed = datetime(2026, 3, 1, 20, 0, tzinfo=UTC)  # 21:00 Paris: closed until 08:00
    assert planner.replan_capacity(10, closed, closed + timedelta(hours=10), (paris,)) == 0
    assert planner.replan_capacity(10, closed, closed + timedelta(hours=12), (paris,)) == 10 * 3600

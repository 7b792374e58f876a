"""The arithmetic of a run, pure (no I/O): deadline, capacity, reasons, retries, sizes.

SPEC §3.2: a throttled run's deadline is `min(started_at + time_cap, end_at)`, an
unthrottled run's is `end_at` (or none). A throttled run can reach at most
`floor(rate × (deadline − started_at))` recipients: the eligible ones beyond that
(the last in order) are excluded at start, with reason `time_cap` when the deadline
comes from the cap, else `campaign_end`. The same reason applies at the deadline.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from daemon.models import EndReason, ExclusionReason
from daemon.planning.windows import Window, open_micros

_MICROSECOND = timedelta(microseconds=1)

# The reasons decided when the recipients are frozen, before any sending.
SNAPSHOT_REASONS = (ExclusionReason.DUPLICATE, ExclusionReason.OPTED_OUT,
                    ExclusionReason.NO_ADDRESS)


@dataclass(frozen=True, slots=True)
class Plan:
    """When a run starts, until when it may send, and how many it may reach."""

    started_at: datetime
    deadline: datetime | None
    deadline_reason: ExclusionReason | None  # TIME_CAP or CAMPAIGN_END; None without deadline
    capacity: int | None  # None: no limit (unthrottled)

    @property
    def expired(self) -> bool:
        """True when the deadline is already reached at start (nothing may be sent)."""
        return self.deadline is not None and self.deadline <= self.started_at


def plan_run(
    *,
    scheduled_for: datetime,
    now: datetime,
    rate: int | None,
    time_cap: float,
    end_at: datetime | None,
    windows: Sequence[Window] = (),
) -> Plan:
    """The plan of a run that starts now (or at `scheduled_for`, if that is later).

    `started_at` is the time of the first delivery (SPEC §1.6): `scheduled_for` when
    the run is prepared ahead of it, `now` for a run started late (overdue at boot).
    With send windows (SPEC §9.2) the deadline stays wall time and the capacity counts
    only the open time before it: `floor(rate × open seconds in [started_at, deadline))`.
    """
    started_at = max(now, scheduled_for)
    deadline, reason = _deadline(started_at, rate, time_cap, end_at)
    if windows and rate is not None and deadline is not None:
        return Plan(started_at, deadline, reason,
                    rate * open_micros(windows, started_at, deadline) // 1_000_000)
    return Plan(started_at, deadline, reason, capacity(rate, started_at, deadline))


def _deadline(
    started_at: datetime, rate: int | None, time_cap: float, end_at: datetime | None
) -> tuple[datetime | None, ExclusionReason | None]:
    if rate is None:
        if end_at is None:
            return None, None
        return end_at, ExclusionReason.CAMPAIGN_END
    capped = started_at + timedelta(seconds=time_cap)
    # At equality the cap and the end coincide; the campaign's end is the stricter name.
    if end_at is not None and end_at <= capped:
        return end_at, ExclusionReason.CAMPAIGN_END
    return capped, ExclusionReason.TIME_CAP


def capacity(rate: int | None, started_at: datetime, deadline: datetime | None) -> int | None:
    """`floor(rate × (deadline − started_at))`, exactly (integer microseconds); None when
    unthrottled. An unthrottled run whose deadline has passed has capacity 0."""
    if deadline is None:
        return None
    if rate is None:
        return 0 if deadline <= started_at else None
    micros = (deadline - started_at) // _MICROSECOND
    if micros <= 0:
        return 0
    return rate * micros // 1_000_000


def replan_capacity(rate: int, now: datetime, deadline: datetime,
                    windows: Sequence[Window] = ()) -> int:
    """A re-plan's capacity (SPEC §9.1): `floor(rate × seconds left before the deadline)`,
    counting only open send-window time when there are windows (SPEC §9.2). The deadline
    never moves: a pause spends it, and a re-plan after the deadline reaches no one."""
    if deadline <= now:
        return 0
    if windows:
        return rate * open_micros(windows, now, deadline) // 1_000_000
    result = capacity(rate, now, deadline)
    assert result is not None
    return result


def end_reason(excluded: Mapping[str, int], *, cancelled: bool = False,
               failed: bool = False) -> EndReason:
    """SPEC §4.3: `cancelled`, else `time_cap`/`campaign_end` whenever a recipient was
    excluded for it, else `delivered` (every eligible recipient was attempted)."""
    if failed:
        return EndReason.ERROR
    if cancelled:
        return EndReason.CANCELLED
    if excluded.get(ExclusionReason.TIME_CAP.value, 0) > 0:
        return EndReason.TIME_CAP
    if excluded.get(ExclusionReason.CAMPAIGN_END.value, 0) > 0:
        return EndReason.CAMPAIGN_END
    return EndReason.DELIVERED


def backoff_delay(attempt: int, base: float, maximum: float,
                  rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt` (1 = after the first failure): exponential with
    full jitter, uniform in [0, min(maximum, base × 2^(attempt−1))]."""
    ceiling = min(maximum, base * 2.0 ** min(max(attempt - 1, 0), 60))
    return (rng or _RANDOM).uniform(0.0, ceiling)


_RANDOM = random.Random()


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What a transient error leads to: another attempt at `retry_at`, or an end."""

    retry_at: datetime | None  # None: no retry
    exhausted: bool  # max_attempts reached: failed
    past_deadline: bool  # the retry could only start after the deadline: excluded


def after_transient(
    *,
    attempts: int,
    max_attempts: int,
    now: datetime,
    delay: float,
    retry_after: float | None,
    deadline: datetime | None,
) -> RetryDecision:
    """Decide after a transient error on call number `attempts` (1-based).

    A retry waits the backoff `delay`, or the provider's `Retry-After` if longer. A retry
    that could only start at or after the deadline is not attempted: the recipient is
    excluded with the deadline's reason there and then (so the run need not wait for
    its deadline to end), its last error kept.
    """
    if attempts >= max_attempts:
        return RetryDecision(None, exhausted=True, past_deadline=False)
    wait = max(delay, retry_after or 0.0)
    retry_at = now + timedelta(seconds=wait)
    if deadline is not None and retry_at >= deadline:
        return RetryDecision(None, exhausted=False, past_deadline=True)
    return RetryDecision(retry_at, exhausted=False, past_deadline=False)


def eta_seconds(pending: int, rate: float | None) -> float | None:
    """Seconds left at `rate` (None when unknown)."""
    if not rate or rate <= 0:
        return None
    return pending / rate


# -- sizes of the sending pipeline ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PipelineSizes:
    """How many recipients a campaign worker claims, sends and writes at once.

    `window` bounds the recipients claimed (durably marked in flight) but not yet
    recorded: after a crash, at most `window` recipients are sent again, of which at most
    `duplicate_bound` had been sent (a call starts only while fewer than `unwritten`
    outcomes wait to be written).
    """

    senders: int  # send coroutines (calls in flight at most)
    claim_batch: int  # recipients claimed per run per query
    flush_batch: int  # outcomes per write (also written every checkpoint_interval)
    window: int  # claimed and not yet recorded, at most
    low_water: int  # a run's queue is refilled below this (QUEUED_BATCHES claims ahead)
    unwritten: int  # outcomes not yet written, at most: calls wait beyond (backpressure)

    @property
    def duplicate_bound(self) -> int:
        """After a crash, the recipients sent and not recorded, at most: the calls in flight
        and the outcomes not yet written."""
        return self.senders + self.unwritten


# Claimed recipients queued ahead of the senders, in batches (300 ms of the rate): claims
# that are slow for a moment (a busy database) do not leave the senders idle.
QUEUED_BATCHES = 3


def pipeline_sizes(rate: int | None, provider_concurrency: int) -> PipelineSizes:
    """Sizes for a campaign at `rate` (None: unthrottled) on a provider of that concurrency.

    Senders: enough for 2 s of calls at the rate (calls that take up to 2 s keep the rate),
    never more than the provider's concurrency. Claims and writes: 100 ms of the rate, 10 to
    250 rows (small batches keep each statement's encoding and decoding from stalling the
    loop, which would show as jitter in the pace). The window: the senders' recipients,
    the queued batches and one batch of outcomes being written.
    """
    if rate is None:
        senders = min(provider_concurrency, 512)
        batch = 250
    else:
        senders = max(1, min(provider_concurrency, 512, math.ceil(rate * 2) + 1))
        batch = max(10, min(250, math.ceil(rate / 10)))
    return PipelineSizes(senders=senders, claim_batch=batch, flush_batch=batch,
                         window=senders + (QUEUED_BATCHES + 1) * batch,
                         low_water=(QUEUED_BATCHES - 1) * batch, unwritten=2 * batch)

"""Live control on the lease holder (SPEC §9.1): paused or live, the rate, the re-plans.

The API changes the campaign row and NOTIFYs `campaign:<id>` on the control channel; the
worker holding the campaign re-reads it at once (and on every control tick, so a missed
NOTIFY costs at most a tick) and hands it to `Steering.apply`:

- **paused**: senders wait in `wait_resumed` before they take a recipient (inside the
  pacer's turn: the others queue behind, holding nothing), and the last check before a
  call refuses (`paused`), so no call starts once the worker has read the pause; calls in
  flight finish and are recorded. Nothing is excluded; due scheduled runs are not started.
  Deadlines still close runs: the 12-hour clock is wall time, a pause spends it.
- **live again**: senders go on in position order; the pacer restarts nearly full after
  the idle spell, as at a start (no burst).
- **a new rate**: the worker's pacer takes it at once (`Pacer.set_rate`, which keeps the
  last second's calls so a decrease cannot overshoot).

Then every running run planned before the change (its rate differs from the campaign's, or
the campaign was resumed after its last plan) is **re-planned** (`store.control.replan`),
one transaction per run, while no claim is being made (`claims`: the feeder holds it while
it claims), so the recipients the re-plan excludes are never claimed at the same time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog

from daemon.engine.delivery import RunExecution, RunState
from daemon.engine.pool_shares import PoolShares
from daemon.infra.clock import Clock
from daemon.infra.metrics import Metrics
from daemon.models import CampaignStatus
from daemon.planning import planner, windows
from daemon.store import Pool
from daemon.store import control as control_store
from daemon.store.control import ControlState, Replan
from daemon.store.engine import Campaign

POOL_REPLAN_EVERY = 10.0  # a pooled run is re-planned for its share at most this often


@dataclass(frozen=True, slots=True)
class Change:
    """What a read of the campaign changed here."""

    paused: bool = False  # live → paused
    resumed: bool = False  # paused → live
    rate: int | None = None  # the new rate, if it changed


class Steering:
    """A campaign worker's live-control state and its re-plans."""

    def __init__(self, pool: Pool, clock: Clock, metrics: Metrics, campaign: Campaign,
                 log: structlog.stdlib.BoundLogger,
                 pool_shares: PoolShares | None = None) -> None:
        self.pool = pool
        self.clock = clock
        self.metrics = metrics
        self.campaign_id = campaign.id
        self.windows = windows.from_stored(campaign.windows)
        self.log = log
        self.paused = campaign.status == CampaignStatus.PAUSED.value
        self.rate = campaign.rate_per_second
        self.claims = asyncio.Lock()  # held by a claim and by a re-plan
        self.rate_pool = campaign.rate_pool
        self.pool_shares = pool_shares
        self._pool_replanned: dict[str, float] = {}  # run id -> monotonic time
        self._resumed = asyncio.Event()
        if not self.paused:
            self._resumed.set()

    async def wait_resumed(self) -> None:
        """Return when the campaign is live (at once if it is)."""
        if not self._resumed.is_set():
            await self._resumed.wait()

    async def read(self) -> ControlState | None:
        return await control_store.control_state(self.pool, self.campaign_id)

    def apply(self, state: ControlState) -> Change:
        paused = state.status is CampaignStatus.PAUSED
        change = Change(paused=paused and not self.paused,
                        resumed=self.paused and not paused,
                        rate=state.rate_per_second if state.rate_per_second != self.rate
                        and state.rate_per_second is not None else None)
        self.paused = paused
        if paused:
            self._resumed.clear()
        else:
            self._resumed.set()
        if change.rate is not None:
            self.rate = change.rate
        if change.paused:
            self.log.info("campaign.paused_here")
        if change.resumed:
            self.log.info("campaign.resumed_here")
        if change.rate is not None:
            self.log.info("campaign.rate_applied", rate_per_second=change.rate)
        return change

    async def replan_due(self, runs: Mapping[str, RunExecution],
                         resumed_at: datetime | None) -> list[Replan]:
        """Re-plan the running runs executing here whose plan predates the campaign's last
        resume or rate change (none while paused, none unthrottled)."""
        if self.paused or self.rate is None:
            return []
        rate, pooled = self._plan_rate()
        done: list[Replan] = []
        for row in await control_store.running_runs(self.pool, self.campaign_id):
            run = runs.get(row.id)
            if run is None or run.state not in (RunState.WAITING, RunState.ACTIVE):
                continue
            if pooled:  # SPEC §9.3: on a share change of more than 10 %, once per 10 s
                stale = abs((row.rate_per_second or 0) - rate) > 0.1 * rate and (
                    self.clock.monotonic() - self._pool_replanned.get(row.id, float("-inf"))
                    >= POOL_REPLAN_EVERY)
            elif self.rate_pool is not None:  # pooled, no share known here yet: keep it
                stale = False
            else:
                stale = row.rate_per_second != rate
            stale = stale or (resumed_at is not None and resumed_at > row.planned_at)
            if not stale or row.deadline is None or row.deadline_reason is None:
                continue
            if pooled:
                self._pool_replanned[row.id] = self.clock.monotonic()
            now = self.clock.now()
            capacity = planner.replan_capacity(rate, now, row.deadline, self.windows)
            async with self.claims, self.pool.acquire() as conn, conn.transaction():
                result = await control_store.replan(
                    conn, row.id, capacity=capacity, reason=row.deadline_reason,
                    rate=rate, now=now, apply=True)
            if result is None:
                continue
            run.counts = dict(result.after)
            if result.reinstated:
                run.fresh_exhausted = False
            self.metrics.replans.inc()
            self.log.info("run.replanned", run_id=row.id, capacity=capacity,
                          rate_per_second=rate, pooled=pooled, reinstated=result.reinstated,
                          excluded=result.excluded, before=_summary(result.before),
                          after=_summary(result.after))
            done.append(result)
        return done


    def start_rate(self) -> int | None:
        """The rate a run starting now is planned at when not its own: a pooled campaign's
        share here, when this daemon holds one (SPEC §9.3; the start asks for one first,
        `PoolDemand.ask_share`; without it the run is planned at its own rate and
        re-planned once the share comes)."""
        if self.rate is None:
            return None
        rate, pooled = self._plan_rate()
        return rate if pooled else None

    def _plan_rate(self) -> tuple[int, bool]:
        """The rate runs are planned at: the campaign's, or for a pooled campaign its share
        of the pool when that is lower (whole calls/s, at least 1); and whether pooled."""
        assert self.rate is not None
        if self.rate_pool is None or self.pool_shares is None:
            return self.rate, False
        share = self.pool_shares.share_of(self.rate_pool, self.campaign_id)
        if share is None:
            return self.rate, False
        return max(1, min(self.rate, math.floor(share))), True


def _summary(counts: Mapping[str, int]) -> dict[str, int]:
    return {key: counts[key] for key in ("pending", "excluded_time_cap",
                                         "excluded_campaign_end")}

"""The control part of a campaign worker: the runs to adopt and start, deadlines, cancels,
progress, live control, and the worker's end.

Its `control_loop` adopts the runs a previous holder left running (dropping their claims:
those recipients are sent again), queues due scheduled runs for the starting part (which
freezes each just early enough for its size and activates it at its first delivery
time), closes runs at their deadline or on a cancel request (the closing part), applies
pause, resume and rate changes (`steering.py`), logs each run's progress, and returns when
the worker should end: nothing left to do for IDLE_EXIT seconds, or the lease lost.
"""

from __future__ import annotations

import dataclasses

from daemon.engine.closing import RunClosing
from daemon.engine.delivery import RENDER_ERROR, RunExecution, RunState
from daemon.engine.demand import PoolDemand
from daemon.engine.pacing import Pacer
from daemon.engine.senders import Senders
from daemon.engine.starting import RunStarting
from daemon.engine.state import WorkerState, wait
from daemon.engine.steering import Change
from daemon.models import ExclusionReason, RunStatus
from daemon.planning import planner
from daemon.store import engine as engine_store
from daemon.store import freeze as freeze_store
from daemon.store import recipients as recipient_store
from daemon.store.engine import RunRow

# Runs are re-read at least this often: a fallback, since the scheduler hands new runs
# over, a NOTIFY (cancel) pokes the worker at once, a lost LISTEN connection pokes every
# worker when it is back, and deadlines and starts have their own timers.
CONTROL_TICK = 15.0
MIN_READ_INTERVAL = 0.025  # a burst of pokes (triggers) makes one read per interval
PROGRESS_EVERY = 10.0  # run.progress period
IDLE_EXIT = 2.0  # a worker with nothing to do for this long ends (and frees its lease)


class Control:
    """The control loop (changes `campaign` and `sizes` on a rate change)."""

    def __init__(self, state: WorkerState, starting: RunStarting, closing: RunClosing,
                 senders: Senders, demand: PoolDemand, pacer: Pacer | None) -> None:
        self.state = state
        self.starting = starting
        self.closing = closing
        self.senders = senders
        self.demand = demand
        self.pacer = pacer
        self.log = state.log
        self.clock = state.clock
        self._refresh_wanted = False
        self._idle_since: float | None = None

    def poke(self) -> None:
        """Something changed in the database (a NOTIFY: new run, cancel): re-read it now."""
        self._refresh_wanted = True
        self.state.wake_control()

    async def control_loop(self) -> None:
        """Returns when the worker should end: nothing left to do, or the lease is lost.

        The database is read at start (adopting the runs a previous holder left running),
        when poked, and every CONTROL_TICK; other wakes only re-check the local state."""
        next_read = last_read = float("-inf")
        while True:
            if not self.state.lease.valid():
                self.log.warning("lease.lost", runs=sorted(self.state.runs))
                return
            mono = self.clock.monotonic()
            if (self._refresh_wanted and mono >= last_read + MIN_READ_INTERVAL) \
                    or mono >= next_read:
                self._refresh_wanted = False
                last_read, next_read = mono, mono + CONTROL_TICK
                await self.state.retrying(self._refresh, "refresh")
            self._tick()
            if self._idle_long_enough():
                return
            now = self.clock.monotonic()
            until_read = (last_read + MIN_READ_INTERVAL if self._refresh_wanted
                          else next_read) - now
            await wait(self.state.control_wake, min(self._control_timeout(), until_read))
            self.state.control_wake.clear()

    async def _resume(self, rows: list[RunRow]) -> None:
        ids = [row.id for row in rows]
        pool = self.state.services.pool
        recovered = await recipient_store.recover(pool, ids)
        counts = {row["id"]: engine_store.counts_of(row)
                  for row in await engine_store.control_rows(pool, ids)}
        freezing = {f.run_id for f in await freeze_store.freezes(pool, ids)}
        for row in rows:
            run = RunExecution(row=row, campaign_variables=self.state.campaign_variables,
                               counts=counts.get(row.id, {}))
            self.starting.add(run)
            if row.cancel_requested:  # asked while no daemon held it
                self.closing.begin_close(run, exclude_as=ExclusionReason.CANCELLED)
            elif row.id in freezing:
                self.starting.freeze_rest(row.id)
            self.log.info("run.resumed", run_id=row.id, pending=run.counts.get("pending"),
                          deadline=row.deadline, recovered_in_flight=recovered,
                          freezing=row.id in freezing)
        if recovered:
            self.log.warning("run.recovered", runs=ids, in_flight=recovered)

    async def _refresh(self) -> None:
        """Read the campaign's runs: adopt running ones we do not know (left by a previous
        holder: their claims are dropped, those recipients sent again), queue scheduled
        ones due to start, close cancelled ones."""
        steering = self.state.steering
        steered = await steering.read()
        change = steering.apply(steered) if steered is not None else Change()
        if change.rate is not None:
            self.rate_changed(change.rate)
        if change.resumed:  # senders go on; due runs start
            self.starting.wake()
            for execution in self.state.runs.values():
                self.senders.mark_ready(execution)
            self.state.wake_feeder()
        now = self.clock.now()
        rows = await engine_store.campaign_runs(self.state.services.pool,
                                                self.state.campaign.id, now)
        unknown: list[RunRow] = []
        seen: set[str] = set()
        for row in rows:
            seen.add(row.id)
            run = self.state.runs.get(row.id)
            if row.status is RunStatus.SCHEDULED:
                self.starting.offer([row])
            elif run is None:
                # Read before its start or end here was done: not ours to adopt.
                if row.id not in self.state.starting and row.id not in self.state.ended:
                    unknown.append(row)
            elif row.cancel_requested and run.state in (RunState.WAITING, RunState.ACTIVE):
                self.closing.begin_close(run, exclude_as=ExclusionReason.CANCELLED)
        for run_id, run in list(self.state.runs.items()):
            if run_id not in seen and run.state is not RunState.CLOSING:
                self.log.warning("run.vanished", run_id=run_id)  # ended or deleted elsewhere
                self.closing.forget(run)
        if unknown:
            await self._resume(unknown)
        if steered is not None and await steering.replan_due(self.state.runs,
                                                             steered.resumed_at):
            self.state.wake_feeder()

    def rate_changed(self, rate: int) -> None:
        """A live rate change (SPEC §9.1): paced at once at the new rate, sized for it."""
        state = self.state
        state.campaign = dataclasses.replace(state.campaign, rate_per_second=rate)
        if self.pacer is not None:
            self.pacer.set_rate(rate)
        provider = state.services.providers.for_channel(state.campaign.channel)
        state.sizes = planner.pipeline_sizes(rate, provider.settings.concurrency)
        self.senders.staff()

    def _tick(self) -> None:
        now = self.clock.now()
        mono = self.clock.monotonic()
        pending = 0
        for run in list(self.state.runs.values()):
            if run.state in (RunState.WAITING, RunState.ACTIVE):
                if self.state.content_error is not None:
                    self.closing.begin_close(run, fail_reason=RENDER_ERROR)
                    continue
                deadline = run.row.deadline
                if deadline is not None and now >= deadline:
                    self.closing.begin_close(run, exclude_as=run.row.deadline_reason)
                    continue
                if run.state is RunState.WAITING and now >= run.first_delivery:
                    self.starting.activate(run)
            if run.state is RunState.ACTIVE and mono - run.progress_at >= PROGRESS_EVERY:
                self._progress(run, mono)
            pending += run.counts.get("pending", 0)
        self.state.services.metrics.pending.labels(self.state.campaign.id).set(pending)
        self.demand.publish()

    def _progress(self, run: RunExecution, mono: float) -> None:
        achieved = (run.calls - run.progress_calls) / max(mono - run.progress_at, 1e-9)
        run.progress_calls, run.progress_at = run.calls, mono
        counts = run.counts
        pending = counts.get("pending", 0)
        rate = self.state.campaign.rate_per_second or (achieved if achieved > 0 else None)
        eta = planner.eta_seconds(pending, rate)
        self.state.services.metrics.achieved_rate.labels(self.state.campaign.id).set(achieved)
        self.log.info("run.progress", run_id=run.id, sent=counts.get("sent", 0),
                      failed=counts.get("failed", 0), pending=pending,
                      achieved_rate=round(achieved, 2),
                      eta_seconds=round(eta, 1) if eta is not None else None,
                      deadline=run.row.deadline)

    def _control_timeout(self) -> float:
        """Until the next deadline or progress line of a run, or until an idle worker ends
        (at most CONTROL_TICK)."""
        now = self.clock.now()
        mono = self.clock.monotonic()
        timeout = CONTROL_TICK
        if self._idle_since is not None:  # idle: it ends IDLE_EXIT after, not at a tick
            timeout = min(timeout, self._idle_since + IDLE_EXIT - mono)
        for run in self.state.runs.values():
            if run.state is RunState.ACTIVE:
                timeout = min(timeout, run.progress_at + PROGRESS_EVERY - mono)
                if run.row.deadline is not None:
                    timeout = min(timeout, (run.row.deadline - now).total_seconds())
        return max(timeout, 0.0)

    def _idle_long_enough(self) -> bool:
        busy = self.state.runs or self.state.starting or self.state.closing
        if busy:
            self._idle_since = None
            return False
        mono = self.clock.monotonic()
        if self._idle_since is None:
            self._idle_since = mono
        return mono - self._idle_since >= IDLE_EXIT

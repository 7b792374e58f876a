"""The life of a campaign's runs on the lease holder: start, activate, deadline, cancel, end.

`CampaignRuns` is the control part of a campaign worker (`fanout.CampaignWorker`
extends it with claims and senders, `sending.ProviderCalls` with the calls, and
`closing.RunClosing` ends runs). Its `control_loop` adopts the runs a previous holder
left running (dropping their claims: those recipients are sent again), queues due
scheduled runs for `starter_loop` (which freezes each just early enough for its size),
has each activated at its first delivery time (`activator_loop`), and closes runs at
their deadline or on a cancel request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from daemon.engine.closing import RunClosing
from daemon.engine.delivery import RENDER_ERROR, RunExecution, RunState
from daemon.engine.recording import DB_ERRORS, raise_if_cancelling
from daemon.engine.starting import RunStarting
from daemon.engine.steering import Change, Steering
from daemon.errors import ProviderError, TransientError
from daemon.infra.logs import get_logger
from daemon.models import ExclusionReason, RunStatus
from daemon.planning import planner
from daemon.store import engine as engine_store
from daemon.store import freeze as freeze_store
from daemon.store import profiles_tokens
from daemon.store import recipients as recipient_store
from daemon.store.engine import Campaign, RunRow

if TYPE_CHECKING:
    from daemon.engine.state import Lease, WorkerServices

log = get_logger(__name__)

# Runs are re-read at least this often: a fallback, since the scheduler hands new runs
# over, a NOTIFY (cancel) pokes the worker at once, a lost LISTEN connection pokes every
# worker when it is back, and deadlines and starts have their own timers.
CONTROL_TICK = 15.0
MIN_READ_INTERVAL = 0.025  # a burst of pokes (triggers) makes one read per interval
PROGRESS_EVERY = 10.0  # run.progress period
IDLE_EXIT = 2.0  # a worker with nothing to do for this long ends (and frees its lease)
DB_RETRY_MAX = 5.0
MAX_POOL_DEMAND = 2000  # an unthrottled pooled campaign asks for this (limits' highest rate)


class CampaignRuns(RunClosing, RunStarting):
    """The runs of one campaign executing on this instance (control half of the worker)."""

    content_error: str | None

    if TYPE_CHECKING:  # provided by the worker
        def rate_changed(self, rate: int) -> None:
            ...

    def __init__(self, services: WorkerServices, campaign: Campaign, lease: Lease) -> None:
        self.services = services
        self.campaign = campaign
        self.lease = lease
        self.clock = services.clock
        self.runs: dict[str, RunExecution] = {}
        self.stopping = False
        self.log = log.bind(campaign_id=campaign.id)
        self.steering = Steering(services.pool, services.clock, services.metrics, campaign,
                                 self.log, services.pool_shares)
        self.campaign_variables: dict[str, Any] = {
            "id": campaign.id, "name": campaign.name, "channel": campaign.channel.value}
        self.group: asyncio.TaskGroup | None = None
        self._control_wake = asyncio.Event()
        self._refresh_wanted = False
        self._activation_wake = asyncio.Event()
        self._start_queue: dict[str, RunRow] = {}
        self._freeze_at: dict[str, datetime] = {}  # run id -> when to freeze it
        self._sizes: dict[str, int] = {}  # run id -> its stored audience's size, counted ahead
        self.to_freeze: set[str] = set()  # runs whose further chunks are to freeze
        self._start_wake = asyncio.Event()
        self._starting: set[str] = set()
        self._ended: dict[str, None] = {}  # runs ended here lately (ignored in stale reads)
        self._closing: dict[str, asyncio.Task[None]] = {}
        self._idle_since: float | None = None
        self._error_log: dict[str, tuple[float, int]] = {}
        self._dead_tokens: list[tuple[str, str]] = []

    # -- helpers ------------------------------------------------------------------------------

    def wake_control(self) -> None:
        """Re-read the runs now (a NOTIFY, a new trigger, a sender saw something)."""
        self._control_wake.set()

    async def wait(self, event: asyncio.Event, seconds: float | None) -> None:
        """Until `event` is set or `seconds` (a span the caller took from the clock) pass.

        The span runs on the event loop's timer (what the system clock's sleep does too),
        with no task of its own: a worker's loops wait this way, and thousands of workers
        must not mean thousands of extra tasks (machine-limits §6)."""
        if event.is_set() or (seconds is not None and seconds <= 0):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    async def retrying(self, action: Callable[[], Awaitable[None]], what: str) -> None:
        """Run `action`; on a database error, log it and try again (backing off)."""
        delay = 0.1
        while True:
            try:
                await action()
                return
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                self.log.warning("engine.database_error", action=what, error=str(exc),
                                 retry_in=round(delay, 2))
            await self.clock.sleep(delay)
            delay = min(delay * 2, DB_RETRY_MAX)

    def may_call(self, run: RunExecution) -> bool:
        """Whether a provider call for `run` may start now (checked just before it)."""
        if self.stopping or self.steering.paused or run.state is not RunState.ACTIVE:
            return False
        if not self.lease.valid():
            self.stopping = True  # no call may start any more: the worker ends
            self.wake_control()
            return False
        deadline = run.row.deadline
        if deadline is not None and self.clock.now() >= deadline:
            self.begin_close(run, exclude_as=run.row.deadline_reason)
            return False
        return True

    def note_provider_error(self, provider: str, error: ProviderError, run_id: str) -> None:
        """`provider.error`, at most once a second per provider (with how many were folded)."""
        now = self.clock.monotonic()
        last, folded = self._error_log.get(provider, (float("-inf"), 0))
        if now - last < 1.0:
            self._error_log[provider] = (last, folded + 1)
            return
        self._error_log[provider] = (now, 0)
        self.log.warning("provider.error", provider=provider, run_id=run_id, reason=error.reason,
                         transient=isinstance(error, TransientError), folded=folded)

    def note_dead_tokens(self, profile_id: str, tokens: tuple[str, ...]) -> None:
        self._dead_tokens.extend((profile_id, token) for token in tokens)

    async def write_dead_tokens(self) -> None:
        """Remove the push tokens the provider reported dead (one statement per batch)."""
        if not self._dead_tokens:
            return
        batch, self._dead_tokens = self._dead_tokens, []
        try:
            removed = await profiles_tokens.remove_push_tokens(self.services.pool, batch)
        except DB_ERRORS as exc:
            raise_if_cancelling(exc)
            self._dead_tokens.extend(batch)  # next time
            self.log.warning("engine.database_error", action="remove_push_tokens",
                             error=str(exc))
            return
        self.log.info("profiles.push_tokens_removed", tokens=len(batch), profiles=removed)

    # -- control ------------------------------------------------------------------------------

    def offer(self, rows: list[RunRow]) -> None:
        """Scheduled runs due to start (from the scheduler): queued unless known."""
        for row in rows:
            if row.id in self._starting or row.id in self.runs or row.id in self._ended:
                continue
            self._starting.add(row.id)
            self._start_queue[row.id] = row
            self._start_wake.set()

    def poke(self) -> None:
        """Something changed in the database (a NOTIFY: new run, cancel): re-read it now."""
        self._refresh_wanted = True
        self._control_wake.set()

    async def control_loop(self) -> None:
        """Returns when the worker should end: nothing left to do, or the lease is lost.

        The database is read at start (adopting the runs a previous holder left running),
        when poked, and every CONTROL_TICK; other wakes only re-check the local state."""
        next_read = last_read = float("-inf")
        while True:
            if not self.lease.valid():
                self.log.warning("lease.lost", runs=sorted(self.runs))
                return
            mono = self.clock.monotonic()
            if (self._refresh_wanted and mono >= last_read + MIN_READ_INTERVAL) \
                    or mono >= next_read:
                self._refresh_wanted = False
                last_read, next_read = mono, mono + CONTROL_TICK
                await self.retrying(self._refresh, "refresh")
            self._tick()
            if self._idle_long_enough():
                return
            now = self.clock.monotonic()
            until_read = (last_read + MIN_READ_INTERVAL if self._refresh_wanted
                          else next_read) - now
            await self.wait(self._control_wake, min(self._control_timeout(), until_read))
            self._control_wake.clear()

    async def _resume(self, rows: list[RunRow]) -> None:
        ids = [row.id for row in rows]
        recovered = await recipient_store.recover(self.services.pool, ids)
        counts = {row["id"]: engine_store.counts_of(row)
                  for row in await engine_store.control_rows(self.services.pool, ids)}
        freezing = {f.run_id for f in await freeze_store.freezes(self.services.pool, ids)}
        for row in rows:
            run = RunExecution(row=row, campaign_variables=self.campaign_variables,
                               counts=counts.get(row.id, {}))
            self._add(run)
            if row.cancel_requested:  # asked while no daemon held it
                self.begin_close(run, exclude_as=ExclusionReason.CANCELLED)
            elif row.id in freezing:
                self.freeze_rest(row.id)
            self.log.info("run.resumed", run_id=row.id, pending=run.counts.get("pending"),
                          deadline=row.deadline, recovered_in_flight=recovered,
                          freezing=row.id in freezing)
        if recovered:
            self.log.warning("run.recovered", runs=ids, in_flight=recovered)

    def _add(self, run: RunExecution) -> None:
        self.runs[run.id] = run
        run.progress_at = self.clock.monotonic()
        self.services.metrics.runs_active.inc()
        if self.clock.now() >= run.first_delivery:
            self._activate(run)
        else:
            self._activation_wake.set()
        self.wake_feeder()

    async def activator_loop(self) -> None:
        """Activate each frozen run at its first delivery time, to the millisecond: its own
        loop, so that the control loop's reads never delay a start."""
        while True:
            self._activation_wake.clear()
            now = self.clock.now()
            waiting = [run for run in self.runs.values() if run.state is RunState.WAITING]
            for run in waiting:
                if now >= run.first_delivery:
                    self._activate(run)
            later = [run.first_delivery for run in waiting if run.state is RunState.WAITING]
            seconds = (min(later) - now).total_seconds() if later else None
            await self.wait(self._activation_wake, seconds)

    def _activate(self, run: RunExecution) -> None:
        if self.content_error is not None:
            self.begin_close(run, fail_reason=RENDER_ERROR)
            return
        run.state = RunState.ACTIVE
        run.started_mono = self.clock.monotonic()
        self.mark_ready(run)
        self._publish_demand()

    async def _refresh(self) -> None:
        """Read the campaign's runs: adopt running ones we do not know (left by a previous
        holder: their claims are dropped, those recipients sent again), queue scheduled
        ones due to start, close cancelled ones."""
        state = await self.steering.read()
        change = self.steering.apply(state) if state is not None else Change()
        if change.rate is not None:
            self.rate_changed(change.rate)
        if change.resumed:  # senders go on; due runs start
            self._start_wake.set()
            for execution in self.runs.values():
                self.mark_ready(execution)
            self.wake_feeder()
        now = self.clock.now()
        rows = await engine_store.campaign_runs(self.services.pool, self.campaign.id, now)
        unknown: list[RunRow] = []
        seen: set[str] = set()
        for row in rows:
            seen.add(row.id)
            run = self.runs.get(row.id)
            if row.status is RunStatus.SCHEDULED:
                self.offer([row])
            elif run is None:
                # Read before its start or end here was done: not ours to adopt.
                if row.id not in self._starting and row.id not in self._ended:
                    unknown.append(row)
            elif row.cancel_requested and run.state in (RunState.WAITING, RunState.ACTIVE):
                self.begin_close(run, exclude_as=ExclusionReason.CANCELLED)
        for run_id, run in list(self.runs.items()):
            if run_id not in seen and run.state is not RunState.CLOSING:
                self.log.warning("run.vanished", run_id=run_id)  # ended or deleted elsewhere
                self._forget(run)
        if unknown:
            await self._resume(unknown)
        if state is not None and await self.steering.replan_due(self.runs, state.resumed_at):
            self.wake_feeder()

    def _tick(self) -> None:
        now = self.clock.now()
        mono = self.clock.monotonic()
        pending = 0
        for run in list(self.runs.values()):
            if run.state in (RunState.WAITING, RunState.ACTIVE):
                if self.content_error is not None:
                    self.begin_close(run, fail_reason=RENDER_ERROR)
                    continue
                deadline = run.row.deadline
                if deadline is not None and now >= deadline:
                    self.begin_close(run, exclude_as=run.row.deadline_reason)
                    continue
                if run.state is RunState.WAITING and now >= run.first_delivery:
                    self._activate(run)
            if run.state is RunState.ACTIVE and mono - run.progress_at >= PROGRESS_EVERY:
                self._progress(run, mono)
            pending += run.counts.get("pending", 0)
        self.services.metrics.pending.labels(self.campaign.id).set(pending)
        self._publish_demand()

    def _publish_demand(self) -> None:
        """A pooled campaign's demand on this daemon (SPEC §9.3): its own rate (or the
        pool's: the most a daemon may ask) while it has a run sending, else 0."""
        shares = self.services.pool_shares
        if shares is None:
            return
        pool = self.campaign.rate_pool
        provider = self.provider_pool()
        if pool is None and provider is None:
            return
        sending = not self.steering.paused and any(
            run.state is RunState.ACTIVE for run in self.runs.values())
        rate = float(self.campaign.rate_per_second or MAX_POOL_DEMAND)
        if pool is not None:
            shares.set_demand(pool, self.campaign.id, rate if sending else 0.0)
        if provider is not None:  # the provider's own rate, a pool across daemons
            name, limit = provider
            shares.set_demand(name, self.campaign.id, min(rate, limit) if sending else 0.0)

    def provider_pool(self) -> tuple[str, float] | None:
        """The provider's rate pool this campaign's calls go through, and its rate."""
        provider = self.services.providers.for_channel(self.campaign.channel)
        gate = self.services.gates.gate(provider.name, provider.settings)
        if gate.shared is None or gate.rate is None:
            return None
        return gate.shared.name, gate.rate

    def _progress(self, run: RunExecution, mono: float) -> None:
        achieved = (run.calls - run.progress_calls) / max(mono - run.progress_at, 1e-9)
        run.progress_calls, run.progress_at = run.calls, mono
        counts = run.counts
        pending = counts.get("pending", 0)
        rate = self.campaign.rate_per_second or (achieved if achieved > 0 else None)
        eta = planner.eta_seconds(pending, rate)
        self.services.metrics.achieved_rate.labels(self.campaign.id).set(achieved)
        self.log.info("run.progress", run_id=run.id, sent=counts.get("sent", 0),
                      failed=counts.get("failed", 0), pending=pending,
                      achieved_rate=round(achieved, 2),
                      eta_seconds=round(eta, 1) if eta is not None else None,
                      deadline=run.row.deadline)

    def _control_timeout(self) -> float:
        """Until the next deadline or progress line of a run (at most CONTROL_TICK)."""
        now = self.clock.now()
        mono = self.clock.monotonic()
        timeout = CONTROL_TICK
        for run in self.runs.values():
            if run.state is RunState.ACTIVE:
                timeout = min(timeout, run.progress_at + PROGRESS_EVERY - mono)
                if run.row.deadline is not None:
                    timeout = min(timeout, (run.row.deadline - now).total_seconds())
        return max(timeout, 0.0)

    def _idle_long_enough(self) -> bool:
        busy = self.runs or self._starting or self._closing
        if busy:
            self._idle_since = None
            return False
        mono = self.clock.monotonic()
        if self._idle_since is None:
            self._idle_since = mono
        return mono - self._idle_since >= IDLE_EXIT

"""A campaign's worker on the instance holding its lease: claim, pace, send, record.

Tasks (one TaskGroup, all named): `control` (runs to adopt and start, deadlines,
cancels, progress, the worker's end), `starter` (freezes due runs), `activator` (starts
each at its first delivery time), `feeder` (claims recipients in batches, in position order,
within the claim window; notices runs that are done), `recorder` (writes outcomes),
and a fixed pool of `sender` coroutines shared by all the campaign's runs, which take
recipients round-robin between runs (fair), and make the calls (`sending.py`).

No provider call starts unless its run is active, before its deadline, with the lease
valid and the worker not stopping: that check is the last thing before the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from daemon.engine.delivery import RunExecution, RunState
from daemon.engine.pacing import Pacer
from daemon.engine.recording import Flushed, Recorder
from daemon.engine.runs import CampaignRuns
from daemon.engine.sending import ProviderCalls
from daemon.engine.state import Lease, WorkerServices
from daemon.engine.window_gate import WindowGate
from daemon.infra.logs import get_logger
from daemon.infra.waiting import within
from daemon.planning import planner, windows
from daemon.store import recipients as recipient_store
from daemon.store.engine import Campaign, counts_of
from daemon.store.recipients import Claimed, OutcomeRow
from daemon.templates import CompiledContent

log = get_logger(__name__)

SENDER_IDLE = 1.0  # a sender with nothing to send for this long ends


class CampaignWorker(ProviderCalls, CampaignRuns):
    """Executes one campaign's runs until none is left or it is stopped."""

    def __init__(self, services: WorkerServices, campaign: Campaign, lease: Lease,
                 pacer: Pacer | None) -> None:
        provider = services.providers.for_channel(campaign.channel)
        self.sizes = planner.pipeline_sizes(campaign.rate_per_second,
                                            provider.settings.concurrency)
        super().__init__(services, campaign, lease)
        self.pacer = pacer  # the engine's, per campaign: it outlives a worker
        open_windows = windows.from_stored(campaign.windows)
        self.window_gate = (WindowGate(open_windows, services.clock, self.log)
                            if open_windows else None)
        shares = services.pool_shares
        self.pool_gate = (shares.gate(campaign.rate_pool)
                          if campaign.rate_pool is not None and shares is not None else None)
        self.recorder = Recorder(
            services.pool, services.clock, interval=services.checkpoint_interval,
            batch_size=self.sizes.flush_batch, on_flushed=self._on_flushed,
            campaign_id=campaign.id,
        )
        compiled = services.compile(campaign)
        self.content: CompiledContent | None = None if isinstance(compiled, str) else compiled
        self.content_error: str | None = compiled if isinstance(compiled, str) else None
        self._ready: deque[RunExecution] = deque()
        self._work = asyncio.Event()
        self._feeder_wake = asyncio.Event()
        self._calling: set[asyncio.Task[None]] = set()  # senders inside a provider call
        self._senders: set[asyncio.Task[None]] = set()
        self._unstarted: list[tuple[str, int]] = []  # claims to release at stop
        self._metric_children: dict[tuple[str, str], Any] = {}
        self._sender_number = 0
        self._abandoned = 0

    # -- the task tree ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, grace: Callable[[], float],
                  force: asyncio.Event) -> None:
        """Run until there is no work left, or until `stop`; then drain within `grace()`
        seconds (or until `force`), write every outcome and release unstarted claims."""
        self.log.info("worker.started", senders=self.sizes.senders, window=self.sizes.window,
                      duplicate_bound=self.sizes.duplicate_bound)
        async with asyncio.TaskGroup() as group:
            self.group = group
            recorder = group.create_task(self.recorder.run(), name=f"recorder:{self.campaign.id}")
            control = group.create_task(self.control_loop(), name=f"control:{self.campaign.id}")
            starter = group.create_task(self.starter_loop(), name=f"starter:{self.campaign.id}")
            activator = group.create_task(self.activator_loop(),
                                          name=f"activator:{self.campaign.id}")
            feeder = group.create_task(self._feed_loop(), name=f"feeder:{self.campaign.id}")
            stopper = group.create_task(stop.wait(), name=f"stop:{self.campaign.id}")
            await asyncio.wait([control, stopper], return_when=asyncio.FIRST_COMPLETED)
            self.stopping = True
            stopper.cancel()
            for task in (control, starter, activator, feeder):
                task.cancel()
            # A claim in progress lands in its queue before the queues are released.
            await asyncio.wait([control, starter, activator, feeder])
            deadline = self.clock.monotonic() + grace()
            await self._drain(grace(), force)
            await self._settle_closes(max(0.0, deadline - self.clock.monotonic()))
            self.recorder.stop()
            await self._bounded(recorder, max(1.0, deadline - self.clock.monotonic()), force)
        await self._release_unstarted()
        shares = self.services.pool_shares
        if shares is not None:  # this campaign's demand on its pools goes
            if self.pool_gate is not None:
                shares.drop(self.pool_gate.name, self.campaign.id)
            if (provider := self.provider_pool()) is not None:
                shares.drop(provider[0], self.campaign.id)
        if self._abandoned:
            self.log.warning("worker.calls_abandoned", count=self._abandoned)
        self.log.info("worker.stopped")

    async def _drain(self, grace: float, force: asyncio.Event) -> None:
        """Senders not in a provider call stop now; those in a call finish (and record their
        outcome) within `grace`, unless `force` comes first. Queued claims are released."""
        self._work.set()
        senders = list(self._senders)
        for task in senders:
            if task not in self._calling:
                task.cancel()
        remaining = {task for task in senders if task in self._calling}
        if remaining:
            forced = asyncio.get_running_loop().create_task(force.wait(), name="drain.force")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    while remaining and not forced.done():
                        done, _ = await asyncio.wait(remaining | {forced},
                                                     return_when=asyncio.FIRST_COMPLETED)
                        remaining -= done
            forced.cancel()
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        for run in self.runs.values():
            self._unstarted.extend((run.id, c.position) for c in run.queue)
            run.queue.clear()

    async def _bounded(self, recorder: asyncio.Task[None], grace: float,
                       force: asyncio.Event) -> None:
        """Wait for the last writes within `grace` (or until `force`): with the database down
        they cannot land, and the claims they settle stay marked in flight (sent again by
        the next holder: the crash bound)."""
        if not await within(recorder, grace, force, "writes"):
            self.log.error("worker.outcomes_unwritten", count=self.recorder.buffered)
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)

    async def _settle_closes(self, grace: float) -> None:
        """Let runs already closing finish closing (their calls are done), within `grace`."""
        closing = list(self._closing.values())
        if closing:
            await asyncio.wait(closing, timeout=grace)
            for task in closing:
                task.cancel()
            await asyncio.gather(*closing, return_exceptions=True)

    async def _release_unstarted(self) -> None:
        if not self._unstarted:
            return
        try:
            await recipient_store.release(self.services.pool, self.campaign.id,
                                          self.services.holder, self._unstarted)
        except Exception as exc:  # the next holder recovers them (sent then, not lost)
            self.log.warning("worker.release_failed", error=str(exc), count=len(self._unstarted))

    def rate_changed(self, rate: int) -> None:
        """A live rate change (SPEC §9.1): paced at once at the new rate, sized for it."""
        self.campaign = dataclasses.replace(self.campaign, rate_per_second=rate)
        if self.pacer is not None:
            self.pacer.set_rate(rate)
        provider = self.services.providers.for_channel(self.campaign.channel)
        self.sizes = planner.pipeline_sizes(rate, provider.settings.concurrency)
        self.staff()

    # -- recipients in: claims --------------------------------------------------------------

    def wake_feeder(self) -> None:
        self._feeder_wake.set()

    async def _feed_loop(self) -> None:
        while True:
            if self.lease.valid():
                await self.retrying(self._fill_shielded, "claim")
                await self.retrying(self.check_finished, "finish_check")
                await self.write_dead_tokens()
            await self.wait(self._feeder_wake, self.feed_timeout())
            self._feeder_wake.clear()

    async def _fill_shielded(self) -> None:
        """`_fill`, which a stop must not cut between a claim's commit and the claimed
        recipients reaching a queue (they would stay marked in flight, unreleased)."""
        task = asyncio.get_running_loop().create_task(
            self._fill(), name=f"claim:{self.campaign.id}")
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    def _unrecorded(self) -> int:
        return sum(run.unrecorded for run in self.runs.values())

    async def _fill(self) -> None:
        async with self.steering.claims:  # never while a re-plan excludes recipients
            await self._fill_now()

    async def _fill_now(self) -> None:
        room = self.sizes.window - self._unrecorded()
        batch = self.sizes.claim_batch
        low_water = self.sizes.low_water
        wanted: list[tuple[str, int, int]] = []
        for run in self.runs.values():
            if room < 1:
                break
            if run.state in (RunState.WAITING, RunState.ACTIVE) and not run.fresh_exhausted \
                    and len(run.queue) < low_water:
                n = min(batch, room)
                wanted.append((run.id, run.cursor, n))
                room -= n
        now = self.clock.now()
        if wanted:
            claimed = await recipient_store.claim_fresh(
                self.services.pool, self.campaign.id, self.services.holder,
                self.campaign.channel, wanted, now)
            got: dict[str, int] = {}
            for recipient in claimed:
                got[recipient.run_id] = got.get(recipient.run_id, 0) + 1
                self._accept(recipient, fresh=True)
            for run_id, _, n in wanted:
                short = self.runs.get(run_id)
                if short is not None and got.get(run_id, 0) < n:
                    short.fresh_exhausted = True
                elif short is not None and len(short.queue) < low_water:
                    self._feeder_wake.set()  # one batch per statement: claim again at once
        due = [run.id for run in self.runs.values()
               if run.state in (RunState.WAITING, RunState.ACTIVE)
               and run.next_retry_at is not None and run.next_retry_at <= now]
        if due and room > 0:
            for run_id in due:
                self.runs[run_id].next_retry_at = None
            retries = await recipient_store.claim_retries(
                self.services.pool, self.campaign.id, self.services.holder,
                self.campaign.channel, due, now, room)
            for recipient in retries:
                self._accept(recipient, fresh=False)
            if len(retries) == room:  # more may be due: look again soon
                for run_id in due:
                    self.runs[run_id].next_retry_at = now

    def feed_timeout(self) -> float:
        """Until the next due retry, at most half a second (claims are also woken by
        senders running low and by each write)."""
        now = self.clock.now()
        timeout = 0.5
        for run in self.runs.values():
            if run.next_retry_at is not None:
                timeout = min(timeout, (run.next_retry_at - now).total_seconds())
        return max(timeout, 0.0)

    def _accept(self, recipient: Claimed, *, fresh: bool) -> None:
        run = self.runs.get(recipient.run_id)
        if run is None:  # closed meanwhile: its close cleared the mark
            return
        run.unrecorded += 1
        if fresh:  # retries are behind the cursor, or anywhere after a restart
            run.cursor = max(run.cursor, recipient.position)
        run.queue.append(recipient)
        self.mark_ready(run)

    def mark_ready(self, run: RunExecution) -> None:
        if run.state is RunState.ACTIVE and run.queue and not run.ready:
            run.ready = True
            self._ready.append(run)
            self._work.set()
            self.staff()

    def staff(self) -> None:
        """Start a sender when work is queued and every sender is in a call (up to the
        maximum): the pool is as large as the calls under way, plus one, and a campaign with
        nothing to send has none (thousands of small campaigns cost no idle tasks)."""
        if self.stopping or self.group is None or not self._ready:
            return
        if len(self._senders) > len(self._calling) or len(self._senders) >= self.sizes.senders:
            return
        task = self.group.create_task(
            self._sender(), name=f"sender:{self.campaign.id}:{self._sender_number}")
        self._sender_number += 1
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    # -- recipients out: senders ------------------------------------------------------------

    def _take_now(self) -> tuple[RunExecution, Claimed] | None:
        """The next recipient, round-robin between the active runs, if one is queued."""
        while self._ready:
            run = self._ready.popleft()
            if run.state is not RunState.ACTIVE or not run.queue:
                run.ready = False
                continue
            recipient = run.queue.popleft()
            if run.queue:
                self._ready.append(run)
            else:
                run.ready = False
            if len(run.queue) < self.sizes.low_water:
                self._feeder_wake.set()
            return run, recipient
        return None

    async def _take(self) -> tuple[RunExecution, Claimed] | None:
        """The next recipient (waiting a moment for one); None when the sender should end:
        the worker stops, or there has been nothing to send for SENDER_IDLE seconds."""
        while not self.stopping:
            item = self._take_now()
            if item is not None:
                return item
            self._work.clear()
            await self.wait(self._work, SENDER_IDLE)
            if not self._work.is_set():
                return None
        return None

    async def _sender(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while await self.send_one(task):
            pass

    def _give_back(self, run: RunExecution, recipient: Claimed) -> None:
        """A recipient taken but not sent: back to its run's queue; released at a stop; left
        to the close of a closing run (which excludes it)."""
        if self.stopping:
            self._unstarted.append((run.id, recipient.position))
        elif run.state in (RunState.WAITING, RunState.ACTIVE):
            run.queue.appendleft(recipient)
            self.mark_ready(run)

    def _record(self, outcome: OutcomeRow) -> None:
        self.recorder.add(outcome)

    def _on_flushed(self, flushed: Flushed) -> None:
        for outcome in flushed.outcomes:
            run = self.runs.get(outcome.run_id)
            if run is None:
                continue
            run.unrecorded -= 1
            if outcome.status == "pending" and outcome.retry_at is not None and (
                    run.next_retry_at is None or outcome.retry_at < run.next_retry_at):
                run.next_retry_at = outcome.retry_at
        for run_id, row in flushed.counts.items():
            run = self.runs.get(run_id)
            if run is not None:
                run.counts = counts_of(row)
        tally = Counter((status, reason or "") for _, status, reason in flushed.applied
                        if status != "pending")
        for (status, reason), n in tally.items():  # one labels() per kind, not per message
            self.services.metrics.messages.labels(
                self.campaign.id, self.campaign.channel.value, status, reason).inc(n)
        self._feeder_wake.set()


"""A campaign's worker on the instance holding its lease: claim, pace, send, record.

The worker builds the state its parts share (`state.WorkerState`) and composes the parts,
handing each what it needs: `control.py` (runs to adopt and start, deadlines, cancels,
progress, the worker's end), `starting.py` (freezes due runs and activates each at its
first delivery time), `feeding.py` (claims recipients in batches, in position order,
within the claim window; notices runs that are done), `senders.py` (the ready runs,
round-robin, and the sender tasks), `sending.py` (one provider call), `closing.py`
(ending runs) and `demand.py` (the campaign's demand on its rate pools), with the
recorder (`recording.py`, writes outcomes).

Tasks (one TaskGroup, all named): `control`, `starter`, `activator`, `feeder`, `recorder`,
and a pool of `sender` coroutines shared by all the campaign's runs, which take recipients
round-robin between runs (fair), and make the calls.

No provider call starts unless its run is active, before its deadline, with the lease
valid and the worker not stopping: that check is the last thing before the call.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from daemon.engine import feeding
from daemon.engine.closing import RunClosing
from daemon.engine.control import Control
from daemon.engine.delivery import RunExecution
from daemon.engine.demand import PoolDemand
from daemon.engine.feeding import Feeding
from daemon.engine.pacing import Pacer
from daemon.engine.recording import Recorder
from daemon.engine.senders import Senders
from daemon.engine.sending import ProviderCalls
from daemon.engine.starting import RunStarting
from daemon.engine.state import Lease, WorkerServices, WorkerState
from daemon.engine.steering import Steering
from daemon.engine.window_gate import WindowGate
from daemon.infra.logs import get_logger
from daemon.infra.waiting import within
from daemon.planning import planner, windows
from daemon.store.engine import Campaign, RunRow

log = get_logger(__name__)


class CampaignWorker:
    """Executes one campaign's runs until none is left or it is stopped."""

    def __init__(self, services: WorkerServices, campaign: Campaign, lease: Lease,
                 pacer: Pacer | None) -> None:
        provider = services.providers.for_channel(campaign.channel)
        bound = log.bind(campaign_id=campaign.id)
        compiled = services.compile(campaign)
        self.state = state = WorkerState(
            services=services, lease=lease, log=bound,
            steering=Steering(services.pool, services.clock, services.metrics, campaign,
                              bound, services.pool_shares),
            content=None if isinstance(compiled, str) else compiled,
            content_error=compiled if isinstance(compiled, str) else None,
            campaign=campaign,
            sizes=planner.pipeline_sizes(campaign.rate_per_second,
                                         provider.settings.concurrency),
        )
        open_windows = windows.from_stored(campaign.windows)
        window_gate = (WindowGate(open_windows, services.clock, bound)
                       if open_windows else None)
        shares = services.pool_shares
        pool_gate = (shares.gate(campaign.rate_pool)
                     if campaign.rate_pool is not None and shares is not None else None)
        self.recorder = Recorder(
            services.pool, services.clock, interval=services.checkpoint_interval,
            batch_size=state.sizes.flush_batch,
            on_flushed=functools.partial(feeding.written, state), campaign_id=campaign.id,
        )
        # The parts, each handed what it uses. The senders' tasks make the calls of the
        # calling part, built after them (hence the one late-bound callback).
        self.senders = Senders(state, send_one=lambda task: self.calls.send_one(task))
        self.closing = RunClosing(state, self.recorder, self.senders.mark_ready)
        self.demand = PoolDemand(state, pool_gate)
        self.starting = RunStarting(state, self.closing, self.senders.mark_ready,
                                    self.demand.publish, self.demand.ask_share)
        self.feeding = Feeding(state, self.senders.mark_ready, self.closing.check_finished)
        self.calls = ProviderCalls(state, self.recorder, self.senders, self.closing, pacer,
                                   window_gate, pool_gate)
        self.control = Control(state, self.starting, self.closing, self.senders,
                               self.demand, pacer)

    # -- what the engine stage uses -----------------------------------------------------------

    @property
    def campaign(self) -> Campaign:
        return self.state.campaign

    @property
    def runs(self) -> dict[str, RunExecution]:
        return self.state.runs

    def offer(self, rows: list[RunRow]) -> None:
        """Scheduled runs due to start (from the scheduler): queued unless known."""
        self.starting.offer(rows)

    def poke(self) -> None:
        """Something changed in the database (a NOTIFY: new run, cancel): re-read it now."""
        self.control.poke()

    # -- the task tree ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, grace: Callable[[], float],
                  force: asyncio.Event) -> None:
        """Run until there is no work left, or until `stop`; then drain within `grace()`
        seconds (or until `force`), write every outcome and release unstarted claims."""
        state = self.state
        campaign_id = state.campaign.id
        sizes = state.sizes
        state.log.info("worker.started", senders=sizes.senders, window=sizes.window,
                       duplicate_bound=sizes.duplicate_bound)
        async with asyncio.TaskGroup() as group:
            state.group = group
            recorder = group.create_task(self.recorder.run(), name=f"recorder:{campaign_id}")
            control = group.create_task(self.control.control_loop(),
                                        name=f"control:{campaign_id}")
            starter = group.create_task(self.starting.starter_loop(),
                                        name=f"starter:{campaign_id}")
            activator = group.create_task(self.starting.activator_loop(),
                                          name=f"activator:{campaign_id}")
            feeder = group.create_task(self.feeding.feed_loop(), name=f"feeder:{campaign_id}")
            stopper = group.create_task(stop.wait(), name=f"stop:{campaign_id}")
            await asyncio.wait([control, stopper], return_when=asyncio.FIRST_COMPLETED)
            state.stopping = True
            stopper.cancel()
            for task in (control, starter, activator, feeder):
                task.cancel()
            # A claim in progress lands in its queue before the queues are released.
            await asyncio.wait([control, starter, activator, feeder])
            deadline = state.clock.monotonic() + grace()
            await self.senders.drain(grace(), force)
            await self.closing.settle(max(0.0, deadline - state.clock.monotonic()))
            self.recorder.stop()
            if not stop.is_set() and await self._written_unless_stopped(recorder, stop):
                deadline = state.clock.monotonic() + grace()  # a stop came: its own grace
            await self._bounded(recorder, max(1.0, deadline - state.clock.monotonic()), force)
        await self.feeding.release_unstarted()
        self.demand.drop()  # this campaign's demand on its pools goes
        if state.abandoned:
            state.log.warning("worker.calls_abandoned", count=state.abandoned)
        state.log.info("worker.stopped")

    async def _written_unless_stopped(self, recorder: asyncio.Task[None],
                                      stop: asyncio.Event) -> bool:
        """Not a stop (the lease lost in an outage, or the work done): the last writes wait
        for the database as long as it takes, unless the daemon stops meanwhile (whether it
        did). Abandoned after a grace, as before, their recipients were sent again by the
        next holder, this daemon itself: 105 duplicates after a 20 s outage with a 10 s
        grace (the fault suite's postgres_stopped_20s)."""
        stopper = asyncio.get_running_loop().create_task(
            stop.wait(), name=f"writes.stop:{self.state.campaign.id}")
        try:
            await asyncio.wait([recorder, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
        return stop.is_set() and not recorder.done()

    async def _bounded(self, recorder: asyncio.Task[None], grace: float,
                       force: asyncio.Event) -> None:
        """Wait for the last writes within `grace` (or until `force`): with the database down
        they cannot land, and the claims they settle stay marked in flight (sent again by
        the next holder: the crash bound)."""
        if not await within(recorder, grace, force, "writes"):
            self.state.log.error("worker.outcomes_unwritten", count=self.recorder.buffered)
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)

"""The start of a campaign's runs on the lease holder (the starting part of a campaign worker).

Scheduled runs handed to the worker are frozen just early enough for their size (MIN_LEAD
before the start, plus the size at FREEZE_ROWS_PER_SECOND), a few at once. A run over a
stored audience starts with its first chunk (`store.freeze`: a time to first send that
does not grow with the audience); the worker then freezes the rest chunk by chunk, one
task per run owned by the starter loop (so it ends with the worker). Each chunk lets the
feeder claim further and refreshes the run's counts. A close freezes whatever is left
itself (`store.engine.close_run`), so the task stops as soon as its run is closing; after
a crash, the next holder's task goes on from where the last committed chunk ended.

Every run executed here (started, or adopted by the control loop) enters `runs` through
`add`, and is activated at its first delivery time, to the millisecond (`activator_loop`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from daemon.engine.closing import RunClosing
from daemon.engine.delivery import RENDER_ERROR, RunExecution, RunState
from daemon.engine.state import MarkReady, WorkerState, wait
from daemon.planning import windows
from daemon.store import engine as engine_store
from daemon.store import freeze as freeze_store
from daemon.store import recipients as recipient_store
from daemon.store import triggers as trigger_store
from daemon.store.engine import RunRow

# A worker takes a scheduled run ahead of its start (store.engine._PREPARE_AT) and freezes
# it just early enough: MIN_LEAD before its start, plus its size (a stored audience's first
# chunk) at FREEZE_ROWS_PER_SECOND (a conservative rate for the INSERT ... SELECT), so the
# first call can go at the start.
MIN_LEAD = 1.0
FREEZE_ROWS_PER_SECOND = engine_store.FREEZE_ROWS_PER_SECOND
PARALLEL_STARTS = 4  # start statements at once by a worker (connections of the pool)
BATCH_RUNS = 100  # runs of inline recipients started by one statement, at most
BATCH_RECIPIENTS = 10_000  # and their recipients (a larger run starts alone)


def _batches(rows: list[RunRow], now: datetime) -> list[list[RunRow]]:
    """Runs to start (at `now` or later), earliest first, in batches of one statement each:
    a stored audience alone; runs of inline recipients with the same plan together, within
    the bounds."""
    batches: list[list[RunRow]] = []
    open_batches: dict[tuple[datetime | None, int | None], list[RunRow]] = {}
    for row in rows:
        if row.audience_id is not None:
            batches.append([row])
            continue
        key = engine_store.same_plan(row, now)
        batch = open_batches.get(key)
        if batch is None or len(batch) >= BATCH_RUNS or sum(
                r.inline_count for r in batch) + row.inline_count > BATCH_RECIPIENTS:
            batch = open_batches[key] = []
            batches.append(batch)
        batch.append(row)
    return batches


class RunStarting:
    """Starting runs: the start queue and the freezes are its own; it adds the runs it
    starts (and those control adopts) to `runs`, and activates them (changes `starting`)."""

    def __init__(self, state: WorkerState, closing: RunClosing, mark_ready: MarkReady,
                 publish_demand: Callable[[], None],
                 ask_share: Callable[[], Awaitable[None]]) -> None:
        self.state = state
        self.closing = closing
        self.mark_ready = mark_ready
        self.publish_demand = publish_demand
        self.ask_share = ask_share  # a pooled campaign's first share, before a start
        self.log = state.log
        self.clock = state.clock
        self.to_freeze: set[str] = set()  # runs whose further chunks are to freeze
        self._start_queue: dict[str, RunRow] = {}
        self._freeze_at: dict[str, datetime] = {}  # run id -> when to freeze it
        self._sizes: dict[str, int] = {}  # run id -> its stored audience's size, counted ahead
        self._start_wake = asyncio.Event()
        self._activation_wake = asyncio.Event()

    def offer(self, rows: list[RunRow]) -> None:
        """Scheduled runs due to start (from the scheduler): queued unless known."""
        state = self.state
        for row in rows:
            if row.id in state.starting or row.id in state.runs or row.id in state.ended:
                continue
            state.starting.add(row.id)
            self._start_queue[row.id] = row
            self._start_wake.set()

    def wake(self) -> None:
        """Look at the start queue again (the campaign was resumed)."""
        self._start_wake.set()

    async def starter_loop(self) -> None:
        """Freeze each scheduled run taken when its time comes, earliest first; and the
        further chunks of the stored audiences of running runs, each in a task of its own
        (ended with this loop)."""
        async with asyncio.TaskGroup() as freezers:
            await self._starts(freezers)

    async def _starts(self, freezers: asyncio.TaskGroup) -> None:
        while True:
            self._start_wake.clear()
            for run_id in list(self.to_freeze):
                self.to_freeze.discard(run_id)
                freezers.create_task(self.freezer(run_id), name=f"freeze:{run_id}")
            for run_id, row in list(self._start_queue.items()):
                if run_id not in self._freeze_at:
                    await self.state.retrying(functools.partial(self._plan_freeze, row),
                                        "plan_freeze")
            now = self.clock.now()
            due = sorted((at, run_id) for run_id, at in self._freeze_at.items()
                         if run_id in self._start_queue)
            ready = [self._start_queue[run_id] for at, run_id in due if at <= now]
            if ready and self.state.steering.paused:  # SPEC §9.1: they wait for the resume
                await wait(self._start_wake, None)
                continue
            if ready and self.state.campaign.windows:
                ready = await self._inside_windows(ready)
            if ready:
                # A few statements at once (each its own transaction, on its own
                # connection), each starting a batch of runs: a burst of one-recipient
                # triggers starts at database speed.
                batches = _batches(ready, now)[:PARALLEL_STARTS]
                await asyncio.gather(*(self._start_batch(batch) for batch in batches))
                continue
            seconds = (due[0][0] - now).total_seconds() if due else None
            await wait(self._start_wake, seconds)

    async def _inside_windows(self, rows: list[RunRow]) -> list[RunRow]:
        """The runs whose start falls in an open send window; the others are moved to the
        next opening (SPEC §9.2: `scheduled` until then) and planned again."""
        chosen = windows.from_stored(self.state.campaign.windows)
        keep = []
        for row in rows:
            opening = windows.next_opening(chosen, row.scheduled_for)
            if opening is None or opening <= row.scheduled_for:
                keep.append(row)
                continue
            moved = await trigger_store.defer_run(self.state.services.pool, row.id, opening)
            # Handed back: the scheduler hands it again when it is due (the deferral
            # NOTIFYs it); until then it is `scheduled`, with `scheduled_for` the opening.
            self._freeze_at.pop(row.id, None)
            self._start_queue.pop(row.id, None)
            self.state.starting.discard(row.id)
            if moved is not None:
                self.log.info("run.deferred", run_id=row.id, scheduled_for=moved.isoformat(),
                              reason="send_window")
        return keep

    async def _start_batch(self, rows: list[RunRow]) -> None:
        for row in rows:
            self._start_queue.pop(row.id)
            self._freeze_at.pop(row.id, None)
        try:
            await self.state.retrying(functools.partial(self._start, rows), "start")
        finally:
            for row in rows:
                self.state.starting.discard(row.id)
                self._sizes.pop(row.id, None)

    async def _plan_freeze(self, row: RunRow) -> None:
        size = row.inline_count
        if row.audience_id is not None:  # frozen in chunks: the first one before the start
            size = self._sizes[row.id] = await engine_store.audience_size(
                self.state.services.pool, row.audience_id)
            first = engine_store.first_chunk_of(row)
            size = min(size, first) if first is not None else size
        lead = MIN_LEAD + size / FREEZE_ROWS_PER_SECOND
        self._freeze_at[row.id] = row.scheduled_for - timedelta(seconds=lead)

    async def _start(self, rows: list[RunRow]) -> None:
        await self.ask_share()  # (before `now`: it may wait for the database)
        now = self.clock.now()
        pool, time_cap = self.state.services.pool, self.state.services.time_cap
        rate = self.state.steering.start_rate()  # a pooled campaign: its share here
        if rows[0].audience_id is not None:
            one = await engine_store.start_run(pool, rows[0], self.state.campaign, now=now,
                                               time_cap=time_cap,
                                               size=self._sizes.get(rows[0].id, 0), rate=rate)
            started = [one] if one is not None else []  # else cancelled meanwhile
        else:
            started = await engine_store.start_inline_runs(pool, rows, self.state.campaign, now=now,
                                                           time_cap=time_cap, rate=rate)
        for run in started:
            self._started(run)

    def _started(self, started: engine_store.StartedRun) -> None:
        row = started.run
        counts = started.counts
        plan = started.plan
        self.log.info(
            "run.started", run_id=row.id, targeted=counts.targeted, eligible=counts.eligible,
            excluded={k: v for k, v in counts.excluded.items() if v},
            pending=counts.pending, started_at=plan.started_at, deadline=plan.deadline,
            deadline_reason=plan.deadline_reason, capacity=plan.capacity,
            rate_per_second=started.run.rate_per_second, freezing=started.freezing,
        )
        full = {column: 0 for column in recipient_store.COUNT_COLUMNS}
        full.update(targeted=counts.targeted, pending=counts.pending,
                    **{f"excluded_{k}": v for k, v in counts.excluded.items()})
        run = RunExecution(row=started.run, campaign_variables=self.state.campaign_variables,
                           counts=full)
        self.add(run)
        if started.freezing:
            self.freeze_rest(run.id)
        elif counts.pending == 0:
            self.closing.begin_close(run)
            return
        if run.row.deadline is not None:
            self.state.wake_control()  # its deadline is a new timer for the control loop

    # -- activation ----------------------------------------------------------------------------

    def add(self, run: RunExecution) -> None:
        """A run executed here from now on (started here, or adopted by control)."""
        state = self.state
        state.runs[run.id] = run
        run.progress_at = self.clock.monotonic()
        state.services.metrics.runs_active.inc()
        if self.clock.now() >= run.first_delivery:
            self.activate(run)
        else:
            self._activation_wake.set()
        state.wake_feeder()

    async def activator_loop(self) -> None:
        """Activate each frozen run at its first delivery time, to the millisecond: its own
        loop, so that the control loop's reads never delay a start."""
        while True:
            self._activation_wake.clear()
            now = self.clock.now()
            waiting = [run for run in self.state.runs.values()
                       if run.state is RunState.WAITING]
            for run in waiting:
                if now >= run.first_delivery:
                    self.activate(run)
            later = [run.first_delivery for run in waiting if run.state is RunState.WAITING]
            seconds = (min(later) - now).total_seconds() if later else None
            await wait(self._activation_wake, seconds)

    def activate(self, run: RunExecution) -> None:
        if self.state.content_error is not None:
            self.closing.begin_close(run, fail_reason=RENDER_ERROR)
            return
        run.state = RunState.ACTIVE
        run.started_mono = self.clock.monotonic()
        self.mark_ready(run)
        self.publish_demand()

    # -- the rest of a stored audience --------------------------------------------------------

    def freeze_rest(self, run_id: str) -> None:
        """Have the starter loop start the run's freezer."""
        self.to_freeze.add(run_id)
        self._start_wake.set()

    def _sending(self, run_id: str) -> RunExecution | None:
        run = self.state.runs.get(run_id)
        if run is None or run.state not in (RunState.WAITING, RunState.ACTIVE):
            return None
        return run

    async def _advance(self, run_id: str, limit: int,
                       out: list[freeze_store.Chunk | None]) -> None:
        out[:] = [await freeze_store.advance(self.state.services.pool, run_id, now=self.clock.now(),
                                             limit=limit)]

    async def freezer(self, run_id: str) -> None:
        """Freeze the run's audience chunk by chunk until done, or until the run closes."""
        chunks = 0
        limit = freeze_store.FIRST_CHUNK
        out: list[freeze_store.Chunk | None] = []
        while self._sending(run_id) is not None:
            # Small chunks first (the first ones race the sending), larger ones later.
            limit = min(limit * 4, freeze_store.CHUNK)
            await self.state.retrying(functools.partial(self._advance, run_id, limit, out),
                                      "freeze")
            chunk = out[0]
            run = self._sending(run_id)
            if chunk is None or run is None:
                return  # frozen (by a close, or another holder), or no longer ours
            chunks += 1
            run.counts.update(chunk.counts)
            run.fresh_exhausted = False
            self.state.wake_feeder()
            if not chunk.freezing:
                self.log.info("run.frozen", run_id=run_id, later_chunks=chunks,
                              targeted=chunk.counts["targeted"],
                              pending=chunk.counts["pending"])
                if chunk.counts["pending"] == 0:
                    self.closing.begin_close(run)
                return

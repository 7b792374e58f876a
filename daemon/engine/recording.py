"""Recording outcomes: buffered, written in batches with the runs' counts, never dropped.

Senders hand each outcome to a campaign's `Recorder`. It writes them at least every
`engine.checkpoint_interval`, and at once when a batch fills: one statement updates the
recipient rows from arrays (`unnest`), drops their claims and moves the runs' counts,
atomically, so a report never sees a recipient counted twice or not at all. The
count deltas come from the rows the write actually changed (only pending rows change),
so a late or repeated outcome cannot unbalance them. A write runs shielded from
cancellation; a failed write is retried, with its batch kept, until it succeeds or
the daemon is forced to stop.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from daemon.infra.clock import Clock
from daemon.infra.logs import get_logger
from daemon.infra.waiting import woken_or
from daemon.store import DATABASE_ERRORS, Pool, Record, after_error
from daemon.store import recipients as store
from daemon.store.recipients import EXCLUSION_ORDER, OutcomeRow

log = get_logger(__name__)

RETRY_FIRST = 0.1
RETRY_MAX = 5.0
DB_ERRORS = DATABASE_ERRORS  # (see daemon.store)


def raise_if_cancelling(exc: BaseException) -> None:
    """Re-raise a cancellation that a driver turned into another error (asyncpg may answer a
    cancelled acquire with "pool is closed"): a retry loop must not swallow its own stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc
    after_error(exc)  # (every retry loop comes here first: a broken connection is replaced)


@dataclass(frozen=True, slots=True)
class CountDelta:
    """How a batch changes one run's counts (`done` = recipients that left pending)."""

    sent: int = 0
    failed: int = 0
    done: int = 0
    excluded: tuple[int, ...] = (0,) * len(EXCLUSION_ORDER)

    def as_row(self) -> tuple[int, ...]:
        return (self.sent, self.failed, self.done, *self.excluded)


def count_deltas(applied: Iterable[tuple[str, str, str | None]]) -> dict[str, CountDelta]:
    """Per run, the count changes of the applied (run_id, new status, reason) transitions,
    each from `pending`. A transition to `pending` (a retry later) changes nothing.

    The rule the outcome write applies in SQL (`store.recipients._WRITE`), stated in
    Python: the property tests check it keeps the counts balanced, and the database tests
    that the SQL agrees with it."""
    tallies: dict[str, Counter[str]] = {}
    for run_id, status, reason in applied:
        if status == "pending":
            continue
        tally = tallies.setdefault(run_id, Counter())
        tally["done"] += 1
        if status == "excluded":
            if reason not in EXCLUSION_ORDER:
                raise ValueError(f"unknown exclusion reason {reason!r}")
            tally[f"excluded_{reason}"] += 1
        elif status in ("sent", "failed"):
            tally[status] += 1
        else:
            raise ValueError(f"unknown outcome status {status!r}")
    return {
        run_id: CountDelta(
            sent=tally["sent"], failed=tally["failed"], done=tally["done"],
            excluded=tuple(tally[f"excluded_{reason}"] for reason in EXCLUSION_ORDER),
        )
        for run_id, tally in tallies.items()
    }


@dataclass(frozen=True, slots=True)
class Flushed:
    """What one write did: the transitions applied and the runs' new counts."""

    outcomes: Sequence[OutcomeRow]
    applied: list[tuple[str, str, str | None]]
    counts: dict[str, Record] = field(default_factory=dict)  # run id -> new counts row


async def write_batch(pool: Pool, batch: Sequence[OutcomeRow]) -> Flushed:
    """Write one batch of outcomes and the counts they change, in one statement."""
    rows = await store.write_outcomes(pool, batch)
    applied = [(row["id"], status, reason) for row in rows
               for status, reason in zip(row["statuses"], row["reasons"], strict=True)]
    return Flushed(batch, applied, {row["id"]: row for row in rows})


class Recorder:
    """A campaign's outcome buffer and its writer task (`run`)."""

    def __init__(
        self,
        pool: Pool,
        clock: Clock,
        *,
        interval: float,
        batch_size: int,
        on_flushed: Callable[[Flushed], None],
        campaign_id: str,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._interval = interval
        self._batch_size = batch_size
        self._on_flushed = on_flushed
        self._buffer: list[OutcomeRow] = []
        self._wake = asyncio.Event()  # the buffer got its first outcome
        self._urgent = asyncio.Event()  # full batch, flush request or stop: write now
        self._idle = asyncio.Event()
        self._idle.set()
        self._written = asyncio.Event()  # set after each write
        self._stopping = False
        self._writing = 0  # the buffer's first rows, being written
        self._log = log.bind(campaign_id=campaign_id)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def add(self, outcome: OutcomeRow) -> None:
        self._idle.clear()
        self._buffer.append(outcome)
        if len(self._buffer) == 1:
            self._wake.set()  # start the checkpoint timer
        if len(self._buffer) - self._writing >= self._batch_size:
            self._urgent.set()

    async def room(self, limit: int) -> None:
        """Wait while `limit` outcomes or more wait to be written (backpressure: a call may
        start only while what a crash could leave unrecorded stays bounded)."""
        while len(self._buffer) >= limit:
            self._urgent.set()
            self._written.clear()
            await self._written.wait()

    def request_flush(self) -> None:
        """Write what is buffered without waiting for the interval."""
        if self._buffer:
            self._urgent.set()

    async def flush_now(self) -> None:
        """Return once everything added so far is written."""
        while self._buffer or not self._idle.is_set():
            self._wake.set()
            self._urgent.set()
            await self._idle.wait()

    def stop(self) -> None:
        """Write what is left, then end `run`."""
        self._stopping = True
        self._wake.set()
        self._urgent.set()

    async def run(self) -> None:
        """Write batches until stopped and empty."""
        while True:
            if not self._buffer:
                self._idle.set()
                if self._stopping:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            # Something to write: wait for a full batch, a flush request or the interval.
            await self._wait_urgent(self._interval)
            self._urgent.clear()
            self._wake.clear()
            while self._buffer:
                batch = self._buffer[: self._batch_size]
                self._writing = len(batch)
                try:
                    await self._write(batch)
                finally:
                    self._writing = 0
                del self._buffer[: len(batch)]
                self._written.set()
                # What came during the write waits for its own full batch or interval (or
                # a flush, a stop), not written at once in a small statement: at 2,000/s
                # that was ~22 rows and a commit every ~11 ms, now a full batch (100 ms of
                # the rate) per statement. The crash bound is unchanged (`room`).
                if len(self._buffer) < self._batch_size and not (
                        self._stopping or self._urgent.is_set()):
                    break

    async def _wait_urgent(self, seconds: float) -> None:
        await woken_or(self._urgent, self._clock.sleep(seconds), "recorder")

    async def _write(self, batch: list[OutcomeRow]) -> None:
        """Write `batch` (shielded: a cancellation waits for the write in progress), retrying
        on database errors; never drops it."""
        delay = RETRY_FIRST
        while True:
            task = asyncio.get_running_loop().create_task(
                write_batch(self._pool, batch), name="recorder.write")
            try:
                flushed = await asyncio.shield(task)
            except asyncio.CancelledError:
                # Let the write in progress land (or fail) before giving up the task.
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is None:
                    self._on_flushed(task.result())
                    del self._buffer[: len(batch)]
                raise
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                self._log.warning("outcomes.write_failed", error=str(exc), batch=len(batch),
                                  retry_in=round(delay, 2))
                await self._clock.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self._on_flushed(flushed)
            return

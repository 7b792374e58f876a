"""The receipt writer: receipts from every request, written together, answered when committed.

Receipt endpoints hand their receipts to `ReceiptWriter.submit` and wait for the answer:
what became of each (applied, unchanged, pending, unknown), known only once written. The
writer's task takes everything submitted while the previous batch was being written and
writes it as the next batch, in one transaction (`store.receipts`): the batch grows with
the load (group commit), so a burst of receipts costs a few statements, not one per
receipt, and an idle writer answers at once. A failed write is retried with its batch
kept (the requests wait); a request whose client went away is still written.

Receipts whose recipient's outcome is not written yet (or that name nothing known) are
parked; while some are, the writer tries them again every `reconcile_interval` (a
maintenance cadence) for an hour after the last one parked. On stop, what was submitted
is written, then the task ends; later submissions are refused (the API answers 503).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from daemon.engine.recording import DB_ERRORS, RETRY_FIRST, RETRY_MAX, raise_if_cancelling
from daemon.infra.clock import Clock
from daemon.infra.config import Config
from daemon.infra.logs import get_logger
from daemon.infra.metrics import Metrics
from daemon.infra.waiting import within
from daemon.receipts import matching
from daemon.receipts.model import DeliveryStatus, Receipt, Result
from daemon.store import Connection, Pool, Record
from daemon.store import receipts as store

if TYPE_CHECKING:
    from daemon.api.context import AppContext

log = get_logger(__name__)

SERVICE_NAME = "receipts"  # the writer's key in AppContext.services
BATCH_RECEIPTS = 2000  # receipts per transaction at most
PARK_WINDOW = timedelta(hours=1)  # parked receipts are retried this long after arriving
WEBHOOK_ID_MEMORY = timedelta(minutes=10)  # > the 5-minute timestamp tolerance, both ways
RECONCILE_LIMIT = 5000


class WriterStopped(Exception):
    """The daemon is stopping: receipts are no longer taken."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one submission."""

    results: list[Result]  # per receipt, in order (empty when replayed)
    replayed: bool = False  # its webhook-id was taken before: nothing done again


@dataclass(eq=False)
class _Request:
    receipts: Sequence[Receipt]
    webhook_id: tuple[str, str] | None  # (provider, webhook-id) of a signed request
    done: asyncio.Future[Outcome]
    counted: bool = True  # counted in campaignd_receipts_total (a retry of parked: no)


@dataclass
class Totals:
    batches: int = 0
    reconciled: int = 0  # parked receipts matched later
    results: Counter[str] = field(default_factory=Counter)


class ReceiptWriter:
    """Batches receipts into transactions; a daemon stage (`start`, `stop`, `reload`)."""

    name = "receipts"

    def __init__(self, pool: Pool, clock: Clock, metrics: Metrics, *,
                 batch_receipts: int = BATCH_RECEIPTS, reconcile_interval: float = 2.0) -> None:
        self._pool = pool
        self._clock = clock
        self._metrics = metrics
        self._batch_receipts = batch_receipts
        self._reconcile_interval = reconcile_interval
        self._queue: list[_Request] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._parked_at = self._clock.now()  # try parked receipts once after a start
        self._forgot_at = self._clock.now()
        self.totals = Totals()

    # -- what the API calls ---------------------------------------------------------------------

    async def submit(self, receipts: Sequence[Receipt],
                     webhook_id: tuple[str, str] | None = None) -> Outcome:
        """Write `receipts` (with the request's webhook-id, for replays); their results."""
        if self._stopping:
            raise WriterStopped
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(receipts, webhook_id, done))
        self._wake.set()
        # Shielded: a client that goes away does not take its receipts back.
        return await asyncio.shield(done)

    async def reconcile(self) -> list[Result]:
        """Try the parked receipts again now; their new results."""
        rows = await store.parked(self._pool, self._clock.now() - PARK_WINDOW, RECONCILE_LIMIT)
        if not rows:
            return []
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request([_parked(row) for row in rows], None, done, counted=False))
        self._wake.set()
        outcome = await asyncio.shield(done)
        matched = sum(result is not Result.PENDING and result is not Result.UNKNOWN
                      for result in outcome.results)
        if matched:
            self.totals.reconciled += matched
            log.info("receipts.reconciled", matched=matched, parked=len(rows) - matched)
        return outcome.results

    # -- the stage ----------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.run(), name="receipts.writer"),
                       loop.create_task(self._reconciler(), name="receipts.reconciler")]
        self._tasks[0].add_done_callback(self._writer_ended)

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """A writer that died (a bug) refuses receipts from then on, loudly; the requests
        waiting get an error (503), not a hang."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("receipts.writer_failed", error=repr(task.exception()))
        self._stopping = True
        for request in self._queue:
            if not request.done.done():
                request.done.set_exception(WriterStopped())
        self._queue.clear()

    async def stop(self, grace: float, force: asyncio.Event) -> None:
        """Refuse new receipts, write those submitted (within `grace`), then end."""
        self._stopping = True
        self._wake.set()
        writer, *others = self._tasks
        for task in others:
            task.cancel()
        try:
            await within(writer, grace, force, "receipts")
        finally:
            writer.cancel()
            await asyncio.gather(writer, *others, return_exceptions=True)
        for request in self._queue:  # forced: what is left is not answered 2xx
            if not request.done.done():
                request.done.set_exception(WriterStopped())
        log.info("receipts.stopped", batches=self.totals.batches,
                 reconciled=self.totals.reconciled,
                 **{str(k): v for k, v in sorted(self.totals.results.items())})

    async def reload(self, config: Config) -> None:
        return None

    # -- the task -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until stopped and empty."""
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            try:
                outcomes = await self._write(batch)
            except BaseException:
                for request in batch:  # back in the queue: a stop's or a failure's to answer
                    if not request.done.done():
                        self._queue.insert(0, request)
                raise
            for request, outcome in zip(batch, outcomes, strict=True):
                if not request.done.done():
                    request.done.set_result(outcome)

    def _take(self) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].receipts)
                               <= self._batch_receipts):
            request = self._queue.pop(0)
            batch.append(request)
            size += len(request.receipts)
        return batch

    async def _write(self, batch: list[_Request]) -> list[Outcome]:
        """Write `batch` (shielded from cancellation), retrying on database errors."""
        delay = RETRY_FIRST
        while True:
            task = asyncio.get_running_loop().create_task(
                self._transaction(batch), name="receipts.write")
            try:
                outcomes = await asyncio.shield(task)
            except asyncio.CancelledError:
                await asyncio.wait([task])  # let the write in progress land
                raise
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                log.warning("receipts.write_failed", error=str(exc), retry_in=round(delay, 2),
                            receipts=sum(len(r.receipts) for r in batch))
                await self._clock.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self._count(batch, outcomes)
            return outcomes

    async def _transaction(self, batch: list[_Request]) -> list[Outcome]:
        now = self._clock.now()
        async with self._pool.acquire() as connection, connection.transaction():
            if now - self._forgot_at > WEBHOOK_ID_MEMORY:
                await store.forget_webhook_ids(connection, now - WEBHOOK_ID_MEMORY)
                self._forgot_at = now
            live = await _not_replayed(connection, batch, now)
            receipts = [receipt for request, fresh in zip(batch, live, strict=True) if fresh
                        for receipt in request.receipts]
            results, transitions = await matching.apply(connection, receipts, now)
        outcomes: list[Outcome] = []
        offset = 0
        for request, fresh in zip(batch, live, strict=True):
            if not fresh:
                outcomes.append(Outcome([], replayed=True))
                continue
            outcomes.append(Outcome(results[offset: offset + len(request.receipts)]))
            offset += len(request.receipts)
        for status, count in Counter(row["new"] for row in transitions).items():
            self._metrics.deliveries.labels(status).inc(count)
        if any(r is Result.PENDING or r is Result.UNKNOWN for r in results):
            self._parked_at = now
        return outcomes

    def _count(self, batch: list[_Request], outcomes: list[Outcome]) -> None:
        """campaignd_receipts_total, once per label pair and batch (not per receipt)."""
        self.totals.batches += 1
        tally: Counter[tuple[str, str]] = Counter()
        for request, outcome in zip(batch, outcomes, strict=True):
            if not request.counted:
                continue
            if outcome.replayed:
                provider = request.webhook_id[0] if request.webhook_id else ""
                tally[(provider, "replayed")] += len(request.receipts)
                continue
            for receipt, result in zip(request.receipts, outcome.results, strict=True):
                tally[(receipt.provider, result.value)] += 1
        for (provider, name), count in tally.items():
            self._metrics.receipts.labels(provider, name).inc(count)
            self.totals.results[name] += count

    async def _reconciler(self) -> None:
        """While receipts were parked in the last hour, try them again now and then."""
        while True:
            # A maintenance cadence, not business time (tests call `reconcile` themselves).
            await asyncio.sleep(self._reconcile_interval)
            if self._stopping:
                return
            if self._clock.now() - self._parked_at > PARK_WINDOW:
                continue
            try:
                await self.reconcile()
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                log.warning("receipts.reconcile_failed", error=str(exc))
            except WriterStopped:
                return


async def _not_replayed(connection: Connection, batch: list[_Request], now: datetime
                        ) -> list[bool]:
    """Per request, whether it is to be done (its webhook-id, if any, is new)."""
    wanted = [request.webhook_id for request in batch if request.webhook_id is not None]
    fresh = await store.remember_webhook_ids(connection, wanted, now)
    live: list[bool] = []
    for request in batch:
        if request.webhook_id is None:
            live.append(True)
        elif request.webhook_id in fresh:
            fresh.discard(request.webhook_id)  # a second request with it in this batch: replay
            live.append(True)
        else:
            live.append(False)
    return live


def stage(ctx: AppContext) -> ReceiptWriter:
    """The factory for `daemon.stages`: the writer, also published in ctx.services."""
    writer = ReceiptWriter(ctx.pool, ctx.clock, ctx.metrics)
    ctx.services[SERVICE_NAME] = writer
    return writer


def _parked(row: Record) -> Receipt:
    key = (row["run_id"], row["position"]) if row["run_id"] is not None else None
    return Receipt(provider=row["provider"], message_id=row["message_id"],
                   status=DeliveryStatus(row["status"]), reason=row["reason"],
                   occurred_at=row["occurred_at"], key=key)

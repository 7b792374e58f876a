"""The notification deliverer, a daemon stage: one task that empties the outbox.

At start (and on SIGHUP) the stage writes `notification_settings` from `[notifications]`
(no section: the triggers write nothing from then on). With a section, its task
`notifications.delivery` runs: woken by the triggers' NOTIFY (LISTEN on
`campaignd_notifications`, re-read after a reconnection), by the next retry's time, or
every `MAX_SLEEP`, it claims due events in one transaction (`FOR UPDATE SKIP LOCKED`, the
first pending event of each run only: see `store.notifications`), POSTs them concurrently,
records every attempt and commits. The rows stay locked while their POSTs are in flight,
so another daemon delivering from the same database never sends the same event at the same
time, nor a run's next event before this one is delivered; a daemon that dies mid-POST
leaves its rows pending (its connection's locks go with it), and they are sent again:
at least once, the same `webhook-id`.

Every `PRUNE_EVERY` the delivered events older than `keep_delivered` (and the failed ones
older than `keep_failed`) are deleted, so the outbox stays bounded by what is pending.

Stop: no new batch is claimed; the batch in flight finishes within the grace (or until
forced: then its transaction is rolled back and its events are sent again later).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from daemon.engine.recording import DB_ERRORS, RETRY_FIRST, RETRY_MAX, raise_if_cancelling
from daemon.infra.clock import Clock
from daemon.infra.config import Config, NotificationsSection
from daemon.infra.logs import get_logger
from daemon.infra.metrics import Metrics
from daemon.infra.waiting import within, woken_or
from daemon.models import NotificationStatus
from daemon.notifications.sender import Sender
from daemon.store import Pool
from daemon.store import notifications as store
from daemon.store.listen import Listener

if TYPE_CHECKING:
    from daemon.api.context import AppContext, Lifecycle

log = get_logger(__name__)

BATCH = 64  # events claimed per transaction (each the head of its own run's queue)
MAX_SLEEP = 30.0  # look at the outbox at least this often
BLOCKED_SLEEP = 1.0  # due events held by another deliverer: look again this soon
PRUNE_EVERY = 600.0
BACKLOG_EVERY = 5.0  # the backlog gauge's refresh, at most this often
MIN_PASS_INTERVAL = 0.05  # a burst of NOTIFYs (many runs starting) makes one pass per interval


class NotificationDeliverer:
    """The stage (`start`, `stop`, `reload`) and its delivery task."""

    name = "notifications"

    def __init__(self, pool: Pool, clock: Clock, metrics: Metrics,
                 settings: NotificationsSection | None, *, batch: int = BATCH,
                 jitter: Callable[[], float] = random.random,
                 lifecycle: Lifecycle | None = None) -> None:
        self._pool = pool
        self._clock = clock
        self._metrics = metrics
        self.settings = settings
        self._batch = batch
        self._jitter = jitter
        self._lifecycle = lifecycle
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at: float | None = None
        self._counted_at: float | None = None
        self.delivered = 0
        self.failed = 0

    # -- the stage ------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._put_settings()
        if self.settings is not None:
            self._start_task()

    def _start_task(self) -> None:
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(
            self.run(), name="notifications.delivery")
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.critical("notifications.deliverer_failed", error=repr(task.exception()),
                     exc_info=task.exception())
        # A dead deliverer must not look alive: the outbox would grow unseen. The daemon
        # stops and exits 1 (systemd restarts it).
        if self._lifecycle is not None:
            self._lifecycle.failed = "notifications"
        signal.raise_signal(signal.SIGTERM)

    async def stop(self, grace: float, force: asyncio.Event | None = None) -> None:
        """Claim nothing more; let the batch in flight end within `grace` (or until
        `force`); then cancel."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._wake.set()
        try:
            await within(task, grace, force or asyncio.Event(), "notifications")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        log.info("notifications.stopped", delivered=self.delivered, failed=self.failed)

    async def reload(self, config: Config) -> None:
        new = config.notifications
        if new == self.settings:
            return
        await self.stop(grace=5.0)
        self.settings = new
        with contextlib.suppress(*DB_ERRORS):
            await self._put_settings()
        if new is not None:
            self._start_task()

    async def _put_settings(self) -> None:
        events = self.settings.events if self.settings is not None else None
        await store.put_settings(self._pool, events, self._clock.now())

    # -- the task -------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Listen and deliver until stopped."""
        assert self.settings is not None
        listener = Listener(self._pool, self._clock, {store.CHANNEL: lambda _: self.wake()},
                            on_connect=self.wake)
        async with Sender(self.settings, self._clock, self._jitter) as sender, \
                asyncio.TaskGroup() as group:
            listening = group.create_task(listener.run(), name="notifications.listener")
            try:
                await self._deliver_until_stopped(sender)
            finally:
                listening.cancel()

    async def _deliver_until_stopped(self, sender: Sender) -> None:
        delay = RETRY_FIRST
        while not self._stopping.is_set():
            self._wake.clear()
            began = self._clock.monotonic()
            try:
                if await self.deliver_once(sender):
                    continue  # the next events of those runs may be due at once
                wake_at = await self._between_passes()
                delay = RETRY_FIRST
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                log.warning("notifications.database_error", error=str(exc),
                            retry_in=round(delay, 2))
                wake_at = self._clock.now() + timedelta(seconds=delay)
                delay = min(delay * 2, RETRY_MAX)
            rest = MIN_PASS_INTERVAL - (self._clock.monotonic() - began)
            if rest > 0:
                await self._clock.sleep(rest)
            await self._sleep_until(wake_at)

    async def deliver_once(self, sender: Sender) -> int:
        """One batch: claim, POST, record, commit; how many events were attempted."""
        async with self._pool.acquire() as connection, connection.transaction():
            events = await store.claim(connection, self._clock.now(), self._batch)
            if not events:
                return 0
            results = await asyncio.gather(*(sender.attempt(event) for event in events))
            attempts = [attempt for attempt, _ in results]
            await store.record(connection, attempts, self._clock.now())
        for event, (attempt, status) in zip(events, results, strict=True):
            self._report(event, attempt, status)
        self._counted_at = None  # the backlog moved: refresh the gauge at the next pause
        return len(events)

    def _report(self, event: store.Outgoing, attempt: store.Attempt, status: int | None) -> None:
        fields = {"webhook_id": event.webhook_id, "type": event.type.value,
                  "campaign_id": event.campaign_id, "run_id": event.run_id,
                  "attempts": event.attempts + 1, "http_status": status}
        if attempt.status is NotificationStatus.DELIVERED:
            self.delivered += 1
            log.info("notification.delivered", **fields)
        elif attempt.status is NotificationStatus.FAILED:
            self.failed += 1
            log.error("notification.failed", error=attempt.error, **fields)
        else:
            assert attempt.next_attempt_at is not None
            retry_in = (attempt.next_attempt_at - self._clock.now()).total_seconds()
            log.warning("notification.retrying", error=attempt.error,
                        retry_in=round(retry_in, 2), **fields)
        outcome = "retried" if attempt.status is NotificationStatus.PENDING else attempt.status
        self._metrics.notifications.labels(str(outcome)).inc()

    async def _between_passes(self) -> datetime:
        """Housekeeping when nothing is claimable: prune, the backlog gauge; then when to
        look again."""
        assert self.settings is not None
        now = self._clock.now()
        monotonic = self._clock.monotonic()
        if self._pruned_at is None or monotonic - self._pruned_at >= PRUNE_EVERY:
            pruned = await store.prune(
                self._pool, delivered_before=now - timedelta(seconds=self.settings.keep_delivered),
                failed_before=now - timedelta(seconds=self.settings.keep_failed))
            if pruned < store.PRUNE_BATCH:
                self._pruned_at = monotonic
            if pruned:
                log.info("notifications.pruned", events=pruned)
        if self._counted_at is None or monotonic - self._counted_at >= BACKLOG_EVERY:
            self._metrics.notification_backlog.set(await store.backlog(self._pool))
            self._counted_at = monotonic
        wake_at = now + timedelta(seconds=MAX_SLEEP)
        due = await store.next_due(self._pool)
        if due is not None:
            # Due already but not claimable: another deliverer holds it (or its run's earlier
            # event): that one goes on with the run; we look again soon.
            wake_at = min(wake_at, max(due, now + timedelta(seconds=BLOCKED_SLEEP)))
        return wake_at

    async def _sleep_until(self, when: datetime) -> None:
        if when > self._clock.now():
            await woken_or(self._wake, self._clock.sleep_until(when), "notifications")


def stage(ctx: AppContext) -> NotificationDeliverer:
    """The factory for `daemon.stages`."""
    deliverer = NotificationDeliverer(ctx.pool, ctx.clock, ctx.metrics,
                                      ctx.config.notifications, lifecycle=ctx.lifecycle)
    ctx.services[NotificationDeliverer.name] = deliverer
    return deliverer

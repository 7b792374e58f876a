"""The scheduler: one loop that sleeps until something is due, then hands campaigns to the engine.

It reads, in one query, every campaign with scheduled or running runs and who holds
its lease, then sleeps until the earliest of: a scheduled run's preparation time
(ahead of its start by its freeze time and some slack:
`store.engine._PREPARE_AT`), the expiry of a lease another instance holds on
a campaign with work (to take over from a dead holder), the end of a windowed
campaign (which becomes `completed` then), or `MAX_SLEEP`. A NOTIFY (new run,
cancel), a worker's end or the engine's stop wake it early; it re-reads after
every wake. One sleeping loop, whatever the number of future runs: no parked task
per run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from daemon.engine.recording import DB_ERRORS, raise_if_cancelling
from daemon.infra.clock import Clock
from daemon.infra.logs import get_logger
from daemon.infra.waiting import woken_or
from daemon.store import Pool
from daemon.store import engine as engine_store
from daemon.store.engine import RunRow

log = get_logger(__name__)

MAX_SLEEP = 30.0
TAKEOVER_SLACK = 0.05  # look again this long after a foreign lease should have expired
MIN_PASS_INTERVAL = 0.025  # a burst of NOTIFYs (triggers) makes one pass per interval


class Scheduler:
    """Decides when each campaign's runs need a worker on this instance."""

    def __init__(self, pool: Pool, clock: Clock, holder: str,
                 start_worker: Callable[[str, list[RunRow]], None], max_inline: int) -> None:
        self._pool = pool
        # The longest lead of an inline run: its slack plus the freeze of the largest.
        self._inline_lead = (engine_store.INLINE_SLACK
                             + max_inline / engine_store.FREEZE_ROWS_PER_SECOND)
        self._clock = clock
        self._holder = holder
        self._start_worker = start_worker
        self._wake = asyncio.Event()
        self._announce: set[str] = set()

    def wake(self) -> None:
        self._wake.set()

    def run_created(self, run_id: str) -> None:
        """A NOTIFY for a new run: log it as scheduled at the next pass."""
        if len(self._announce) < 10_000:
            self._announce.add(run_id)
        self._wake.set()

    async def run(self) -> None:
        """Loop until cancelled."""
        delay = 0.1
        while True:
            self._wake.clear()
            began = self._clock.monotonic()
            try:
                wake_at = await self.scan()
                delay = 0.1
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                log.warning("scheduler.database_error", error=str(exc), retry_in=delay)
                wake_at = self._clock.now() + timedelta(seconds=delay)
                delay = min(delay * 2, 5.0)
            rest = MIN_PASS_INTERVAL - (self._clock.monotonic() - began)
            if rest > 0:
                await self._clock.sleep(rest)
            await self._sleep_until(wake_at)

    async def scan(self) -> datetime:
        """One pass: start workers for due campaigns, complete ended campaigns; returns when
        to look again."""
        await self._log_scheduled()
        now = self._clock.now()
        wake_at = now + timedelta(seconds=MAX_SLEEP)
        works = await engine_store.due_work(self._pool, now, self._inline_lead)
        runs: dict[str, list[RunRow]] = {}
        if any(work.due for work in works):
            for run in await engine_store.due_runs(self._pool, now, self._inline_lead):
                runs.setdefault(run.campaign_id, []).append(run)
        for work in works:
            held_elsewhere = (work.holder is not None and work.holder != self._holder
                              and (work.lease_remaining or 0.0) > 0)
            if held_elsewhere:
                remaining = (work.lease_remaining or 0.0) + TAKEOVER_SLACK
                wake_at = min(wake_at, now + timedelta(seconds=remaining))
            else:
                # The due runs are handed over: a worker need not read them itself.
                self._start_worker(work.campaign_id, runs.get(work.campaign_id, []))
        upcoming = await engine_store.next_due(self._pool, now, self._inline_lead)
        if upcoming is not None:
            wake_at = min(wake_at, upcoming)
        for campaign_id in await engine_store.complete_ended_campaigns(self._pool, now):
            log.info("campaign.completed", campaign_id=campaign_id, reason="end_at")
        end = await engine_store.next_campaign_end(self._pool)
        if end is not None:
            wake_at = min(wake_at, end)
        return wake_at

    async def _log_scheduled(self) -> None:
        if not self._announce:
            return
        ids, self._announce = list(self._announce), set()
        rows = await engine_store.scheduled_runs(self._pool, ids)
        now = self._clock.now()
        for row in rows:
            log.info("run.scheduled", run_id=row["id"], campaign_id=row["campaign_id"],
                     scheduled_for=row["scheduled_for"],
                     starts_in_seconds=round(
                         max(0.0, (row["scheduled_for"] - now).total_seconds()), 3))

    async def _sleep_until(self, when: datetime) -> None:
        seconds = (when - self._clock.now()).total_seconds()
        if seconds > 0:
            await woken_or(self._wake, self._clock.sleep_until(when), "scheduler")

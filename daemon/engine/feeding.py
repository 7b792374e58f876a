"""Recipients in: the claims of a campaign worker (the `feeder` task).

The feeder claims recipients in batches, in position order, for the runs whose queue runs
low, within the claim window (`sizes.window` claimed and not yet written, over all the
campaign's runs), then the retries that are due; it notices runs that are done (closing
checks them) and removes the push tokens a provider reported dead. A claim is never cut
by a stop between its commit and its recipients reaching a queue. At the worker's end,
the claims not started are released (`release_unstarted`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from daemon.engine.delivery import RunState
from daemon.engine.recording import DB_ERRORS, Flushed, raise_if_cancelling
from daemon.engine.state import MarkReady, WorkerState, wait
from daemon.store import profiles_tokens
from daemon.store import recipients as recipient_store
from daemon.store.engine import counts_of
from daemon.store.recipients import Claimed


class Feeding:
    """The claims (changes each run's queue in, its cursor, `unrecorded`, retries)."""

    def __init__(self, state: WorkerState, mark_ready: MarkReady,
                 check_finished: Callable[[], Awaitable[None]]) -> None:
        self.state = state
        self.mark_ready = mark_ready
        self.check_finished = check_finished  # closing: runs with nothing left to send

    async def feed_loop(self) -> None:
        state = self.state
        while True:
            if state.lease.valid():
                await state.retrying(self._fill_shielded, "claim")
                await state.retrying(self.check_finished, "finish_check")
                await self.write_dead_tokens()
            await wait(state.feeder_wake, self.feed_timeout())
            state.feeder_wake.clear()

    async def _fill_shielded(self) -> None:
        """`_fill`, which a stop must not cut between a claim's commit and the claimed
        recipients reaching a queue (they would stay marked in flight, unreleased)."""
        task = asyncio.get_running_loop().create_task(
            self._fill(), name=f"claim:{self.state.campaign.id}")
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task])
            raise

    def _unrecorded(self) -> int:
        return sum(run.unrecorded for run in self.state.runs.values())

    async def _fill(self) -> None:
        async with self.state.steering.claims:  # never while a re-plan excludes recipients
            await self._fill_now()

    async def _fill_now(self) -> None:
        state = self.state
        runs, sizes, campaign, services = state.runs, state.sizes, state.campaign, \
            state.services
        room = sizes.window - self._unrecorded()
        batch = sizes.claim_batch
        low_water = sizes.low_water
        wanted: list[tuple[str, int, int]] = []
        for run in runs.values():
            if room < 1:
                break
            if run.state in (RunState.WAITING, RunState.ACTIVE) and not run.fresh_exhausted \
                    and len(run.queue) < low_water:
                n = min(batch, room)
                wanted.append((run.id, run.cursor, n))
                room -= n
        now = state.clock.now()
        if wanted:
            claimed = await recipient_store.claim_fresh(
                services.pool, campaign.id, services.holder, campaign.channel, wanted, now)
            got: dict[str, int] = {}
            for recipient in claimed:
                got[recipient.run_id] = got.get(recipient.run_id, 0) + 1
                self._accept(recipient, fresh=True)
            for run_id, _, n in wanted:
                short = runs.get(run_id)
                if short is not None and got.get(run_id, 0) < n:
                    short.fresh_exhausted = True
                elif short is not None and len(short.queue) < low_water:
                    state.feeder_wake.set()  # one batch per statement: claim again at once
        due = [run.id for run in runs.values()
               if run.state in (RunState.WAITING, RunState.ACTIVE)
               and run.next_retry_at is not None and run.next_retry_at <= now]
        if due and room > 0:
            for run_id in due:
                runs[run_id].next_retry_at = None
            retries = await recipient_store.claim_retries(
                services.pool, campaign.id, services.holder, campaign.channel, due, now, room)
            for recipient in retries:
                self._accept(recipient, fresh=False)
            if len(retries) == room:  # more may be due: look again soon
                for run_id in due:
                    runs[run_id].next_retry_at = now

    def feed_timeout(self) -> float:
        """Until the next due retry, at most half a second (claims are also woken by
        senders running low and by each write)."""
        now = self.state.clock.now()
        timeout = 0.5
        for run in self.state.runs.values():
            if run.next_retry_at is not None:
                timeout = min(timeout, (run.next_retry_at - now).total_seconds())
        return max(timeout, 0.0)

    def _accept(self, recipient: Claimed, *, fresh: bool) -> None:
        run = self.state.runs.get(recipient.run_id)
        if run is None:  # closed meanwhile: its close cleared the mark
            return
        run.unrecorded += 1
        if fresh:  # retries are behind the cursor, or anywhere after a restart
            run.cursor = max(run.cursor, recipient.position)
        run.queue.append(recipient)
        self.mark_ready(run)

    async def write_dead_tokens(self) -> None:
        """Remove the push tokens the provider reported dead (one statement per batch)."""
        state = self.state
        if not state.dead_tokens:
            return
        batch, state.dead_tokens = state.dead_tokens, []
        try:
            removed = await profiles_tokens.remove_push_tokens(state.services.pool, batch)
        except DB_ERRORS as exc:
            raise_if_cancelling(exc)
            state.dead_tokens.extend(batch)  # next time
            state.log.warning("engine.database_error", action="remove_push_tokens",
                              error=str(exc))
            return
        state.log.info("profiles.push_tokens_removed", tokens=len(batch), profiles=removed)

    async def release_unstarted(self) -> None:
        """Release the claims that were not started (at the worker's end)."""
        state = self.state
        if not state.unstarted:
            return
        try:
            await recipient_store.release(state.services.pool, state.campaign.id,
                                          state.services.holder, state.unstarted)
        except Exception as exc:  # the next holder recovers them (sent then, not lost)
            state.log.warning("worker.release_failed", error=str(exc),
                              count=len(state.unstarted))


def written(state: WorkerState, flushed: Flushed) -> None:
    """Outcomes written (the recorder's `on_flushed`): the window has room again, the runs'
    counts and next retries are as written, the message metrics counted."""
    runs = state.runs
    for outcome in flushed.outcomes:
        run = runs.get(outcome.run_id)
        if run is None:
            continue
        run.unrecorded -= 1
        if outcome.status == "pending" and outcome.retry_at is not None and (
                run.next_retry_at is None or outcome.retry_at < run.next_retry_at):
            run.next_retry_at = outcome.retry_at
    for run_id, row in flushed.counts.items():
        run = runs.get(run_id)
        if run is not None:
            run.counts = counts_of(row)
    tally = Counter((status, reason or "") for _, status, reason in flushed.applied
                    if status != "pending")
    campaign = state.campaign
    for (status, reason), n in tally.items():  # one labels() per kind, not per message
        state.services.metrics.messages.labels(
            campaign.id, campaign.channel.value, status, reason).inc(n)
    state.feeder_wake.set()

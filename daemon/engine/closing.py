"""The end of a campaign's runs on the lease holder (the closing part of a campaign worker).

A run ends when nothing is left to send, at its deadline, on a cancel request, or when
its content cannot be rendered. A close stops new calls for the run at once, waits for
its calls in flight, writes every outcome, then excludes (or fails) what is left and sets
the status and end reason, in one transaction (`store.engine.close_run`), and logs the
run's summary line.
"""

from __future__ import annotations

import asyncio

from daemon.engine.delivery import RunExecution, RunState
from daemon.engine.recording import Recorder
from daemon.engine.state import MarkReady, WorkerState
from daemon.models import ExclusionReason
from daemon.store import engine as engine_store
from daemon.store import recipients as recipient_store

ENDED_REMEMBERED = 1000  # run ids a worker remembers having ended (a read may predate it)


class RunClosing:
    """Closing runs (changes `closing`, `ended`, and takes runs out of `runs`)."""

    def __init__(self, state: WorkerState, recorder: Recorder, mark_ready: MarkReady) -> None:
        self.state = state
        self.recorder = recorder
        self.mark_ready = mark_ready  # a close that finds more to send hands the run back

    async def check_finished(self) -> None:
        """Close the active runs with nothing left to send (every outcome written)."""
        state = self.state
        now = state.clock.now()
        for run in list(state.runs.values()):
            if run.state is not RunState.ACTIVE or not run.fresh_exhausted or run.queue:
                continue
            if run.unrecorded:
                self.recorder.request_flush()
                continue
            if run.next_retry_at is not None and run.next_retry_at > now:
                continue
            if run.counts.get("pending") == 0:  # as of the last write: every outcome is in
                self.begin_close(run)
                continue
            pending, next_retry = await recipient_store.retry_state(state.services.pool,
                                                                    run.id)
            if pending == 0:
                self.begin_close(run)
            elif next_retry is not None:
                run.next_retry_at = next_retry
            else:  # pending rows we did not see (released by someone, or ours): scan again
                await self._release_orphans(run)
                run.fresh_exhausted = False
                run.cursor = -1
                run.next_retry_at = now  # retries due among them too

    async def _release_orphans(self, run: RunExecution) -> None:
        """Nothing of `run` is held here (no queue, nothing unrecorded), yet rows are pending
        and none is visibly due: any claim of ours on it is one whose answer was lost (the
        server died between its commit and its reply). Released, those recipients are
        claimed again; kept, they stayed pending and the run never finished."""
        state = self.state
        released = await recipient_store.release_orphans(
            state.services.pool, state.campaign.id, state.services.holder, run.id)
        if released:
            state.log.warning("claims.orphans_released", run_id=run.id, count=released)

    def begin_close(self, run: RunExecution, *, exclude_as: ExclusionReason | None = None,
                    fail_reason: str | None = None) -> None:
        group = self.state.group
        if run.state in (RunState.CLOSING, RunState.DONE) or group is None:
            return
        run.state = RunState.CLOSING
        self.state.closing[run.id] = group.create_task(
            self._close(run, exclude_as, fail_reason), name=f"close:{run.id}")

    async def _close(self, run: RunExecution, exclude_as: ExclusionReason | None,
                     fail_reason: str | None) -> None:
        state = self.state
        try:
            await run.idle.wait()  # calls in flight for this run finish and are recorded
            await self.recorder.flush_now()
            closed: list[engine_store.ClosedRun | None] = []

            async def close() -> None:
                closed.append(await engine_store.close_run(
                    state.services.pool, run.id, state.campaign.id, now=state.clock.now(),
                    exclude_as=exclude_as, fail_reason=fail_reason, known=run.counts))

            await state.retrying(close, "close_run")
            result = closed[-1]
            if result is None:
                if exclude_as is None and fail_reason is None and run.id in state.runs:
                    run.state, run.fresh_exhausted, run.cursor = RunState.ACTIVE, False, -1
                    self.mark_ready(run)
                    state.wake_feeder()
                    return
                self.forget(run)
                return
            self._finished(run, result, exclude_as)
        finally:
            state.closing.pop(run.id, None)
            if not state.runs and not state.closing:
                state.wake_control()  # perhaps nothing left to do: the worker may end

    def _finished(self, run: RunExecution, result: engine_store.ClosedRun,
                  exclude_as: ExclusionReason | None) -> None:
        log, clock = self.state.log, self.state.clock
        counts = result.counts
        excluded = engine_store.excluded_of(counts)
        if result.newly_excluded and exclude_as in (ExclusionReason.TIME_CAP,
                                                    ExclusionReason.CAMPAIGN_END):
            log.info("run.excluded", run_id=run.id, reason=exclude_as,
                     count=result.newly_excluded)
        started = run.row.started_at
        duration = (clock.now() - started).total_seconds() if started else None
        log.info(
            "run.finished", run_id=run.id, status=result.status, end_reason=result.end_reason,
            targeted=counts["targeted"], sent=counts["sent"], failed=counts["failed"],
            pending=counts["pending"], excluded=excluded,
            duration_seconds=round(duration, 3) if duration is not None else None,
            calls=run.calls,
        )
        if result.campaign_completed:
            log.info("campaign.completed", reason="one_shot_run_ended", run_id=run.id)
        self.forget(run)

    def forget(self, run: RunExecution) -> None:
        """The run is no longer executed here (ended, or ended elsewhere)."""
        state = self.state
        run.state = RunState.DONE
        state.ended[run.id] = None
        if len(state.ended) > ENDED_REMEMBERED:
            del state.ended[next(iter(state.ended))]
        run.queue.clear()
        run.unrecorded = 0
        if state.runs.pop(run.id, None) is not None:
            state.services.metrics.runs_active.dec()

    async def settle(self, grace: float) -> None:
        """Let runs already closing finish closing (their calls are done), within `grace`."""
        closing = list(self.state.closing.values())
        if closing:
            await asyncio.wait(closing, timeout=grace)
            for task in closing:
                task.cancel()
            await asyncio.gather(*closing, return_exceptions=True)

"""The senders of a campaign worker: the ready runs, round-robin, and the sender tasks.

A run with claimed recipients queued is *ready* (`WorkerState.ready`). A fixed-at-most pool
of `sender` tasks, shared by all the campaign's runs, takes recipients round-robin between
the ready runs (fair) and makes each call (`sending.py`, handed in as `send_one`). The pool
is as large as the calls under way, plus one: a campaign with nothing to send has none.
At the stop, `drain` lets the calls in flight finish within the grace and hands every
queued claim to the release.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from daemon.engine.delivery import RunExecution, RunState
from daemon.engine.state import WorkerState, wait
from daemon.store.recipients import Claimed

SENDER_IDLE = 1.0  # a sender with nothing to send for this long ends


class Senders:
    """The ready runs and the sender tasks (changes `ready`, `work`, `unstarted`)."""

    def __init__(self, state: WorkerState,
                 send_one: Callable[[asyncio.Task[None]], Awaitable[bool]]) -> None:
        self.state = state
        self._send_one = send_one  # one call; False once the worker stops
        self._senders: set[asyncio.Task[None]] = set()
        self._sender_number = 0

    def mark_ready(self, run: RunExecution) -> None:
        if run.state is RunState.ACTIVE and run.queue and not run.ready:
            run.ready = True
            self.state.ready.append(run)
            self.state.work.set()
            self.staff()

    def staff(self) -> None:
        """Start a sender when work is queued and every sender is in a call (up to the
        maximum): the pool is as large as the calls under way, plus one, and a campaign with
        nothing to send has none (thousands of small campaigns cost no idle tasks)."""
        state = self.state
        if state.stopping or state.group is None or not state.ready:
            return
        if len(self._senders) > len(state.calling) or \
                len(self._senders) >= state.sizes.senders:
            return
        task = state.group.create_task(
            self._sender(), name=f"sender:{state.campaign.id}:{self._sender_number}")
        self._sender_number += 1
        self._senders.add(task)
        task.add_done_callback(self._senders.discard)

    def _take_now(self) -> tuple[RunExecution, Claimed] | None:
        """The next recipient, round-robin between the active runs, if one is queued."""
        ready = self.state.ready
        while ready:
            run = ready.popleft()
            if run.state is not RunState.ACTIVE or not run.queue:
                run.ready = False
                continue
            recipient = run.queue.popleft()
            if run.queue:
                ready.append(run)
            else:
                run.ready = False
            if len(run.queue) < self.state.sizes.low_water:
                self.state.feeder_wake.set()
            return run, recipient
        return None

    async def take(self) -> tuple[RunExecution, Claimed] | None:
        """The next recipient (waiting a moment for one); None when the sender should end:
        the worker stops, or there has been nothing to send for SENDER_IDLE seconds."""
        state = self.state
        while not state.stopping:
            item = self._take_now()
            if item is not None:
                return item
            state.work.clear()
            await wait(state.work, SENDER_IDLE)
            if not state.work.is_set():
                return None
        return None

    async def _sender(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        while await self._send_one(task):
            pass

    def give_back(self, run: RunExecution, recipient: Claimed) -> None:
        """A recipient taken but not sent: back to its run's queue; released at a stop; left
        to the close of a closing run (which excludes it)."""
        if self.state.stopping:
            self.state.unstarted.append((run.id, recipient.position))
        elif run.state in (RunState.WAITING, RunState.ACTIVE):
            run.queue.appendleft(recipient)
            self.mark_ready(run)

    async def drain(self, grace: float, force: asyncio.Event) -> None:
        """Senders not in a provider call stop now; those in a call finish (and record their
        outcome) within `grace`, unless `force` comes first. Queued claims are released."""
        state = self.state
        state.work.set()
        senders = list(self._senders)
        for task in senders:
            if task not in state.calling:
                task.cancel()
        remaining = {task for task in senders if task in state.calling}
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
        for run in state.runs.values():
            state.unstarted.extend((run.id, c.position) for c in run.queue)
            run.queue.clear()

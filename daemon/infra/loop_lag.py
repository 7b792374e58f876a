"""The event loop's lag, a daemon stage: how late a timer runs, all the time.

One task, `loop.lag`, sleeps `INTERVAL` on the loop's clock and observes how much later
than asked it woke (`campaignd_event_loop_lag_seconds`): the loop's stalls (a long write,
a GC pass, a CPU-heavy request, the CPU taken by another process), each of which pushes the
senders' slots back and is then caught up. A stall of `STALL_WARN` or more also logs
`loop.stalled` (with its length). The cost: 50 timers a second (measured below 0.1 % of a
core). The lag is the loop's own clock (`loop.time()`, as the pacer's slots are), not the
business clock: it is a property of the loop, not of the campaigns' time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from daemon.infra.logs import get_logger
from daemon.infra.metrics import Metrics

if TYPE_CHECKING:
    from daemon.api.context import AppContext
    from daemon.infra.config import Config

log = get_logger(__name__)

INTERVAL = 0.02
STALL_WARN = 0.25


class LoopLag:
    """The stage (`start`, `stop`, `reload`) and its task."""

    name = "loop_lag"

    def __init__(self, metrics: Metrics, *, interval: float = INTERVAL,
                 warn: float = STALL_WARN) -> None:
        self._metrics = metrics
        self._interval = interval
        self._warn = warn
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop.lag")

    async def stop(self, grace: float, force: asyncio.Event) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self, config: Config) -> None:
        return None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        histogram = self._metrics.loop_lag
        while True:
            asked = loop.time() + self._interval
            # On the loop's clock (what is measured is the loop itself): not a business wait.
            await asyncio.sleep(self._interval)
            lag = max(0.0, loop.time() - asked)
            histogram.observe(lag)
            if lag >= self._warn:
                log.warning("loop.stalled", seconds=round(lag, 3))


def stage(ctx: AppContext) -> LoopLag:
    """The factory for `daemon.stages`."""
    return LoopLag(ctx.metrics)

"""An event loop on virtual time: sleeping advances the clock at once (the loop never waits
for real), optionally late by a random amount, as real timers are. The pacer reads
`loop.time()` (as aiolimiter does), so this is how its timing is tested without sleeping."""

from __future__ import annotations

import asyncio
import random
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _InstantSelector(selectors.SelectSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None or timeout > 0:
            self._loop.waits += 1
        if timeout is not None:
            # Each pass of the loop takes a little time, as a real one does (a timer due
            # "in 1e-16 s" would otherwise never come).
            self._loop.advance(max(timeout, 1e-6)
                               + (self._loop.lateness() if timeout > 0 else 0.0))
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`resolution`: the clock's step as `time()` reads it (uvloop's is 1 ms); `waits`
    counts the loop's waits for a timer (its timed wake-ups)."""

    def __init__(self, *, late_by: float = 0.0, seed: int = 1, resolution: float = 0.0) -> None:
        self._now = 1000.0
        self._late_by = late_by
        self._random = random.Random(seed)
        self._resolution = resolution
        self.waits = 0
        super().__init__(selector=_InstantSelector(self))

    def time(self) -> float:
        if self._resolution:
            return self._now - self._now % self._resolution
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def lateness(self) -> float:
        return self._random.uniform(0.0, self._late_by) if self._late_by else 0.0


def run_virtual(coroutine: Coroutine[Any, Any, T], **options: Any) -> T:
    loop = VirtualTimeLoop(**options)
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()

"""The only place that reads wall time or sleeps for business reasons.

Dates come from the wall clock (`now`), durations from the monotonic clock
(`monotonic`). Tests replace the clock with `FakeClock`, which never sleeps for
real: sleeping advances its time and yields to the loop.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """What the daemon asks of time."""

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware, in UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for durations)."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a business wait, not a yield)."""

    async def sleep_until(self, when: datetime) -> None:
        """Wait until the wall clock reaches `when` (returns at once if it has)."""


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, when: datetime) -> None:
        # Sleep in slices of at most a minute so that a wall-clock jump (NTP)
        # is noticed instead of oversleeping by hours.
        while True:
            remaining = (when - self.now()).total_seconds()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, 60.0))


class FakeClock:
    """A clock for tests: time moves only when told or when someone sleeps."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._monotonic = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._monotonic += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    async def sleep_until(self, when: datetime) -> None:
        await self.sleep((when - self._now).total_seconds())

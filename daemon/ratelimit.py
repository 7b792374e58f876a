"""Rate limits: the campaign's pacer and each provider's gate. The only module importing aiolimiter.

A `Pacer` hands out call slots at `rate` per second, evenly spaced:

- an aiolimiter leaky bucket of `max(2, rate/100)` slots (10 ms of the rate), so a late
  timer does not lose throughput (the level keeps leaking) while a catch-up after a
  stall is at most that many calls (machine-limits §3: never capacity 1 at high rates,
  never a bucket of one second's capacity);
- the bucket starts (and, after a pause, restarts) nearly full, not empty, so the first
  call goes at once and no start burst follows (aiolimiter's bucket starts empty: it
  would release a whole bucket at once);
- a sliding-window guard: the slot that would make more than `floor(rate)` calls within
  `floor(rate)/rate` seconds (one second for a whole rate) waits, so no window of one
  second ever holds more calls than the rate, whatever the timers did.

Slots are granted first come, first served (an asyncio.Lock is FIFO), which makes a
campaign's pacer fair between its runs. Time is the event loop's (`loop.time()`, like
aiolimiter's): tests control it by controlling the loop.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiolimiter import AsyncLimiter

from daemon.providers.settings import ProviderSettings

# Rates above this keep no per-call window history (memory); the bucket alone limits them.
MAX_GUARDED_RATE = 100_000


class Pacer:
    """Evenly spaced call slots at `rate` per second (see the module docstring)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._bucket = max(2.0, rate / 100.0)
        self._limiter = AsyncLimiter(self._bucket, self._bucket / rate)
        guard = max(1, math.floor(rate)) if rate <= MAX_GUARDED_RATE else 0
        self._guard_size = guard
        self._guard_window = guard / rate
        self._recent: deque[float] = deque(maxlen=max(1, guard))
        self._lock = asyncio.Lock()
        self._last = float("-inf")  # loop time of the last call
        self.granted = 0

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the pacer (first come, first served) while the caller takes its other gates;
        inside, `await token()`, the other gates, then `await window()` and `record()`."""
        async with self._lock:
            yield

    async def token(self) -> None:
        """Wait for the bucket (call inside `turn`)."""
        limiter = self._limiter
        if limiter.has_capacity(self._bucket):
            # Empty bucket: first use, or idle for a while. Restart it nearly full so the
            # next call goes now and the following ones at the rate, not in a burst.
            await limiter.acquire(self._bucket - 1.0)
        await limiter.acquire()

    async def window(self) -> None:
        """Wait until a call now keeps every sliding window within the rate (inside `turn`)."""
        if self._guard_size == 0 or len(self._recent) < self._guard_size:
            return
        loop = asyncio.get_running_loop()
        wait = self._recent[0] + self._guard_window - loop.time()
        if wait > 0:
            # Pacing on the loop's clock, as aiolimiter does: not a business wait.
            await asyncio.sleep(wait)

    def record(self) -> None:
        """The call is starting now (inside `turn`)."""
        self._last = asyncio.get_running_loop().time()
        if self._guard_size:
            self._recent.append(self._last)
        self.granted += 1

    def idle_for(self) -> float:
        """Seconds since the last call."""
        return asyncio.get_running_loop().time() - self._last

    async def acquire(self) -> None:
        """One slot (token, window, record): for callers with no other gate to take."""
        async with self.turn():
            await self.token()
            await self.window()
            self.record()


class ProviderGate:
    """What a provider's own settings impose: at most `concurrency` calls at once, at most
    `rate_per_second` calls, and a pause after a 429 with Retry-After."""

    def __init__(self, name: str, concurrency: int, rate: float | None) -> None:
        self.name = name
        self.concurrency = concurrency
        self.rate = rate
        self.semaphore = asyncio.Semaphore(concurrency)
        self.pacer = Pacer(rate) if rate else None
        self._paused_until = 0.0  # loop time

    def pause(self, seconds: float) -> bool:
        """Pause calls for `seconds` from now; True if this extends the current pause."""
        until = asyncio.get_running_loop().time() + max(0.0, seconds)
        if until <= self._paused_until:
            return False
        self._paused_until = until
        return True

    def paused_for(self) -> float:
        """Seconds of pause left (0 when not paused)."""
        return max(0.0, self._paused_until - asyncio.get_running_loop().time())

    async def wait_unpaused(self) -> None:
        # A deadline that a later 429 may push back, not an event: look again after sleeping.
        while (left := self.paused_for()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)  # the provider asked for this wait (Retry-After)


class ProviderGates:
    """One gate per provider name, shared by every campaign using that provider."""

    def __init__(self) -> None:
        self._gates: dict[str, tuple[ProviderSettings, ProviderGate]] = {}

    def gate(self, name: str, settings: ProviderSettings) -> ProviderGate:
        """The gate of provider `name`; a new one if its settings changed (SIGHUP)."""
        known = self._gates.get(name)
        if known is not None and known[0] == settings:
            return known[1]
        gate = ProviderGate(name, settings.concurrency, settings.rate_per_second)
        self._gates[name] = (settings, gate)
        return gate

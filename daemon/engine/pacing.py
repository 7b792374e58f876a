"""Rate limits: the campaign's pacer and each provider's gate. The only module importing aiolimiter.

A `Pacer` hands out call slots at `rate` per second, evenly spaced (in grains of 5 ms):

- the pace: an aiolimiter leaky bucket leaking at `rate / 1.005`, holding 200 ms of
  calls: a late timer or a short stall (a write, a GC pass) loses no throughput, the
  calls behind are caught up;
- the catch-up is smoothed: a second bucket lets at most 1.3 × the rate through (in
  grains of 10 ms), so what a stall held back goes out over the next moments, not in
  one burst (machine-limits §3: never a bucket of one second's capacity released at
  once, never capacity 1 at high rates);
- slots are taken from the buckets a grain at a time: `max(1, rate × 5 ms)` slots per wait,
  handed out to the callers waiting without waking them again. One timer per grain rather
  than per call: at 2,000/s, 200 timers a second instead of 2,000, and none shorter than
  a few ms, which uvloop's 1 ms clock would turn into a busy spin (machine-limits §3);
- both buckets start (and, after an idle spell, restart) nearly full rather than empty,
  so the first call goes at once and no start burst follows (aiolimiter's bucket starts
  empty: it would release its whole capacity at once);
- a sliding-window guard: the slot that would make more than `floor(rate)` calls within
  1.0025 × `floor(rate)/rate` seconds (a second, for a whole rate) waits, so no window of
  one second ever holds more calls than the rate, whatever the timers did;
- the guard counts a call until its answer (`sent()`, told by the sender when the call
  ends, and earlier by HTTP providers when their request has its connection), not only
  from its slot: wherever the receiver stamps a call's arrival, it is between the
  request and the answer, so a call that counts until its answer can never be stamped
  in a window the guard did not count it in. Then no 1 s window holds more than the
  rate's calls *where they arrive*, whatever the network or the receiver's own loop did
  between (a connection 15 ms to open, a receiver late 10 ms to its handler: both
  measured, both used to put a few calls over the rate at the gateway). The price is
  the answer's latency: the guard binds once a call takes longer than ~2.5 ms (the two
  margins below), and the achieved rate is then about rate / (1 + latency in s): 0.995
  at a local gateway, ~0.95 for a provider 50 ms away. (A call in flight for over a
  second leaves the window by its request's time: such a call has arrived long before.)
  The times kept are running maxima (a call's time is at least every earlier call's),
  so the oldest kept time bounds every call before it, however the requests were
  reordered;
- margins: the pace is 0.5 % under the rate (5 ms of slack per second of calls) and the
  guard's window 0.25 % over a second, so the guard only binds on a catch-up or when
  answers take more than a few ms (were it as tight as the pace, each late timer would
  push every later call back). The achieved rate is about 0.995 × the configured rate
  at a near receiver: within the 1 % the contract allows, on the safe side.

Slots are granted first come, first served (the `Turn` lock is FIFO), which makes a
campaign's pacer fair between its runs. Time is the event loop's (`loop.time()`, like
aiolimiter's): tests control it by controlling the loop.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections import deque
from collections.abc import Callable
from typing import Protocol

from aiolimiter import AsyncLimiter

from daemon.providers.settings import ProviderSettings
from daemon.store.pools import PROVIDER_POOL_PREFIX

# Rates above this keep no per-call window history (memory); the bucket alone limits them.
MAX_GUARDED_RATE = 100_000
# Slots come this much slower than the rate; the guard's window is GUARD_MARGIN longer
# than a second: the tolerance for jitter between a slot and the call's arrival.
MARGIN = 0.005
GUARD_MARGIN = 0.0025
BANK_SECONDS = 0.2  # calls held back by a stall that are still caught up
# At most this × the rate while catching up: a 100 ms window then holds at most
# CATCH_UP × rate × (0.1 + GRAIN_SECONDS) + a chunk = 0.148 × rate (goal < 0.15 × rate).
CATCH_UP = 1.3
GRAIN_SECONDS = 0.01  # the smoothing bucket's size, in time at the catch-up rate
CHUNK_SECONDS = 0.005  # slots taken from the buckets at once (at least one)


class _Bucket:
    """An aiolimiter bucket, taken `chunk` at a time, that restarts nearly full, not empty,
    after running dry."""

    def __init__(self, rate: float, seconds: float, chunk: int) -> None:
        self.capacity = max(2.0, rate * seconds, 2.0 * chunk)
        self.chunk = chunk
        self.limiter = AsyncLimiter(self.capacity, self.capacity / rate)

    async def acquire(self) -> None:
        if self.limiter.has_capacity(self.capacity):  # empty: first use, or idle a while
            await self.limiter.acquire(self.capacity - self.chunk)
        await self.limiter.acquire(self.chunk)


class Turn:
    """A first-come-first-served lock handed straight to the next waiter on release (the
    waiter does not take it again when it wakes, nor scan the queue): an `asyncio.Lock`'s
    order at about two thirds of its cost, paid once per paced call."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._held

    async def __aenter__(self) -> None:
        if not self._held:
            self._held = True
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed the turn as it was cancelled: pass it on
            elif waiter in self._waiters:  # (a release may have dropped it already)
                self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled waiter is skipped
                waiter.set_result(None)  # the turn is its now: still held
                return
        self._held = False


class Pacer:
    """Evenly spaced call slots at `rate` per second (see the module docstring)."""

    def __init__(self, rate: float, *, margin: float = MARGIN,
                 guard_margin: float = GUARD_MARGIN, whole_seconds: bool = False) -> None:
        self._margin = margin
        self._guard_margin = guard_margin
        # A share of a pool (fractional, summed with other daemons' shares): the guard holds
        # floor(rate) calls per whole second (one call per 1/rate s below 1/s), so that the
        # shares' sum, not only each share, stays within the pool in every 1 s window.
        self._whole_seconds = whole_seconds
        self._recent: deque[float] = deque(maxlen=1)
        self._configure(rate)
        self._turn = Turn()
        self._last = float("-inf")  # loop time of the last call
        self.granted = 0

    def _configure(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        paced = rate / (1.0 + self._margin)
        self._chunk = max(1, round(paced * CHUNK_SECONDS))
        self._pace = _Bucket(paced, BANK_SECONDS, self._chunk)
        self._smooth = _Bucket(paced * CATCH_UP, GRAIN_SECONDS, self._chunk)
        self._slots = 0  # taken from the buckets, not yet handed out
        guard = max(1, math.floor(rate)) if rate <= MAX_GUARDED_RATE else 0
        self._guard_size = guard
        self._guard_window = guard / rate * (1.0 + self._guard_margin)
        if self._whole_seconds and rate >= 1:
            self._guard_window = 1.0 + self._guard_margin
        # The calls of the last second are kept across a rate change (the newest ones).
        self._recent = deque(self._recent, maxlen=max(1, guard))

    def set_rate(self, rate: float) -> None:
        """Pace at `rate` from now on (SPEC §9.1, a live rate change). The last calls' times
        are kept, so the sliding-window guard holds the *new* rate for every window that
        ends at a call from now on: after a decrease the next call waits until the last
        second holds fewer calls than the new rate (no overshoot); after an increase the
        buckets restart nearly full, as at a start, and the catch-up bucket smooths them
        (no burst above 1.3 × the new rate in any 100 ms, none above the rate in any 1 s)."""
        if rate != self.rate:
            self._configure(rate)

    def turn(self) -> Turn:
        """`async with` it to hold the pacer (first come, first served) while taking the
        other gates; inside, `await token()`, the other gates, then `await window()` and
        `record()`. (The lock itself: a generator-based context manager costs more.)"""
        return self._turn

    async def token(self) -> None:
        """Wait for the pace (call inside `turn`)."""
        if self._slots == 0:
            await self._pace.acquire()
            await self._smooth.acquire()
            self._slots = self._chunk
        self._slots -= 1

    async def window(self) -> None:
        """Wait until a call now keeps every sliding window within the rate (inside `turn`)."""
        loop = asyncio.get_running_loop()
        # A loop: the rate may change while this waits (the guard then looks again).
        while self._guard_size and len(self._recent) >= self._guard_size:
            wait = self._recent[0] + self._guard_window - loop.time()
            if wait <= 0:
                return
            # Pacing on the loop's clock, as aiolimiter does: not a business wait.
            await asyncio.sleep(wait)

    def record(self) -> int:
        """The call is starting now (inside `turn`); its number, for `sent()`."""
        now = self._last = asyncio.get_running_loop().time()
        recent = self._recent
        if self._guard_size:
            recent.append(max(now, recent[-1]) if recent else now)
        self.granted += 1
        return self.granted

    def sent(self, number: int, at: float) -> None:
        """Call `number` was still out at `at` (loop time: its request went out then, or
        its answer came): from then on it counts from `at`, and so does every call after it
        that is kept (the times stay running maxima: the guard's oldest kept time bounds
        all calls before it). A call already out of the kept second lifts them all."""
        recent = self._recent
        size = len(recent)
        if not size:
            return
        index = max(0, size - (self.granted - number + 1))
        while index < size and recent[index] < at:
            recent[index] = at
            index += 1

    def excess(self, limit: int) -> tuple[int, float]:
        """Of the calls in the last window, how many are beyond `limit`, and for how long
        from now some still are (until the (limit+1)-th newest leaves the window): what
        this pacer may still be spending above a lower rate of `limit` per window, since
        after lowering its guard makes no call while the window holds `limit` or more
        (a pool's share given up frees only as fast as its last calls age: see
        `store/pools.py`). Call it before `set_rate` lowers the rate."""
        recent = self._recent
        if len(recent) <= limit:
            return 0, 0.0
        now = asyncio.get_running_loop().time()
        start = now - self._guard_window
        count = len(recent) - bisect.bisect_right(recent, start)
        if count <= limit:
            return 0, 0.0
        return count - limit, recent[len(recent) - limit - 1] + self._guard_window - now

    def idle_for(self) -> float:
        """Seconds since the last call."""
        return asyncio.get_running_loop().time() - self._last

    async def acquire(self) -> int:
        """One slot (token, window, record): for callers with no other gate to take; the
        call's number, for `sent()`."""
        async with self.turn():
            await self.token()
            await self.window()
            return self.record()


class SharedSlots(Protocol):
    """A rate shared with other daemons (a rate pool's share here: `PoolGate`)."""

    name: str

    async def slot(self) -> Callable[[float], None]:
        """Wait for a slot; returns what to call with the moment the request went out."""
        ...

    def valid(self) -> bool: ...


class ProviderGate:
    """What a provider's own settings impose: at most `concurrency` calls at once, at most
    `rate_per_second` calls (on every daemon together when `shared`: its own rate pool),
    and a pause after a 429 with Retry-After."""

    def __init__(self, name: str, concurrency: int, rate: float | None,
                 shared: SharedSlots | None = None) -> None:
        self.name = name
        self.concurrency = concurrency
        self.rate = rate
        self.semaphore = asyncio.Semaphore(concurrency)
        self.shared = shared
        self.pacer = Pacer(rate) if rate and shared is None else None
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
        if not self._paused_until:  # never paused, or the pause is over: no clock read
            return 0.0
        left = self._paused_until - asyncio.get_running_loop().time()
        if left <= 0:
            self._paused_until = 0.0
            return 0.0
        return left

    async def wait_unpaused(self) -> None:
        # A deadline that a later 429 may push back, not an event: look again after sleeping.
        while (left := self.paused_for()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)  # the provider asked for this wait (Retry-After)




def provider_pool_rate(settings: ProviderSettings) -> int | None:
    """The rate pool a provider's `rate_per_second` becomes across daemons (a whole rate of
    at least 1/s; a fractional one is paced per daemon)."""
    rate = settings.rate_per_second
    if rate is None or rate < 1 or not float(rate).is_integer():
        return None
    return int(rate)


class ProviderGates:
    """One gate per provider name, shared by every campaign using that provider; with
    `shared`, a provider's whole `rate_per_second` is a rate pool of its own
    (`provider:<name>`), held across every daemon on the database."""

    def __init__(self, shared: Callable[[str], SharedSlots] | None = None) -> None:
        self._shared = shared
        self._gates: dict[str, tuple[ProviderSettings, ProviderGate]] = {}

    def gate(self, name: str, settings: ProviderSettings) -> ProviderGate:
        """The gate of provider `name`; a new one if its settings changed (SIGHUP)."""
        known = self._gates.get(name)
        if known is not None and (known[0] is settings or known[0] == settings):
            return known[1]
        shared = (self._shared(PROVIDER_POOL_PREFIX + name)
                  if self._shared is not None and provider_pool_rate(settings) else None)
        gate = ProviderGate(name, settings.concurrency, settings.rate_per_second, shared)
        self._gates[name] = (settings, gate)
        return gate

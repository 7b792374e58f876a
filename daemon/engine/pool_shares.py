"""This daemon's side of the rate pools (SPEC §9.3): publish demand, take a share, pace by it.

One `PoolShares` per engine (an owned task, `engine.pools`). For each pool that a campaign
executing here names, it publishes the pool's demand on this daemon (each pooled campaign's
own rate, or the pool's, while it has something to send; 0 otherwise) with
`store.pools.share`, and paces every call of the pool's campaigns here through one
`PoolGate` at the share granted. It renews every `lease_ttl / 4`, at once when a demand
changes or a pool's NOTIFY comes (a rate change, another daemon's new demand), every
1.3 s while it holds less than its fair target (capacity another daemon gave up is free only
1.25 s after, see `store/pools.py`), and, while it wants more than it holds, the moment
another holder's row would expire unrenewed (a dead daemon's share is taken as soon as it
is free, not up to a renewal interval later).

The invariant is the store's: a holder spends at most its `granted`, lowered locally as soon
as the statement returns and raised only after it committed; so the pool's total never
exceeds its rate. Like a lease, a share is relied on only until `lease_ttl − max(1 s,
ttl/3)` after its last successful renewal: a daemon cut off from the database stops
spending before its row expires and its share goes to the others. A campaign that ends
here, and the daemon at its stop, give their share back (`leave`: released for a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from functools import partial

import structlog

from daemon.engine.pacing import Pacer
from daemon.engine.recording import DB_ERRORS, raise_if_cancelling
from daemon.infra.clock import Clock
from daemon.store import Pool
from daemon.store import pools as pool_store

CONVERGE_EVERY = pool_store.RELEASE_SECONDS + 0.05  # while below the fair target
# Added to how long a share given up is still being spent (`Pacer.excess`): a call's
# request may leave a little after its slot (a new connection: 7–15 ms) and arrive later
# than another daemon's (arrival jitter).
TIGHTEN_MARGIN = 0.05


class PoolGate:
    """Calls of a pool's campaigns on this daemon: at most the granted share per second."""

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.granted = 0.0
        self.pool_rate: float | None = None
        self.valid_until = float("-inf")  # monotonic
        self._pacer: Pacer | None = None
        self._granted = asyncio.Event()

    def grant(self, granted: float, valid_until: float) -> tuple[int, float] | None:
        """Spend at most `granted` calls/s from now until `valid_until` (monotonic). When
        this lowers the share: what the last second's calls still spend above it, and for
        how long (`Pacer.excess`), which is all the others must wait for."""
        lowered = None
        if self._pacer is not None and granted < self.granted:
            lowered = self._pacer.excess(math.floor(max(0.0, granted)))
        self.valid_until = valid_until
        self.granted = granted
        if granted <= 0:
            self._granted.clear()
            return lowered
        if self._pacer is None:
            self._pacer = Pacer(granted, whole_seconds=True)
        else:
            self._pacer.set_rate(granted)
        self._granted.set()
        return lowered

    def revoke(self) -> tuple[int, float] | None:
        return self.grant(0.0, float("-inf"))

    def valid(self) -> bool:
        """Whether a call of the pool may start now (the last check before it)."""
        return self.granted > 0 and self.clock.monotonic() < self.valid_until

    async def slot(self) -> Callable[[float], None]:
        """Wait for a share, then for the pool's next slot here; what to tell when the
        call's request went out (`Pacer.sent`: the pool counts it from then)."""
        while not self.valid():
            self._granted.clear()
            await self._granted.wait()
        pacer = self._pacer
        assert pacer is not None
        return partial(pacer.sent, await pacer.acquire())


class PoolShares:
    """Every pool this daemon's campaigns name: demand published, share taken and applied."""

    def __init__(self, db: Pool, clock: Clock, holder: str, ttl: float,
                 log: structlog.stdlib.BoundLogger) -> None:
        self.db = db
        self.clock = clock
        self.holder = holder
        self.ttl = ttl
        self.margin = min(max(1.0, ttl / 3), ttl / 2)
        self.log = log
        self.gates: dict[str, PoolGate] = {}
        self._demands: dict[str, dict[str, float]] = {}  # pool -> campaign -> demand
        self._published: dict[str, float] = {}
        self._leaving: set[str] = set()
        # pool -> (calls/s still spent above the share, until when: monotonic), to write
        self._tighten: dict[str, tuple[float, float]] = {}
        self._free_in: float | None = None
        self._others_expire: float | None = None  # monotonic: another holder's row expires
        self._wake = asyncio.Event()
        self._renewed = asyncio.Event()  # set after each round of share statements
        self._rounds = 0  # rounds begun; `_answered`: rounds ended
        self._answered = 0
        self._converging = False
        # Told when a pool's share here changed (the engine pokes its campaigns' workers,
        # which re-plan their runs for it).
        self.on_change: Callable[[str], None] | None = None

    def gate(self, pool: str) -> PoolGate:
        gate = self.gates.get(pool)
        if gate is None:
            gate = self.gates[pool] = PoolGate(pool, self.clock)
        return gate

    def set_demand(self, pool: str, campaign_id: str, demand: float) -> None:
        members = self._demands.setdefault(pool, {})
        self._leaving.discard(pool)
        if members.get(campaign_id) != demand:
            members[campaign_id] = demand
            self._wake.set()

    def drop(self, pool: str, campaign_id: str) -> None:
        """The campaign's worker here ended: its demand goes (the pool's, if it was the last)."""
        members = self._demands.get(pool)
        if members is None or campaign_id not in members:
            return
        del members[campaign_id]
        if not members:
            del self._demands[pool]
            self._published.pop(pool, None)
            self._leaving.add(pool)
            self._lowered(pool, self.gate(pool).revoke())
        self._wake.set()

    def _lowered(self, pool: str, excess: tuple[int, float] | None) -> None:
        if excess is not None:
            amount, seconds = excess
            self._tighten[pool] = (float(amount), self.clock.monotonic() + seconds)

    def share_of(self, pool: str, campaign_id: str) -> float | None:
        """The campaign's part of this daemon's share of the pool (calls/s), None while no
        share is held: the pool's share split in proportion to the campaigns' demands."""
        gate = self.gates.get(pool)
        members = self._demands.get(pool, {})
        demand = sum(members.values())
        if gate is None or not gate.valid() or demand <= 0 or campaign_id not in members:
            return None
        return gate.granted * members[campaign_id] / demand

    async def ask(self, pool: str, campaign_id: str, demand: float, within: float) -> None:
        """Publish `demand` now and wait, at most `within` seconds, for a round of share
        statements begun after it (a run about to start is then planned at its share)."""
        self.set_demand(pool, campaign_id, demand)
        wanted = self._rounds + 1
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._answered < wanted:
                    self._renewed.clear()
                    await self._renewed.wait()

    def notified(self, pool: str) -> None:
        """A pool's NOTIFY (its rate changed, another daemon's demand changed)."""
        if pool in self._demands:
            self._wake.set()

    async def run(self) -> None:
        while True:
            interval = self.ttl / 4
            if self._converging:  # look again when the capacity given up is free
                free_in = self._free_in
                interval = min(interval, CONVERGE_EVERY if free_in is None else free_in + 0.02)
            if self._others_expire is not None:  # a holder that stopped renewing: its share
                interval = min(interval,  # is free the moment its row expires
                               max(0.0, self._others_expire - self.clock.monotonic()) + 0.02)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            self._rounds += 1
            try:
                await self.renew()
            finally:
                self._answered = self._rounds
                self._renewed.set()

    async def renew(self) -> None:
        converging = False
        free_in: float | None = None
        others_expire: float | None = None
        for pool, members in list(self._demands.items()):
            demand = sum(members.values())
            changed = self._published.get(pool) != demand
            since = self.clock.monotonic()
            try:
                answer = await pool_store.share(self.db, pool, self.holder, demand, self.ttl,
                                                members, notify=changed)
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                self.log.warning("pool.share_failed", pool=pool, error=str(exc))
                continue  # the gate stops by itself when its share is no longer sure
            gate = self.gate(pool)
            if answer is None:  # the pool was deleted under us
                gate.revoke()
                continue
            before = gate.granted
            gate.pool_rate = answer.rate
            self._lowered(pool, gate.grant(answer.granted, since + self.ttl - self.margin))
            self._published[pool] = demand
            if answer.others_expire_in is not None and demand > answer.granted:
                expires = since + answer.others_expire_in
                others_expire = expires if others_expire is None else min(others_expire,
                                                                          expires)
            if answer.granted + 1e-6 < answer.target:
                converging = True
                if answer.free_in is not None:
                    free_in = (answer.free_in if free_in is None
                               else min(free_in, answer.free_in))
            if not math.isclose(before, answer.granted, rel_tol=0.01, abs_tol=0.01):
                if self.on_change is not None:
                    self.on_change(pool)
                self.log.info("pool.share_changed", pool=pool, granted=round(answer.granted, 3),
                              demand=demand, target=round(answer.target, 3),
                              pool_rate=answer.rate)
        self._converging, self._free_in = converging, free_in
        self._others_expire = others_expire
        if self._leaving:
            leaving, self._leaving = sorted(self._leaving), set()
            try:
                await pool_store.leave(self.db, self.holder, leaving)
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                self._leaving.update(leaving)  # next time; meanwhile the rows expire
        await self._write_tightened()

    async def _write_tightened(self) -> None:
        """Shorten the releases just written to what this daemon's last calls still spend
        above its new shares (the others may take it as soon as those calls are a second
        old, rather than after `RELEASE_SECONDS`). A failure leaves the longer one."""
        tighten, self._tighten = self._tighten, {}
        for pool, (amount, until) in tighten.items():
            if pool in self._leaving:  # its release is not written yet
                self._tighten[pool] = (amount, until)
                continue
            seconds = until - self.clock.monotonic() + TIGHTEN_MARGIN
            try:
                await pool_store.tighten(self.db, pool, self.holder, amount, seconds)
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)

    async def close(self) -> None:
        """At the daemon's stop: every share given back (released for a second)."""
        for gate in self.gates.values():
            gate.revoke()
        with contextlib.suppress(*DB_ERRORS):
            await pool_store.leave(self.db, self.holder)

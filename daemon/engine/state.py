"""What a campaign worker holds, in one place: the services every worker gets from the
engine, the lease it holds, and `WorkerState`, what its parts share.

The worker (`worker.py`) builds one `WorkerState` and hands it, with the few collaborators
each needs, to its parts: `control.py` (the control loop), `starting.py` (freezing and
activating due runs), `feeding.py` (claims), `senders.py` (the ready runs and the sender
tasks), `sending.py` (one provider call), `closing.py` (ending runs) and `demand.py` (the
campaign's demand on its rate pools). Each field of `WorkerState` says which part changes
it; the others only read it. What one part alone keeps (the start queue, the sender tasks,
the throttled error lines) stays private to that part.

The parts import this module, never `worker.py`, and this module imports no part: the
engine's imports point one way (worker → parts → state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from daemon.engine.delivery import DeliverySettings, RunExecution
from daemon.engine.pacing import ProviderGates
from daemon.engine.pool_shares import PoolShares
from daemon.engine.recording import DB_ERRORS, raise_if_cancelling
from daemon.engine.steering import Steering
from daemon.infra.clock import Clock
from daemon.infra.metrics import Metrics
from daemon.models import Channel
from daemon.planning.planner import PipelineSizes
from daemon.providers.base import Provider
from daemon.store import Pool
from daemon.store.engine import Campaign
from daemon.templates import CompiledContent, TemplateProblem

DB_RETRY_MAX = 5.0  # the longest pause between two tries of a failed database action


class Lease(Protocol):
    """The campaign's lease as the worker sees it: valid, or lost."""

    def valid(self) -> bool: ...


class ProviderSource(Protocol):
    """Where the worker finds the provider of a channel (the registry)."""

    def for_channel(self, channel: Channel) -> Provider: ...


@dataclass
class WorkerServices:
    """What every campaign worker shares (built by the engine)."""

    pool: Pool
    clock: Clock
    metrics: Metrics
    providers: ProviderSource
    gates: ProviderGates
    holder: str
    delivery: DeliverySettings
    unsubscribe_key: bytes | None
    checkpoint_interval: float
    time_cap: float
    pool_shares: PoolShares | None = None  # this daemon's side of the rate pools
    # Compiled templates by (channel, content): campaigns sharing a content compile it once.
    compiled: dict[tuple[str, str], CompiledContent | str] = field(default_factory=dict)

    def compile(self, campaign: Campaign) -> CompiledContent | str:
        """The campaign's content compiled (or why it does not compile)."""
        key = (campaign.channel.value, json.dumps(campaign.content, sort_keys=True))
        known = self.compiled.get(key)
        if known is None:
            try:
                known = CompiledContent.compile(campaign.channel, campaign.content)
            except TemplateProblem as exc:
                known = str(exc)
            if len(self.compiled) >= 1024:
                self.compiled.clear()
            self.compiled[key] = known
        return known


@dataclass(eq=False)
class WorkerState:
    """One campaign worker's shared state (built by the worker, one per worker)."""

    # -- set at construction, by the worker ------------------------------------------------
    services: WorkerServices
    lease: Lease  # valid or lost: the heartbeat (leases.py) decides, the parts only read it
    log: structlog.stdlib.BoundLogger  # bound to the campaign's id
    steering: Steering  # paused or live, the rate, re-plans: read (and applied) by control
    content: CompiledContent | None  # the campaign's compiled content (None: it does not
    content_error: str | None  # compile, and why: the runs fail with render_error)
    # -- changed by control, on a live rate change (SPEC §9.1) ----------------------------
    campaign: Campaign
    sizes: PipelineSizes  # senders, claim window and batches, for the campaign's rate
    # -- derived at construction ------------------------------------------------------------
    clock: Clock = field(init=False)
    campaign_variables: dict[str, Any] = field(init=False)  # `campaign` in the templates
    # -- the runs in execution ------------------------------------------------------------
    # run id -> its execution: added by starting (`add`: a start, or an adoption by
    # control), removed by closing (`forget`). Each run's queue is filled by feeding and
    # emptied by senders; its counts are set by the writes (feeding.written) and chunks
    # (starting); its state moves WAITING → ACTIVE (starting) → CLOSING → DONE (closing).
    runs: dict[str, RunExecution] = field(default_factory=dict)
    # Being started (taken from the scheduler, not yet in `runs`): starting.
    starting: set[str] = field(default_factory=set)
    # Runs ended here lately, oldest first (a stale read must not adopt them): closing.
    ended: dict[str, None] = field(default_factory=dict)
    # run id -> the task closing it: closing adds and removes; the worker settles them.
    closing: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # -- the worker's life --------------------------------------------------------------------
    group: asyncio.TaskGroup | None = None  # the worker's TaskGroup, set by the worker's run
    # No call may start any more: set by the worker at its stop, and by sending when it
    # finds the lease lost.
    stopping: bool = False
    # -- recipients between the claims and the calls ----------------------------------------
    # The active runs with queued recipients, round-robin: senders (mark_ready, take).
    ready: deque[RunExecution] = field(default_factory=deque)
    work: asyncio.Event = field(default_factory=asyncio.Event)  # senders: work is queued
    # The sender tasks inside a provider call: sending adds and discards; senders read it.
    calling: set[asyncio.Task[None]] = field(default_factory=set)
    # Claims to release at the stop (run id, position): senders (give_back, drain) add,
    # feeding releases them.
    unstarted: list[tuple[str, int]] = field(default_factory=list)
    # Push tokens the provider reported dead (profile id, token): sending adds, feeding
    # removes them from the profiles.
    dead_tokens: list[tuple[str, str]] = field(default_factory=list)
    abandoned: int = 0  # calls cut by a forced stop: sending counts, the worker logs them
    # -- wakes --------------------------------------------------------------------------------
    # Claim now: set by any part (a sender running low, a write, a start, a chunk, a
    # close); feeding waits on it and clears it.
    feeder_wake: asyncio.Event = field(default_factory=asyncio.Event)
    # Look at the runs now: set by any part (a poke, a start with a deadline, a close
    # ending, a lost lease); control waits on it and clears it.
    control_wake: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.clock = self.services.clock
        campaign = self.campaign
        self.campaign_variables = {
            "id": campaign.id, "name": campaign.name, "channel": campaign.channel.value}

    def wake_feeder(self) -> None:
        self.feeder_wake.set()

    def wake_control(self) -> None:
        """Re-check the runs now (a NOTIFY, a new trigger, a sender saw something)."""
        self.control_wake.set()

    async def retrying(self, action: Callable[[], Awaitable[None]], what: str) -> None:
        """Run `action`; on a database error, log it and try again (backing off)."""
        delay = 0.1
        while True:
            try:
                await action()
                return
            except DB_ERRORS as exc:
                raise_if_cancelling(exc)
                self.log.warning("engine.database_error", action=what, error=str(exc),
                                 retry_in=round(delay, 2))
            await self.clock.sleep(delay)
            delay = min(delay * 2, DB_RETRY_MAX)


async def wait(event: asyncio.Event, seconds: float | None) -> None:
    """Until `event` is set or `seconds` (a span the caller took from the clock) pass.

    The span runs on the event loop's timer (what the system clock's sleep does too),
    with no task of its own: a worker's loops wait this way, and thousands of workers
    must not mean thousands of extra tasks (machine-limits §6)."""
    if event.is_set() or (seconds is not None and seconds <= 0):
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


# What the parts hand each other as a small callback: a run has recipients queued.
MarkReady = Callable[[RunExecution], None]

"""The run engine, a daemon stage: leases (`leases.py`), scheduler, listener, pool shares,
campaign workers.

Every instance runs a scheduler; a campaign's runs are executed by the instance
holding its lease (`engine_leases`, expiry in database time). The holder renews all
its leases in one statement every `lease_ttl / 4`, and stops calling providers for a
campaign once `lease_ttl − max(1 s, lease_ttl/3)` has passed since its last successful
renewal: well before another instance could take the lease over. A worker that ends
(nothing left, or stop) lets its lease expire one second later, so the next holder's
first call comes at least a second after our last one and the rate's one-second
windows hold across the hand-over.

A restart is quick to resume: `<state_dir>/engine.lock` is held (flock) by the live
daemon of that state dir, and `<state_dir>/engine.holder` names its lease holder. A
daemon that gets the lock knows the holder named there is dead (the kernel frees the
lock of a killed process), so it lets that holder's leases expire one second later
instead of waiting out `lease_ttl`.

Stop (the service calls `stop` after the HTTP server is down): the scheduler, listener
and heartbeat stop; every worker stops claiming, lets its calls in flight finish
within the grace (or until forced), writes every outcome and releases the claims it
never sent; the leases are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING

from daemon import unsubscribe
from daemon.engine.delivery import DeliverySettings
from daemon.engine.leases import (
    RELEASE_LINGER,
    Heartbeat,
    HeldLease,
    claim_incarnation,
)
from daemon.engine.pacing import Pacer, ProviderGates, provider_pool_rate
from daemon.engine.pool_shares import PoolShares
from daemon.engine.recording import DB_ERRORS, raise_if_cancelling
from daemon.engine.scheduler import Scheduler
from daemon.engine.state import ProviderSource, WorkerServices
from daemon.engine.worker import CampaignWorker
from daemon.infra.config import Config
from daemon.infra.logs import get_logger
from daemon.store import engine as engine_store
from daemon.store import leases
from daemon.store import pools as pool_store
from daemon.store.control import CAMPAIGN_PREFIX
from daemon.store.engine import RunRow
from daemon.store.listen import Listener
from daemon.store.pools import POOLS_CHANNEL

if TYPE_CHECKING:
    from daemon.api.context import AppContext

log = get_logger(__name__)

SERVICE_NAME = "engine"
RUNS_CHANNEL = "campaignd_runs"
CONTROL_CHANNEL = "campaignd_control"


class Engine:
    """The stage: start() once the pool exists, stop(grace, force) drains."""

    name = "engine"

    def __init__(self, ctx: AppContext, *, providers: ProviderSource | None = None,
                 holder: str | None = None) -> None:
        self.ctx = ctx
        self.clock = ctx.clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_ttl = ctx.config.engine.lease_ttl
        self._given_providers = providers
        self._own_registry: object | None = None
        self._workers: dict[str, CampaignWorker | None] = {}
        self.heartbeat = Heartbeat(ctx.pool, ctx.clock, self.holder, self.lease_ttl,
                                   self._lease_lost)
        self._leases = self.heartbeat.held
        self._pacers: dict[str, Pacer] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._grace = ctx.config.server.shutdown_grace
        self._main: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self.scheduler = Scheduler(ctx.pool, ctx.clock, self.holder, self.start_worker,
                                   ctx.config.limits.max_inline_recipients)
        self.services: WorkerServices | None = None
        self._lock_file: IO[str] | None = None

    # -- stage --------------------------------------------------------------------------------

    async def start(self) -> None:
        providers = self._given_providers or self.ctx.services.get("providers")
        if providers is None:
            from daemon.providers.registry import ProviderRegistry

            registry = ProviderRegistry(self.ctx.config, clock=self.clock)
            await registry.start()
            self._own_registry = registry
            providers = registry
        config = self.ctx.config
        shares = PoolShares(self.ctx.pool, self.clock, self.holder, self.lease_ttl,
                            log.bind(holder=self.holder))
        self.services = WorkerServices(
            pool=self.ctx.pool, clock=self.clock, metrics=self.ctx.metrics,
            providers=providers, gates=ProviderGates(shares.gate), holder=self.holder,
            delivery=DeliverySettings.from_config(config),
            unsubscribe_key=await unsubscribe.load_key(self.ctx.pool),
            checkpoint_interval=config.engine.checkpoint_interval,
            time_cap=config.limits.time_cap,
            pool_shares=shares,
        )
        await self._provider_pools(config)
        await self._reclaim()
        self.ctx.services[SERVICE_NAME] = self
        self._main = asyncio.get_running_loop().create_task(self._supervise(), name="engine")
        self._main.add_done_callback(self._main_done)
        log.info("engine.started", holder=self.holder, lease_ttl=self.lease_ttl)

    async def _reclaim(self) -> None:
        """Free the leases of our previous incarnation, known dead (see the module doc)."""
        lock, previous = await asyncio.to_thread(
            claim_incarnation, Path(self.ctx.config.state_dir), self.holder)
        self._lock_file = lock
        if previous is None or previous == self.holder:
            return
        freed = await leases.release_all(self.ctx.pool, previous, RELEASE_LINGER)
        if freed:
            log.info("lease.reclaimed", previous_holder=previous, campaigns=freed)

    async def stop(self, grace: float, force: asyncio.Event) -> None:
        self._grace = grace
        relay = asyncio.get_running_loop().create_task(self._relay(force), name="engine.force")
        self._stop.set()
        try:
            if self._main is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._main)
        finally:
            relay.cancel()
            if self._lock_file is not None:
                self._lock_file.close()
            registry = self._own_registry
            if registry is not None:
                from daemon.providers.registry import ProviderRegistry

                assert isinstance(registry, ProviderRegistry)
                await registry.close()
        log.info("engine.stopped")

    async def _relay(self, force: asyncio.Event) -> None:
        await force.wait()
        self._force.set()

    async def _provider_pools(self, config: Config) -> None:
        """Each provider's whole `rate_per_second` as a rate pool across daemons (SPEC §9.3):
        `provider:<name>`, at the rate of the configuration last started or reloaded."""
        for name, settings in config.providers.items():
            rate = provider_pool_rate(settings)
            if rate is not None:
                await pool_store.put(self.ctx.pool, pool_store.PROVIDER_POOL_PREFIX + name, rate,
                                     self.clock.now())

    async def reload(self, config: Config) -> None:
        with contextlib.suppress(*DB_ERRORS):
            await self._provider_pools(config)
        if self.services is not None:
            self.services.delivery = DeliverySettings.from_config(config)
            self.services.checkpoint_interval = config.engine.checkpoint_interval
            self.services.time_cap = config.limits.time_cap
        registry = self._own_registry
        if registry is not None:
            from daemon.providers.registry import ProviderRegistry

            assert isinstance(registry, ProviderRegistry)
            await registry.reload(config)

    def _main_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.critical("engine.failed", error=repr(task.exception()), exc_info=task.exception())
        # A dead engine must not leave a daemon that accepts triggers it will never run:
        # the daemon stops, and exits 1 (systemd restarts it).
        self.ctx.lifecycle.failed = "engine"
        signal.raise_signal(signal.SIGTERM)

    # -- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        assert self.services is not None and self.services.pool_shares is not None
        shares = self.services.pool_shares
        shares.on_change = self._pool_changed
        listener = Listener(
            self.ctx.pool, self.clock,
            {RUNS_CHANNEL: self.scheduler.run_created, CONTROL_CHANNEL: self._control,
             POOLS_CHANNEL: shares.notified},
            on_connect=self._reconnected,
        )
        async with asyncio.TaskGroup() as group:
            self._group = group
            background = [
                group.create_task(listener.run(), name="engine.listener"),
                group.create_task(self.scheduler.run(), name="engine.scheduler"),
                group.create_task(self.heartbeat.run(), name="engine.heartbeat"),
                group.create_task(shares.run(), name="engine.pools"),
            ]
            await self._stop.wait()
            for task in background:
                task.cancel()
        self._group = None
        await shares.close()  # every worker has ended: our shares go back to the others

    def _reconnected(self) -> None:
        self.scheduler.wake()
        for worker in self._workers.values():
            if worker is not None:
                worker.poke()

    def _control(self, run_id: str) -> None:
        """A NOTIFY on the control channel (cancel, stop: a run id; pause, resume, a new
        rate: `campaign:<id>`): the worker holding it re-reads."""
        if run_id.startswith(CAMPAIGN_PREFIX):
            worker = self._workers.get(run_id.removeprefix(CAMPAIGN_PREFIX))
            if worker is not None:
                worker.poke()
            self.scheduler.wake()  # a resumed campaign's due runs
            return
        for worker in self._workers.values():
            if worker is not None and (run_id in worker.runs or not run_id):
                worker.poke()
                return
        for worker in self._workers.values():  # not known yet (starting): everyone looks
            if worker is not None:
                worker.poke()

    def _pool_changed(self, pool: str) -> None:
        """Our share of a pool moved: its campaigns' workers look again (re-plans)."""
        for worker in self._workers.values():
            if worker is not None and worker.campaign.rate_pool == pool:
                worker.poke()

    def start_worker(self, campaign_id: str, runs: list[RunRow]) -> None:
        """The scheduler found work for this campaign (and these runs due to start): hand
        them to its worker, or start one."""
        if campaign_id in self._workers:
            worker = self._workers[campaign_id]
            if worker is not None:
                worker.offer(runs)
            return
        if self._group is None or self._stop.is_set():
            return
        self._workers[campaign_id] = None
        self._group.create_task(self._run_worker(campaign_id), name=f"worker:{campaign_id}")

    async def _run_worker(self, campaign_id: str) -> None:
        assert self.services is not None
        lease: HeldLease | None = None
        try:
            since = self.clock.monotonic()
            generation, campaign = await engine_store.take_campaign(
                self.ctx.pool, campaign_id, self.holder, self.lease_ttl)
            if generation is None or campaign is None:
                return  # another live instance holds it (or the campaign is gone)
            lease = HeldLease(self.clock, self.lease_ttl, campaign_id, generation, since)
            self._leases[campaign_id] = lease
            log.info("lease.acquired", campaign_id=campaign_id, generation=generation)
            worker = CampaignWorker(self.services, campaign, lease, self._pacer(campaign_id,
                                    campaign.rate_per_second))
            self._workers[campaign_id] = worker
            await worker.run(self._stop, lambda: self._grace, self._force)
        except DB_ERRORS as exc:
            raise_if_cancelling(exc)
            log.warning("engine.database_error", action="worker", campaign_id=campaign_id,
                        error=str(exc))
        finally:
            self._workers.pop(campaign_id, None)
            self._leases.pop(campaign_id, None)
            if lease is not None and lease.valid():
                with contextlib.suppress(*DB_ERRORS):
                    await leases.release(self.ctx.pool, self.holder, [campaign_id],
                                         RELEASE_LINGER)
            self.scheduler.wake()

    def _pacer(self, campaign_id: str, rate: int | None) -> Pacer | None:
        """The campaign's pacer on this instance: kept across its workers, so a new worker
        for the same campaign continues the same windows."""
        if rate is None:
            self._pacers.pop(campaign_id, None)
            return None
        for other, pacer in list(self._pacers.items()):  # forget the long idle ones
            if other != campaign_id and other not in self._workers and pacer.idle_for() > 5.0:
                del self._pacers[other]
        known = self._pacers.get(campaign_id)
        if known is not None and known.rate == rate:
            return known
        pacer = self._pacers[campaign_id] = Pacer(rate)
        return pacer

    def _lease_lost(self, campaign_id: str) -> None:
        """Taken over (the heartbeat found it gone): its worker logs lease.lost and stops."""
        worker = self._workers.get(campaign_id)
        if worker is not None:
            worker.poke()


def stage(ctx: AppContext) -> Engine:
    """The factory for `daemon.stages`."""
    return Engine(ctx)

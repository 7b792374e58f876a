"""The composition root: open resources in order, run the stages, close them in reverse.

Start order (each step's undo is pushed on one exit stack, so it runs in reverse):
  1. the database (embedded PostgreSQL or `database.url`) and its pool
  2. migrations, under an advisory lock (unless --no-migrate)
  3. the admin token, on first start
  4. the stages (providers, engine, ... attached by later modules), started in order
  5. the HTTP server; then READY=1 to systemd and the watchdog

Stop (SIGTERM/SIGINT; a second signal skips the grace):
  a. mark the daemon stopping: new requests get 503; STOPPING=1 to systemd
  b. stop the HTTP server (requests in flight finish within `server.shutdown_grace`)
  c. stop the stages in reverse order, each draining its provider calls within the grace
     and checkpointing what they did
  d. close the pool, then release the embedded server
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiohttp import web

from daemon.api.app import build_app
from daemon.api.context import AppContext
from daemon.errors import CampaigndError
from daemon.infra import config as config_module
from daemon.infra import logs, migrate
from daemon.infra.bootstrap import ensure_admin_token
from daemon.infra.clock import Clock, SystemClock
from daemon.infra.config import Config
from daemon.infra.database import Pool, open_database
from daemon.infra.logs import get_logger
from daemon.infra.metrics import Metrics
from daemon.infra.systemd import Notifier

log = get_logger(__name__)


class Stage(Protocol):
    """A long-running part of the daemon (the engine, the providers...)."""

    name: str

    async def start(self) -> None:
        """Start its tasks; return once it is running."""

    async def stop(self, grace: float, force: asyncio.Event) -> None:
        """Stop taking work, drain within `grace` seconds (or until `force`), then cancel."""

    async def reload(self, config: Config) -> None:
        """Apply a reloaded config (SIGHUP); ignore what does not concern it."""


# A factory builds a stage once the pool and the app context exist.
StageFactory = Callable[[AppContext], Stage]


@dataclass
class Daemon:
    config: Config
    clock: Clock = field(default_factory=SystemClock)
    apply_migrations: bool = True
    stage_factories: list[StageFactory] = field(default_factory=list)
    notifier: Notifier = field(default_factory=lambda: Notifier(*config_module.systemd_environ()))

    def __post_init__(self) -> None:
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._stages: list[Stage] = []
        self.context: AppContext | None = None

    # -- signals -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        if self._stop.is_set():
            log.warning("daemon.stop_forced")
            self._force.set()
        else:
            log.info("daemon.stopping")
            self._stop.set()

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload(), name="daemon.reload")
        self._reload_tasks.add(task)
        task.add_done_callback(self._reload_tasks.discard)

    async def _reload(self) -> None:
        try:
            new = await asyncio.to_thread(config_module.load, self.config.source)
        except config_module.ConfigError as exc:
            log.error("config.reload_failed", problems=exc.problems)
            return
        logs.set_level(new.log.level)
        for stage in self._stages:
            await stage.reload(new)
        log.info("config.reloaded", log_level=new.log.level)

    # -- run ---------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped; returns the exit code."""
        self._reload_tasks: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        config = self.config
        async with AsyncExitStack() as stack:
            pool: Pool = await stack.enter_async_context(open_database(config))
            if self.apply_migrations:
                await migrate.apply(pool)
            await ensure_admin_token(pool, Path(config.state_dir))
            ctx = AppContext(config=config, pool=pool, clock=self.clock, metrics=Metrics())
            self.context = ctx
            for factory in self.stage_factories:
                stage = factory(ctx)
                await stage.start()
                self._stages.append(stage)
                stack.push_async_callback(self._stop_stage, stage)
            runner = web.AppRunner(
                build_app(ctx),
                handle_signals=False,
                access_log=None,
                shutdown_timeout=config.server.shutdown_grace,
            )
            await runner.setup()
            # Pushed last, popped first: the HTTP server stops before the stages drain (b, c),
            # after `stopping` made it refuse new work (a).
            stack.push_async_callback(runner.cleanup)
            site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                where = f"{config.server.host}:{config.server.port}"
                raise CampaigndError(f"cannot listen on {where}: {exc.strerror}") from None
            log.info("server.listening", host=config.server.host, port=_bound_port(runner),
                     state_dir=str(config.state_dir))
            self.notifier.notify("READY=1")
            async with asyncio.TaskGroup() as group:
                watchdog = group.create_task(self._watchdog(), name="daemon.watchdog")
                await self._stop.wait()
                watchdog.cancel()
            ctx.lifecycle.stopping = True
            self.notifier.notify("STOPPING=1")
        for task in list(self._reload_tasks):
            task.cancel()
        self.notifier.close()
        # We are exiting: a late signal must not turn exit code 0 into death by signal
        # (closing the loop would otherwise restore the default handlers).
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
        failed = ctx.lifecycle.failed
        log.info("daemon.stopped", failed=failed)
        return 1 if failed else 0

    async def _stop_stage(self, stage: Stage) -> None:
        await stage.stop(self.config.server.shutdown_grace, self._force)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)  # a liveness beat, not business time


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return None

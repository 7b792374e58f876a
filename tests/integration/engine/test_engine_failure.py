"""A dead engine stops the daemon with exit code 1 (systemd's Restart=on-failure restarts
it; exit 0, as before, left it stopped)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from daemon.engine.scheduler import Scheduler
from daemon.infra.config import Config
from daemon.service import Daemon
from daemon.stages import default_stages


class _Boom(RuntimeError):
    pass


async def test_an_engine_that_dies_makes_the_daemon_exit_1(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def dies(self: Scheduler) -> None:
        await asyncio.sleep(0.2)
        raise _Boom("the scheduler failed")

    monkeypatch.setattr(Scheduler, "run", dies)  # the fault injected; the daemon is real
    config = Config.model_validate({
        "database": {"url": database_url}, "state_dir": str(tmp_path),
        "server": {"host": "127.0.0.1", "port": 0},
    })
    daemon = Daemon(config, stage_factories=default_stages())
    # The daemon ignores the signals once it exits (SIG_IGN, inherited by every process the
    # later tests start, which could then not be stopped): restored for them.
    saved = {signum: signal.getsignal(signum)
             for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(60):
            code = await daemon.run()
    finally:
        for signum, handler in saved.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)
    assert code == 1
    assert daemon.context is not None and daemon.context.lifecycle.failed == "engine"

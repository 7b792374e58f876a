"""The admin CLI as a user runs it: migrate, tokens create/list/revoke, SIGHUP reload."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.acceptance.conftest import DaemonFactory


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "cli.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[database]\nurl = "{database_url}"\n')
    return path


async def test_migrate_then_tokens_lifecycle(empty_database_url: str, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, empty_database_url))
    code, out, err = await cli("migrate", "--config", config)
    assert code == 0, err
    assert "applied 0001_foundation" in out
    code, out, _ = await cli("migrate", "--config", config)
    assert code == 0 and "up to date" in out

    code, out, err = await cli("tokens", "create", "deploy-bot", "--scope", "trigger",
                               "--config", config)
    assert code == 0, err
    token = out.strip()
    assert token.startswith("cmpd_") and len(token) > 40

    code, out, _ = await cli("tokens", "create", "deploy-bot", "--config", config)
    assert code == 1 and out == ""

    code, out, _ = await cli("tokens", "list", "--config", config)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("deploy-bot"))
    assert "trigger" in line and "active" in line and token not in out

    code, out, _ = await cli("tokens", "revoke", "deploy-bot", "--config", config)
    assert code == 0
    code, out, _ = await cli("tokens", "list", "--config", config)
    assert "revoked" in next(line for line in out.splitlines() if line.startswith("deploy-bot"))
    code, _, err = await cli("tokens", "revoke", "deploy-bot", "--config", config)
    assert code == 1 and "no active token" in err


async def test_sighup_reloads_the_log_level(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory('[log]\nlevel = "info"\n')
    await daemon.start()
    text = daemon.config_path.read_text().replace('level = "info"', 'level = "debug"')
    daemon.config_path.write_text(text)
    await daemon.signal(signal.SIGHUP)
    reloaded = await daemon.wait_for_event("config.reloaded")
    assert reloaded[0]["log_level"] == "debug"

    # A broken file on SIGHUP is reported and the daemon keeps running on the old config.
    daemon.config_path.write_text(text + "\n[limits]\nbogus = 1\n")
    await daemon.signal(signal.SIGHUP)
    failed = await daemon.wait_for_event("config.reload_failed")
    assert any("bogus" in problem for problem in failed[0]["problems"])
    async with daemon.client() as http, http.get("/healthz") as response:
        assert response.status == 200
    assert await daemon.terminate() == 0

"""The real daemon as a subprocess: `daemon_factory` starts `campaignd run` on a fresh database.

    async def test_x(daemon_factory):
        daemon = daemon_factory('[limits]\ntime_cap = "5s"\n')   # extra TOML, optional
        await daemon.start()                  # returns once /readyz answers 200
        async with daemon.client() as http:   # aiohttp session with the admin token
            ...
        assert await daemon.terminate() == 0  # SIGTERM, exit code
        daemon.events("run.finished")         # parsed JSON log lines by event name
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

READY_TIMEOUT = 90.0


class DaemonProcess:
    """One `campaignd run` subprocess with its own state dir and log file."""

    def __init__(self, folder: Path, config_text: str, env: dict[str, str],
                 siblings: list[DaemonProcess] | None = None) -> None:
        self.folder = folder
        # Daemons of one test on one database: only the first to start writes the
        # admin-token file (the others find a token already there); they share it.
        self.siblings = siblings if siblings is not None else []
        self.state_dir = folder / "state"
        self.config_path = folder / "campaignd.toml"
        self.log_path = folder / "daemon.log"
        self.config_path.write_text(config_text)
        self.env = env
        self.embedded = False
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self._log_file: Any = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        assert self.port is not None, "daemon not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        for daemon in [self, *self.siblings]:
            path = daemon.state_dir / "admin-token"
            if path.exists():
                return path.read_text().strip()
        raise AssertionError("no daemon of this test wrote an admin-token file")

    async def start(self, *extra_args: str, wait_ready: bool = True) -> None:
        """Start the process; with `wait_ready`, return once /readyz answers 200."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = self.log_path.open("ab")
        self.port = None
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(self.config_path), *extra_args,
            stdout=self._log_file, stderr=asyncio.subprocess.STDOUT, env=self.env,
            start_new_session=True,
        )
        if wait_ready:
            await self.wait_ready()

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while self.port is None:
                self._check_alive()
                for event in self.events("server.listening", since_start=True):
                    self.port = int(event["port"])
                await asyncio.sleep(0.05)
            async with aiohttp.ClientSession() as session:
                while True:
                    self._check_alive()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(self.url + "/readyz") as response:
                            if response.status == 200:
                                return
                    await asyncio.sleep(0.05)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.returncode is not None:
            raise AssertionError(
                f"daemon exited with {self.process.returncode}:\n{self.log_text()[-4000:]}"
            )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None, *, since_start: bool = False) -> list[dict[str, Any]]:
        """Parsed JSON log lines (optionally only `name`, only since the last start)."""
        if not self.log_path.exists():
            return []
        raw = self.log_path.read_bytes()
        if since_start:
            raw = raw[self._log_offset:]
        found = []
        for line in raw.decode(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    async def wait_for_event(self, name: str, timeout: float = 30.0,
                             count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(found := self.events(name, since_start=True)) < count:
                self._check_alive()
                await asyncio.sleep(0.05)
        return found

    async def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        self._close_log()
        return code

    async def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; the exit code."""
        await self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        """SIGKILL (a crash): nothing is cleaned up."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @contextlib.asynccontextmanager
    async def client(self, token: str | None = None) -> AsyncIterator[aiohttp.ClientSession]:
        """An HTTP session on the daemon, authenticated with `token` (default: admin)."""
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        async with aiohttp.ClientSession(self.url, headers=headers) as session:
            yield session


DaemonFactory = Callable[..., DaemonProcess]


@pytest.fixture
async def daemon_factory(
    tmp_path: Path, database_url: str
) -> AsyncIterator[DaemonFactory]:
    """Build daemons on the test's fresh database (or the embedded default: `embedded=True`).

    Several daemons built by one test share the database (scale-out tests) unless
    `embedded=True`, where each has its own state dir and embedded server.
    """
    daemons: list[DaemonProcess] = []

    def factory(extra_config: str = "", *, embedded: bool = False,
                env: dict[str, str] | None = None) -> DaemonProcess:
        folder = tmp_path / f"daemon{len(daemons)}"
        folder.mkdir()
        lines = [f'state_dir = "{folder / "state"}"']
        lines += ["[server]", 'host = "127.0.0.1"', "port = 0", 'shutdown_grace = "10s"']
        if not embedded:
            lines += ["[database]", f'url = "{database_url}"']
        config_text = "\n".join(lines) + "\n" + extra_config
        merged = _merge_toml_sections(config_text)
        process_env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")}
        process_env.update(env or {})
        shared = [] if embedded else [d for d in daemons if not d.embedded]
        daemon = DaemonProcess(folder, merged, process_env, shared)
        daemon.embedded = embedded
        for sibling in shared:
            sibling.siblings.append(daemon)
        daemons.append(daemon)
        return daemon

    yield factory
    for daemon in daemons:
        if daemon.process is not None and daemon.process.returncode is None:
            await daemon.kill()
        daemon._close_log()


def _merge_toml_sections(text: str) -> str:
    """Merge repeated [section] headers (our defaults + a test's extra) into one each;
    a key set again by the extra text replaces the default."""
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            current = stripped
            sections.setdefault(current, [])
            continue
        sections[current].append(line)
    out = _last_key_wins(sections.pop(""))
    for header, body in sections.items():
        out += [header, *_last_key_wins(body)]
    return "\n".join(out) + "\n"


def _last_key_wins(lines: list[str]) -> list[str]:
    """Drop earlier `key = ...` lines that a later line sets again (a test's override)."""
    keys = [line.split("=", 1)[0].strip() if "=" in line else None for line in lines]
    return [
        line for index, (line, key) in enumerate(zip(lines, keys, strict=True))
        if key is None or key not in keys[index + 1:]
    ]

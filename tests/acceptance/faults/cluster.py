"""A private PostgreSQL cluster a test (or the soak bench) makes, so it may stop and restart it.

`initdb`/`pg_ctl` of the machine's binaries (/usr/lib/postgresql/*/bin, the newest), run as
the `postgres` user when we are root (PostgreSQL refuses to run as root), in a temp dir of
its own with its own free port and socket dir. Never the machine's shared server.

    cluster = PrivateCluster()
    await cluster.start()                  # initdb on first start
    await cluster.stop("immediate")        # or "fast"
    await cluster.restart("fast")
    await cluster.destroy()                # stop (immediate) and remove the folder
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Literal

StopMode = Literal["fast", "immediate"]


class ClusterError(RuntimeError):
    """An initdb/pg_ctl command failed (its stderr is the message)."""


def _binaries() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not found:
        raise ClusterError("no /usr/lib/postgresql/*/bin: cannot make a private cluster")
    return found[-1]


def available() -> bool:
    """Whether a private cluster can be made here (the binaries, and a user to run them)."""
    try:
        _binaries()
    except ClusterError:
        return False
    return os.geteuid() != 0 or shutil.which("runuser") is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateCluster:
    """One cluster: `url` names its `postgres` database (trust auth, 127.0.0.1:`port`)."""

    # Fast, not durable: a test's cluster dies with the test. `synchronous_commit=off` is
    # also the server an operator may run: the daemon sets it on for its own sessions
    # (daemon/infra/database.py), and the immediate restart shows that it must.
    FAST = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"

    def __init__(self, prefix: str = "campaignd-pg-", settings: str = FAST) -> None:
        self.settings = settings  # server options given to pg_ctl start
        self.bin = _binaries()
        self.folder = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.folder / "data"
        self.log = self.folder / "log"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    async def _run(self, *command: str) -> None:
        full = [str(self.bin / command[0]), *command[1:]]
        if os.geteuid() == 0:
            full = ["runuser", "-u", "postgres", "--", *full]
        # Output to files, not pipes: a started postmaster must not hold our pipe open.
        out = self.folder / "pg_ctl.out"
        with out.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                *full, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
                cwd=self.folder)
            async with asyncio.timeout(120):
                code = await process.wait()
        if code != 0:
            raise ClusterError(f"{command[0]} {command[1]} failed ({code}): "
                               f"{out.read_text(errors='replace')[-800:]}")

    async def start(self) -> None:
        """Start (after initdb, the first time); returns once it accepts connections."""
        if not self.data.exists():
            if os.geteuid() == 0:
                shutil.chown(self.folder, "postgres")
            await self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                            "--no-sync", "-E", "UTF8", "--locale", "C")
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   f"{self.settings}")
        await self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                        "-o", options, "-l", str(self.log))
        self.running = True

    async def stop(self, mode: StopMode = "fast") -> None:
        """`fast`: clients are disconnected, a clean shutdown; `immediate`: a crash (recovery
        at the next start)."""
        await self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data))
        self.running = False

    async def restart(self, mode: StopMode = "fast") -> None:
        await self.stop(mode)
        await self.start()

    async def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(ClusterError, TimeoutError):
                await self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

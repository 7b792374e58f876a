"""What the fault suite watches from outside: the gateway process, the run report on every
poll, /readyz, the daemon's asyncio tasks (/metrics) and its connections (pg_stat_activity)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from tests.acceptance.conftest import DaemonProcess

ROOT = Path(__file__).resolve().parents[3]


def busiest(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any half-open window [t, t + width)."""
    ordered = sorted(times)
    best = start = 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


class GatewayProcess:
    """`python -m tests.acceptance.faults.gateway` in its own process."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.base = ""

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.acceptance.faults.gateway", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        assert self.process.stdout is not None
        async with asyncio.timeout(30):
            port = int((await self.process.stdout.readline()).decode().strip())
        self.base = f"http://127.0.0.1:{port}"

    @property
    def send_url(self) -> str:
        return self.base + "/send"

    async def _get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.base + path) as answer:
            return await answer.json()

    async def count(self) -> int:
        found: int = await self._get("/count")
        return found

    async def arrivals(self) -> list[tuple[float, str]]:
        return [(float(t), str(k)) for t, k in await self._get("/arrivals")]

    async def stall(self, seconds: float) -> None:
        async with aiohttp.ClientSession() as session, session.post(
                self.base + "/_stall", params={"seconds": str(seconds)}) as answer:
            assert answer.status == 200

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while await self.count() < count:
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


def keys_of(arrivals: list[tuple[float, str]]) -> Counter[str]:
    return Counter(key for _, key in arrivals)


def balanced(counts: dict[str, Any]) -> bool:
    return bool(counts["targeted"] == counts["sent"] + counts["failed"] + counts["pending"]
                + sum(counts["excluded"].values()))


class ReportPoller:
    """GET /v1/runs/{id} every `every` s while the run goes on (skipping the moments the
    daemon restarts or answers 503), keeping each report's counts."""

    def __init__(self, daemon: DaemonProcess, run_id: str, every: float = 0.2) -> None:
        self.daemon = daemon
        self.run_id = run_id
        self.every = every
        self.polls: list[dict[str, Any]] = []
        self.unavailable = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReportPoller:
        self._task = asyncio.create_task(self._poll(), name="fault-suite-poller")
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _poll(self) -> None:
        token = self.daemon.admin_token
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            while True:
                port = self.daemon.port
                if port is not None:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/v1/runs/{self.run_id}"
                                            ) as answer:
                            if answer.status == 200:
                                self.polls.append((await answer.json())["counts"])
                            else:
                                assert answer.status == 503, await answer.text()
                                self.unavailable += 1
                    except (aiohttp.ClientError, OSError):
                        self.unavailable += 1
                await asyncio.sleep(self.every)


async def readyz(daemon: DaemonProcess) -> int:
    async with aiohttp.ClientSession() as session, session.get(daemon.url + "/readyz") as answer:
        return answer.status


async def tasks(daemon: DaemonProcess) -> int:
    """The daemon's asyncio tasks, from `campaignd_event_loop_tasks` (admin token)."""
    async with daemon.client() as http, http.get("/metrics") as answer:
        assert answer.status == 200, await answer.text()
        text = await answer.text()
    found = re.search(r"^campaignd_event_loop_tasks\s+([0-9.e+]+)$", text, re.MULTILINE)
    assert found, "no campaignd_event_loop_tasks in /metrics"
    return int(float(found.group(1)))


async def connections(server_url: str, database: str) -> int:
    """Sessions on `database` (pg_stat_activity of the private cluster)."""
    connection = await asyncpg.connect(server_url)
    try:
        value: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database)
        return value
    finally:
        await connection.close()

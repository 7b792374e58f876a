"""CPU seconds and memory of processes, read from /proc through psutil.

`ProcessMeter` follows one process (the daemon); `PostgresMeter` follows a whole
PostgreSQL server: the postmaster, its live children, and (through the postmaster's
children times) the backends that already exited, so its total only grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import psutil


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and of its live children."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    total = times.user + times.system
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return total


def peak_rss_bytes(pid: int) -> int | None:
    """VmHWM of `pid`: the largest resident set it ever had."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class PostgresMeter:
    """Total CPU seconds of one PostgreSQL server (every database on it)."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self.postmaster_pid = postmaster_pid

    @property
    def available(self) -> bool:
        return self.postmaster_pid is not None and psutil.pid_exists(self.postmaster_pid)

    def cpu_seconds(self) -> float | None:
        if not self.available:
            return None
        assert self.postmaster_pid is not None
        try:
            postmaster = psutil.Process(self.postmaster_pid)
            times = postmaster.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            for child in postmaster.children():
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
        except psutil.Error:
            return None
        return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


@dataclass
class CpuWindow:
    """CPU used by the daemon and the database between `start()` and `stop()`, and by the
    whole machine (to see what else was running: other work on the box skews timings)."""

    daemon_pid: int
    postgres: PostgresMeter
    daemon_start: float = 0.0
    postgres_start: float | None = None
    machine_start: float = 0.0
    wall_start: float = 0.0
    daemon_seconds: float = 0.0
    postgres_seconds: float | None = None
    machine_seconds: float = 0.0
    wall_seconds: float = 0.0

    def start(self) -> None:
        self.wall_start = time.monotonic()
        self.machine_start = machine_busy_seconds()
        self.daemon_start = cpu_seconds(self.daemon_pid)
        self.postgres_start = self.postgres.cpu_seconds()

    def stop(self) -> None:
        self.wall_seconds = time.monotonic() - self.wall_start
        self.machine_seconds = machine_busy_seconds() - self.machine_start
        self.daemon_seconds = cpu_seconds(self.daemon_pid) - self.daemon_start
        end = self.postgres.cpu_seconds()
        if end is not None and self.postgres_start is not None:
            self.postgres_seconds = end - self.postgres_start

    def per_thousand(self, messages: int) -> dict[str, float | None]:
        """CPU seconds per 1,000 messages: the daemon, the database, both."""
        if messages <= 0:
            return {"daemon": None, "database": None, "total": None}
        daemon = self.daemon_seconds * 1000.0 / messages
        database = (
            None if self.postgres_seconds is None
            else self.postgres_seconds * 1000.0 / messages
        )
        return {
            "daemon": round(daemon, 4),
            "database": None if database is None else round(database, 4),
            "total": round(daemon + (database or 0.0), 4),
        }

    def as_dict(self) -> dict[str, float | None]:
        return {
            "wall_s": round(self.wall_seconds, 3),
            "daemon_cpu_s": round(self.daemon_seconds, 3),
            "database_cpu_s": (
                None if self.postgres_seconds is None else round(self.postgres_seconds, 3)
            ),
            "daemon_cpu_share": (
                round(self.daemon_seconds / self.wall_seconds, 3) if self.wall_seconds else None
            ),
            # Busy cores of the whole machine (0..cpus): daemon, database, gateway, bench...
            "machine_busy_cores": (
                round(self.machine_seconds / self.wall_seconds, 2) if self.wall_seconds else None
            ),
        }


@dataclass
class RssSampler:
    """Samples a process's RSS every `interval` seconds while running (`async with`)."""

    pid: int
    interval: float = 0.1
    samples: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._sample(), name="bench.rss_sampler")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _sample(self) -> None:
        while True:
            value = rss_bytes(self.pid)
            if value is not None:
                self.samples.append(value)
            await asyncio.sleep(self.interval)

    @property
    def peak(self) -> int | None:
        return max(self.samples) if self.samples else None

"""Soak (not in CI): one campaign at 1,000/s for 30 minutes, a fault every 2 minutes.

`python -m bench.soak [--minutes 30] [--every 120] [--rate 1000]`. The faults, in rotation:
SIGTERM and an immediate restart, SIGKILL and a restart, SIGSTOP for 3 s then SIGCONT, the
gateway stalling its answers for 10 s, and a fast restart of PostgreSQL (the soak makes a
private cluster for that, unless `--database-url` names a server: then it is skipped).
Every 10 s it samples the daemon's RSS, its database connections (`pg_stat_activity`), its
asyncio tasks (`campaignd_event_loop_tasks`, when the daemon exports it) and the report's
invariant. At the end: lost and duplicated messages, the busiest sliding 1 s window at the
gateway overall and after each fault, and the samples (RSS, connections and tasks should be
flat between restarts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.api import BenchError
from bench.harness import DaemonProcess, Harness
from bench.runner import Options, main
from bench.stats import max_in_window

SAMPLE_EVERY = 10.0
FAULTS = ["sigterm", "sigkill", "sigstop", "stall", "postgres"]


def rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"VmRSS:\s+(\d+) kB", text)
    return round(int(found.group(1)) / 1024, 1) if found else None


async def connections(url: str) -> int | None:
    try:
        connection = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        value: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")
        return value
    finally:
        await connection.close()


async def task_count(session: aiohttp.ClientSession, daemon: DaemonProcess) -> float | None:
    try:
        async with session.get(f"{daemon.url}/metrics",
                               headers={"Authorization": f"Bearer {daemon.token}"}) as answer:
            text = await answer.text()
    except (aiohttp.ClientError, OSError):
        return None
    found = re.search(r"^campaignd_event_loop_tasks\s+([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


class PrivateCluster:
    """A PostgreSQL cluster of the soak's own (initdb/pg_ctl of the machine's binaries, as
    the `postgres` user when run as root; own port and socket dir), so it may restart it."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not binaries:
            raise BenchError("no /usr/lib/postgresql/*/bin: cannot make a private cluster")
        self.bin = binaries[-1]
        self.folder = Path(tempfile.mkdtemp(prefix="campaignd-soak-pg-"))
        self.data = self.folder / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        full = [str(self.bin / command[0]), *command[1:]]
        if os.geteuid() == 0:
            full = ["runuser", "-u", "postgres", "--", *full]
        done = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise BenchError(f"{command[0]} failed: {done.stderr[-500:]}")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        if not self.fsync:
            options += " -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "log"))

    def restart(self) -> None:
        # The log file keeps the new postmaster off our pipe (else `run` waits for its EOF).
        self._run("pg_ctl", "restart", "-w", "-m", "fast", "-D", str(self.data),
                  "-l", str(self.folder / "log"))

    def stop(self) -> None:
        with contextlib.suppress(BenchError):
            self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))
        shutil.rmtree(self.folder, ignore_errors=True)


async def inject(fault: str, harness: Harness, daemon: DaemonProcess,
                 cluster: PrivateCluster | None) -> str:
    """Apply one fault; what was done."""
    if fault == "sigterm":
        await daemon.terminate()
        await daemon.start()
        return "SIGTERM, restarted at once"
    if fault == "sigkill":
        await daemon.kill()
        await daemon.start()
        return "SIGKILL, restarted"
    if fault == "sigstop":
        os.kill(daemon.pid, signal.SIGSTOP)
        await asyncio.sleep(3.0)
        os.kill(daemon.pid, signal.SIGCONT)
        return "SIGSTOP 3 s, SIGCONT"
    if fault == "stall":
        assert harness.gateway.session is not None
        async with harness.gateway.session.post(harness.gateway.url + "/_stall",
                                                params={"seconds": "10"}) as answer:
            await answer.read()
        return "gateway stalled 10 s"
    if cluster is None:
        return "PostgreSQL restart skipped (the server is not the soak's own)"
    await asyncio.to_thread(cluster.restart)
    return "PostgreSQL restarted (fast)"


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=120.0, help="seconds between faults")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"the rotation, comma-separated (default {','.join(FAULTS)})")


async def bench(options: Options) -> dict[str, Any]:
    args = options.args
    assert args is not None
    minutes = 1.5 if options.smoke else args.minutes
    every = 15.0 if options.smoke else args.every
    rate = args.rate
    count = int(rate * minutes * 60)
    cluster = None
    if options.database_url is None:
        cluster = PrivateCluster()
        await asyncio.to_thread(cluster.start)
    try:
        rotation = [name for name in args.faults.split(",") if name]
        unknown = sorted(set(rotation) - set(FAULTS))
        if unknown:
            raise BenchError(f"--faults: unknown {', '.join(unknown)} (known: {FAULTS})")
        return await _soak(options, cluster, minutes, every, rate, count, rotation)
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)


async def _soak(options: Options, cluster: PrivateCluster | None, minutes: float,
                every: float, rate: int, count: int, rotation: list[str]) -> dict[str, Any]:
    url = cluster.url if cluster is not None else options.database_url
    async with Harness("soak", smoke=options.smoke, database_url=url) as harness:
        assert harness.database is not None
        daemon = await harness.start_daemon('[engine]\nlease_ttl = "5s"\n')
        gateway = harness.gateway
        samples: list[dict[str, Any]] = []
        faults: list[dict[str, Any]] = []
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            await api.import_profiles(count, "soak")
            await harness.settle()
            await api.create_campaign("soak", audience="soak", rate=rate)
            accepted = await api.trigger("soak", {"context": {"promo": "X1"}})
            run_id = accepted["run_id"]
        async with aiohttp.ClientSession() as session:
            began = time.monotonic()
            next_fault, next_sample, turn = began + every, began, 0
            report: dict[str, Any] = {}
            while time.monotonic() - began < minutes * 60 + 120:
                now = time.monotonic()
                if now >= next_sample:
                    next_sample += SAMPLE_EVERY
                    sample = await _sample(harness, daemon, session, run_id, began)
                    samples.append(sample)
                    report = sample.get("report") or report
                    if report.get("status") in ("completed", "cancelled", "failed"):
                        break
                if now >= next_fault and now - began < minutes * 60 - every / 2:
                    fault = rotation[turn % len(rotation)]
                    turn += 1
                    at = time.monotonic()
                    what = await inject(fault, harness, daemon, cluster)
                    faults.append({"fault": fault, "what": what, "at_s": round(at - began, 1)})
                    next_fault += every
                await asyncio.sleep(0.5)
        arrivals = await gateway.arrivals()
    times = sorted(arrivals.mono)
    for fault in faults:
        start = began + fault["at_s"]
        fault["max_1s_after"] = max_in_window([t for t in times if start <= t < start + 30], 1.0)
    keys = {k for k in arrivals.key if k}
    rss = [s["rss_mb"] for s in samples if s["rss_mb"] is not None]
    conns = [s["connections"] for s in samples if s["connections"] is not None]
    result: dict[str, Any] = {
        **harness.describe(), "rate": rate, "minutes": minutes, "fault_every_s": every,
        "targeted": count, "arrived": len(arrivals), "distinct": len(keys),
        "lost": count - len(keys), "duplicates": arrivals.duplicates(),
        "max_1s_window": max_in_window(times, 1.0), "faults": faults,
        "invariant_held_on_every_sample": all(s["invariant"] for s in samples if "invariant" in s),
        "rss_mb": {"first": rss[0] if rss else None, "last": rss[-1] if rss else None,
                   "max": max(rss) if rss else None},
        "connections": {"first": conns[0] if conns else None,
                        "last": conns[-1] if conns else None,
                        "max": max(conns) if conns else None},
        "samples": [{k: v for k, v in s.items() if k != "report"} for s in samples],
        "final_status": report.get("status"),
    }
    result["summary"] = [
        f"{len(keys)} of {count} reached, {result['duplicates']} duplicated, busiest 1 s "
        f"{result['max_1s_window']} (rate {rate})",
        f"RSS first/last/max {result['rss_mb']}, connections {result['connections']}",
    ] + [f"{f['at_s']} s: {f['what']}; busiest 1 s after {f['max_1s_after']}" for f in faults]
    return result


async def _sample(harness: Harness, daemon: DaemonProcess, session: aiohttp.ClientSession,
                  run_id: str, began: float) -> dict[str, Any]:
    assert harness.database is not None
    sample: dict[str, Any] = {
        "t_s": round(time.monotonic() - began, 1), "rss_mb": rss_mb(daemon.pid),
        "connections": await connections(harness.database.url),
        "tasks": await task_count(session, daemon),
    }
    try:
        async with daemon.api(connections=1) as api:  # its port changes at each restart
            report = await api.run(run_id)
    except (BenchError, aiohttp.ClientError, OSError):  # restarting: no report this time
        return sample
    counts = report.get("counts", {})
    excluded = sum((counts.get("excluded") or {}).values())
    sample["report"] = report
    sample["sent"] = counts.get("sent")
    sample["invariant"] = counts.get("targeted") == (
        counts.get("sent", 0) + counts.get("failed", 0) + counts.get("pending", 0) + excluded)
    return sample


if __name__ == "__main__":
    main("soak", bench, __doc__.splitlines()[0], add_options)

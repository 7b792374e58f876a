"""What every bench sets up: its database, the stand-in gateway, the daemon under test.

    async with Harness("rate", smoke=False) as harness:
        daemon = await harness.start_daemon()          # `python -m daemon run`, ready
        async with daemon.api() as api: ...            # the HTTP API, admin token
        arrivals = await harness.gateway.arrivals()    # what reached the gateway

Everything is torn down on exit: processes stopped, database dropped, work folder
removed (kept with BENCH_KEEP=1 for the daemon's log).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.api import Api, BenchError
from bench.database import BenchDatabase, bench_database
from bench.procstat import CpuWindow, PostgresMeter, peak_rss_bytes

READY_TIMEOUT = 120.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the bench dies, however it dies (Linux), so
    that no daemon or gateway outlives an interrupted bench."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Arrivals:
    """Records from the gateway, column by column (see bench.gateway)."""

    key: list[str | None] = field(default_factory=list)
    campaign: list[str | None] = field(default_factory=list)
    run: list[str | None] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    mono: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.key)

    def extend(self, dump: dict[str, Any]) -> None:
        for name in ("key", "campaign", "run", "wall", "mono"):
            getattr(self, name).extend(dump[name])

    def times_for(self, *, campaign: str | None = None, run: str | None = None) -> list[float]:
        """Monotonic arrival times of one campaign's (or one run's) messages."""
        return [
            t for t, c, r in zip(self.mono, self.campaign, self.run, strict=True)
            if (campaign is None or c == campaign) and (run is None or r == run)
        ]

    def duplicates(self) -> int:
        """Messages that arrived again under an idempotency key already seen."""
        keys = [k for k in self.key if k is not None]
        return len(keys) - len(set(keys))


class ChildProcess:
    """A helper process of ours whose first stdout line is a JSON object."""

    def __init__(self, args: Sequence[str], name: str) -> None:
        self.args = list(args)
        self.name = name
        self.process: asyncio.subprocess.Process | None = None
        self.hello: dict[str, Any] = {}

    async def start(self, within: float = 30.0) -> dict[str, Any]:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.args, stdout=asyncio.subprocess.PIPE, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), within)
        except TimeoutError:
            raise BenchError(f"{self.name} did not start within {within:.0f} s") from None
        if not line:
            raise BenchError(f"{self.name} exited at start (code {await self.process.wait()})")
        self.hello = json.loads(line)
        return self.hello

    async def output(self, within: float) -> dict[str, Any]:
        """The JSON object the process prints last, once it exits (within `within` s)."""
        assert self.process is not None and self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.read(), within)
        code = await self.process.wait()
        lines = [line for line in raw.decode().splitlines() if line.startswith("{")]
        if code != 0 or not lines:
            raise BenchError(f"{self.name} failed (exit {code})")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


class Gateway(ChildProcess):
    """The stand-in gateway process (bench.gateway) and its control endpoints."""

    def __init__(self) -> None:
        super().__init__(["-m", "bench.gateway"], "gateway")
        self.session: aiohttp.ClientSession | None = None

    async def start(self, within: float = 30.0) -> dict[str, Any]:
        hello = await super().start(within)
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        return hello

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.hello['port']}"

    @property
    def hook_url(self) -> str:
        return self.url + "/hook"

    async def count(self) -> int:
        assert self.session is not None
        async with self.session.get(self.url + "/_count") as response:
            return int((await response.json())["n"])

    async def arrivals(self, since: int = 0) -> Arrivals:
        assert self.session is not None
        async with self.session.get(self.url + "/_dump", params={"since": since}) as response:
            dump = json.loads(await response.read())
        found = Arrivals()
        found.extend(dump)
        return found

    async def reset(self) -> None:
        assert self.session is not None
        async with self.session.post(self.url + "/_reset") as response:
            await response.read()

    async def wait_count(self, count: int, *, within: float, what: str) -> float:
        """Wait until `count` messages arrived; the seconds it took. BenchError after
        `within` seconds."""
        began = time.monotonic()
        seen = await self.count()
        while seen < count:
            if time.monotonic() - began > within:
                if seen == 0:
                    raise BenchError(
                        f"{what}: the daemon sent nothing to the gateway in {within:.0f} s"
                    )
                raise BenchError(f"{what}: {seen} of {count} messages after {within:.0f} s")
            await asyncio.sleep(0.05)
            seen = await self.count()
        return time.monotonic() - began

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        await super().stop()


class DaemonProcess:
    """`python -m daemon run --config FILE` with our gateway as every channel's provider."""

    def __init__(self, folder: Path, config_text: str) -> None:
        self.folder = folder
        self.state_dir = folder / "state"
        self.config_path = folder / "campaignd.toml"
        self.log_path = folder / "daemon.log"
        self.config_path.write_text(config_text)
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self._log_offset = 0
        self.started_at = 0.0          # time.time() at spawn
        self.ready_at = 0.0            # time.time() when /readyz first answered 200

    @property
    def url(self) -> str:
        assert self.port is not None, "daemon not started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    def api(self, connections: int = 32) -> Api:
        return Api(self.url, self.token, connections=connections)

    async def start(self, within: float = READY_TIMEOUT) -> float:
        """Spawn and wait for /readyz; the seconds from spawn to ready."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGND_")}
        with self.log_path.open("ab") as log_file:
            self.started_at = time.time()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon", "run", "--config", str(self.config_path),
                stdout=log_file, stderr=asyncio.subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        self.port = None
        async with asyncio.timeout(within):
            while self.port is None:
                self._check_alive()
                for event in self.events("server.listening"):
                    self.port = int(event["port"])
                await asyncio.sleep(0.01)
            async with aiohttp.ClientSession() as session:
                while True:
                    self._check_alive()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(self.url + "/readyz") as response:
                            if response.status == 200:
                                self.ready_at = time.time()
                                return self.ready_at - self.started_at
                    await asyncio.sleep(0.01)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.returncode is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"the daemon exited with {self.process.returncode}:\n{tail}")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log lines since its last start (optionally one event)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            raw = handle.read()
        found = []
        for line in raw.decode(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("level") in ("error", "critical")]

    def peak_rss(self) -> int | None:
        return peak_rss_bytes(self.pid)

    async def terminate(self, within: float = 60.0) -> int:
        """SIGTERM; the exit code (BenchError and SIGKILL after `within` seconds)."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            await self.kill()
            raise BenchError(
                f"the daemon did not stop within {within:.0f} s of SIGTERM"
            ) from None

    async def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class Harness:
    """A bench run's database, gateway and daemons; torn down on exit."""

    def __init__(self, name: str, *, smoke: bool, database_url: str | None = None) -> None:
        self.name = name
        self.smoke = smoke
        self.database_url = database_url
        self.folder = Path(tempfile.mkdtemp(prefix=f"campaignd-bench-{name}-"))
        self.gateway = Gateway()
        self.daemons: list[DaemonProcess] = []
        self.database: BenchDatabase | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Harness:
        try:
            self.database = await self._stack.enter_async_context(
                bench_database(self.database_url)
            )
            self._stack.push_async_callback(self._remove_folder)
            await self.gateway.start()
            self._stack.push_async_callback(self.gateway.stop)
            self._stack.push_async_callback(self._stop_daemons)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if exc_info[0] is not None and self.daemons:
            log = self.daemons[-1].log_path
            print(f"bench {self.name}: daemon log tail ({log}):\n"
                  + log.read_text(errors="replace")[-2000:], file=sys.stderr)
        await self._stack.aclose()

    async def _stop_daemons(self) -> None:
        for daemon in self.daemons:
            if daemon.process is not None and daemon.process.returncode is None:
                try:
                    await daemon.terminate(within=20)
                except BenchError:
                    await daemon.kill()

    async def _remove_folder(self) -> None:
        if os.environ.get("BENCH_KEEP"):
            print(f"bench {self.name}: kept {self.folder}", file=sys.stderr)
        else:
            shutil.rmtree(self.folder, ignore_errors=True)

    def daemon_config(self, extra: str = "", *, concurrency: int = 64) -> str:
        assert self.database is not None
        folder = self.folder / f"daemon{len(self.daemons)}"
        return "\n".join([
            f'state_dir = "{folder / "state"}"',
            "[server]", 'host = "127.0.0.1"', "port = 0", 'shutdown_grace = "10s"',
            "[database]", f'url = "{self.database.url}"',
            "[log]", 'level = "info"',
            "[providers.gw]", 'kind = "webhook"', f'url = "{self.gateway.hook_url}"',
            f"concurrency = {concurrency}",
            "[channels]", 'email = "gw"', 'sms = "gw"', 'push = "gw"',
            extra,
        ]) + "\n"

    def new_daemon(self, extra: str = "", **kwargs: Any) -> DaemonProcess:
        folder = self.folder / f"daemon{len(self.daemons)}"
        folder.mkdir()
        daemon = DaemonProcess(folder, self.daemon_config(extra, **kwargs))
        self.daemons.append(daemon)
        return daemon

    async def start_daemon(self, extra: str = "", **kwargs: Any) -> DaemonProcess:
        daemon = self.new_daemon(extra, **kwargs)
        await daemon.start()
        return daemon

    @contextlib.asynccontextmanager
    async def profile(self, daemon: DaemonProcess, label: str) -> AsyncIterator[None]:
        """With BENCH_PROFILE=DIR, py-spy samples the daemon's CPU meanwhile, 100 Hz, into
        DIR/label.raw (collapsed stacks; `python -m bench.hotspots DIR/label.raw`)."""
        target = _profile_target(label)
        if target is None:
            yield
            return
        spy, output = target
        process = await asyncio.create_subprocess_exec(
            spy, "record", "--pid", str(daemon.pid), "--rate", "100", "--format", "raw",
            "-o", str(output),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            await process.wait()
            print(f"bench {self.name}: daemon profile in {output}", file=sys.stderr)

    async def settle(self) -> None:
        """VACUUM ANALYZE the bench database after its imports: the autovacuum that a fresh
        million rows calls for would otherwise land inside the measured window and be
        counted as the daemon's database CPU (seen: 0.9-1.8 s per 1,000 messages)."""
        assert self.database is not None
        connection = await asyncpg.connect(self.database.url, timeout=10)
        try:
            await connection.execute("VACUUM (ANALYZE)", timeout=600)
        finally:
            await connection.close()

    def cpu_window(self, daemon: DaemonProcess) -> CpuWindow:
        assert self.database is not None
        return CpuWindow(daemon.pid, PostgresMeter(self.database.postmaster_pid))

    def describe(self) -> dict[str, Any]:
        assert self.database is not None
        return {"database": self.database.server}


FIRST_SEND_TIMEOUT = 20.0


def _profile_target(label: str) -> tuple[str, Path] | None:
    """(py-spy, output file) when BENCH_PROFILE names a folder and py-spy is installed."""
    folder = os.environ.get("BENCH_PROFILE")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not folder or not Path(spy).exists():
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return spy, Path(folder) / f"{label}.raw"


async def run_to_end(
    api: Api,
    gateway: Gateway,
    campaign_id: str,
    *,
    expected: int,
    rate: float | None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Trigger `campaign_id`, check it starts sending, wait for the run's end; its report.

    A slow daemon gives bad figures, not a failure: a run still going after twice its
    nominal duration (+30 s; 180 s unthrottled) is cancelled, and its report says so
    (`finished: false`). BenchError when nothing reaches the gateway within
    FIRST_SEND_TIMEOUT, or when a finished run did not send `expected` messages.
    """
    before = await gateway.count()
    accepted = await api.trigger(campaign_id, body or {"context": {"promo": "X1"}})
    run_id = accepted["run_id"]
    try:
        await gateway.wait_count(before + 1, within=FIRST_SEND_TIMEOUT,
                                 what=f"campaign {campaign_id}")
    except BenchError as exc:
        report = await api.run(run_id)
        raise BenchError(f"{exc}; the run's report: {json.dumps(report)}") from None
    cap = 2 * expected / rate + 30.0 if rate else 180.0
    try:
        report = await api.wait_run(run_id, within=cap)
    except BenchError:
        await api.cancel(run_id)
        report = await api.wait_run(run_id, within=60.0)
        report["finished"] = False
        return report
    check_sent(report, expected)
    report["finished"] = True
    return report


def check_sent(report: dict[str, Any], expected: int) -> None:
    counts = report.get("counts", {})
    if report.get("status") != "completed" or counts.get("sent") != expected:
        raise BenchError(
            f"run {report.get('id')} ended {report.get('status')} "
            f"({report.get('end_reason')}) with counts {json.dumps(counts)}; "
            f"expected {expected} sent"
        )

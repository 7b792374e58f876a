"""The fault suite (marker `faults`; docs/faults.md): one campaign at 500/s on a few thousand
recipients, the daemon as a subprocess on a private PostgreSQL cluster (one per module, a
fresh database per case), the provider a gateway in another process; one fault mid-run.

Each case asserts at the gateway: nobody lost; nobody twice (after kill -9: at most the
engine's `duplicate_bound`); the report balanced on every poll; /readyz 503 (and the API
503 `database_unavailable`) while the database is gone, 200 after; no task or connection
left over. The busiest sliding 1 s window at the gateway (≤ rate + 1) is asserted in a
test of its own per case (`test_rate_holds_at_the_gateway`). `handover_kill9` runs two
daemons on the database: the lease holder is killed for good and the other takes over.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.acceptance.conftest import DaemonFactory, DaemonProcess
from tests.acceptance.faults import probes
from tests.acceptance.faults.cluster import PrivateCluster, available
from tests.acceptance.faults.probes import GatewayProcess, ReportPoller
from tests.acceptance.test_engine_crash_safety import _finished, _launch

pytestmark = [pytest.mark.faults,
              pytest.mark.skipif(not available(), reason="no PostgreSQL binaries for a cluster")]

RATE = 500
COUNT = 3000
FAULT_AFTER = 800  # arrivals at the gateway before the fault
POOL_SIZE = 6


@dataclass
class Case:
    """What one run under one fault left at the gateway and in the report."""

    fault: str
    reached: int = 0
    duplicated: int = 0
    duplicate_bound: int = 0
    busiest: int = 0
    busiest_after_fault: int = 0
    polls: int = 0
    unbalanced: list[dict[str, object]] = field(default_factory=list)
    tasks: tuple[int, int] = (0, 0)
    connections: tuple[int, int] = (0, 0)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.fault}: reached {self.reached}/{COUNT}, duplicated {self.duplicated} "
                f"(bound {self.duplicate_bound}), busiest 1 s {self.busiest} (after the fault "
                f"{self.busiest_after_fault}; rate {RATE}), {self.polls} polls, tasks "
                f"{self.tasks[0]}→{self.tasks[1]}, connections {self.connections[0]}→"
                f"{self.connections[1]}, {self.seconds:.1f} s")


MEASURED: dict[str, Case] = {}
FAILED: dict[str, str] = {}  # a case whose run failed: not run again by the other tests


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    made = PrivateCluster(prefix="campaignd-faults-pg-")
    asyncio.run(made.start())
    try:
        yield made
    finally:
        asyncio.run(made.destroy())
        print("\n" + "\n".join(case.line() for case in MEASURED.values()))


@pytest.fixture
async def database_url(cluster: PrivateCluster) -> AsyncIterator[str]:
    """A fresh database on the private cluster (the daemon migrates it when it starts)."""
    name = f"faults_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield cluster.database_url(name)
    if not cluster.running:
        await cluster.start()
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayProcess]:
    process = GatewayProcess()
    await process.start()
    yield process
    await process.stop()


async def _database_gone(daemon: DaemonProcess, run_id: str) -> None:
    """While the database is gone: /readyz 503 and the API 503 `database_unavailable`."""
    assert await probes.readyz(daemon) == 503
    async with daemon.client() as http, http.get(f"/v1/runs/{run_id}") as answer:
        body = await answer.json(content_type=None)
        assert answer.status == 503 and body["code"] == "database_unavailable", body


async def _database_back(daemon: DaemonProcess) -> None:
    async with asyncio.timeout(30):
        while await probes.readyz(daemon) != 200:
            await asyncio.sleep(0.1)


def _postgres(mode: str, down_for: float) -> Callable[..., Awaitable[None]]:
    async def fault(daemon: DaemonProcess, cluster: PrivateCluster, _: GatewayProcess,
                    run_id: str, *__: object) -> None:
        await cluster.stop("fast" if mode == "fast" else "immediate")
        await _database_gone(daemon, run_id)
        deadline = time.monotonic() + down_for
        while time.monotonic() < deadline:  # 503 for as long as it stays down
            assert await probes.readyz(daemon) == 503
            await asyncio.sleep(1.0)
        await cluster.start()
        await _database_back(daemon)
    return fault


async def _sigterm(daemon: DaemonProcess, *_: object) -> None:
    assert await daemon.terminate() == 0
    await daemon.start()


async def _kill(daemon: DaemonProcess, *_: object) -> None:
    await daemon.kill()
    await daemon.start()


async def _handover(daemon: DaemonProcess, _: PrivateCluster, __: GatewayProcess,
                    ___: str, standby: DaemonProcess | None) -> DaemonProcess:
    """The lease holder dies and stays dead: the standby daemon on the same database takes
    the run over once the holder's lease expires."""
    assert standby is not None
    await daemon.kill()
    return standby


async def _sigstop(daemon: DaemonProcess, *_: object) -> None:
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGSTOP)
    await asyncio.sleep(3.0)
    os.kill(daemon.process.pid, signal.SIGCONT)


async def _stall(_: DaemonProcess, __: PrivateCluster, gateway: GatewayProcess,
                 *___: object) -> None:
    await gateway.stall(10.0)


# A fault gets (daemon, cluster, gateway, run_id, standby) and returns the daemon that
# carries the run on when it is not `daemon` (the standby, after a handover).
Fault = Callable[..., Awaitable[DaemonProcess | None]]
FAULTS: dict[str, Fault] = {
    "sigterm": _sigterm,
    "kill9": _kill,
    "handover_kill9": _handover,
    "postgres_restart_fast": _postgres("fast", 0.0),
    "postgres_restart_immediate": _postgres("immediate", 0.0),
    "postgres_stopped_20s": _postgres("fast", 20.0),
    "provider_stall_10s": _stall,
    "sigstop_3s": _sigstop,
}
KILLS = {"kill9", "handover_kill9"}  # faults after which duplicates up to the bound are allowed
HANDOVERS = {"handover_kill9"}  # faults run with a second daemon on the database


def _config(gateway: GatewayProcess) -> str:
    return (f'[engine]\nlease_ttl = "5s"\ncheckpoint_interval = "250ms"\n'
            f"[database]\npool_size = {POOL_SIZE}\n"
            f'[providers.gw]\nkind = "webhook"\nurl = "{gateway.send_url}"\nconcurrency = 16\n'
            '[channels]\nemail = "gw"\n')


async def _settled_connections(cluster: PrivateCluster, database: str, ceiling: int) -> int:
    """The database's sessions once at most `ceiling` (a dead process's sessions take a
    moment to end), or the last count after 15 s."""
    found = await probes.connections(cluster.url, database)
    async with asyncio.timeout(15):
        while found > ceiling:
            await asyncio.sleep(0.2)
            found = await probes.connections(cluster.url, database)
    return found


async def _settled_tasks(daemon: DaemonProcess, ceiling: int) -> int:
    found = await probes.tasks(daemon)
    try:
        async with asyncio.timeout(10):
            while found > ceiling:
                await asyncio.sleep(0.2)
                found = await probes.tasks(daemon)
    except TimeoutError:
        pass
    return found


async def run_case(name: str, factory: DaemonFactory, cluster: PrivateCluster,
                   gateway: GatewayProcess, database: str) -> Case:
    """One run under fault `name` (measured once per session: the rate test reuses it)."""
    if name in MEASURED:
        return MEASURED[name]
    if name in FAILED:
        pytest.fail(f"the run under {name} failed already: {FAILED[name]}")
    try:
        return await _measure(name, factory, cluster, gateway, database)
    except Exception as exc:
        FAILED[name] = repr(exc)[:500]
        raise


async def _measure(name: str, factory: DaemonFactory, cluster: PrivateCluster,
                   gateway: GatewayProcess, database: str) -> Case:
    began = time.monotonic()
    case = Case(name)
    daemon = factory(_config(gateway))
    await daemon.start()
    standby = None
    if name in HANDOVERS:
        standby = factory(_config(gateway))
        await standby.start()
    idle_tasks = {id(d): await probes.tasks(d) for d in (daemon, standby) if d is not None}
    idle_connections = await probes.connections(cluster.url, database)
    async with daemon.client() as http:
        run_id = await _launch(http, COUNT, rate=RATE)
    async with ReportPoller(daemon, run_id) as poller:
        await gateway.wait_for(FAULT_AFTER)
        if standby is not None and not daemon.events("lease.acquired"):
            daemon, standby = standby, daemon  # the fault strikes the lease holder
        case.duplicate_bound = int(daemon.events("worker.started")[0]["duplicate_bound"])
        fault_at = time.monotonic()
        survivor = await FAULTS[name](daemon, cluster, gateway, run_id, standby)
        if survivor is not None:
            daemon = poller.daemon = survivor
        report = await _finished(daemon, run_id, timeout=90)
    arrivals = await gateway.arrivals()
    if os.environ.get("FAULTS_DUMP"):  # arrivals and the fault time, to study a case
        await asyncio.to_thread(Path(os.environ["FAULTS_DUMP"], f"{name}.json").write_text,
                                json.dumps({"fault_at": fault_at, "arrivals": arrivals}))
    keys = probes.keys_of(arrivals)
    times = [t for t, _ in arrivals]
    case.reached = len(keys)
    case.duplicated = sum(keys.values()) - len(keys)
    case.busiest = probes.busiest(times)
    case.busiest_after_fault = probes.busiest([t for t in times if t >= fault_at])
    case.polls = len(poller.polls)
    case.unbalanced = [counts for counts in [*poller.polls, report["counts"]]
                       if not probes.balanced(counts)]
    async with daemon.client() as http, http.post("/v1/campaigns/c1/stop") as answer:
        assert answer.status in (200, 409), await answer.text()  # 409: completed already
    case.tasks = (idle_tasks[id(daemon)], await _settled_tasks(daemon, idle_tasks[id(daemon)]))
    case.connections = (idle_connections,
                        await _settled_connections(cluster, database, POOL_SIZE))
    assert report["status"] == "completed", report
    assert await daemon.terminate() == 0
    case.seconds = time.monotonic() - began
    MEASURED[name] = case
    print(f"\n{case.line()}")
    return case


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_loses_nobody_and_leaks_no_connection(
    fault: str, daemon_factory: DaemonFactory, cluster: PrivateCluster,
    gateway: GatewayProcess, database_url: str
) -> None:
    case = await run_case(fault, daemon_factory, cluster, gateway, _database(database_url))
    assert case.reached == COUNT, case.line()  # nobody lost
    if fault in KILLS:
        assert case.duplicated <= case.duplicate_bound, case.line()
    else:
        assert case.duplicated == 0, case.line()
    assert case.polls > 0 and not case.unbalanced, case.unbalanced[:3]
    assert case.connections[1] <= POOL_SIZE, case.line()


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_leaves_no_task(
    fault: str, daemon_factory: DaemonFactory, cluster: PrivateCluster,
    gateway: GatewayProcess, database_url: str
) -> None:
    case = await run_case(fault, daemon_factory, cluster, gateway, _database(database_url))
    # Idle, before the campaign and after its run: the same tasks.
    assert case.tasks[1] <= case.tasks[0], case.line()


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_rate_holds_at_the_gateway(
    fault: str, daemon_factory: DaemonFactory, cluster: PrivateCluster,
    gateway: GatewayProcess, database_url: str
) -> None:
    case = await run_case(fault, daemon_factory, cluster, gateway, _database(database_url))
    print(f"\n{fault}: busiest 1 s at the gateway {case.busiest} (rate {RATE})")
    assert case.busiest <= RATE + 1, case.line()

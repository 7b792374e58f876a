"""Bench dbcost: the database's CPU, rows and WAL per message at 2,000/s, counted completely.

One campaign at 2,000/s (200,000 recipients; smoke 2,000) through the `webhook` provider
to the gateway, against a PostgreSQL cluster of the bench's own (the fault
suite's `PrivateCluster`: initdb/pg_ctl, own port), never the machine's shared server, so that
every process of that server is ours. The database's CPU is the postmaster's utime +
stime + cutime + cstime (it reaps its children: exited backends and autovacuum workers
are in its children times) plus every live child's utime + stime, read from /proc at the
start and at the end of the sending window; then, once the run ended, until no
autovacuum worker was seen for a while (at most 150 s): "vacuum after". Per message:
database CPU (during, and with the vacuum after), daemon CPU, WAL bytes and records
(`pg_stat_wal`), rows inserted / updated / HOT-updated / deleted per table
(`pg_stat_user_tables`), and `pg_stat_statements`' top statements when the extension
loads. Also what a measure of only the processes alive at the end would read (the
earlier outside figure's method). Against the bare client paced at 2,000/s
(bench.baseline): (daemon + database) / baseline CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from typing import Any

import asyncpg
import psutil

from bench.api import ApiMissing, BenchError
from bench.baseline import like_the_daemon
from bench.database import with_database
from bench.harness import ChildProcess, Harness, run_to_end
from bench.runner import Options, main
from bench.stats import rate_profile, ratio
from tests.acceptance.faults.cluster import ClusterError, PrivateCluster

RATE = 2000
RECIPIENTS = {False: 200_000, True: 2_000}
BASELINE_SECONDS = {False: 10, True: 1}
# Autovacuum settled: no worker seen for QUIET s (longer than the launcher's visit of a
# database, naptime 60 s / 3 databases), at most PATIENCE s after the run's end.
QUIET = {False: 30.0, True: 2.0}
PATIENCE = {False: 150.0, True: 10.0}
TOP_STATEMENTS = 10

_TABLES = ("SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, "
           "autovacuum_count, autoanalyze_count FROM pg_stat_user_tables")
_WAL = "SELECT wal_records, wal_fpi, wal_bytes::bigint FROM pg_stat_wal"
_STATEMENTS = (
    "SELECT query, calls, total_exec_time, rows, shared_blks_hit, shared_blks_read, "
    "shared_blks_dirtied, wal_records, wal_bytes::bigint FROM pg_stat_statements "
    "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND query NOT LIKE '%pg_stat_%' ORDER BY total_exec_time DESC"
)
_AUTOVACUUM = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"


def server_processes(postmaster_pid: int) -> dict[int, tuple[str, float]]:
    """The postmaster's live children: pid -> (command line, utime + stime)."""
    found: dict[int, tuple[str, float]] = {}
    for child in psutil.Process(postmaster_pid).children():
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            found[child.pid] = (" ".join(child.cmdline())[:60], times.user + times.system)
    return found


def live_only_seconds(before: dict[int, tuple[str, float]],
                      after: dict[int, tuple[str, float]]) -> float:
    """CPU of the processes alive at the end, over the window (a process born meanwhile
    counts from 0): what an outside look at the server's processes would read."""
    return sum(cpu - (before[pid][1] if pid in before else 0.0)
               for pid, (_, cpu) in after.items())


class Stats:
    """Cumulative counters of the bench database and the cluster, and their differences."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statements = False

    async def enable_statements(self) -> None:
        connection = await asyncpg.connect(self.url, timeout=10)
        try:
            loaded = await connection.fetchval("SHOW shared_preload_libraries")
            if "pg_stat_statements" in loaded:
                await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                self.statements = True
        except asyncpg.PostgresError as exc:
            print(f"bench dbcost: no pg_stat_statements ({exc})", file=sys.stderr)
        finally:
            await connection.close()

    async def snapshot(self, *, reset_statements: bool = False) -> dict[str, Any]:
        connection = await asyncpg.connect(self.url, timeout=10)
        try:
            wal = await connection.fetchrow(_WAL)
            tables = {row["relname"]: dict(row) for row in await connection.fetch(_TABLES)}
            if reset_statements and self.statements:
                await connection.execute("SELECT pg_stat_statements_reset()")
            statements = (
                [dict(row) for row in await connection.fetch(_STATEMENTS)]
                if self.statements and not reset_statements else []
            )
        finally:
            await connection.close()
        return {"wal": dict(wal), "tables": tables, "statements": statements}


def table_rows(before: dict[str, Any], after: dict[str, Any],
               messages: int) -> dict[str, dict[str, float]]:
    """Rows per message per table (tables the run touched), and vacuums meanwhile."""
    result = {}
    for name, row in after["tables"].items():
        old = before["tables"].get(name, {})
        delta = {key: row[key] - old.get(key, 0) for key in row if key != "relname"}
        if not any(delta[k] for k in ("n_tup_ins", "n_tup_upd", "n_tup_del")):
            continue
        result[name] = {
            "inserted": round(delta["n_tup_ins"] / messages, 3),
            "updated": round(delta["n_tup_upd"] / messages, 3),
            "hot_updated": round(delta["n_tup_hot_upd"] / messages, 3),
            "deleted": round(delta["n_tup_del"] / messages, 3),
            "autovacuums": delta["autovacuum_count"],
            "autoanalyzes": delta["autoanalyze_count"],
        }
    return dict(sorted(result.items()))


def wal_per_message(before: dict[str, Any], after: dict[str, Any],
                    messages: int) -> dict[str, float]:
    return {key: round((after["wal"][key] - before["wal"][key]) / messages, 2)
            for key in ("wal_bytes", "wal_records", "wal_fpi")}


def top_statements(statements: list[dict[str, Any]],
                   messages: int) -> dict[str, dict[str, Any]]:
    """The top statements by execution time, keyed by their text (so that `--repeat`
    takes the medians statement by statement)."""
    total = sum(s["total_exec_time"] for s in statements) or 1.0
    return {" ".join(s["query"].split())[:160]: {
        "calls": s["calls"],
        "exec_ms_per_message": round(s["total_exec_time"] / messages, 4),
        "share": round(s["total_exec_time"] / total, 3),
        "rows_per_call": round(s["rows"] / s["calls"], 1) if s["calls"] else None,
        "wal_bytes_per_message": round(s["wal_bytes"] / messages, 1),
        "blocks_hit_per_message": round(s["shared_blks_hit"] / messages, 2),
    } for s in statements[:TOP_STATEMENTS]}


async def settle_autovacuum(admin_url: str, quiet: float, patience: float) -> dict[str, Any]:
    """Wait until no autovacuum worker was seen for `quiet` s (at most `patience` s)."""
    began = time.monotonic()
    last_seen, seen_any = began, 0
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        while True:
            now = time.monotonic()
            if await connection.fetchval(_AUTOVACUUM):
                last_seen, seen_any = now, seen_any + 1
            if now - last_seen >= quiet or now - began >= patience:
                break
            await asyncio.sleep(0.25)
    finally:
        await connection.close()
    return {"waited_s": round(time.monotonic() - began, 1), "worker_samples": seen_any,
            "settled": time.monotonic() - last_seen >= quiet}


async def bench(options: Options) -> dict[str, Any]:
    if options.database_url:
        print("bench dbcost: --database-url ignored: it measures a cluster of its own",
              file=sys.stderr)
    try:
        # fsync off (or on with --fsync), the rest as a production server: what was measured.
        fsync = bool(options.args and options.args.fsync)
        cluster = PrivateCluster(prefix="campaignd-dbcost-pg-",
                                 settings="" if fsync else "-c fsync=off")
    except ClusterError as exc:
        raise ApiMissing(str(exc)) from None  # no PostgreSQL binaries: skipped in smoke
    await cluster.start()
    try:
        statements_wanted = await _preload_statements(cluster)
        return await _measure(options, cluster, statements_wanted)
    finally:
        await cluster.destroy()


async def _preload_statements(cluster: PrivateCluster) -> bool:
    """pg_stat_statements in shared_preload_libraries, the cluster restarted; False
    (and the cluster as it was) when the module is not installed."""
    if not (cluster.bin.parent / "lib" / "pg_stat_statements.so").exists():
        print("bench dbcost: pg_stat_statements not installed; skipped", file=sys.stderr)
        return False
    connection = await asyncpg.connect(cluster.url, timeout=10)
    try:
        await connection.execute(
            "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    finally:
        await connection.close()
    await cluster.restart()
    return True


async def _measure(options: Options, cluster: PrivateCluster,
                   statements_wanted: bool) -> dict[str, Any]:
    smoke = options.smoke
    count = RECIPIENTS[smoke]
    if options.args is not None and options.args.recipients:
        count = options.args.recipients
    async with Harness("dbcost", smoke=smoke, database_url=cluster.url) as harness:
        assert harness.database is not None and harness.database.postmaster_pid is not None
        postmaster = harness.database.postmaster_pid
        stats = Stats(harness.database.url)
        if statements_wanted:
            await stats.enable_statements()
        daemon = await harness.start_daemon()
        gateway = harness.gateway
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            await api.import_profiles(count, "dbcost")
            await api.create_campaign("dbcost", audience="dbcost", rate=RATE)
            await harness.settle()
            await settle_autovacuum(with_database(cluster.url, "postgres"),
                                    QUIET[True], PATIENCE[True])
            window = harness.cpu_window(daemon)
            before = await stats.snapshot(reset_statements=True)
            processes_before = server_processes(postmaster)
            window.start()
            report = await run_to_end(api, gateway, "dbcost", expected=count, rate=RATE)
            window.stop()
            processes_after = server_processes(postmaster)
            at_end = await stats.snapshot()
            database_end = window.postgres.cpu_seconds()
            settled = await settle_autovacuum(with_database(cluster.url, "postgres"),
                                              QUIET[smoke], PATIENCE[smoke])
            database_settled = window.postgres.cpu_seconds()
            after = await stats.snapshot()
        arrivals = await gateway.arrivals()
        profile = rate_profile(arrivals.times_for(campaign="dbcost"), RATE)
        await gateway.reset()
        baseline_count = RATE * BASELINE_SECONDS[smoke]
        baseline = ChildProcess(
            ["-m", "bench.baseline", "--url", gateway.hook_url, "--count", str(baseline_count),
             "--rate", str(RATE), "--run-id", "baseline", *like_the_daemon()], "baseline")
        await baseline.start()
        baseline_result = await baseline.output(within=baseline_count / RATE + 60)
        duplicates = arrivals.duplicates()

    messages = profile["messages"]
    if messages <= 0 or window.postgres_seconds is None:
        raise BenchError("nothing measured (no messages, or no postmaster to read)")
    assert database_end is not None and database_settled is not None
    vacuum_after = database_settled - database_end
    ms = 1000.0 / messages
    database_ms = window.postgres_seconds * ms
    with_vacuum_ms = database_ms + vacuum_after * ms
    daemon_ms = window.daemon_seconds * ms
    baseline_ms = baseline_result["cpu_s_per_1000"]
    live_ms = live_only_seconds(processes_before, processes_after) * ms
    result: dict[str, Any] = {
        **harness.describe(), "server": "private cluster (fsync "
        + ("on" if options.args and options.args.fsync else "off") + ")",
        "rate": RATE, "recipients": count, "messages": messages,
        "finished": report["finished"], "duplicates": duplicates,
        "rate_ratio": profile["ratio"], "max_1s_window": profile["max_1s_window"],
        "cpu_ms_per_message": {
            "daemon": round(daemon_ms, 4),
            "database": round(database_ms, 4),
            "database_with_vacuum_after": round(with_vacuum_ms, 4),
            "database_vacuum_after": round(vacuum_after * ms, 4),
            "database_live_processes_only": round(live_ms, 4),
            "baseline": baseline_ms,
        },
        "ratio_with_database": ratio(daemon_ms + database_ms, baseline_ms),
        "ratio_with_database_and_vacuum_after": ratio(daemon_ms + with_vacuum_ms, baseline_ms),
        "ratio_daemon": ratio(daemon_ms, baseline_ms),
        "wal_per_message": wal_per_message(before, at_end, messages),
        "wal_per_message_with_vacuum_after": wal_per_message(before, after, messages),
        "rows_per_message": table_rows(before, after, messages),
        "statements": top_statements(after["statements"], messages),
        "autovacuum_after": settled,
        "server_processes_at_end": len(processes_after),
        "cpu_window": window.as_dict(),
        "baseline": baseline_result,
    }
    cpu = result["cpu_ms_per_message"]
    result["summary"] = [
        f"{messages} msgs at {RATE}/s (ratio {profile['ratio']}): database CPU "
        f"{cpu['database']} ms/msg in the window, {cpu['database_with_vacuum_after']} with "
        f"the vacuum after (live processes only: {cpu['database_live_processes_only']}); "
        f"goal <= 0.10",
        f"daemon {cpu['daemon']} ms/msg, baseline {baseline_ms} -> (daemon + database) / "
        f"baseline {result['ratio_with_database']} "
        f"({result['ratio_with_database_and_vacuum_after']} with the vacuum after; goal <= 2)",
        f"WAL per msg: {result['wal_per_message']}",
    ] + [f"{name}: {rows}" for name, rows in result["rows_per_message"].items()] + [
        f"{s['exec_ms_per_message']} ms/msg ({s['share']:.0%}) {s['calls']} calls: "
        f"{query[:90]}" for query, s in list(result["statements"].items())[:5]
    ]
    return result


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipients", type=int, default=None,
                        help=f"the campaign's size (default {RECIPIENTS[False]:,}, smoke "
                             f"{RECIPIENTS[True]:,})")
    parser.add_argument("--fsync", action="store_true",
                        help="the private cluster with fsync on (default off, as bench.soak)")


if __name__ == "__main__":
    main("dbcost", bench, __doc__.splitlines()[0], add_options)

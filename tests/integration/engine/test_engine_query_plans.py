"""The engine's hot queries keep their indexes, on a run of realistic size (EXPLAIN after
ANALYZE): claims, retries, outcome writes, crash recovery, due work."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.models import Channel
from daemon.store import Pool, freeze, snapshot
from daemon.store import engine as engine_store
from daemon.store import recipients as store
from tests.integration.engine.conftest import add_profiles, make_campaign

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _scans(plan: Any) -> list[tuple[str, str]]:
    found = []
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        if "Scan" in node["Node Type"]:
            found.append((node["Node Type"], node.get("Index Name") or node.get("Relation Name")))
        stack.extend(node.get("Plans", []))
    return found


async def _plan(pool: Pool, query: str, *args: Any) -> list[tuple[str, str]]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # the claims table is empty
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args)
    return _scans(raw if isinstance(raw, list) else json.loads(raw))


@pytest.fixture
async def big_run(pool: Pool) -> str:
    """A running run of 50,000 recipients, most already sent, some waiting for a retry."""
    await make_campaign(pool, "c1")
    await pool.execute("INSERT INTO runs (id, campaign_id, status, scheduled_for) "
                       "VALUES ('r1', 'c1', 'running', now())")
    await pool.execute(
        """
        INSERT INTO run_recipients (run_id, position, profile_id, status, retry_at)
        SELECT 'r1', n, 'p' || n,
               CASE WHEN n < 40000 THEN 'sent' ELSE 'pending' END,
               CASE WHEN n % 1000 = 0 AND n >= 40000 THEN now() END
        FROM generate_series(0, 49999) AS n
        """)
    await pool.execute("ANALYZE run_recipients")
    return "r1"


def _indexed(scans: list[tuple[str, str]], *indexes: str) -> bool:
    on_recipients = [s for s in scans if s[1] and s[1].startswith("run_recipients")]
    return bool(on_recipients) and all(
        kind != "Seq Scan" and name in indexes for kind, name in on_recipients)


async def test_a_fresh_claim_walks_the_pending_index_from_the_cursor(
    pool: Pool, big_run: str
) -> None:
    sql = (store._CLAIM_FRESH.format(fence=store._FENCE)
           + store._CLAIM.format(subscribed="sub_sms"))
    scans = await _plan(pool, sql, "c1", "me", [big_run], [40_500], [100], NOW)
    assert _indexed(scans, "run_recipients_pending", "run_recipients_pkey"), scans


async def test_a_retry_claim_uses_the_retry_index(pool: Pool, big_run: str) -> None:
    sql = (store._CLAIM_RETRIES.format(fence=store._FENCE)
           + store._CLAIM.format(subscribed=store._SUBSCRIBED[Channel.SMS]))
    scans = await _plan(pool, sql, "c1", "me", [big_run], NOW, 100, NOW)
    assert _indexed(scans, "run_recipients_retry", "run_recipients_pkey"), scans


async def test_an_outcome_write_updates_by_primary_key(pool: Pool, big_run: str) -> None:
    scans = await _plan(pool, store._WRITE_SQL, [big_run] * 2, [40_001, 40_002], ["sent"] * 2,
                        [None] * 2, [None] * 2, [1, 1], [None] * 2, [None] * 2, [NOW] * 2,
                        ["tw"] * 2)
    assert _indexed(scans, "run_recipients_pkey", "run_recipients_pending"), scans


async def test_claims_are_found_by_their_primary_key(pool: Pool, big_run: str) -> None:
    scans = await _plan(pool, store._RECOVER, [big_run])
    assert scans and all(kind != "Seq Scan" for kind, _ in scans), scans


async def test_a_freeze_chunk_reads_the_next_members_by_index(pool: Pool) -> None:
    await make_campaign(pool, "c1")
    await add_profiles(pool, 20_000, audience="a1")
    await pool.execute("ANALYZE profiles; ANALYZE audience_members")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(freeze._SETTINGS)  # as every chunk's transaction has them
        raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + freeze.chunk_sql(Channel.SMS),
                                  "r1", "a1", 10_000, 5_000, NOW)
    scans = _scans(raw if isinstance(raw, list) else json.loads(raw))
    assert {s for s in scans if (s[1] or "").startswith("audience_members")} == {
        ("Index Scan", "audience_members_order")}, scans
    assert {s for s in scans if (s[1] or "").startswith("profiles")} == {
        ("Index Scan", "profiles_pkey")}, scans


async def test_an_outcome_write_never_walks_the_outcome_index(pool: Pool) -> None:
    """On rows that came in since the last ANALYZE (a chunked freeze's): the outcome index
    holds no pending row, so a write cannot look its rows up there."""
    await make_campaign(pool, "c1")
    await pool.execute("ANALYZE run_recipients")  # statistics of an empty table
    await pool.execute("INSERT INTO runs (id, campaign_id, status, scheduled_for) "
                       "VALUES ('r1', 'c1', 'running', now())")
    await pool.execute("INSERT INTO run_recipients (run_id, position, profile_id) "
                       "SELECT 'r1', n, 'p' || n FROM generate_series(0, 29999) AS n")
    async with pool.acquire() as conn, conn.transaction():
        raw = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + store._WRITE_SQL, ["r1"] * 2, [10, 11], ["sent"] * 2,
            [None] * 2, [None] * 2, [1, 1], [None] * 2, [None] * 2, [NOW] * 2, ["tw"] * 2)
    scans = _scans(raw if isinstance(raw, list) else json.loads(raw))
    assert not any(name == "run_recipients_outcome" for _, name in scans), scans


def _filtered_out(node: Any) -> int:
    """The most rows any node of an EXPLAIN ANALYZE plan read and then threw away."""
    removed = int(node.get("Rows Removed by Filter", 0))
    return max([removed, *(_filtered_out(child) for child in node.get("Plans", []))])


async def test_the_next_wake_up_does_not_walk_the_waiting_inline_runs(pool: Pool) -> None:
    # 3,000 runs of inline recipients wait an hour ahead (a burst of triggers for a
    # campaign that starts later), one run over a stored audience two hours ahead: at each
    # wake-up the scheduler must find the latter without reading the former.
    await make_campaign(pool, "c1")
    later = datetime.now(UTC)
    await pool.execute(
        """
        INSERT INTO runs (id, campaign_id, scheduled_for, audience_id)
        SELECT 'r' || n, 'c1', $1::timestamptz + interval '1 hour' + n * interval '1 ms', NULL
        FROM generate_series(1, 3000) AS n
        UNION ALL SELECT 'ra', 'c1', $1::timestamptz + interval '2 hours', 'a1'
        """, later)
    await pool.execute("ANALYZE runs")
    async with pool.acquire() as conn:
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {engine_store._NEXT_DUE}",
                                  later, 2.0)
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    assert _filtered_out(plan) < 10, plan
    assert await engine_store.next_due(pool, later, 2.0) is not None


# A quiet database analysed, then a burst: the statistics say nothing is pending and no
# run is due, while thousands are. The statements below must still read by key.

BURST_RUNS = 3000
BURST_PENDING = 5000


@pytest.fixture
async def quiet_then_busy(pool: Pool) -> None:
    await make_campaign(pool, "c1", end_at=datetime(2027, 1, 1, tzinfo=UTC))
    await pool.execute(
        "INSERT INTO runs (id, campaign_id, status, scheduled_for) "
        "SELECT 'old' || n, 'c1', 'completed', $1 FROM generate_series(1, 500) AS n", NOW)
    await pool.execute(
        "INSERT INTO run_recipients (run_id, position, profile_id, status) "
        "SELECT 'old' || (n % 500 + 1), n, 'p' || n, 'sent' FROM generate_series(0, 4999) AS n")
    await pool.execute("ANALYZE runs; ANALYZE run_recipients")
    await pool.execute(
        "INSERT INTO runs (id, campaign_id, status, scheduled_for) "
        "SELECT 'due' || n, 'c1', 'scheduled', $1::timestamptz "
        "FROM generate_series(1, $2::int) AS n "
        "UNION ALL SELECT 'r1', 'c1', 'running', $1::timestamptz "
        "UNION ALL SELECT 'r2', 'c1', 'running', $1::timestamptz", NOW, BURST_RUNS)
    await pool.execute(
        "INSERT INTO run_recipients (run_id, position, profile_id) "
        "SELECT 'r1', n, 'p' || n FROM generate_series(0, $1::int - 1) AS n", BURST_PENDING)


async def _analyzed(pool: Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Every node of EXPLAIN ANALYZE's generic plan (the one asyncpg's prepared statement
    settles on after five executions; the statement run, then rolled back)."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
        finally:
            await transaction.rollback()
    nodes, stack = [], [(raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


def _scan_rows(nodes: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(node type, table, rows returned over all loops) of each scan of a table (a bitmap
    heap scan counts, not its index scan)."""
    return [(n["Node Type"], n["Relation Name"], int(n["Actual Rows"]) * int(n["Actual Loops"]))
            for n in nodes if "Scan" in n["Node Type"] and "Relation Name" in n]


def _rows_read(nodes: list[dict[str, Any]], table: str) -> int:
    """The rows the scans of `table` returned, all loops together."""
    return sum(rows for _, name, rows in _scan_rows(nodes) if name == table)


async def test_an_outcome_write_reads_its_rows_by_key_after_a_burst(
    pool: Pool, quiet_then_busy: None
) -> None:
    nodes = await _analyzed(pool, store._WRITE_SQL, ["r1"] * 10, list(range(100, 110)),
                            ["sent"] * 10, [None] * 10, [None] * 10, [1] * 10, [None] * 10,
                            [None] * 10, [NOW] * 10, ["tw"] * 10)
    assert _rows_read(nodes, "run_recipients") <= 10, _scan_rows(nodes)  # was 5,000


async def test_the_scheduler_reads_the_runs_it_announces_by_key_after_a_burst(
    pool: Pool, quiet_then_busy: None
) -> None:
    ids = [f"due{n}" for n in range(1, 21)]
    nodes = await _analyzed(pool, engine_store._SCHEDULED_RUNS, ids)
    assert _rows_read(nodes, "runs") <= 20, _scan_rows(nodes)  # was 3,000: every due run
    assert len(await engine_store.scheduled_runs(pool, [*ids, "r1"])) == 20  # not r1


async def test_a_start_locks_its_runs_by_key_after_a_burst(
    pool: Pool, quiet_then_busy: None
) -> None:
    ids = [f"due{n}" for n in range(1, 21)]
    sql = snapshot.start_inline_sql(Channel.SMS, "id")
    nodes = await _analyzed(pool, sql, ids, None, None, NOW, NOW, None, None)
    assert _rows_read(nodes, "runs") <= 2 * len(ids), _scan_rows(nodes)  # was 3,000 a start


async def test_a_close_reads_no_other_run_of_a_campaign_with_an_end(
    pool: Pool, quiet_then_busy: None
) -> None:
    await pool.execute("UPDATE runs SET pending = 0 WHERE id = 'r2'")
    nodes = await _analyzed(pool, engine_store._FINISH.format(counts=engine_store._COUNTS),
                            "r2", "completed", "delivered", NOW, "c1", None, None)
    # Only r2 itself: the campaign's other runs matter to a one-shot campaign alone.
    assert _rows_read(nodes, "runs") <= 1, _scan_rows(nodes)  # was 3,000: its running or due

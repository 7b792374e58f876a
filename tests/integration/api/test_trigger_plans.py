"""The trigger statement's cost does not grow with its campaign's runs.

asyncpg prepares each statement once per connection; after five executions PostgreSQL
may keep a generic plan, made while the tables are still small. These tests force that
generic plan (`plan_cache_mode`) on a fresh database, the worst case.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.store import Pool, triggers
from tests.integration.api.conftest import plan_nodes

NOW = datetime(2026, 3, 1, tzinfo=UTC)
_CREATE_TYPES = ("text, text, text, boolean, text, jsonb, text, timestamptz, text[], text[], "
                 "boolean, timestamptz")


async def _generic_plan(pool: Pool, sql: str, types: str, args: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE trigger_plan ({types}) AS {sql}")
        try:
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE trigger_plan ({args})")
        finally:
            await conn.execute("DEALLOCATE trigger_plan")
    return plan_nodes(raw)


async def _live_campaign(pool: Pool) -> None:
    await pool.execute(
        "INSERT INTO campaigns (id, name, channel, content, status, end_at) "
        "VALUES ('c', 'c', 'email', '{}', 'live', $1::timestamptz + interval '1 day')", NOW)


def _trigger_args(run_id: str, key: str | None, *, signed: bool = False) -> str:
    quoted = "NULL" if key is None else f"'{key}'"
    expiry = f"'{NOW.isoformat()}'::timestamptz + interval '6 minutes'" if signed else "NULL"
    return (f"'c', {quoted}, NULL, true, '{run_id}', '{{}}', 'hash', "
            f"'{NOW.isoformat()}', ARRAY['p'], ARRAY['{{}}'], {str(signed).lower()}, {expiry}")


async def test_the_generic_trigger_plan_reads_runs_only_through_the_one_shot_index(
    pool: Pool,
) -> None:
    nodes = await _generic_plan(pool, triggers._CREATE, _CREATE_TYPES,
                                _trigger_args("run_x", "key"))
    reads = [(node["Node Type"], node.get("Index Name")) for node in nodes
             if node.get("Relation Name") == "runs" and "Scan" in node["Node Type"]]
    assert reads == [("Index Only Scan", "runs_one_shot")], reads


@pytest.mark.parametrize("signed", [False, True])
async def test_a_trigger_reads_as_many_pages_with_2000_runs_as_with_none(
    pool: Pool, signed: bool
) -> None:
    """The plan made on the empty table serves the 2,000th run (as on a pooled connection
    until autovacuum analyses `runs`); a signed trigger's webhook-id claim costs no more."""
    await _live_campaign(pool)
    async with pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE trigger_plan ({_CREATE_TYPES}) AS {triggers._CREATE}")
        try:
            explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE trigger_plan"
            few = await conn.fetchval(
                f"{explain} ({_trigger_args('run_a', 'key-a', signed=signed)})")
            await conn.execute(
                "INSERT INTO runs (id, campaign_id, scheduled_for, created_at, idempotency_key) "
                "SELECT 'run_' || n, 'c', $1, $1, 'k' || n FROM generate_series(1, 2000) AS n",
                NOW)
            many = await conn.fetchval(
                f"{explain} ({_trigger_args('run_b', 'key-b', signed=signed)})")
        finally:
            await conn.execute("DEALLOCATE trigger_plan")
            await conn.execute("RESET plan_cache_mode")
    hits_few, hits_many = (plan_nodes(raw)[0]["Shared Hit Blocks"] for raw in (few, many))
    # A walk over the campaign's runs would read ~2,000 more pages; index descents a few more.
    assert hits_many <= hits_few + 10, (hits_few, hits_many)

"""The hot queries keep their indexes (EXPLAIN with sequential scans made unattractive)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from daemon.store import Pool, runs, triggers

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _scans(plan: Any) -> list[tuple[str, str]]:
    """(node type, relation or index) of every scan in a JSON plan."""
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
        await conn.execute("SET LOCAL enable_seqscan = off")
        # Without ANALYZE, EXPLAIN plans the INSERTs of the trigger statement, runs nothing.
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args)
    return _scans(raw if isinstance(raw, list) else json.loads(raw))


@pytest.mark.parametrize("signed", [False, True])
async def test_the_trigger_statement_reads_by_index_only(pool: Pool, signed: bool) -> None:
    expiry = NOW + timedelta(minutes=6) if signed else None
    scans = await _plan(
        pool, triggers._CREATE, "c", "key", None, True, "run_x", {}, "hash", NOW, ["p"], ["{}"],
        signed, expiry,
    )
    assert all(kind != "Seq Scan" for kind, _ in scans), scans
    assert ("Index Scan", "campaigns_pkey") in scans or ("Index Only Scan",
                                                         "campaigns_pkey") in scans


async def test_the_recipient_page_uses_the_outcome_index(pool: Pool) -> None:
    query = (f"SELECT {runs._RECIPIENT_COLUMNS} FROM run_recipients WHERE run_id = $1 "
             "AND position > $2 AND status = $3 ORDER BY position LIMIT $4")
    scans = await _plan(pool, query, "run_x", -1, "failed", 100)
    assert scans and scans[0][1] in ("run_recipients_outcome", "run_recipients_pkey"), scans

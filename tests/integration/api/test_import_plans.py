"""A big import merges set-based: hash joins over the analysed staging table, never an
index probe per staged line (EXPLAIN; nothing is run)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from daemon.store import Pool, profiles
from tests.integration.api.conftest import plan_nodes

NOW = datetime(2026, 3, 1, tzinfo=UTC)
LINES = 20_000


async def _staged() -> AsyncIterator[tuple[Any, ...]]:
    for line in range(1, LINES + 1):  # half of them stored already
        yield (line, f"p{line + LINES // 2}", None, None, None, '{"k": "v"}', None, None, None,
               profiles.GIVEN_ATTRIBUTES)


async def test_a_big_import_merges_with_hash_joins(pool: Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO profiles (id) SELECT 'p' || i "
                           "FROM generate_series(1, $1::int) i", LINES)
        await conn.execute("INSERT INTO audiences (id) VALUES ('a')")
        await conn.execute("INSERT INTO audience_members (audience_id, profile_id) "
                           "SELECT 'a', id FROM profiles")
        await conn.execute("ANALYZE profiles")
        await conn.execute("ANALYZE audience_members")
        await profiles.create_import_table(conn)
        await profiles.copy_import_rows(conn, _staged())
        await conn.execute("ANALYZE profile_import")
        source = profiles._UNFOLDED
        for query, arg in ((profiles._MERGE_UPDATE, NOW), (profiles._MERGE_INSERT, NOW),
                           (profiles._ADD_MEMBERS, "a")):
            raw = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {query.replace('{source}', source)}", arg)
            nodes = [node["Node Type"] for node in plan_nodes(raw)]
            assert "Nested Loop" not in nodes and any("Hash" in n for n in nodes), nodes

"""Audiences and their members (insertion order is the send order)."""

from __future__ import annotations

from collections.abc import AsyncIterable
from datetime import datetime

from daemon.store import Connection, Executor, Record

# Bulk statements may run long (millions of rows): past the pool's default command timeout.
BULK_TIMEOUT = 3600.0
# Room for a bulk statement's sorts and hashes (a million lines) to stay in memory.
BULK_WORK_MEM = "256MB"

_WITH_SIZE = """
    SELECT a.id, a.name, a.created_at, a.updated_at,
           (SELECT count(*) FROM audience_members m WHERE m.audience_id = a.id) AS size
    FROM audiences a WHERE a.id = $1
"""


async def put(db: Executor, audience_id: str, name: str | None, now: datetime) -> bool:
    """Create the audience or rename it; True when it was created."""
    row: Record = await db.fetchrow(
        """
        INSERT INTO audiences AS a (id, name, created_at, updated_at) VALUES ($1, $2, $3, $3)
        ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, updated_at = EXCLUDED.updated_at
        RETURNING (xmax = 0) AS created
        """,
        audience_id, name, now,
    )
    return bool(row["created"])


async def get(db: Executor, audience_id: str) -> Record | None:
    """The audience with its `size`, or None."""
    row: Record | None = await db.fetchrow(_WITH_SIZE, audience_id)
    return row


async def delete(db: Executor, audience_id: str) -> bool:
    """Delete the audience and its memberships (a trigger deletes them; profiles stay)."""
    result: str = await db.execute("DELETE FROM audiences WHERE id = $1", audience_id)
    return result == "DELETE 1"


# Advisory lock class (two-key form) of "adding members to audience hashtext(id)".
_ADDING_MEMBERS = 0x6D656D62


async def hold(conn: Connection, audience_id: str) -> bool:
    """Keep the audience from being deleted until the transaction ends, and be the one
    transaction adding members to it (so that members missing now are still missing at
    the INSERT: a plain one, cheaper than ON CONFLICT); False if absent."""
    found = await conn.fetchval(
        "SELECT true FROM audiences WHERE id = $1 FOR KEY SHARE", audience_id
    )
    if found:
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                           _ADDING_MEMBERS, audience_id)
    return bool(found)


async def remove_member(db: Executor, audience_id: str, profile_id: str) -> bool:
    result: str = await db.execute(
        "DELETE FROM audience_members WHERE audience_id = $1 AND profile_id = $2",
        audience_id, profile_id,
    )
    return result == "DELETE 1"


# -- bulk add ----------------------------------------------------------------------------------


async def create_member_table(conn: Connection) -> None:
    await conn.execute(f"SET LOCAL work_mem = '{BULK_WORK_MEM}'")
    await conn.execute(
        "CREATE TEMP TABLE member_import (line bigint, profile_id text) ON COMMIT DROP"
    )


async def copy_member_rows(conn: Connection, rows: AsyncIterable[tuple[int, str]]) -> None:
    await conn.copy_records_to_table(
        "member_import", records=rows, columns=("line", "profile_id"), timeout=BULK_TIMEOUT
    )


async def unknown_members(conn: Connection, limit: int) -> tuple[int, list[Record]]:
    """Staged lines naming no stored profile: (how many, the first `limit` by line)."""
    count: int = await conn.fetchval(
        """SELECT count(*) FROM member_import m
           WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.id = m.profile_id)""",
        timeout=BULK_TIMEOUT,
    )
    rows = await conn.fetch(
        """SELECT line, profile_id FROM member_import m
           WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.id = m.profile_id)
           ORDER BY line LIMIT $1""",
        limit, timeout=BULK_TIMEOUT,
    )
    return count, list(rows)


async def add_staged_members(conn: Connection, audience_id: str) -> int:
    """Add the staged profiles that exist, in the order of their first line; returns how many
    were not members yet. The profiles are locked FOR KEY SHARE as they are read (an
    erasure waits for this transaction, then its trigger removes the new memberships; a
    profile erased meanwhile is skipped): memberships have no foreign key. After `hold`."""
    result: str = await conn.execute(
        """
        INSERT INTO audience_members (audience_id, profile_id)
        SELECT $1, s.id FROM (
            SELECT p.id, m.line FROM member_import m JOIN profiles p ON p.id = m.profile_id
            FOR KEY SHARE OF p
        ) s
        WHERE NOT EXISTS (SELECT 1 FROM audience_members a
                          WHERE a.audience_id = $1 AND a.profile_id = s.id)
        GROUP BY s.id ORDER BY min(s.line)
        """,
        audience_id, timeout=BULK_TIMEOUT,
    )
    return int(result.rsplit(" ", 1)[-1])

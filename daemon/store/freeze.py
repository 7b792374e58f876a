"""Freezing a stored audience in position-ordered chunks (`run_freezes`, migration 0008).

A run over a stored audience starts with its first chunk: one statement claims the run,
inserts the first `limit` members in audience order (resolved, classified and ranked as
`snapshot` does), records how far it came in `run_freezes` and sets the run's counts,
with the members still to freeze counted as `remaining` in `targeted` and `pending`.
The run sends at once; each further chunk is one statement that inserts the next members
and moves the counts by what it inserted (replacing their share of `remaining`), so
`targeted = sent + failed + pending + Σ excluded` holds at every read and the final
counts are exactly those of the rows. A chunk is applied only if the freeze is where
its caller read it (`through`, under the row's lock): two freezers (a close and the
worker's freezer, or an old and a new lease holder) never insert the same members.

Exactness: the positions, the cap's ranks (the eligible frozen so far, `eligible`) and
the counts continue across chunks; members added to the audience after the start
(positions past `upto`) are not in the run. A stored audience has no duplicate (its
primary key is (audience, profile)), so no chunk needs the others to dedupe. After a
crash the row says where to go on; a close (cancel, deadline, error) freezes the rest in
one statement with the close's reason (`finish`), so every member gets its outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.models import Channel, ExclusionReason
from daemon.store import Executor, Pool, Record
from daemon.store.recipients import COUNT_COLUMNS
from daemon.store.snapshot import SnapshotCounts, counts_from, decided

FIRST_CHUNK = 5_000  # members frozen before a run's first call (~0.05 s)
CHUNK = 50_000  # members per later chunk, at most (each 4 times the one before, up to this)
_BEFORE_ALL = -(2**63)
_SETTINGS = "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'; SET LOCAL enable_bitmapscan = off"

# The next members after `through` ($3), up to the audience's position at the start, in
# order; each profile read by its key (a hash join would read every profile per chunk).
_CHUNK = """
chunk AS (
    SELECT m.position, m.profile_id FROM audience_members m
    WHERE m.audience_id = $2 AND m.position > $3 AND m.position <= (SELECT upto FROM frz)
    ORDER BY m.position
    LIMIT $4
),
"""
_RESOLVED = """
SELECT NULL::text AS run_id, m.position AS ord, p.id AS profile_id, p.email, p.phone,
       p.push_tokens, p.attributes, NULL::jsonb AS context, p.sub_email, p.sub_sms,
       p.sub_push, false AS duplicate
FROM chunk m CROSS JOIN LATERAL (
    SELECT q.id, q.email, q.phone, q.push_tokens, q.attributes, q.sub_email, q.sub_sms,
           q.sub_push
    FROM profiles q WHERE q.id = m.profile_id OFFSET 0) p
"""

# Insert the decided rows (`rest_status` for those given the reason `rest`), count what
# was inserted, and how much of `remaining` this chunk replaces (all of it when done).
_INSERT = """,
inserted AS (
    INSERT INTO run_recipients (run_id, position, profile_id, email, phone, push_tokens,
                                attributes, context, status, reason, updated_at)
    SELECT $1, d.position, d.profile_id, d.email, d.phone, d.push_tokens, d.attributes,
           d.context,
           CASE WHEN d.reason IS NULL THEN 'pending'
                WHEN d.snapshot_reason IS NULL AND d.reason = {rest} THEN {rest_status}
                ELSE 'excluded' END,
           d.reason, CASE WHEN d.reason IS NOT NULL THEN $5::timestamptz END
    FROM decided d
    RETURNING status, reason
),
counted AS (
    SELECT count(*) AS targeted,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           {excluded},
           count(*) FILTER (WHERE NOT (status = 'excluded'
                                       AND reason IN ('duplicate', 'opted_out', 'no_address')))
               AS eligible
    FROM inserted
),
span AS (
    SELECT count(*) AS members, max(position) AS through,
           coalesce(count(*) < $4, true) AS done
    FROM chunk
),
used AS (
    SELECT CASE WHEN s.done THEN f.remaining ELSE least(f.remaining, s.members) END AS n
    FROM frz f, span s
)
"""
_EXCLUDED = ",\n           ".join(
    f"count(*) FILTER (WHERE status = 'excluded' AND reason = '{reason.value}') "
    f"AS excluded_{reason.value}" for reason in ExclusionReason)
_MOVE_COUNTS = ", ".join(
    f"{column} = r.{column} + c.{column}" for column in COUNT_COLUMNS
    if column not in ("targeted", "pending", "sent"))
_RUN_COUNTS = ", ".join(f"r.{column}" for column in COUNT_COLUMNS)

# The start: claim the run (if still scheduled), freeze the first chunk, keep the rest
# for later (if any), mark the run running with its plan and counts.
_START_FRZ = """
frz AS (
    SELECT 0::bigint AS next_position, 0::bigint AS eligible, $8::bigint AS remaining,
           (SELECT coalesce(max(a.position), 0) FROM audience_members a
            WHERE a.audience_id = $2) AS upto
    FROM runs WHERE id = $1 AND status = 'scheduled' FOR UPDATE
),
"""
_START = """,
kept AS (
    INSERT INTO run_freezes (run_id, audience_id, channel, upto, through, next_position,
                             eligible, remaining, capacity, cap_reason)
    SELECT $1, $2, $11, f.upto, s.through, c.targeted, c.eligible, f.remaining - u.n, $6, $7
    FROM frz f, span s, counted c, used u WHERE NOT s.done
),
started AS (
    UPDATE runs r
    SET status = 'running', started_at = $9, deadline = $10, deadline_reason = $7,
        rate_per_second = coalesce($12::int, r.rate_per_second),
        targeted = c.targeted + f.remaining - u.n, pending = c.pending + f.remaining - u.n,
        {move}
    FROM counted c, frz f, used u
    WHERE r.id = $1
    RETURNING {returning}
)
SELECT started.*, NOT s.done AS freezing FROM started, span s
"""

# A later chunk: only if the freeze is still where the caller read it.
_NEXT_FRZ = """
frz AS (
    SELECT f.* FROM run_freezes f WHERE f.run_id = $1 AND f.through = $3 FOR UPDATE
),
"""
_NEXT = """,
kept AS (
    UPDATE run_freezes f
    SET through = s.through, next_position = f.next_position + c.targeted,
        eligible = f.eligible + c.eligible, remaining = f.remaining - u.n
    FROM span s, counted c, used u
    WHERE f.run_id = $1 AND NOT s.done AND EXISTS (SELECT 1 FROM frz)
),
gone AS (
    DELETE FROM run_freezes f USING span s
    WHERE f.run_id = $1 AND s.done AND EXISTS (SELECT 1 FROM frz)
),
moved AS (
    UPDATE runs r
    SET targeted = r.targeted + c.targeted - u.n, pending = r.pending + c.pending - u.n,
        {move}
    FROM counted c, used u
    WHERE r.id = $1 AND EXISTS (SELECT 1 FROM frz)
    RETURNING {counts}
)
SELECT moved.*, NOT s.done AS freezing FROM moved, span s
"""


def chunk_sql(channel: Channel, *, with_rest: bool = False) -> str:
    """A later chunk's statement: $1 run, $2 audience, $3 through, $4 limit, $5 now (and,
    `with_rest`, $6 rest and $7 rest_status)."""
    return _statement(
        channel, _NEXT_FRZ, _NEXT, capacity="(SELECT capacity FROM frz)",
        cap_reason="(SELECT cap_reason FROM frz)", base="(SELECT next_position FROM frz)",
        eligible_base="(SELECT eligible FROM frz)",
        rest="$6::text" if with_rest else "NULL::text",
        rest_status="$7::text" if with_rest else "'pending'", returning="")


def _statement(channel: Channel, frz: str, tail: str, *, capacity: str, cap_reason: str,
               base: str, eligible_base: str, rest: str, rest_status: str,
               returning: str) -> str:
    return (decided(channel, _RESOLVED, capacity, cap_reason, first=frz + _CHUNK, base=base,
                    eligible_base=eligible_base, rest=rest)
            + _INSERT.format(rest=rest, rest_status=rest_status, excluded=_EXCLUDED)
            + tail.format(move=_MOVE_COUNTS, returning=returning, counts=_RUN_COUNTS))


async def _in_chunk_transaction(pool: Pool, sql: str, *args: Any) -> Record | None:
    """One chunk, in its own transaction: no JIT (its compilation costs more than a chunk
    takes), room to sort a chunk in memory, and no bitmap scan (which would read the whole
    audience to sort out its next members: the range's bound is only known at execution,
    so the estimate cannot tell)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_SETTINGS)
        row: Record | None = await conn.fetchrow(sql, *args)
        return row


async def start(
    pool: Pool, run_id: str, channel: Channel, *, audience_id: str, size: int,
    started_at: datetime, deadline: datetime | None,
    deadline_reason: ExclusionReason | None, capacity: int | None, now: datetime,
    returning: str, first_chunk: int | None = FIRST_CHUNK, rate: int | None = None,
) -> tuple[Record, SnapshotCounts, bool] | None:
    """Start a scheduled run over a stored audience with its first chunk (atomic, like
    `snapshot.start`): the run's `returning` columns, its counts (the members still to
    freeze counted as pending; `size`: the audience's size as counted ahead), and whether
    chunks remain. None if the run is no longer scheduled. `rate`: the rate it is planned
    at, when not its own (a pooled campaign's share)."""
    columns = ", ".join(f"r.{c.strip()}" for c in returning.split(","))
    sql = _statement(channel, _START_FRZ, _START, capacity="$6", cap_reason="$7", base="0",
                     eligible_base="0", rest="NULL::text", rest_status="'pending'",
                     returning=f"{columns}, {_RUN_COUNTS}")
    reason = deadline_reason.value if deadline_reason else None
    row = await _in_chunk_transaction(
        pool, sql, run_id, audience_id, _BEFORE_ALL, first_chunk, now, capacity, reason,
        max(size, 0), started_at, deadline, channel.value, rate)
    if row is None:
        return None
    return row, counts_from(row), bool(row["freezing"])


@dataclass(frozen=True, slots=True)
class Freeze:
    """How far a run's freeze has come."""

    run_id: str
    audience_id: str
    channel: Channel
    through: int


async def freezes(db: Executor, run_ids: list[str]) -> list[Freeze]:
    """The unfinished freezes among these runs."""
    rows = await db.fetch(
        "SELECT run_id, audience_id, channel, through FROM run_freezes "
        "WHERE run_id = ANY($1::text[])", run_ids)
    return [Freeze(row["run_id"], row["audience_id"], Channel(row["channel"]), row["through"])
            for row in rows]


@dataclass(frozen=True, slots=True)
class Chunk:
    counts: dict[str, int]  # the run's counts after it
    freezing: bool  # chunks remain


async def next_chunk(pool: Pool, freeze: Freeze, *, now: datetime,
                     limit: int | None = CHUNK, rest: str | None = None,
                     rest_status: str = "pending") -> Chunk | None:
    """Freeze the next `limit` members (None: all the rest); those that would be pending
    get `rest`/`rest_status` instead when given (a close). None when the freeze is no
    longer where `freeze` says (another freezer moved it, or it ended)."""
    sql = chunk_sql(freeze.channel, with_rest=rest is not None)
    args: list[Any] = [freeze.run_id, freeze.audience_id, freeze.through, limit, now]
    if rest is not None:
        args += [rest, rest_status]
    row = await _in_chunk_transaction(pool, sql, *args)
    if row is None:
        return None
    return Chunk({column: int(row[column]) for column in COUNT_COLUMNS}, bool(row["freezing"]))


async def advance(pool: Pool, run_id: str, *, now: datetime, limit: int | None = CHUNK,
                  rest: str | None = None, rest_status: str = "pending") -> Chunk | None:
    """Freeze the run's next chunk (`next_chunk`, from wherever its freeze is): the run's
    counts after it; None when there is nothing left to freeze."""
    while True:
        found = await freezes(pool, [run_id])
        if not found:
            return None
        chunk = await next_chunk(pool, found[0], now=now, limit=limit, rest=rest,
                                 rest_status=rest_status)
        if chunk is not None:
            return chunk


async def finish(pool: Pool, run_id: str, *, now: datetime, rest: str,
                 rest_status: str) -> None:
    """Freeze whatever is left of the run's audience at once, its would-be pending members
    given `rest` (`rest_status`: excluded or failed): the first step of a close."""
    await advance(pool, run_id, now=now, limit=None, rest=rest, rest_status=rest_status)

"""Delivery receipts: find each receipt's recipient, apply the news, keep every receipt.

A batch of receipts is handled in one transaction (`daemon.receipts.writer`):
1. `remember_webhook_ids`: the Standard Webhooks ids of the requests in the batch; those
   already taken are replays, and their receipts are dropped;
2. `find_recipients`: per receipt, the recipient it names (by our key, else by
   (provider, provider_message_id)), with its outcome, provider and current delivery;
3. `apply`: each sent recipient's `delivery` moves to the greatest status heard (rows
   locked in key order, the old value read under the lock), and the run's final
   delivery counts (`run_deliveries`) move by what actually changed;
4. `store`: every receipt, `applied_at` set when its recipient was found; the others
   stay parked and are tried again by `parked` (their send's outcome may not be written
   yet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.store import Executor, Record

ORDER = ("queued", "sent", "delivered", "failed", "bounced")  # DeliveryStatus, in rank order
_RANK_SQL = "coalesce(array_position(ARRAY['queued','sent','delivered','failed','bounced'], {}), 0)"


async def remember_webhook_ids(db: Executor, ids: Sequence[tuple[str, str]], now: datetime
                               ) -> set[tuple[str, str]]:
    """Record (provider, webhook-id) pairs; returns those that were new (not replays)."""
    if not ids:
        return set()
    rows = await db.fetch(
        """INSERT INTO receipt_webhook_ids (provider, webhook_id, received_at)
           SELECT DISTINCT u.provider, u.webhook_id, $3::timestamptz
           FROM unnest($1::text[], $2::text[]) AS u(provider, webhook_id)
           ON CONFLICT DO NOTHING
           RETURNING provider, webhook_id""",
        [i[0] for i in ids], [i[1] for i in ids], now,
    )
    return {(row["provider"], row["webhook_id"]) for row in rows}


async def forget_webhook_ids(db: Executor, before: datetime) -> int:
    """Drop webhook ids taken before `before` (older requests are refused by timestamp)."""
    status: str = await db.execute(
        "DELETE FROM receipt_webhook_ids WHERE received_at < $1", before)
    return int(status.rsplit(" ", 1)[-1])


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a receipt names: our key (run_id, position) if it carries it, and its id."""

    provider: str
    message_id: str
    run_id: str | None
    position: int | None


_FIND = """
SELECT b.n, r.run_id, r.position, r.status, r.provider, r.delivery
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
    WITH ORDINALITY AS b(provider, message_id, run_id, position, n)
CROSS JOIN LATERAL (
    SELECT c.run_id, c.position, c.status, c.provider, c.delivery FROM run_recipients c
    WHERE c.run_id = b.run_id AND c.position = b.position
    UNION ALL
    SELECT c.run_id, c.position, c.status, c.provider, c.delivery FROM run_recipients c
    WHERE b.run_id IS NULL AND c.provider = b.provider AND c.provider_message_id = b.message_id
      AND c.provider_message_id <> c.run_id || ':' || c.position  -- the index's predicate
    LIMIT 1
) r
"""


async def find_recipients(db: Executor, lookups: Sequence[Lookup]) -> dict[int, Record]:
    """Per index into `lookups` (from 0), the recipient row found (absent: none)."""
    if not lookups:
        return {}
    rows = await db.fetch(
        _FIND, [x.provider for x in lookups], [x.message_id for x in lookups],
        [x.run_id for x in lookups], [x.position for x in lookups],
    )
    return {row["n"] - 1: row for row in rows}


@dataclass(frozen=True, slots=True)
class Change:
    """A sent recipient's delivery, as a receipt would set it."""

    run_id: str
    position: int
    provider: str
    delivery: str
    reason: str | None
    at: datetime


_APPLY = f"""
WITH n AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::timestamptz[])
        AS n(run_id, position, provider, delivery, reason, at)
), old AS (
    -- Per change, its row locked (key order: the changes come sorted) and its current
    -- delivery read under the lock: a primary-key probe per change. OFFSET 0 keeps the
    -- status test out of the probe: with it, a planner without fresh statistics takes the
    -- outcome index (run_id, status, reason, position) and walks every sent row of the
    -- run for each change (~1 ms each; seen in bench/receipts.py).
    SELECT c.run_id, c.position, c.delivery AS old, n.delivery AS new, n.reason, n.at
    FROM n CROSS JOIN LATERAL (
        SELECT c.run_id, c.position, c.status, c.provider, c.delivery FROM run_recipients c
        WHERE c.run_id = n.run_id AND c.position = n.position
        OFFSET 0 FOR UPDATE
    ) c
    WHERE c.status = 'sent' AND c.provider = n.provider
), changed AS (
    UPDATE run_recipients r
    SET delivery = old.new, delivery_reason = old.reason, delivery_at = old.at
    FROM old
    WHERE r.run_id = old.run_id AND r.position = old.position
      AND {_RANK_SQL.format("old.old")} < {_RANK_SQL.format("old.new")}
    RETURNING r.run_id, r.position, old.new AS new, old.old
), counted AS (
    INSERT INTO run_deliveries AS d (run_id, delivered, bounced, failed)
    SELECT run_id,
           count(*) FILTER (WHERE new = 'delivered') - count(*) FILTER (WHERE old = 'delivered'),
           count(*) FILTER (WHERE new = 'bounced') - count(*) FILTER (WHERE old = 'bounced'),
           count(*) FILTER (WHERE new = 'failed') - count(*) FILTER (WHERE old = 'failed')
    FROM changed GROUP BY run_id
    ON CONFLICT (run_id) DO UPDATE SET delivered = d.delivered + excluded.delivered,
        bounced = d.bounced + excluded.bounced, failed = d.failed + excluded.failed
)
SELECT run_id, position, new, old FROM changed
"""


async def apply(db: Executor, changes: Sequence[Change]) -> list[Record]:
    """Move each recipient's delivery up to the change's (never down); the transitions
    made (`run_id`, `position`, `new`, `old`). At most one change per recipient."""
    if not changes:
        return []
    return list(await db.fetch(
        _APPLY, [c.run_id for c in changes], [c.position for c in changes],
        [c.provider for c in changes], [c.delivery for c in changes],
        [c.reason for c in changes], [c.at for c in changes],
    ))


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    provider: str
    message_id: str
    status: str
    run_id: str | None
    position: int | None
    reason: str | None
    occurred_at: datetime | None
    received_at: datetime
    applied_at: datetime | None  # None: parked (its recipient is not known or not sent)


_STORE = """
INSERT INTO delivery_receipts AS d (provider, message_id, status, run_id, position, reason,
                                    occurred_at, received_at, applied_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                     $7::timestamptz[], $8::timestamptz[], $9::timestamptz[])
ON CONFLICT (provider, message_id, status) DO UPDATE
SET applied_at = coalesce(d.applied_at, excluded.applied_at),
    run_id = coalesce(d.run_id, excluded.run_id), position = coalesce(d.position, excluded.position)
"""


async def store(db: Executor, receipts: Sequence[StoredReceipt]) -> None:
    """Keep every receipt (once per message and status); a parked one found now is marked
    applied. At most one entry per (provider, message_id, status)."""
    if not receipts:
        return
    columns: list[list[Any]] = [[] for _ in range(9)]
    for r in receipts:
        for index, value in enumerate((r.provider, r.message_id, r.status, r.run_id, r.position,
                                       r.reason, r.occurred_at, r.received_at, r.applied_at)):
            columns[index].append(value)
    await db.execute(_STORE, *columns)


async def parked(db: Executor, since: datetime, limit: int) -> list[Record]:
    """Receipts not applied yet, received since `since`, newest first."""
    return list(await db.fetch(
        """SELECT provider, message_id, status, run_id, position, reason, occurred_at,
                  received_at
           FROM delivery_receipts WHERE applied_at IS NULL AND received_at >= $1
           ORDER BY received_at DESC LIMIT $2""",
        since, limit,
    ))


async def delivery_counts(db: Executor, run_id: str) -> Record | None:
    """A run's final delivery counts (None: no receipt applied yet)."""
    row: Record | None = await db.fetchrow(
        "SELECT delivered, bounced, failed FROM run_deliveries WHERE run_id = $1", run_id)
    return row

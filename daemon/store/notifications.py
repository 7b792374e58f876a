"""The notification outbox (SPEC §9.4; schema and triggers in migrations/0019).

The triggers write the events; this module holds what the daemon asks of the outbox: the
settings the triggers read, the deliverers' claim (`FOR UPDATE SKIP LOCKED`, the head of
each run's queue only), the record of attempts, the backlog, the pruning and the listing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from daemon.models import NotificationEvent, NotificationStatus
from daemon.store import Connection, Executor, Record

CHANNEL = "campaignd_notifications"  # the triggers' NOTIFY
PRUNE_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed event, as the deliverer POSTs it."""

    id: int
    webhook_id: str
    type: NotificationEvent
    campaign_id: str
    run_id: str | None
    body: bytes
    attempts: int  # before this one
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt did to its event."""

    id: int
    status: NotificationStatus  # pending: to be retried at `next_attempt_at`
    next_attempt_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Listed:
    id: int
    webhook_id: str
    type: str
    campaign_id: str
    run_id: str | None
    status: NotificationStatus
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str | None
    finished_at: datetime | None


async def put_settings(db: Executor, events: Sequence[NotificationEvent] | None,
                       now: datetime) -> None:
    """What the triggers write from now on: `events`, or nothing (None)."""
    await db.execute(
        """
        INSERT INTO notification_settings (enabled, events, updated_at) VALUES ($1, $2, $3)
        ON CONFLICT (singleton) DO UPDATE
        SET enabled = excluded.enabled, events = excluded.events, updated_at = excluded.updated_at
        """,
        events is not None, [event.value for event in events or ()], now)


# Pending events that are the first pending one of their run (a campaign event: of its
# campaign's). Only those may be sent: nothing of a run overtakes, or goes beside, an
# event of that run still pending.
_HEADS = """
n.status = 'pending'
AND NOT EXISTS (SELECT 1 FROM notifications e
                WHERE e.status = 'pending' AND e.run_id IS NOT NULL
                  AND e.run_id = n.run_id AND e.id < n.id)
AND (n.run_id IS NOT NULL
     OR NOT EXISTS (SELECT 1 FROM notifications e
                    WHERE e.status = 'pending' AND e.campaign_id = n.campaign_id
                      AND e.id < n.id))
"""

# The due heads, oldest first. A row another deliverer holds is skipped, and so, through
# the NOT EXISTS, is every later event of its run.
_CLAIM = f"""
SELECT n.id, n.webhook_id, n.type, n.campaign_id, n.run_id, n.body, n.attempts, n.created_at
FROM notifications n
WHERE n.next_attempt_at <= $1 AND {_HEADS}
ORDER BY n.next_attempt_at, n.id
LIMIT $2
FOR UPDATE OF n SKIP LOCKED
"""


async def claim(conn: Connection, now: datetime, limit: int) -> list[Outgoing]:
    """Lock (in the caller's transaction, held while POSTing) up to `limit` events to send."""
    rows = await conn.fetch(_CLAIM, now, limit)
    return [Outgoing(row["id"], row["webhook_id"], NotificationEvent(row["type"]),
                     row["campaign_id"], row["run_id"], row["body"].encode(), row["attempts"],
                     row["created_at"]) for row in rows]


async def record(conn: Connection, attempts: Sequence[Attempt], now: datetime) -> None:
    """Write what each attempt did, in one statement."""
    if not attempts:
        return
    await conn.execute(
        """
        UPDATE notifications n
        SET status = a.status, attempts = n.attempts + 1, last_attempt_at = $5,
            next_attempt_at = coalesce(a.next_at, n.next_attempt_at), last_error = a.error,
            finished_at = CASE WHEN a.status <> 'pending' THEN $5::timestamptz END
        FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[])
             AS a(id, status, next_at, error)
        WHERE n.id = a.id
        """,
        [a.id for a in attempts], [a.status.value for a in attempts],
        [a.next_attempt_at for a in attempts], [a.error for a in attempts], now)


async def next_due(db: Executor) -> datetime | None:
    """When the earliest event that may be sent is due (not one behind an earlier event of
    its run, which waits for that one)."""
    # In the order of notifications_due, up to the first head: the rows visited are those
    # the claim visits too (due, behind a pending event of their run).
    value: datetime | None = await db.fetchval(
        f"SELECT n.next_attempt_at FROM notifications n WHERE {_HEADS} "
        "ORDER BY n.next_attempt_at, n.id LIMIT 1")
    return value


async def backlog(db: Executor) -> int:
    """Events not delivered yet (pending)."""
    return int(await db.fetchval("SELECT count(*) FROM notifications WHERE status = 'pending'"))


async def prune(db: Executor, *, delivered_before: datetime, failed_before: datetime) -> int:
    """Forget delivered (and long failed) events; how many (at most PRUNE_BATCH a call)."""
    result: str = await db.execute(
        """
        DELETE FROM notifications WHERE id IN (
            SELECT id FROM notifications
            WHERE (status = 'delivered' AND finished_at < $1)
               OR (status = 'failed' AND finished_at < $2)
            LIMIT $3)
        """,
        delivered_before, failed_before, PRUNE_BATCH)
    return int(result.rsplit(" ", 1)[-1])


async def listing(db: Executor, *, failed_only: bool, limit: int) -> list[Listed]:
    """The latest events (only the failed ones), newest first."""
    rows: list[Record] = await db.fetch(
        """
        SELECT id, webhook_id, type, campaign_id, run_id, status, attempts, created_at,
               next_attempt_at, last_error, finished_at
        FROM notifications WHERE NOT $1 OR status = 'failed'
        ORDER BY id DESC LIMIT $2
        """,
        failed_only, limit)
    return [Listed(row["id"], row["webhook_id"], row["type"], row["campaign_id"],
                   row["run_id"], NotificationStatus(row["status"]), row["attempts"],
                   row["created_at"], row["next_attempt_at"], row["last_error"],
                   row["finished_at"]) for row in rows]

"""Run rows as the API reads them (reports, recipients) and cancels them.

Runs are created by `store.triggers`; the engine owns what happens after
`scheduled`. A cancellation is followed by a NOTIFY on `campaignd_control` in the
same statement (delivered at commit), so that a running engine hears of it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Any

from daemon.store import Connection, Executor, Pool, Record

CONTROL_CHANNEL = "campaignd_control"

EXCLUSION_COLUMNS = (
    "excluded_time_cap", "excluded_campaign_end", "excluded_opted_out", "excluded_no_address",
    "excluded_duplicate", "excluded_cancelled",
)
# A running run of a paused campaign reads `paused` (SPEC §9.1; stored as running).
_STATUS = (
    "CASE WHEN status = 'running' AND EXISTS (SELECT 1 FROM campaigns pc "
    "WHERE pc.id = runs.campaign_id AND pc.status = 'paused') THEN 'paused' ELSE status END "
    "AS status"
)
# Final delivery counts from receipts (SPEC §9.5), kept in run_deliveries.
DELIVERY_COUNTS = ("delivered", "bounced", "failed")
_DELIVERY_COLUMNS = ", ".join(
    f"coalesce((SELECT d.{name} FROM run_deliveries d WHERE d.run_id = runs.id), 0)"
    f" AS delivery_{name}" for name in DELIVERY_COUNTS
)
REPORT_COLUMNS = (
    f"id, campaign_id, {_STATUS}, created_at, scheduled_for, started_at, finished_at, "
    "rate_per_second, deadline, end_reason, targeted, sent, failed, pending, "
    + ", ".join(EXCLUSION_COLUMNS) + ", " + _DELIVERY_COLUMNS
    # SPEC §9.4: the run this one reruns, and the reruns of this one (runs_rerun_of).
    + ", rerun_of, ARRAY(SELECT x.id FROM runs x WHERE x.rerun_of = runs.id "
    "ORDER BY x.created_at, x.id) AS reruns"
)


async def report(db: Executor, run_id: str) -> Record | None:
    """The run's report columns, its campaign's send windows (`send_windows`) and rate pool
    (`rate_pool`), and the campaign's current share of the pool over every daemon
    (`pool_share`: calls/s; NULL when no daemon holds one)."""
    row: Record | None = await db.fetchrow(
        f"""SELECT {REPORT_COLUMNS}, c.send_windows, c.rate_pool,
                   (SELECT sum(s.granted * (s.members ->> runs.campaign_id)::float8
                               / nullif(s.demand, 0))
                    FROM rate_pool_shares s
                    WHERE s.pool = c.rate_pool AND s.members ? runs.campaign_id
                      AND s.expires_at > clock_timestamp()) AS pool_share
            FROM runs, LATERAL (SELECT send_windows, rate_pool FROM campaigns
                                WHERE campaigns.id = runs.campaign_id) c
            WHERE runs.id = $1""", run_id
    )
    return row


async def campaign_runs(
    db: Executor, campaign_id: str, before: tuple[datetime, str] | None, limit: int
) -> list[Record]:
    """The campaign's runs, newest first, older than the (created_at, id) `before`."""
    if before is None:
        return list(await db.fetch(
            f"""SELECT {REPORT_COLUMNS} FROM runs WHERE campaign_id = $1
                ORDER BY created_at DESC, id DESC LIMIT $2""",
            campaign_id, limit,
        ))
    return list(await db.fetch(
        f"""SELECT {REPORT_COLUMNS} FROM runs
            WHERE campaign_id = $1 AND (created_at, id) < ($2, $3)
            ORDER BY created_at DESC, id DESC LIMIT $4""",
        campaign_id, before[0], before[1], limit,
    ))


def _totals_sql(campaign: str) -> str:
    """Sums of every count over the runs of the campaign whose id is `campaign` (SQL)."""
    sums = ", ".join(
        f"coalesce(sum({column}), 0)::bigint AS {column}"
        for column in ("targeted", "sent", "failed", "pending", *EXCLUSION_COLUMNS)
    )
    deliveries = ", ".join(
        f"""(SELECT coalesce(sum(d.{name}), 0)::bigint FROM run_deliveries d
             JOIN runs r ON r.id = d.run_id WHERE r.campaign_id = {campaign})
             AS delivery_{name}"""
        for name in DELIVERY_COUNTS
    )
    return (f"SELECT count(*) AS runs, {sums}, {deliveries} FROM runs "
            f"WHERE campaign_id = {campaign}")


_TOTALS = _totals_sql("$1")
_TOTALS_OF = f"""
SELECT c.id AS of_campaign, t.* FROM unnest($1::text[]) AS c(id)
CROSS JOIN LATERAL ({_totals_sql("c.id")}) AS t
"""
_LATEST_OF = f"""
SELECT c.id AS of_campaign, r.* FROM unnest($1::text[]) AS c(id)
CROSS JOIN LATERAL (SELECT {REPORT_COLUMNS} FROM runs WHERE campaign_id = c.id
                    ORDER BY created_at DESC, id DESC LIMIT $2) AS r
"""


async def campaign_totals(db: Executor, campaign_id: str) -> Record:
    """Sums of every count over the campaign's runs, and how many runs."""
    row: Record = await db.fetchrow(_TOTALS, campaign_id)
    return row


async def totals_of(db: Executor, campaign_ids: Sequence[str]) -> dict[str, Record]:
    """`campaign_totals` of each campaign, in one statement."""
    return {row["of_campaign"]: row for row in await db.fetch(_TOTALS_OF, list(campaign_ids))}


async def latest_runs_of(db: Executor, campaign_ids: Sequence[str], per: int
                         ) -> dict[str, list[Record]]:
    """Each campaign's `per` newest runs (as `campaign_runs`), in one statement."""
    found: dict[str, list[Record]] = {campaign_id: [] for campaign_id in campaign_ids}
    for row in await db.fetch(_LATEST_OF, list(campaign_ids), per):
        found[row["of_campaign"]].append(row)
    return found


_RECIPIENT_COLUMNS = (
    "position, profile_id, status, reason, error, attempts, provider_message_id, updated_at, "
    "delivery, delivery_reason, delivery_at"
)
# `?delivery=unknown`: sent, and no final receipt yet.
_NO_FINAL_DELIVERY = "status = 'sent' AND (delivery IS NULL OR delivery IN ('queued', 'sent'))"


def _recipient_query(run_id: str, status: str | None, reason: str | None, after: int,
                     delivery: str | None = None) -> tuple[str, list[Any]]:
    filters = ["run_id = $1", "position > $2"]
    args: list[Any] = [run_id, after]
    if status is not None:
        args.append(status)
        filters.append(f"status = ${len(args)}")
    if reason is not None:
        args.append(reason)
        filters.append(f"reason = ${len(args)}")
    if delivery == "unknown":
        filters.append(_NO_FINAL_DELIVERY)
    elif delivery is not None:
        args.append(delivery)
        filters.append(f"delivery = ${len(args)}")
    query = (f"SELECT {_RECIPIENT_COLUMNS} FROM run_recipients WHERE {' AND '.join(filters)} "
             "ORDER BY position")
    return query, args


async def recipients(
    db: Executor, run_id: str, status: str | None, reason: str | None, after: int, limit: int,
    delivery: str | None = None,
) -> list[Record]:
    """Recipient outcomes by position after `after`; one static query per filter set, so
    each keeps its own plan (run_recipients_outcome serves the filtered ones, and
    run_recipients_delivery those by delivery). `delivery` is a delivery status, or
    `unknown` (sent, no final receipt yet)."""
    query, args = _recipient_query(run_id, status, reason, after, delivery)
    args.append(limit)
    return list(await db.fetch(f"{query} LIMIT ${len(args)}", *args))


async def stream_recipients(
    pool: Pool, run_id: str, status: str | None, reason: str | None, after: int = -1,
    *, batch: int = 1000, delivery: str | None = None,
) -> AsyncGenerator[list[Record], None]:
    """Every matching recipient outcome by position after `after`, `batch` rows at a time,
    read through a server-side cursor in one read-only REPEATABLE READ transaction (one
    snapshot, whatever the run's size; the daemon holds one batch at a time). Holds a pool
    connection until exhausted or closed (use `contextlib.aclosing`)."""
    query, args = _recipient_query(run_id, status, reason, after, delivery)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                         readonly=True):
        cursor = await conn.cursor(query, *args)
        while rows := await cursor.fetch(batch):
            yield list(rows)


_CANCEL = f"""
    UPDATE runs SET
        status = CASE WHEN status = 'scheduled' THEN 'cancelled' ELSE status END,
        finished_at = CASE WHEN status = 'scheduled' THEN $2 ELSE finished_at END,
        end_reason = CASE WHEN status = 'scheduled' THEN 'cancelled' ELSE end_reason END,
        cancel_requested_at = coalesce(cancel_requested_at, $2)
    WHERE {{where}} AND status IN ('scheduled', 'running')
    RETURNING id, pg_notify('{CONTROL_CHANNEL}', id)::text AS notified
"""


async def cancel(db: Executor, run_id: str, now: datetime) -> bool:
    """A scheduled run becomes cancelled at once (nothing was targeted: counts stay 0); a
    running one gets `cancel_requested_at` and the engine stops it. False: not cancellable."""
    row = await db.fetchrow(_CANCEL.format(where="id = $1"), run_id, now)
    return row is not None


async def cancel_campaign_runs(conn: Connection, campaign_id: str, now: datetime) -> int:
    """`cancel` for each scheduled or running run of the campaign; returns how many."""
    rows = await conn.fetch(_CANCEL.format(where="campaign_id = $1"), campaign_id, now)
    return len(rows)

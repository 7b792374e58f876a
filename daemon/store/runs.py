"""Run rows as the API sees them: created by triggers, read as reports, cancelled.

The engine owns what happens after `scheduled`; here a run is created (with its
inline recipients, in the trigger's transaction), read, and cancelled. Every
change a running engine must hear about is followed by a NOTIFY in the same
transaction (delivered at commit): `campaignd_runs` for new runs,
`campaignd_control` for cancellations.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.models import CampaignStatus, RunId
from daemon.store import Connection, Executor, Record

RUNS_CHANNEL = "campaignd_runs"
CONTROL_CHANNEL = "campaignd_control"

EXCLUSION_COLUMNS = (
    "excluded_time_cap", "excluded_campaign_end", "excluded_opted_out", "excluded_no_address",
    "excluded_duplicate", "excluded_cancelled",
)
REPORT_COLUMNS = (
    "id, campaign_id, status, created_at, scheduled_for, started_at, finished_at, "
    "rate_per_second, deadline, end_reason, targeted, sent, failed, pending, "
    + ", ".join(EXCLUSION_COLUMNS)
)


@dataclass(frozen=True, slots=True)
class TriggerTarget:
    """The campaign a trigger names, read under a shared row lock, and any run already
    made with the trigger's idempotency key."""

    status: CampaignStatus
    start_at: datetime | None
    end_at: datetime | None
    rate_per_second: int | None
    audience_id: str | None
    audience_exists: bool | None  # None: not asked (inline recipients)
    one_shot_taken: bool  # the campaign has its one-shot run already
    existing: Record | None  # (run_id, request_hash, run_status, scheduled_for) of the keyed run


_TARGET = """
    SELECT c.status, c.start_at, c.end_at, c.rate_per_second, c.audience_id,
           CASE WHEN $4 THEN EXISTS (SELECT 1 FROM audiences a
                                     WHERE a.id = coalesce($3, c.audience_id))
           END AS audience_exists,
           EXISTS (SELECT 1 FROM runs o WHERE o.campaign_id = c.id AND o.one_shot)
               AS one_shot_taken,
           r.id AS run_id, r.request_hash, r.status AS run_status, r.scheduled_for
    FROM campaigns c
    LEFT JOIN runs r ON r.campaign_id = c.id AND r.idempotency_key = $2
    WHERE c.id = $1
"""


@dataclass(frozen=True, slots=True)
class NewRun:
    id: RunId
    campaign_id: str
    audience_id: str | None
    inline_count: int
    context: dict[str, Any]
    idempotency_key: str | None
    request_hash: str
    created_at: datetime
    scheduled_for: datetime
    rate_per_second: int | None
    one_shot: bool


async def trigger_target(
    db: Executor, campaign_id: str, idempotency_key: str | None, audience_id: str | None,
    *, check_audience: bool, lock: bool = True,
) -> TriggerTarget | None:
    """The campaign, or None. With `lock` (in a transaction) its row is held FOR SHARE until
    the end: concurrent triggers proceed, while stop and completion wait for them."""
    row = await db.fetchrow(
        _TARGET + (" FOR SHARE OF c" if lock else ""),
        campaign_id, idempotency_key, audience_id, check_audience,
    )
    if row is None:
        return None
    return TriggerTarget(
        status=CampaignStatus(row["status"]), start_at=row["start_at"], end_at=row["end_at"],
        rate_per_second=row["rate_per_second"], audience_id=row["audience_id"],
        audience_exists=row["audience_exists"], one_shot_taken=row["one_shot_taken"],
        existing=row if row["run_id"] is not None else None,
    )


async def insert_run(conn: Connection, run: NewRun) -> bool:
    """Insert the run and NOTIFY the engine; False when a unique constraint (idempotency key,
    one-shot) already holds another run (after waiting for a concurrent insert to settle)."""
    row = await conn.fetchrow(
        f"""
        WITH inserted AS (
            INSERT INTO runs (id, campaign_id, status, audience_id, inline_count, context,
                              idempotency_key, request_hash, created_at, scheduled_for,
                              rate_per_second, one_shot)
            VALUES ($1, $2, 'scheduled', $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT DO NOTHING
            RETURNING id
        )
        SELECT id, pg_notify('{RUNS_CHANNEL}', id)::text AS notified FROM inserted
        """,
        run.id, run.campaign_id, run.audience_id, run.inline_count, run.context,
        run.idempotency_key, run.request_hash, run.created_at, run.scheduled_for,
        run.rate_per_second, run.one_shot,
    )
    return row is not None


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


async def insert_inline_recipients(
    conn: Connection, run_id: str, recipients: Sequence[tuple[str, dict[str, Any]]]
) -> None:
    """The trigger's recipients, in order, with one COPY. In CSV rather than binary: the
    pool's jsonb codec is a text one, which binary COPY cannot use."""
    prefix = _quoted(run_id) + ","
    rows = [
        f"{prefix}{position},{_quoted(profile_id)},"
        f"{_quoted(json.dumps(data, separators=(',', ':'), ensure_ascii=False))}\n"
        for position, (profile_id, data) in enumerate(recipients)
    ]
    await conn.copy_to_table(
        "run_inline_recipients", source=io.BytesIO("".join(rows).encode()),
        columns=("run_id", "position", "profile_id", "data"), format="csv",
    )


async def keyed_run(db: Executor, campaign_id: str, idempotency_key: str) -> Record | None:
    """(id, request_hash, status, scheduled_for) of the run made with this key, if any."""
    row: Record | None = await db.fetchrow(
        """
        SELECT id AS run_id, request_hash, status AS run_status, scheduled_for
        FROM runs WHERE campaign_id = $1 AND idempotency_key = $2
        """,
        campaign_id, idempotency_key,
    )
    return row


async def report(db: Executor, run_id: str) -> Record | None:
    row: Record | None = await db.fetchrow(
        f"SELECT {REPORT_COLUMNS} FROM runs WHERE id = $1", run_id
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


async def campaign_totals(db: Executor, campaign_id: str) -> Record:
    """Sums of every count over the campaign's runs, and how many runs."""
    sums = ", ".join(
        f"coalesce(sum({column}), 0)::bigint AS {column}"
        for column in ("targeted", "sent", "failed", "pending", *EXCLUSION_COLUMNS)
    )
    row: Record = await db.fetchrow(
        f"SELECT count(*) AS runs, {sums} FROM runs WHERE campaign_id = $1", campaign_id
    )
    return row


_RECIPIENT_COLUMNS = (
    "position, profile_id, status, reason, error, attempts, provider_message_id, updated_at"
)


async def recipients(
    db: Executor, run_id: str, status: str | None, reason: str | None, after: int, limit: int
) -> list[Record]:
    """Recipient outcomes by position after `after`; one static query per filter set, so
    each keeps its own plan (run_recipients_outcome serves the filtered ones)."""
    filters = ["run_id = $1", "position > $2"]
    args: list[Any] = [run_id, after]
    if status is not None:
        args.append(status)
        filters.append(f"status = ${len(args)}")
    if reason is not None:
        args.append(reason)
        filters.append(f"reason = ${len(args)}")
    args.append(limit)
    query = (
        f"SELECT {_RECIPIENT_COLUMNS} FROM run_recipients WHERE {' AND '.join(filters)} "
        f"ORDER BY position LIMIT ${len(args)}"
    )
    return list(await db.fetch(query, *args))


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

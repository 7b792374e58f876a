"""Campaign rows: create, read, list, edit while draft, and the lifecycle transitions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from daemon.models import CampaignId, CampaignStatus, Channel
from daemon.store import Connection, Executor, Record

_COLUMNS = (
    "id, name, channel, content, audience_id, start_at, end_at, rate_per_second, status, "
    "created_at, updated_at, activated_at, finished_at, send_windows, rate_pool"
)


COLUMNS = _COLUMNS  # for the other campaign modules of the store


class CampaignExists(Exception):
    """A campaign with this id exists already."""


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What a client defines; everything but the lifecycle columns."""

    id: CampaignId
    name: str
    channel: Channel
    content: dict[str, Any]
    audience_id: str | None
    start_at: datetime | None
    end_at: datetime | None
    rate_per_second: int | None
    # Send windows (SPEC §9.2) as stored: a list of window objects; None: always open.
    windows: list[dict[str, Any]] | None = None
    rate_pool: str | None = None  # SPEC §9.3: the pool the campaign shares a limit with


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    spec: CampaignSpec
    status: CampaignStatus
    created_at: datetime
    updated_at: datetime
    activated_at: datetime | None
    finished_at: datetime | None

    @property
    def id(self) -> CampaignId:
        return self.spec.id


def _record(row: Record) -> CampaignRecord:
    spec = CampaignSpec(
        id=CampaignId(row["id"]), name=row["name"], channel=Channel(row["channel"]),
        content=row["content"], audience_id=row["audience_id"], start_at=row["start_at"],
        end_at=row["end_at"], rate_per_second=row["rate_per_second"],
        windows=row["send_windows"], rate_pool=row["rate_pool"],
    )
    return CampaignRecord(
        spec=spec, status=CampaignStatus(row["status"]), created_at=row["created_at"],
        updated_at=row["updated_at"], activated_at=row["activated_at"],
        finished_at=row["finished_at"],
    )


async def insert(db: Executor, spec: CampaignSpec, now: datetime) -> CampaignRecord:
    """Store a new draft; raises CampaignExists when the id is taken."""
    try:
        row = await db.fetchrow(
            f"""
            INSERT INTO campaigns (id, name, channel, content, audience_id, start_at, end_at,
                                   rate_per_second, created_at, updated_at, send_windows,
                                   rate_pool)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)
            RETURNING {_COLUMNS}
            """,
            spec.id, spec.name, spec.channel.value, spec.content, spec.audience_id,
            spec.start_at, spec.end_at, spec.rate_per_second, now, spec.windows,
            spec.rate_pool,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "campaigns_pkey":
            raise CampaignExists(spec.id) from None
        raise
    return _record(row)


async def get(db: Executor, campaign_id: str, *, for_update: bool = False) -> CampaignRecord | None:
    """The campaign, optionally locked until the end of the caller's transaction."""
    lock = " FOR UPDATE" if for_update else ""
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM campaigns WHERE id = $1{lock}", campaign_id)
    return _record(row) if row else None


async def list_page(
    db: Executor, status: CampaignStatus | None, after: tuple[datetime, str] | None, limit: int
) -> list[CampaignRecord]:
    """Up to `limit` campaigns in creation order after the (created_at, id) `after`."""
    after_time, after_id = after if after else (None, None)
    rows = await db.fetch(
        f"""
        SELECT {_COLUMNS} FROM campaigns
        WHERE ($1::text IS NULL OR status = $1)
          AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::text))
        ORDER BY created_at, id
        LIMIT $4
        """,
        status.value if status else None, after_time, after_id, limit,
    )
    return [_record(row) for row in rows]


async def update_draft(conn: Connection, spec: CampaignSpec, now: datetime) -> CampaignRecord:
    """Rewrite a draft's definition (the caller holds its row lock and checked it is a draft)."""
    row = await conn.fetchrow(
        f"""
        UPDATE campaigns SET name = $2, channel = $3, content = $4, audience_id = $5,
               start_at = $6, end_at = $7, rate_per_second = $8, updated_at = $9,
               send_windows = $10, rate_pool = $11
        WHERE id = $1
        RETURNING {_COLUMNS}
        """,
        spec.id, spec.name, spec.channel.value, spec.content, spec.audience_id,
        spec.start_at, spec.end_at, spec.rate_per_second, now, spec.windows,
        spec.rate_pool,
    )
    return _record(row)


async def delete_draft(db: Executor, campaign_id: str) -> CampaignStatus | None:
    """Delete the campaign if it is a draft. Returns its status (None: no such campaign);
    anything but DRAFT means it was kept."""
    row = await db.fetchrow(
        """
        WITH deleted AS (DELETE FROM campaigns WHERE id = $1 AND status = 'draft' RETURNING status)
        SELECT status FROM deleted
        UNION ALL
        SELECT status FROM campaigns WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM deleted)
        """,
        campaign_id,
    )
    return CampaignStatus(row["status"]) if row else None


async def set_status(
    conn: Connection, campaign_id: str, status: CampaignStatus, now: datetime
) -> CampaignRecord:
    """Move the (locked) campaign to `status`, stamping activated_at or finished_at."""
    row = await conn.fetchrow(
        f"""
        UPDATE campaigns SET status = $2, updated_at = $3,
               activated_at = CASE WHEN $2 = 'live' THEN $3 ELSE activated_at END,
               finished_at = CASE WHEN $2 IN ('completed', 'stopped') THEN $3 ELSE finished_at END
        WHERE id = $1
        RETURNING {_COLUMNS}
        """,
        campaign_id, status.value, now,
    )
    return _record(row)


def record_from(row: Record) -> CampaignRecord:
    """A campaign row (all of `COLUMNS`) as a record."""
    return _record(row)


async def count_by_status(db: Executor) -> dict[CampaignStatus, int]:
    """How many campaigns are in each status (every status, zero included)."""
    rows = await db.fetch("SELECT status, count(*) AS n FROM campaigns GROUP BY status")
    counts = dict.fromkeys(CampaignStatus, 0)
    for row in rows:
        counts[CampaignStatus(row["status"])] = int(row["n"])
    return counts

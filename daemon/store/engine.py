"""The engine's run-level SQL: due work, run start (freeze + counts), control reads, run end,
campaign completion.

Every change of a run's counts happens in one transaction with the recipient rows it
counts, so `targeted = sent + failed + pending + Σ excluded` holds at every read (the
`runs_counts_add_up` CHECK would refuse anything else).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon import planner
from daemon.models import Channel, EndReason, ExclusionReason, RunStatus
from daemon.store import Connection, Executor, Record, snapshot
from daemon.store.recipients import COUNT_COLUMNS

_COUNTS = ", ".join(COUNT_COLUMNS)


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    name: str
    channel: Channel
    content: dict[str, Any]
    rate_per_second: int | None
    start_at: datetime | None
    end_at: datetime | None
    status: str
    audience_id: str | None


@dataclass(frozen=True, slots=True)
class CampaignWork:
    """A campaign with runs to execute, and who holds its lease."""

    campaign_id: str
    next_scheduled: datetime | None  # earliest scheduled run
    running: bool  # has running runs
    holder: str | None
    lease_remaining: float | None  # seconds (≤ 0: expired)


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as the engine executes it."""

    id: str
    status: RunStatus
    scheduled_for: datetime
    started_at: datetime | None
    deadline: datetime | None
    deadline_reason: ExclusionReason | None
    rate_per_second: int | None
    context: dict[str, Any]
    cancel_requested: bool
    audience_id: str | None
    inline_count: int


def counts_of(row: Record) -> dict[str, int]:
    """The count columns of a `runs` row, by column name."""
    return {column: int(row[column]) for column in COUNT_COLUMNS}


def excluded_of(counts: dict[str, int]) -> dict[str, int]:
    """{reason: n} from count columns."""
    return {reason.value: counts[f"excluded_{reason.value}"] for reason in ExclusionReason}


async def load_campaign(db: Executor, campaign_id: str) -> Campaign | None:
    row = await db.fetchrow(
        "SELECT id, name, channel, content, rate_per_second, start_at, end_at, status, "
        "audience_id FROM campaigns WHERE id = $1",
        campaign_id,
    )
    if row is None:
        return None
    return Campaign(
        id=row["id"], name=row["name"], channel=Channel(row["channel"]), content=row["content"],
        rate_per_second=row["rate_per_second"], start_at=row["start_at"], end_at=row["end_at"],
        status=row["status"], audience_id=row["audience_id"],
    )


async def due_work(db: Executor) -> list[CampaignWork]:
    """Every campaign with scheduled or running runs, with its lease."""
    rows = await db.fetch(
        """
        SELECT r.campaign_id,
               min(r.scheduled_for) FILTER (WHERE r.status = 'scheduled') AS next_scheduled,
               bool_or(r.status = 'running') AS running,
               l.holder,
               extract(epoch FROM l.expires_at - clock_timestamp())::float8 AS lease_remaining
        FROM runs r LEFT JOIN engine_leases l ON l.campaign_id = r.campaign_id
        WHERE r.status IN ('scheduled', 'running')
        GROUP BY r.campaign_id, l.holder, l.expires_at
        """
    )
    return [
        CampaignWork(row["campaign_id"], row["next_scheduled"], row["running"], row["holder"],
                     row["lease_remaining"])
        for row in rows
    ]


async def next_campaign_end(db: Executor) -> datetime | None:
    """The earliest `end_at` of a live campaign."""
    value: datetime | None = await db.fetchval(
        "SELECT min(end_at) FROM campaigns WHERE status = 'live' AND end_at IS NOT NULL"
    )
    return value


async def complete_ended_campaigns(db: Executor, now: datetime) -> list[str]:
    """Windowed campaigns whose end has come: `completed`; their ids."""
    rows = await db.fetch(
        """
        UPDATE campaigns SET status = 'completed', finished_at = end_at, updated_at = $1
        WHERE status = 'live' AND end_at IS NOT NULL AND end_at <= $1
        RETURNING id
        """,
        now,
    )
    return [row["id"] for row in rows]


def _run_row(row: Record) -> RunRow:
    return RunRow(
        id=row["id"], status=RunStatus(row["status"]), scheduled_for=row["scheduled_for"],
        started_at=row["started_at"], deadline=row["deadline"],
        deadline_reason=ExclusionReason(row["deadline_reason"]) if row["deadline_reason"]
        else None,
        rate_per_second=row["rate_per_second"], context=row["context"] or {},
        cancel_requested=row["cancel_requested_at"] is not None,
        audience_id=row["audience_id"], inline_count=row["inline_count"],
    )


_RUN_COLUMNS = ("id, status, scheduled_for, started_at, deadline, deadline_reason, "
                "rate_per_second, context, cancel_requested_at, audience_id, inline_count")


async def campaign_runs(db: Executor, campaign_id: str, horizon: datetime) -> list[RunRow]:
    """The campaign's running runs and its scheduled runs due by `horizon`, in start order."""
    rows = await db.fetch(
        f"""
        SELECT {_RUN_COLUMNS} FROM runs
        WHERE campaign_id = $1
          AND (status = 'running' OR (status = 'scheduled' AND scheduled_for <= $2))
        ORDER BY scheduled_for, id
        """,
        campaign_id, horizon,
    )
    return [_run_row(row) for row in rows]


async def audience_size(db: Executor, audience_id: str) -> int:
    """Members of a stored audience (an index-only count: to plan the freeze ahead)."""
    size: int = await db.fetchval(
        "SELECT count(*) FROM audience_members WHERE audience_id = $1", audience_id)
    return size


async def control_rows(db: Executor, run_ids: list[str]) -> list[Record]:
    """Status, cancel request and counts of these runs (the control loop's poll)."""
    return list(await db.fetch(
        f"SELECT id, status, cancel_requested_at, {_COUNTS} FROM runs WHERE id = ANY($1::text[])",
        run_ids,
    ))


@dataclass(frozen=True, slots=True)
class StartedRun:
    run: RunRow
    plan: planner.Plan
    counts: snapshot.SnapshotCounts


async def start_run(
    conn: Connection, run_id: str, campaign: Campaign, *, now: datetime, time_cap: float
) -> StartedRun | None:
    """Claim a scheduled run (atomically: `WHERE status = 'scheduled'`), freeze its recipients
    and set its counts, in one transaction. None if it is no longer scheduled."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_RUN_COLUMNS} FROM runs "
            "WHERE id = $1 AND status = 'scheduled' FOR UPDATE",
            run_id,
        )
        if row is None:
            return None
        run = _run_row(row)
        plan = planner.plan_run(scheduled_for=run.scheduled_for, now=now,
                                rate=run.rate_per_second, time_cap=time_cap,
                                end_at=campaign.end_at)
        counts = await snapshot.freeze(
            conn, run_id, campaign.channel, audience_id=row["audience_id"],
            capacity=plan.capacity, cap_reason=plan.deadline_reason, now=now,
        )
        updated = await conn.fetchrow(
            f"""
            UPDATE runs SET status = 'running', started_at = $2, deadline = $3,
                   deadline_reason = $4, targeted = $5, pending = $6,
                   excluded_duplicate = $7, excluded_opted_out = $8, excluded_no_address = $9,
                   excluded_time_cap = $10, excluded_campaign_end = $11
            WHERE id = $1
            RETURNING {_RUN_COLUMNS}
            """,
            run_id, plan.started_at, plan.deadline,
            plan.deadline_reason.value if plan.deadline_reason else None,
            counts.targeted, counts.pending, counts.excluded["duplicate"],
            counts.excluded["opted_out"], counts.excluded["no_address"],
            counts.excluded["time_cap"], counts.excluded["campaign_end"],
        )
        assert updated is not None
        return StartedRun(_run_row(updated), plan, counts)


@dataclass(frozen=True, slots=True)
class ClosedRun:
    status: RunStatus
    end_reason: EndReason
    counts: dict[str, int]
    newly_excluded: int  # pending recipients excluded (or failed) by this close
    campaign_completed: bool  # a one-shot campaign completed with it


async def close_run(
    conn: Connection, run_id: str, campaign_id: str, *, now: datetime,
    exclude_as: ExclusionReason | None = None, fail_reason: str | None = None,
) -> ClosedRun | None:
    """End a running run: its pending recipients become excluded (`exclude_as`) or failed
    (`fail_reason`), its status and end reason are set, and a one-shot campaign completes.
    With neither, the run must have nothing pending. None if it is not running."""
    # Same lock order as an outcome write (recipient rows, then the run row) and counts
    # changed by deltas, so a concurrent write can neither deadlock with this nor be lost.
    column = "failed"
    status_to, reason = "failed", fail_reason
    if exclude_as is not None:
        column = f"excluded_{exclude_as.value}"
        status_to, reason = "excluded", exclude_as.value
    async with conn.transaction():
        moved = 0
        if reason is not None:
            moved = int((await conn.execute(
                """
                UPDATE run_recipients SET status = $2, reason = $3,
                       retry_at = NULL, updated_at = $4
                WHERE run_id = $1 AND status = 'pending'
                  AND EXISTS (SELECT 1 FROM runs WHERE id = $1 AND status = 'running')
                """,
                run_id, status_to, reason, now,
            )).rsplit(" ", 1)[-1])
        row = await conn.fetchrow(
            f"""
            UPDATE runs SET pending = pending - $2, {column} = {column} + $2
            WHERE id = $1 AND status = 'running'
            RETURNING {_COUNTS}
            """,
            run_id, moved,
        )
        if row is None:
            return None
        counts = counts_of(row)
        if counts["pending"]:
            return None  # not done: the caller closes it later
        await conn.execute("DELETE FROM run_claims WHERE run_id = $1", run_id)
        cancelled = exclude_as is ExclusionReason.CANCELLED
        failed = fail_reason is not None
        end = planner.end_reason(excluded_of(counts), cancelled=cancelled, failed=failed)
        status = (RunStatus.FAILED if failed else RunStatus.CANCELLED if cancelled
                  else RunStatus.COMPLETED)
        await conn.execute(
            "UPDATE runs SET status = $2, end_reason = $3, finished_at = $4 WHERE id = $1",
            run_id, status.value, end.value, now,
        )
        completed = await conn.fetchval(
            """
            UPDATE campaigns SET status = 'completed', finished_at = $2, updated_at = $2
            WHERE id = $1 AND status = 'live' AND end_at IS NULL
              AND NOT EXISTS (SELECT 1 FROM runs
                              WHERE campaign_id = $1 AND status IN ('scheduled', 'running'))
            RETURNING id
            """,
            campaign_id, now,
        )
        return ClosedRun(status, end, counts, moved, completed is not None)

"""Live control (SPEC §9.1): pause, resume, a new rate or name, and the re-plan of a run.

The API's transitions lock the campaign row, change it and NOTIFY the control channel
with `campaign:<id>`: whichever daemon holds the campaign's lease re-reads it at once
(`control_state`) and applies it (holds its senders, paces at the new rate, re-plans).

A **re-plan** (one transaction per run) gives a running run the capacity
`floor(rate × open seconds left before its deadline)`, computed by the caller: among the
run's *candidates* (pending recipients, and those an earlier plan excluded for `time_cap`
or `campaign_end`), in position order, the first `capacity` are pending and the rest
excluded with the deadline's reason. Recipients claimed for a call (`run_claims`) are
never excluded (their call may be under way; they count first against the capacity). The
counts move by exactly what changed, in the same transaction, so `targeted = sent +
failed + pending + Σ excluded` holds at every read; a chunked freeze still in progress
gets the new capacity for its later chunks (its row is locked first, as its chunks lock
it, then the run's: the order every writer of both uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from daemon.models import CampaignStatus, ExclusionReason
from daemon.store import Connection, Executor
from daemon.store.campaigns import COLUMNS as CAMPAIGN_COLUMNS
from daemon.store.campaigns import CampaignRecord, record_from
from daemon.store.recipients import COUNT_COLUMNS
from daemon.store.runs import CONTROL_CHANNEL

CAMPAIGN_PREFIX = "campaign:"  # a control NOTIFY about a whole campaign (else: a run id)


@dataclass(frozen=True, slots=True)
class ControlState:
    """What the lease holder reads on every wake: the campaign's status and rate."""

    status: CampaignStatus
    rate_per_second: int | None
    resumed_at: datetime | None


async def control_state(db: Executor, campaign_id: str) -> ControlState | None:
    row = await db.fetchrow(
        "SELECT status, rate_per_second, resumed_at FROM campaigns WHERE id = $1", campaign_id)
    if row is None:
        return None
    return ControlState(CampaignStatus(row["status"]), row["rate_per_second"], row["resumed_at"])


async def _notify(db: Executor, campaign_id: str) -> None:
    await db.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, CAMPAIGN_PREFIX + campaign_id)


async def pause(conn: Connection, campaign_id: str, now: datetime) -> CampaignRecord:
    """The (locked, live) campaign becomes `paused`."""
    row = await conn.fetchrow(
        f"UPDATE campaigns SET status = 'paused', paused_at = $2, updated_at = $2 "
        f"WHERE id = $1 RETURNING {CAMPAIGN_COLUMNS}", campaign_id, now)
    await _notify(conn, campaign_id)
    return record_from(row)


async def resume(conn: Connection, campaign_id: str, now: datetime) -> CampaignRecord:
    """The (locked, paused) campaign is `live` again; its running runs are re-planned by
    their lease holder (resumed after their last plan)."""
    row = await conn.fetchrow(
        f"UPDATE campaigns SET status = 'live', paused_at = NULL, resumed_at = $2, "
        f"updated_at = $2 WHERE id = $1 RETURNING {CAMPAIGN_COLUMNS}", campaign_id, now)
    await _notify(conn, campaign_id)
    return record_from(row)


async def set_live_fields(conn: Connection, campaign_id: str, *, rate: int | None,
                          name: str | None, now: datetime) -> CampaignRecord:
    """A live or paused campaign's new rate and/or name (None: unchanged). Its scheduled runs
    take the new rate (they start with it); its running runs are re-planned by the lease
    holder (their rate differs from the campaign's)."""
    row = await conn.fetchrow(
        f"UPDATE campaigns SET rate_per_second = coalesce($2, rate_per_second), "
        f"name = coalesce($3, name), updated_at = $4 WHERE id = $1 "
        f"RETURNING {CAMPAIGN_COLUMNS}", campaign_id, rate, name, now)
    if rate is not None:
        await conn.execute(
            "UPDATE runs SET rate_per_second = $2 WHERE campaign_id = $1 AND status = 'scheduled'",
            campaign_id, rate)
    await _notify(conn, campaign_id)
    return record_from(row)


@dataclass(frozen=True, slots=True)
class RunToPlan:
    """A running run as the re-plan needs it."""

    id: str
    deadline: datetime | None
    deadline_reason: ExclusionReason | None
    rate_per_second: int | None
    planned_at: datetime  # its last plan: the start or the last re-plan


async def running_runs(db: Executor, campaign_id: str) -> list[RunToPlan]:
    rows = await db.fetch(
        "SELECT id, deadline, deadline_reason, rate_per_second, "
        "coalesce(replanned_at, started_at) AS planned_at FROM runs "
        "WHERE campaign_id = $1 AND status = 'running' ORDER BY started_at, id", campaign_id)
    return [RunToPlan(row["id"], row["deadline"],
                      ExclusionReason(row["deadline_reason"]) if row["deadline_reason"] else None,
                      row["rate_per_second"], row["planned_at"]) for row in rows]


@dataclass(frozen=True, slots=True)
class Replan:
    """What a re-plan did (or, dry, would do) to one run."""

    run_id: str
    capacity: int
    reinstated: int  # excluded by an earlier plan, pending again
    excluded: int  # pending, now excluded with the deadline's reason
    before: dict[str, int]
    after: dict[str, int]


_REPLAN = f"""
WITH cand AS (
    SELECT c.position, c.status, c.reason,
           EXISTS (SELECT 1 FROM run_claims k
                   WHERE k.run_id = c.run_id AND k.position = c.position) AS claimed
    FROM run_recipients c
    WHERE c.run_id = $1
      AND (c.status = 'pending'
           OR (c.status = 'excluded' AND c.reason IN ('time_cap', 'campaign_end')))
),
ranked AS (
    SELECT cand.*,
           claimed OR row_number() OVER (PARTITION BY claimed ORDER BY position)
               <= greatest($2::bigint - count(*) FILTER (WHERE claimed) OVER (), 0) AS keep
    FROM cand
),
delta AS (SELECT * FROM ranked WHERE keep <> (status = 'pending')),
changed AS (
    UPDATE run_recipients r
    SET status = CASE WHEN d.keep THEN 'pending' ELSE 'excluded' END,
        reason = CASE WHEN d.keep THEN NULL ELSE $3 END,
        updated_at = $4
    FROM delta d
    WHERE $5 AND r.run_id = $1 AND r.position = d.position
),
moved AS (
    SELECT count(*) FILTER (WHERE keep) AS reinstated,
           count(*) FILTER (WHERE NOT keep) AS excluded,
           count(*) FILTER (WHERE keep AND reason = 'time_cap') AS back_time_cap,
           count(*) FILTER (WHERE keep AND reason = 'campaign_end') AS back_campaign_end
    FROM delta
),
frozen AS (
    UPDATE run_freezes f
    SET capacity = f.eligible + greatest(0, $2::bigint - (SELECT count(*) FROM cand))
    WHERE $5 AND f.run_id = $1 AND f.capacity IS NOT NULL
),
counts AS (
    SELECT r.id, {", ".join(f"r.{c}" for c in COUNT_COLUMNS)},
           r.pending + m.reinstated - m.excluded AS new_pending,
           r.excluded_time_cap - m.back_time_cap
               + CASE WHEN $3 = 'time_cap' THEN m.excluded ELSE 0 END AS new_time_cap,
           r.excluded_campaign_end - m.back_campaign_end
               + CASE WHEN $3 = 'campaign_end' THEN m.excluded ELSE 0 END AS new_campaign_end,
           m.reinstated, m.excluded
    FROM runs r, moved m WHERE r.id = $1
),
applied AS (
    UPDATE runs r
    SET pending = c.new_pending, excluded_time_cap = c.new_time_cap,
        excluded_campaign_end = c.new_campaign_end,
        rate_per_second = $6, replanned_at = $4
    FROM counts c
    WHERE $5 AND r.id = c.id
)
SELECT * FROM counts
"""


async def replan(conn: Connection, run_id: str, *, capacity: int,
                 reason: ExclusionReason, rate: int, now: datetime, apply: bool) -> Replan | None:
    """Re-plan a running run (see the module doc), in the caller's transaction: with
    `apply=False`, only what it would do. None if the run is not running."""
    await conn.execute("SELECT 1 FROM run_freezes WHERE run_id = $1 FOR UPDATE", run_id)
    locked = await conn.fetchval(
        "SELECT 1 FROM runs WHERE id = $1 AND status = 'running' FOR UPDATE", run_id)
    if locked is None:
        return None
    row = await conn.fetchrow(_REPLAN, run_id, capacity, reason.value, now, apply, rate)
    assert row is not None
    before = {column: int(row[column]) for column in COUNT_COLUMNS}
    after = dict(before, pending=int(row["new_pending"]),
                 excluded_time_cap=int(row["new_time_cap"]),
                 excluded_campaign_end=int(row["new_campaign_end"]))
    return Replan(run_id, capacity, int(row["reinstated"]), int(row["excluded"]), before, after)

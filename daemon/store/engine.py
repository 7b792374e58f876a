"""The engine's run-level SQL: due work, run start (freeze + counts), control reads, run end,
campaign completion.

Every change of a run's counts happens in one transaction with the recipient rows it
counts, so `targeted = sent + failed + pending + Σ excluded` holds at every read (the
`runs_counts_add_up` CHECK would refuse anything else).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from daemon.models import Channel, EndReason, ExclusionReason, RunStatus
from daemon.planning import planner, windows
from daemon.store import Executor, Pool, Record, freeze, leases, snapshot
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
    windows: list[dict[str, Any]] | None = None  # send windows as stored (None: always open)
    rate_pool: str | None = None  # the rate pool it shares a limit with (SPEC §9.3)


@dataclass(frozen=True, slots=True)
class CampaignWork:
    """A campaign with runs to execute, and who holds its lease."""

    campaign_id: str
    due: int  # scheduled runs to take now
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
    campaign_id: str


def counts_of(row: Record) -> dict[str, int]:
    """The count columns of a `runs` row, by column name."""
    return {column: int(row[column]) for column in COUNT_COLUMNS}


def excluded_of(counts: dict[str, int]) -> dict[str, int]:
    """{reason: n} from count columns."""
    return {reason.value: counts[f"excluded_{reason.value}"] for reason in ExclusionReason}


_CAMPAIGN_COLUMNS = ("c.id, c.name, c.channel, c.content, c.rate_per_second, c.start_at, "
                     "c.end_at, c.status, c.audience_id, c.send_windows, c.rate_pool")


async def load_campaign(db: Executor, campaign_id: str) -> Campaign | None:
    row = await db.fetchrow(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns c WHERE c.id = $1", campaign_id)
    return _campaign(row) if row is not None else None


async def take_campaign(db: Executor, campaign_id: str, holder: str, ttl: float
                        ) -> tuple[int | None, Campaign | None]:
    """Take (or keep) the campaign's lease and read the campaign, in one statement: the
    lease's generation (None: another live instance holds it) and the campaign."""
    row = await db.fetchrow(
        f"""
        WITH lease AS ({leases.ACQUIRE})
        SELECT (SELECT generation FROM lease) AS generation, {_CAMPAIGN_COLUMNS}
        FROM campaigns c WHERE c.id = $1
        """,
        campaign_id, holder, ttl,
    )
    if row is None:
        return None, None
    return row["generation"], _campaign(row)


def _campaign(row: Record) -> Campaign:
    return Campaign(
        id=row["id"], name=row["name"], channel=Channel(row["channel"]), content=row["content"],
        rate_per_second=row["rate_per_second"], start_at=row["start_at"], end_at=row["end_at"],
        status=row["status"], audience_id=row["audience_id"], windows=row["send_windows"],
        rate_pool=row["rate_pool"],
    )


# When a worker should take a scheduled run: early enough to freeze it before its start.
# Inline recipients are counted at the trigger: 1 s of slack (lease, worker), the worker's
# lead (`starting.MIN_LEAD`), and their freeze time; a stored audience is counted by the
# worker, taken 30 s ahead.
INLINE_SLACK = 2.0
AUDIENCE_HORIZON = 30.0
FREEZE_ROWS_PER_SECOND = 100_000
_PREPARE_AT = (
    f"(r.scheduled_for - make_interval(secs => CASE WHEN r.audience_id IS NULL "
    f"THEN {INLINE_SLACK} + r.inline_count / {FREEZE_ROWS_PER_SECOND}.0 "
    f"ELSE {AUDIENCE_HORIZON} END))"
)
# The index ranges that hold every run `_PREPARE_AT` can make due by $1 ($2: the longest
# lead of an inline run).
_DUE_RANGE = (
    "(r.scheduled_for <= $1::timestamptz + make_interval(secs => $2)"
    " OR (r.audience_id IS NOT NULL"
    f" AND r.scheduled_for <= $1::timestamptz + make_interval(secs => {AUDIENCE_HORIZON})))"
)


async def due_work(db: Executor, now: datetime, inline_lead: float) -> list[CampaignWork]:
    """Every campaign with running runs or scheduled runs to take by `now` (see
    `_PREPARE_AT`), with its lease. `inline_lead`: the longest lead of an inline run (its
    slack and largest freeze), which bounds the index range read."""
    rows = await db.fetch(
        f"""
        SELECT r.campaign_id,
               count(*) FILTER (WHERE r.status = 'scheduled') AS due,
               bool_or(r.status = 'running') AS running,
               l.holder,
               extract(epoch FROM l.expires_at - clock_timestamp())::float8 AS lease_remaining
        FROM runs r LEFT JOIN engine_leases l ON l.campaign_id = r.campaign_id
        WHERE r.status IN ('scheduled', 'running')
          AND {_DUE_RANGE}
          AND (r.status = 'running' OR {_PREPARE_AT} <= $1)
        GROUP BY r.campaign_id, l.holder, l.expires_at
        """,
        now, inline_lead,
    )
    return [
        CampaignWork(row["campaign_id"], row["due"], row["running"], row["holder"],
                     row["lease_remaining"])
        for row in rows
    ]


async def due_runs(db: Executor, now: datetime, inline_lead: float) -> list[RunRow]:
    """The scheduled runs to take by `now` (see `_PREPARE_AT`), in start order, with their
    campaign (`RunRow.campaign_id`)."""
    rows = await db.fetch(
        f"""
        SELECT {_RUN_COLUMNS} FROM runs r
        WHERE r.status = 'scheduled'
          AND {_DUE_RANGE}
          AND {_PREPARE_AT} <= $1
        ORDER BY r.scheduled_for, r.id
        """,
        now, inline_lead,
    )
    return [_run_row(row) for row in rows]


# Each bound is read from the end of its own index range (`runs_due`; `runs_due_audience`
# for the stored audiences, which would otherwise walk every waiting inline run, 0009).
_NEXT_DUE = f"""
SELECT (SELECT min(scheduled_for) FROM runs
        WHERE status = 'scheduled'
          AND scheduled_for > $1::timestamptz + make_interval(secs => $2))
           AS next_run,
       (SELECT min({_PREPARE_AT}) FROM runs r
        WHERE r.status = 'scheduled' AND r.audience_id IS NULL
          AND r.scheduled_for > $1::timestamptz
          AND r.scheduled_for <= $1::timestamptz + make_interval(secs => $2)
          AND {_PREPARE_AT} > $1) AS next_near,
       (SELECT min(scheduled_for) FROM runs
        WHERE status = 'scheduled' AND audience_id IS NOT NULL
          AND scheduled_for > $1::timestamptz
                              + make_interval(secs => {AUDIENCE_HORIZON}))
           AS next_audience_run
"""


async def next_due(db: Executor, now: datetime, inline_lead: float) -> datetime | None:
    """When the next scheduled run not yet due will be due (at the latest: runs are taken
    early). Runs already due are not looked at: they were handed to their workers, and
    waking for them again would make the scheduler poll until they start."""
    row = await db.fetchrow(
        _NEXT_DUE,
        now, inline_lead,
    )
    assert row is not None
    candidates = []
    if row["next_run"] is not None:
        candidates.append(row["next_run"] - timedelta(seconds=inline_lead))
    if row["next_near"] is not None:
        candidates.append(row["next_near"])
    if row["next_audience_run"] is not None:
        candidates.append(row["next_audience_run"] - timedelta(seconds=AUDIENCE_HORIZON))
    return min(candidates) if candidates else None


async def next_campaign_end(db: Executor) -> datetime | None:
    """The earliest `end_at` of a live campaign."""
    value: datetime | None = await db.fetchval(
        "SELECT min(end_at) FROM campaigns "
        "WHERE status IN ('live', 'paused') AND end_at IS NOT NULL"
    )
    return value


async def complete_ended_campaigns(db: Executor, now: datetime) -> list[str]:
    """Windowed campaigns whose end has come: `completed`; their ids."""
    rows = await db.fetch(
        """
        UPDATE campaigns SET status = 'completed', finished_at = end_at, updated_at = $1
        WHERE status IN ('live', 'paused') AND end_at IS NOT NULL AND end_at <= $1
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
        campaign_id=row["campaign_id"],
    )


_RUN_COLUMNS = ("id, status, scheduled_for, started_at, deadline, deadline_reason, "
                "rate_per_second, context, cancel_requested_at, audience_id, inline_count, "
                "campaign_id")


async def campaign_runs(db: Executor, campaign_id: str, now: datetime) -> list[RunRow]:
    """The campaign's running runs and the scheduled runs to take now, in start order."""
    rows = await db.fetch(
        f"""
        SELECT {_RUN_COLUMNS} FROM runs r
        WHERE r.campaign_id = $1
          AND (r.status = 'running' OR (r.status = 'scheduled' AND {_PREPARE_AT} <= $2))
        ORDER BY r.scheduled_for, r.id
        """,
        campaign_id, now,
    )
    return [_run_row(row) for row in rows]


# By id alone (the status checked after): with `status = 'scheduled'` in the WHERE clause,
# statistics taken while few runs were due led the planner through the partial index
# `runs_due`, reading every due run of every campaign for each call (2 ms at 1,700 due).
_SCHEDULED_RUNS = """
SELECT id, campaign_id, scheduled_for FROM (
    SELECT id, campaign_id, scheduled_for, status FROM runs WHERE id = ANY($1::text[])
    OFFSET 0) AS r
WHERE status = 'scheduled'
"""


async def scheduled_runs(db: Executor, run_ids: list[str]) -> list[Record]:
    """The runs among `run_ids` still scheduled: id, campaign_id, scheduled_for."""
    return list(await db.fetch(_SCHEDULED_RUNS, run_ids))


async def load_run(db: Executor, run_id: str) -> RunRow | None:
    row = await db.fetchrow(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE r.id = $1", run_id)
    return _run_row(row) if row is not None else None


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
    freezing: bool  # a stored audience's chunks remain to freeze (`store.freeze`)


async def start_run(
    db: Pool, run: RunRow, campaign: Campaign, *, now: datetime, time_cap: float,
    size: int = 0, first_chunk: int | None = freeze.FIRST_CHUNK, rate: int | None = None,
) -> StartedRun | None:
    """Start a scheduled run (its recipients frozen, its plan and counts set) in one
    statement; a stored audience (`size` members, as counted ahead) only with its first
    chunk when the run is throttled (`first_chunk_of`). None if it is no longer scheduled
    (cancelled meanwhile). `rate`: plan it at this rate rather than its own (a pooled
    campaign's share here, SPEC §9.3), written as its rate."""
    if run.audience_id is None:
        started = await start_inline_runs(db, [run], campaign, now=now, time_cap=time_cap,
                                          rate=rate)
        return started[0] if started else None
    plan = _plan(run, campaign, now=now, time_cap=time_cap, rate=rate)
    chunked = await freeze.start(
        db, run.id, campaign.channel, audience_id=run.audience_id, size=size,
        started_at=plan.started_at, deadline=plan.deadline,
        deadline_reason=plan.deadline_reason, capacity=plan.capacity, now=now,
        returning=_RUN_COLUMNS, first_chunk=first_chunk_of(run, first_chunk), rate=rate)
    if chunked is None:
        return None
    row, counts, freezing = chunked
    return StartedRun(_run_row(row), plan, counts, freezing)


def first_chunk_of(run: RunRow, first_chunk: int | None = freeze.FIRST_CHUNK) -> int | None:
    """A throttled run sends far slower than a chunk freezes, so it starts with its first
    chunk; an unthrottled one would outrun the freeze (its claims then find nothing new,
    and a 200,000 run fell from ~5,000 to ~430 msgs/s): its audience is frozen at once."""
    return first_chunk if run.rate_per_second is not None else None


def same_plan(run: RunRow, now: datetime) -> tuple[datetime | None, int | None]:
    """Runs of one campaign with the same key at `now` have the same plan when started at
    `now` or later (`start_inline_runs`): a run due already starts at the moment of its
    start, whenever it was scheduled (`planner.plan_run`), so every overdue run of one rate
    shares a key. (Keyed by `scheduled_for`, a burst of triggers, each scheduled at its own
    microsecond, started one run per statement: ~200 runs/s where 1,000 were wanted.)"""
    return (None if run.scheduled_for <= now else run.scheduled_for), run.rate_per_second


async def start_inline_runs(
    db: Executor, runs: list[RunRow], campaign: Campaign, *, now: datetime, time_cap: float,
    rate: int | None = None,
) -> list[StartedRun]:
    """Start scheduled runs of inline recipients, one statement for each plan among them
    (one for runs of the same `same_plan` key); those no longer scheduled (cancelled
    meanwhile) are left out. `rate` as for `start_run`."""
    by_plan: dict[planner.Plan, list[str]] = {}
    for run in runs:
        plan = _plan(run, campaign, now=now, time_cap=time_cap, rate=rate)
        by_plan.setdefault(plan, []).append(run.id)
    out: list[StartedRun] = []
    for plan, ids in by_plan.items():
        started = await snapshot.start_inline(
            db, ids, campaign.channel, started_at=plan.started_at,
            deadline=plan.deadline, deadline_reason=plan.deadline_reason,
            capacity=plan.capacity, now=now, returning=_RUN_COLUMNS, rate=rate,
        )
        out += [StartedRun(_run_row(row), plan, counts, False) for row, counts in started]
    return out


def _plan(run: RunRow, campaign: Campaign, *, now: datetime, time_cap: float,
          rate: int | None = None) -> planner.Plan:
    return planner.plan_run(scheduled_for=run.scheduled_for, now=now,
                            rate=run.rate_per_second if rate is None or run.rate_per_second
                            is None else rate,
                            time_cap=time_cap, end_at=campaign.end_at,
                            windows=windows.from_stored(campaign.windows))


@dataclass(frozen=True, slots=True)
class ClosedRun:
    status: RunStatus
    end_reason: EndReason
    counts: dict[str, int]
    newly_excluded: int  # pending recipients excluded (or failed) by this close
    campaign_completed: bool  # a one-shot campaign completed with it


_MOVE_PENDING = """
WITH moved AS (
    UPDATE run_recipients SET status = $2, reason = $3, retry_at = NULL, updated_at = $4
    WHERE run_id = $1 AND status = 'pending' AND $3::text IS NOT NULL
      AND EXISTS (SELECT 1 FROM runs WHERE id = $1 AND status = 'running')
    RETURNING 1
), n AS (SELECT count(*) AS n FROM moved)
UPDATE runs r SET pending = r.pending - n.n, {column} = r.{column} + n.n
FROM n WHERE r.id = $1 AND r.status = 'running'
RETURNING {counts}, n.n AS moved
"""

# End a running run with nothing pending. With $6/$7, only if its planned or deadline
# exclusions are those the end reason was decided from. The other runs are looked at only
# for a one-shot campaign's row (the subquery names it: uncorrelated, it ran on every close,
# ~0.15 ms through thousands of a busy campaign's runs).
_FINISH = """
WITH done AS (
    UPDATE runs SET status = $2, end_reason = $3, finished_at = $4
    WHERE id = $1 AND status = 'running' AND pending = 0
      AND NOT EXISTS (SELECT 1 FROM run_freezes WHERE run_id = $1)
      AND ($6::bigint IS NULL OR (excluded_time_cap = $6 AND excluded_campaign_end = $7))
    RETURNING {counts}
), unclaimed AS (
    DELETE FROM run_claims WHERE run_id = $1 AND EXISTS (SELECT 1 FROM done)
), completed AS (
    UPDATE campaigns SET status = 'completed', finished_at = $4, updated_at = $4
    WHERE id = $5 AND status IN ('live', 'paused') AND end_at IS NULL
      AND EXISTS (SELECT 1 FROM done)
      AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.campaign_id = campaigns.id AND o.id <> $1
                      AND o.status IN ('scheduled', 'running'))
    RETURNING id
)
SELECT done.*, (SELECT count(*) FROM completed) AS completed FROM done
"""


async def close_run(
    db: Pool, run_id: str, campaign_id: str, *, now: datetime,
    exclude_as: ExclusionReason | None = None, fail_reason: str | None = None,
    known: dict[str, int] | None = None,
) -> ClosedRun | None:
    """End a running run: its pending recipients become excluded (`exclude_as`) or failed
    (`fail_reason`), its status and end reason are set, its claims dropped, and a one-shot
    campaign completes. With neither, the run must have nothing pending. None if it is not
    running (or, with neither, still has pending recipients).

    A run whose audience is still being frozen (`store.freeze`) first has the rest frozen
    with the close's reason. Then two statements, each atomic: the first moves the pending
    recipients and their counts together (the same lock order as an outcome write:
    recipient rows, then the run row; counts by deltas, so a concurrent write can neither
    deadlock with it nor be lost); the second ends a run that has nothing pending. A crash
    between them leaves a running run with nothing pending, which the next holder ends. A
    run that just ran out of recipients (`known`: its counts as of the last write, nothing
    pending) ends in one statement."""
    if exclude_as is None and fail_reason is None and known is not None \
            and known.get("pending") == 0:
        end = planner.end_reason(excluded_of(known))
        done = await db.fetchrow(_FINISH.format(counts=_COUNTS), run_id,
                                 RunStatus.COMPLETED.value, end.value, now, campaign_id,
                                 known["excluded_time_cap"], known["excluded_campaign_end"])
        if done is not None:
            return ClosedRun(RunStatus.COMPLETED, end, counts_of(done), 0,
                             bool(done["completed"]))
    column, status_to, reason = "failed", "failed", fail_reason
    if exclude_as is not None:
        column, status_to, reason = f"excluded_{exclude_as.value}", "excluded", exclude_as.value
    if reason is not None:  # the members of its audience not frozen yet get their outcome
        await freeze.finish(db, run_id, now=now, rest=reason, rest_status=status_to)
    row = await db.fetchrow(_MOVE_PENDING.format(column=column, counts=_COUNTS),
                            run_id, status_to, reason, now)
    if row is None:
        return None
    counts = counts_of(row)
    if counts["pending"]:
        return None  # not done: the caller closes it later
    cancelled = exclude_as is ExclusionReason.CANCELLED
    failed = fail_reason is not None
    end = planner.end_reason(excluded_of(counts), cancelled=cancelled, failed=failed)
    status = (RunStatus.FAILED if failed else RunStatus.CANCELLED if cancelled
              else RunStatus.COMPLETED)
    finished = await db.fetchrow(_FINISH.format(counts=_COUNTS), run_id, status.value,
                                 end.value, now, campaign_id, None, None)
    if finished is None:
        return None
    return ClosedRun(status, end, counts, int(row["moved"]), bool(finished["completed"]))

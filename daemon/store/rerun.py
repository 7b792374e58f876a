"""Reruns (SPEC §9.4): a new run of a finished run's excluded or failed recipients.

One statement, like a trigger (`store.triggers`): the source run and its campaign are read
(the campaign FOR SHARE: a stop waits for it), the new run is inserted if both allow it,
and the selected recipients of the source are copied, in source position order, as the new
run's inline recipients, built in SQL from their frozen rows (no recipient passes through
Python). The engine then starts it like any run of inline recipients: the freeze
(`store.snapshot`) merges each recipient with its stored profile (the frozen fields win)
and re-checks the stored opt-outs.

The positions of the copies are the source's (the freeze ranks by them): no sort, and the
rerun's recipients keep the order of the source whatever subset is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.store import Executor, Record
from daemon.store.triggers import RUNS_CHANNEL

# The exclusion reasons a rerun may select; `failed` selects every failed recipient.
RERUN_REASONS = ("time_cap", "campaign_end", "cancelled")
FAILED = "failed"
FINISHED = ("completed", "cancelled", "failed")

# $1 source run, $2 exclusion reasons selected, $3 failed selected.
_SELECTED = """
    rr.run_id = $1 AND ((rr.status = 'excluded' AND rr.reason = ANY($2::text[]))
                        OR ($3 AND rr.status = 'failed'))
"""

_SOURCE = """
    SELECT r.id, r.campaign_id, r.status, r.context, c.status AS campaign_status, c.end_at,
           c.rate_per_second, c.send_windows
    FROM runs r JOIN campaigns c ON c.id = r.campaign_id
    WHERE r.id = $1
"""

# $4 new run id, $5 idempotency key, $6 request hash, $7 now
_CREATE = f"""
    WITH source AS ({_SOURCE} FOR SHARE OF c),
    selected AS (SELECT count(*) AS n FROM run_recipients rr WHERE {_SELECTED}),
    inserted AS (
        INSERT INTO runs (id, campaign_id, status, audience_id, inline_count, context,
                          idempotency_key, request_hash, created_at, scheduled_for,
                          rate_per_second, one_shot, rerun_of)
        SELECT $4, s.campaign_id, 'scheduled', NULL, sel.n, s.context, $5, $6,
               $7::timestamptz, $7::timestamptz, s.rate_per_second, false, s.id
        FROM source s, selected sel
        WHERE s.status IN ('completed', 'cancelled', 'failed')
          AND s.campaign_status IN ('live', 'paused', 'completed')
          AND (s.end_at IS NULL OR $7::timestamptz < s.end_at)
          AND sel.n > 0
        ON CONFLICT DO NOTHING
        RETURNING id, scheduled_for, inline_count
    ),
    copied AS (
        INSERT INTO run_inline_recipients (run_id, position, profile_id, data)
        SELECT i.id, rr.position::integer, rr.profile_id,
               jsonb_strip_nulls(jsonb_build_object(
                   'email', rr.email, 'phone', rr.phone,
                   'push_tokens', to_jsonb(rr.push_tokens),
                   'attributes', rr.attributes, 'context', rr.context))
        FROM inserted i, run_recipients rr
        WHERE {_SELECTED}
    )
    SELECT s.*, sel.n AS selected, i.id AS inserted_id,
           i.scheduled_for AS inserted_scheduled_for,
           (SELECT count(pg_notify('{RUNS_CHANNEL}', x.id)::text) FROM inserted x) AS notified
    FROM source s CROSS JOIN selected sel LEFT JOIN inserted i ON true
"""

_PREVIEW = f"""
    WITH source AS ({_SOURCE})
    SELECT s.*,
           (SELECT coalesce(jsonb_object_agg(k.reason, k.n), '{{}}'::jsonb) FROM (
                SELECT CASE WHEN rr.status = 'failed' THEN 'failed' ELSE rr.reason END
                           AS reason, count(*) AS n
                FROM run_recipients rr WHERE {_SELECTED} GROUP BY 1) k) AS by_reason
    FROM source s
"""


@dataclass(frozen=True, slots=True)
class Selection:
    """What to rerun: exclusion reasons, and whether the failed recipients too."""

    reasons: list[str]
    failed: bool

    @classmethod
    def of(cls, only: list[str]) -> Selection:
        return cls(sorted({r for r in only if r != FAILED}), FAILED in only)


@dataclass(frozen=True, slots=True)
class Source:
    """The source run and its campaign, as the statement saw them."""

    run_id: str
    campaign_id: str
    status: str  # the source run's stored status
    campaign_status: str
    end_at: datetime | None
    windows: list[dict[str, Any]] | None
    selected: int  # recipients of the source that the selection takes


@dataclass(frozen=True, slots=True)
class Rerun:
    source: Source
    run_id: str | None  # None: nothing made (see `source` for why, or a keyed run)
    scheduled_for: datetime | None


def _source(row: Record, selected: int) -> Source:
    return Source(run_id=row["id"], campaign_id=row["campaign_id"], status=row["status"],
                  campaign_status=row["campaign_status"], end_at=row["end_at"],
                  windows=row["send_windows"], selected=selected)


async def create_rerun(
    db: Executor, source_id: str, selection: Selection, *, run_id: str,
    idempotency_key: str | None, request_hash: str, now: datetime,
) -> Rerun | None:
    """Create the rerun of `source_id` if the source and its campaign allow it (None: no
    such run). Nothing made: the source is not finished, the campaign takes no run, the
    selection is empty, or the key was used (`keyed_run`)."""
    row = await db.fetchrow(_CREATE, source_id, selection.reasons, selection.failed,
                            run_id, idempotency_key, request_hash, now)
    if row is None:
        return None
    return Rerun(_source(row, int(row["selected"])), row["inserted_id"],
                 row["inserted_scheduled_for"])


async def preview(db: Executor, source_id: str, selection: Selection
                  ) -> tuple[Source, dict[str, int]] | None:
    """The source as a rerun would see it, and the selected recipients by reason (`failed`
    for the failed ones), reading only."""
    row = await db.fetchrow(_PREVIEW, source_id, selection.reasons, selection.failed)
    if row is None:
        return None
    by_reason = {str(k): int(v) for k, v in (row["by_reason"] or {}).items()}
    return _source(row, sum(by_reason.values())), by_reason


async def keyed_run(db: Executor, campaign_id: str, idempotency_key: str) -> Record | None:
    """(run_id, request_hash, run_status, scheduled_for, rerun_of, inline_count) of the run
    made with this key in the campaign."""
    row: Record | None = await db.fetchrow(
        """
        SELECT id AS run_id, request_hash, status AS run_status, scheduled_for, rerun_of,
               inline_count
        FROM runs WHERE campaign_id = $1 AND idempotency_key = $2
        """,
        campaign_id, idempotency_key,
    )
    return row

"""The trigger in SQL: one statement checks the campaign, inserts the run and its inline
recipients, and NOTIFYs the engine.

In one statement (autocommit: one round trip), the campaign row is read FOR SHARE
(concurrent triggers proceed; stop and completion wait for them), the run is
inserted only if the campaign takes it, with ON CONFLICT DO NOTHING: the unique
index `runs_one_shot` keeps a one-shot campaign to one run, `runs_idempotency_key`
a key to one run, whatever the concurrency (a conflicting insert waits for the
other to settle, then does nothing). When nothing was inserted, the caller reads
why from what the statement saw, and looks up the keyed run (`keyed_run`) itself.

The statement reads no run of the campaign but through the partial index
`runs_one_shot`: its cost does not grow with the campaign's runs. (A LEFT JOIN on
`runs (campaign_id, idempotency_key)` used to look up the keyed run: the generic
plan that asyncpg's prepared statement settles on after five executions, made while
the table is small, walked `runs_campaign` and filtered on the key, so every trigger
read every run of its campaign: ~2,500 buffer hits and ~0.5 ms at 2,500 runs.)
A lock weaker than FOR SHARE would not save a MultiXact: the foreign key check of
the INSERT takes FOR KEY SHARE on the same campaign row anyway.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.models import CampaignStatus, RunId
from daemon.store import Executor, Record

RUNS_CHANNEL = "campaignd_runs"

# {campaign} id, {audience} requested, {inline}: inline recipients given
_TARGET = """
    SELECT c.id, c.status, c.start_at, c.end_at, c.rate_per_second, c.audience_id,
           c.send_windows,
           CASE WHEN NOT {inline} THEN coalesce({audience}, c.audience_id) END AS run_audience,
           CASE WHEN NOT {inline} THEN EXISTS (SELECT 1 FROM audiences a
                                       WHERE a.id = coalesce({audience}, c.audience_id))
           END AS audience_exists,
           EXISTS (SELECT 1 FROM runs o WHERE o.campaign_id = c.id AND o.one_shot)
               AS one_shot_taken
    FROM campaigns c
    WHERE c.id = {campaign}
"""

# A signed trigger's webhook-id is taken by the first campaign that names it (`claim`; a
# concurrent claim waits for the other, then does nothing); the run is made only when this
# statement took it, or the campaign took it before. Each signed trigger deletes up to
# two expired ids, more than it adds: the table holds about the last ten minutes.
# $1 campaign id, $2 webhook-id, $3 now, $4 expiry of the webhook-id, $5 signed
_CLAIM = """
    claim AS (
        INSERT INTO signed_trigger_ids (webhook_id, campaign_id, expires_at)
        SELECT {key}, {campaign}, {expires} WHERE {signed}
        ON CONFLICT (webhook_id) DO NOTHING
        RETURNING webhook_id
    ),
    pruned AS (
        DELETE FROM signed_trigger_ids WHERE webhook_id IN (
            SELECT webhook_id FROM signed_trigger_ids
            WHERE {signed} AND expires_at < {now}
            ORDER BY expires_at LIMIT 2 FOR UPDATE SKIP LOCKED)
    )"""
_CLAIMED = """(NOT {signed} OR EXISTS (SELECT 1 FROM claim)
               OR EXISTS (SELECT 1 FROM signed_trigger_ids s
                          WHERE s.webhook_id = {key} AND s.campaign_id = {campaign}))"""
_SIGNED = {"key": "$2", "campaign": "$1", "now": "$8::timestamptz", "expires": "$12",
           "signed": "$11"}

# $1 campaign id, $2 idempotency key, $3 requested audience, $4 inline recipients given,
# $5 run id, $6 context, $7 request hash, $8 now, $9/$10 inline profile ids and data,
# $11 signed (the key is a webhook-id), $12 the webhook-id's expiry
_CREATE = f"""
    WITH target AS ({_TARGET.format(campaign="$1", audience="$3", inline="$4")} FOR SHARE OF c),
    {_CLAIM.format(**_SIGNED)},
    inserted AS (
        INSERT INTO runs (id, campaign_id, status, audience_id, inline_count, context,
                          idempotency_key, request_hash, created_at, scheduled_for,
                          rate_per_second, one_shot)
        SELECT $5, t.id, 'scheduled', t.run_audience, cardinality($9::text[]), $6, $2, $7,
               $8::timestamptz, greatest($8::timestamptz, t.start_at), t.rate_per_second,
               t.end_at IS NULL
        FROM target t
        WHERE t.status IN ('live', 'paused')
          AND (t.end_at IS NULL OR $8::timestamptz < t.end_at)
          AND NOT (t.end_at IS NULL AND t.one_shot_taken)
          AND ($4 OR (t.run_audience IS NOT NULL AND t.audience_exists))
          AND {_CLAIMED.format(**_SIGNED)}
        ON CONFLICT DO NOTHING
        RETURNING id, scheduled_for
    ),
    inline AS (
        INSERT INTO run_inline_recipients (run_id, position, profile_id, data)
        SELECT i.id, u.ord - 1, u.profile_id, u.data::jsonb
        FROM inserted i,
             unnest($9::text[], $10::text[]) WITH ORDINALITY AS u(profile_id, data, ord)
    )
    SELECT t.*, i.id AS inserted_id, i.scheduled_for AS inserted_scheduled_for,
           (SELECT count(pg_notify('{RUNS_CHANNEL}', x.id)::text) FROM inserted x) AS notified
    FROM target t LEFT JOIN inserted i ON true
"""


_PREVIEW = _TARGET.format(campaign="$1", audience="$2", inline="$3")


@dataclass(frozen=True, slots=True)
class TriggerTarget:
    """The campaign a trigger names, as the trigger saw it."""

    status: CampaignStatus
    start_at: datetime | None
    end_at: datetime | None
    audience_id: str | None  # the campaign's default audience
    run_audience: str | None  # the audience the run would read (None: inline recipients)
    audience_exists: bool | None  # None: not asked (inline recipients)
    one_shot_taken: bool  # the campaign has its one-shot run already
    windows: list[dict[str, Any]] | None = None  # send windows as stored (None: always)


@dataclass(frozen=True, slots=True)
class InlineRows:
    """Inline recipients as the statement takes them: profile ids, and the rest of each
    recipient as JSON text (encoded by `inline_rows`, which callers may run off the loop)."""

    profile_ids: list[str]
    data: list[str]


@dataclass(frozen=True, slots=True)
class NewRun:
    id: RunId
    campaign_id: str
    audience: str | None  # requested in the body (None: the campaign's, or inline)
    recipients: InlineRows | None  # None: a stored audience
    context: dict[str, Any]
    idempotency_key: str | None
    request_hash: str
    now: datetime
    signed_until: datetime | None = None  # signed: the key is a webhook-id, kept till then


@dataclass(frozen=True, slots=True)
class Created:
    """What the statement did: the run it made (id, scheduled_for), or nothing and why
    it could not (read from `target`)."""

    target: TriggerTarget
    run_id: str | None
    scheduled_for: datetime | None


def _target(row: Record) -> TriggerTarget:
    return TriggerTarget(
        status=CampaignStatus(row["status"]), start_at=row["start_at"], end_at=row["end_at"],
        audience_id=row["audience_id"], run_audience=row["run_audience"],
        audience_exists=row["audience_exists"], one_shot_taken=row["one_shot_taken"],
        windows=row["send_windows"],
    )


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def inline_rows(recipients: Iterable[dict[str, Any]], into: InlineRows | None = None
                ) -> InlineRows:
    """The rows of inline recipients (each a dict with `profile_id` and its other fields),
    added to `into` when given."""
    rows = InlineRows([], []) if into is None else into
    for recipient in recipients:
        data = dict(recipient)
        rows.profile_ids.append(data.pop("profile_id"))
        rows.data.append(_ENCODE(data))
    return rows


async def create_run(db: Executor, run: NewRun) -> Created | None:
    """Create the run if the campaign takes it (None: no such campaign)."""
    inline = run.recipients or InlineRows([], [])
    row = await db.fetchrow(
        _CREATE,
        run.campaign_id, run.idempotency_key, run.audience, run.recipients is not None,
        run.id, run.context, run.request_hash, run.now, inline.profile_ids, inline.data,
        run.signed_until is not None, run.signed_until,
    )
    if row is None:
        return None
    return Created(_target(row), row["inserted_id"], row["inserted_scheduled_for"])


_REMEMBER = f"""
    WITH {_CLAIM.format(key="$2", campaign="$1", now="$3", expires="$4", signed="true")}
    SELECT count(*) FROM claim
"""


async def remember_webhook_id(db: Executor, webhook_id: str, campaign_id: str, now: datetime,
                              until: datetime) -> str | None:
    """Take `webhook_id` for `campaign_id` where no run is made (a dry run, a refused
    trigger); returns the campaign that holds it (None: none, after a race with a refusal
    that never committed)."""
    await db.execute(_REMEMBER, campaign_id, webhook_id, now, until)
    return await webhook_id_owner(db, webhook_id)


async def webhook_id_owner(db: Executor, webhook_id: str) -> str | None:
    """The campaign that took this webhook-id (None: none did, or it expired)."""
    owner: str | None = await db.fetchval(
        "SELECT campaign_id FROM signed_trigger_ids WHERE webhook_id = $1", webhook_id)
    return owner


async def target(
    db: Executor, campaign_id: str, audience: str | None, inline: bool
) -> TriggerTarget | None:
    """The campaign as a trigger would see it, without locking or writing (dry runs)."""
    row = await db.fetchrow(_PREVIEW, campaign_id, audience, inline)
    return _target(row) if row else None


async def keyed_run(db: Executor, campaign_id: str, idempotency_key: str) -> Record | None:
    """(run_id, request_hash, run_status, scheduled_for) of the run made with this key."""
    row: Record | None = await db.fetchrow(
        """
        SELECT id AS run_id, request_hash, status AS run_status, scheduled_for
        FROM runs WHERE campaign_id = $1 AND idempotency_key = $2
        """,
        campaign_id, idempotency_key,
    )
    return row


async def defer_run(db: Executor, run_id: str, until: datetime) -> datetime | None:
    """Move a scheduled run's start to `until` (a send window's next opening); returns the
    new `scheduled_for`, or None when the run is no longer scheduled."""
    value: datetime | None = await db.fetchval(
        f"""
        WITH moved AS (
            UPDATE runs SET scheduled_for = greatest(scheduled_for, $2)
            WHERE id = $1 AND status = 'scheduled' RETURNING id, scheduled_for
        )
        SELECT scheduled_for FROM moved WHERE pg_notify('{RUNS_CHANNEL}', id) IS NOT NULL
        """,
        run_id, until,
    )
    return value

"""A running run's recipients: claims (durable in-flight marks), releases, outcome writes.

The lease holder claims pending recipients in batches, in position order, inserting a
row per recipient in `run_claims` in the same statement: that mark is durable before any
provider call for them. The outcome's write deletes it (same transaction); a graceful
stop releases the claims that never reached a call; after a crash, the next holder
finds the claims left and sends those recipients again (same idempotency key). Claims
are fenced by the lease: a daemon whose lease expired claims nothing. A recipient is
never claimed twice (the claim's primary key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.models import Channel, ExclusionReason
from daemon.store import Executor, Record

_SUBSCRIBED = {Channel.EMAIL: "sub_email", Channel.SMS: "sub_sms", Channel.PUSH: "sub_push"}

_FENCE = """
EXISTS (SELECT 1 FROM engine_leases l
        WHERE l.campaign_id = $1 AND l.holder = $2 AND l.expires_at > clock_timestamp())
"""

_UNCLAIMED = """
NOT EXISTS (SELECT 1 FROM run_claims k WHERE k.run_id = c.run_id AND k.position = c.position)
"""

# Insert the picked recipients' claims; return those claimed (with the current
# subscription of their profile to the channel).
_CLAIM = """,
claimed AS (
    INSERT INTO run_claims (run_id, position, holder, claimed_at)
    SELECT run_id, position, $2, $6 FROM picked
    ON CONFLICT (run_id, position) DO UPDATE SET claimed_at = excluded.claimed_at
        WHERE run_claims.holder = excluded.holder
    RETURNING run_id, position
)
SELECT r.run_id, r.position, r.profile_id, r.email, r.phone, r.push_tokens, r.attributes,
       r.context, r.attempts,
       coalesce((SELECT p.{subscribed} FROM profiles p WHERE p.id = r.profile_id), true)
           AS subscribed
FROM picked r JOIN claimed USING (run_id, position)
"""

_PICKED_COLUMNS = ("c.run_id, c.position, c.profile_id, c.email, c.phone, c.push_tokens, "
                   "c.attributes, c.context, c.attempts")

# Per run: the next `n` fresh (never tried) recipients after position `after`, in order.
# Past the cursor nothing is claimed (the caller's own claims are behind it, a dead
# holder's were recovered); another holder's claim there anyway is skipped by the insert's
# conflict. The caller's own claim there is one whose commit landed but whose answer was
# lost (the server died between the two): nobody here knows those recipients, so they are
# claimed again, not skipped (skipped, they stayed pending and the run never finished).
_CLAIM_FRESH = f"""
WITH picked AS (
    SELECT x.* FROM unnest($3::text[], $4::bigint[], $5::int[]) AS w(run_id, after, n)
    CROSS JOIN LATERAL (
        SELECT {_PICKED_COLUMNS} FROM run_recipients c
        WHERE c.run_id = w.run_id AND c.status = 'pending' AND c.position > w.after
          AND c.retry_at IS NULL
        ORDER BY c.position
        LIMIT w.n
    ) x
    WHERE {{fence}}
)
"""

# Recipients whose retry is due, earliest first.
_CLAIM_RETRIES = f"""
WITH picked AS (
    SELECT {_PICKED_COLUMNS} FROM run_recipients c
    WHERE c.run_id = ANY($3::text[]) AND c.status = 'pending' AND c.retry_at <= $4
      AND {_UNCLAIMED} AND {{fence}}
    ORDER BY c.retry_at
    LIMIT $5
)
"""

_RELEASE = """
DELETE FROM run_claims k
USING unnest($3::text[], $4::bigint[]) AS u(run_id, position)
WHERE k.run_id = u.run_id AND k.position = u.position AND k.holder = $2 AND {fence}
"""

_RECOVER = "DELETE FROM run_claims WHERE run_id = ANY($1::text[])"

_ORPHANS = """
DELETE FROM run_claims k WHERE k.run_id = $3 AND k.holder = $2 AND {fence}
"""

# One statement for a batch of outcomes: only rows still pending change (a late or repeated
# outcome is a no-op), their claims go, and each run's counts move by what actually
# changed (the applied transitions are returned too, for the metrics).
# The rows are found by their key, whatever the statistics say: `r.status = b.pending`
# (a column of the batch, not a constant) lets the planner prove nothing about the partial
# index `run_recipients_pending`. With `r.status = 'pending'`, statistics taken while few
# rows were pending (a quiet database analysed, then a burst of runs) made it walk that
# whole index for each batch: 24 ms for 10 outcomes with 5,000 pending, O(pending).
_WRITE = """
WITH b AS MATERIALIZED (
    SELECT *, 'pending'::text AS pending
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                $6::int[], $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[])
        AS b(run_id, position, status, reason, error, calls, provider_message_id, retry_at, at,
             provider)
), applied AS (
    UPDATE run_recipients r
    SET status = b.status, reason = b.reason, error = b.error,
        attempts = least(r.attempts + b.calls, 32767),
        provider_message_id = coalesce(b.provider_message_id, r.provider_message_id),
        provider = coalesce(b.provider, r.provider),
        retry_at = b.retry_at, updated_at = b.at
    FROM b
    WHERE r.run_id = b.run_id AND r.position = b.position AND r.status = b.pending
    RETURNING r.run_id, r.status, r.reason
), unclaimed AS (
    DELETE FROM run_claims k USING b WHERE k.run_id = b.run_id AND k.position = b.position
), deltas AS (
    SELECT run_id,
           count(*) FILTER (WHERE status = 'sent') AS sent,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status <> 'pending') AS done,
           {excluded},
           array_agg(status) AS statuses, array_agg(reason) AS reasons
    FROM applied GROUP BY run_id
)
UPDATE runs r
SET sent = r.sent + d.sent, failed = r.failed + d.failed, pending = r.pending - d.done,
    {add_excluded}
FROM deltas d
WHERE r.id = d.run_id
RETURNING r.id, {counts}, d.statuses, d.reasons
"""

COUNT_COLUMNS = (
    "targeted", "sent", "failed", "pending", "excluded_time_cap", "excluded_campaign_end",
    "excluded_opted_out", "excluded_no_address", "excluded_duplicate", "excluded_cancelled",
)
EXCLUSION_ORDER = tuple(reason.value for reason in ExclusionReason)
_WRITE_SQL = _WRITE.format(
    excluded=",\n           ".join(
        f"count(*) FILTER (WHERE status = 'excluded' AND reason = '{reason}') AS x_{reason}"
        for reason in EXCLUSION_ORDER),
    add_excluded=",\n    ".join(
        f"excluded_{reason} = r.excluded_{reason} + d.x_{reason}" for reason in EXCLUSION_ORDER),
    counts=", ".join(f"r.{column}" for column in COUNT_COLUMNS),
)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A recipient claimed for delivery (marked in flight)."""

    run_id: str
    position: int
    profile_id: str
    email: str | None
    phone: str | None
    push_tokens: tuple[str, ...]
    attributes: dict[str, Any]
    context: dict[str, Any] | None
    attempts: int  # provider calls already made for it
    subscribed: bool  # the profile's current subscription to the channel


def _claimed(row: Record) -> Claimed:
    return Claimed(
        run_id=row["run_id"], position=row["position"], profile_id=row["profile_id"],
        email=row["email"], phone=row["phone"], push_tokens=tuple(row["push_tokens"] or ()),
        attributes=row["attributes"] or {}, context=row["context"],
        attempts=row["attempts"], subscribed=row["subscribed"],
    )


async def claim_fresh(
    db: Executor, campaign_id: str, holder: str, channel: Channel,
    wanted: Sequence[tuple[str, int, int]], now: datetime,
) -> list[Claimed]:
    """Claim, per (run_id, after_position, n), the next n never-tried pending recipients."""
    if not wanted:
        return []
    sql = (_CLAIM_FRESH.format(fence=_FENCE)
           + _CLAIM.format(subscribed=_SUBSCRIBED[channel]))
    rows = await db.fetch(
        sql, campaign_id, holder, [w[0] for w in wanted], [w[1] for w in wanted],
        [w[2] for w in wanted], now,
    )
    return sorted((_claimed(row) for row in rows), key=lambda c: (c.run_id, c.position))


async def claim_retries(
    db: Executor, campaign_id: str, holder: str, channel: Channel,
    run_ids: Sequence[str], now: datetime, limit: int,
) -> list[Claimed]:
    """Claim up to `limit` recipients whose retry is due."""
    if not run_ids:
        return []
    sql = (_CLAIM_RETRIES.format(fence=_FENCE)
           + _CLAIM.format(subscribed=_SUBSCRIBED[channel]))
    rows = await db.fetch(sql, campaign_id, holder, list(run_ids), now, limit, now)
    return [_claimed(row) for row in rows]


async def release(db: Executor, campaign_id: str, holder: str,
                  claims: Sequence[tuple[str, int]]) -> None:
    """Give back claims that never reached a provider call (graceful stop); only while we
    hold the lease (a new holder has recovered them already)."""
    if claims:
        await db.execute(_RELEASE.format(fence=_FENCE), campaign_id, holder,
                         [c[0] for c in claims], [c[1] for c in claims])


async def release_orphans(db: Executor, campaign_id: str, holder: str, run_id: str) -> int:
    """Drop our own claims on `run_id`, for a caller that holds none of them in memory: claims
    whose commit landed but whose answer was lost. Returns how many (claimable again)."""
    status: str = await db.execute(_ORPHANS.format(fence=_FENCE), campaign_id, holder, run_id)
    return int(status.rsplit(" ", 1)[-1])


async def recover(db: Executor, run_ids: Sequence[str]) -> int:
    """Drop the claims a previous holder left (crash): those recipients are claimed, and
    sent, again. Returns how many."""
    if not run_ids:
        return 0
    status: str = await db.execute(_RECOVER, list(run_ids))
    return int(status.rsplit(" ", 1)[-1])


async def retry_state(db: Executor, run_id: str) -> tuple[int, datetime | None]:
    """(pending recipients, earliest due retry) of a run, from its rows."""
    row = await db.fetchrow(
        f"""
        SELECT (SELECT pending FROM runs WHERE id = $1) AS pending,
               (SELECT min(c.retry_at) FROM run_recipients c
                WHERE c.run_id = $1 AND c.status = 'pending' AND c.retry_at IS NOT NULL
                  AND {_UNCLAIMED}) AS next_retry
        """,
        run_id,
    )
    assert row is not None
    return int(row["pending"] or 0), row["next_retry"]


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """One provider call's (or decision's) result, as written."""

    run_id: str
    position: int
    status: str  # sent | failed | excluded | pending (transient: retry at retry_at)
    reason: str | None
    error: str | None
    calls: int  # provider calls this outcome accounts for (0 or 1)
    provider_message_id: str | None
    retry_at: datetime | None
    at: datetime
    provider: str | None = None  # the provider that accepted it (sent): receipts name it


async def write_outcomes(db: Executor, outcomes: Sequence[OutcomeRow]) -> list[Record]:
    """Apply the outcomes (one statement, atomic): per run whose rows changed, its id, new
    counts, and the `statuses`/`reasons` of the transitions applied."""
    columns: list[list[Any]] = [[] for _ in range(10)]
    for o in outcomes:
        for index, value in enumerate((o.run_id, o.position, o.status, o.reason, o.error,
                                       o.calls, o.provider_message_id, o.retry_at, o.at,
                                       o.provider)):
            columns[index].append(value)
    return list(await db.fetch(_WRITE_SQL, *columns))

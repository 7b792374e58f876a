"""Campaign leases: which daemon instance executes a campaign's runs (scale-out, SPEC §3.5).

Expiry is in database time (`clock_timestamp()`), so that instances whose clocks
disagree still agree on who holds what. The holder renews well before expiry; a
lease that expired may be taken by anyone, and each change of holder bumps the
lease's generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from daemon.store import Executor

# The lease is ours if it is free, expired, or already ours (a restart of the same holder
# name never happens: holders are unique per process, but a renewal through acquire is fine).
# Run by `store.engine.take_campaign`, which reads the campaign in the same statement.
ACQUIRE = """
INSERT INTO engine_leases AS l (campaign_id, holder, acquired_at, expires_at)
VALUES ($1, $2, clock_timestamp(), clock_timestamp() + make_interval(secs => $3))
ON CONFLICT (campaign_id) DO UPDATE
SET holder = EXCLUDED.holder,
    expires_at = EXCLUDED.expires_at,
    acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at
                       ELSE EXCLUDED.acquired_at END,
    generation = l.generation + (l.holder <> EXCLUDED.holder)::int
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp()
RETURNING generation
"""

_RENEW = """
UPDATE engine_leases
SET expires_at = clock_timestamp() + make_interval(secs => $3)
WHERE holder = $1 AND campaign_id = ANY($2::text[]) AND expires_at > clock_timestamp()
RETURNING campaign_id
"""

# Released leases expire `linger` seconds later rather than at once: the next holder's
# first call then comes at least that long after our last one (the rate's one-second
# windows hold across the hand-over).
_RELEASE = """
UPDATE engine_leases
SET expires_at = LEAST(expires_at, clock_timestamp() + make_interval(secs => $3))
WHERE holder = $1 AND campaign_id = ANY($2::text[])
"""


@dataclass(frozen=True, slots=True)
class LeaseState:
    """Who holds a campaign's lease and for how many more seconds (≤ 0: expired)."""

    campaign_id: str
    holder: str
    remaining: float


async def renew(db: Executor, holder: str, campaign_ids: Sequence[str], ttl: float) -> set[str]:
    """Extend our unexpired leases by `ttl`; the campaigns whose lease we still hold."""
    if not campaign_ids:
        return set()
    rows = await db.fetch(_RENEW, holder, list(campaign_ids), ttl)
    return {row["campaign_id"] for row in rows}


async def release(db: Executor, holder: str, campaign_ids: Sequence[str],
                  linger: float = 1.0) -> None:
    """Let our leases expire `linger` seconds from now."""
    if campaign_ids:
        await db.execute(_RELEASE, holder, list(campaign_ids), linger)


async def release_all(db: Executor, holder: str, linger: float = 1.0) -> int:
    """Let every lease of `holder` (a dead incarnation of ours) expire `linger` seconds from
    now; how many."""
    status: str = await db.execute(
        """
        UPDATE engine_leases
        SET expires_at = LEAST(expires_at, clock_timestamp() + make_interval(secs => $2))
        WHERE holder = $1 AND expires_at > clock_timestamp()
        """,
        holder, linger,
    )
    return int(status.rsplit(" ", 1)[-1])


async def states(db: Executor, campaign_ids: Sequence[str]) -> dict[str, LeaseState]:
    """The lease of each of these campaigns that has one."""
    rows = await db.fetch(
        """
        SELECT campaign_id, holder,
               extract(epoch FROM expires_at - clock_timestamp())::float8 AS remaining
        FROM engine_leases WHERE campaign_id = ANY($1::text[])
        """,
        list(campaign_ids),
    )
    return {
        row["campaign_id"]: LeaseState(row["campaign_id"], row["holder"], row["remaining"])
        for row in rows
    }

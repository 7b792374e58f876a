"""Rate pools (SPEC §9.3): their definitions, and the share each daemon may spend.

The protocol, one statement per pool and holder, run with every heartbeat (and on a
pool's NOTIFY), under the pool row's lock (holders take turns):

- demand: what the holder's pooled campaigns could use now (0 when nothing is pending);
- target: `demand × min(1, pool rate / total demand)` over the holders not expired;
- a decrease is written at once, and what it gives up is *released*: it stays counted
  against the others until `released_until` (one second and a margin from now), since the
  holder's calls of the last second are still in the pool's sliding windows; the holder
  applies the lower rate locally as soon as the statement returns (well within that
  second), then `tighten`s the release to what its last calls really still spend: its
  pacer knows how many of them are beyond the new share and when the last of those is a
  second old (`Pacer.excess`), which for a holder paced evenly from 667 to 500/s is a
  quarter of a second, not 1.25 s;
- an increase takes only what is free: `pool rate − Σ others' granted − Σ released (still
  active, ours included)`; the holder raises its local rate only after the statement
  returned.

So what a holder spends is always bounded by its `granted` (lowered locally before the
capacity can be reused, raised locally only after it was written), and
`Σ granted + Σ active released ≤ pool rate` holds after every statement: the sum of what
is being spent never exceeds the pool's rate, even while shares move. A dead holder's row
expires `ttl` after its last heartbeat and its share returns then. All times are the
database's (`clock_timestamp()`), as for leases, so daemons' clocks may disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.store import Executor, Pool, Record

POOLS_CHANNEL = "campaignd_pools"
PROVIDER_POOL_PREFIX = "provider:"  # a provider's rate_per_second as a pool across daemons
# A released share stays reserved this long: a second of sliding window, and a margin for
# the holder to apply its lower rate.
RELEASE_SECONDS = 1.25


@dataclass(frozen=True, slots=True)
class RatePool:
    name: str
    rate_per_second: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PoolShare:
    """One holder's row: what it asks, what it may spend, what it gave up lately."""

    holder: str
    demand: float
    granted: float
    released: float
    members: dict[str, float]
    expires_in: float  # seconds (≤ 0: expired)


def _pool(row: Record) -> RatePool:
    return RatePool(row["name"], row["rate_per_second"], row["created_at"], row["updated_at"])


async def put(db: Executor, name: str, rate: int, now: datetime) -> tuple[RatePool, bool]:
    """Create or change a pool (and tell the holders at once); (pool, created)."""
    row = await db.fetchrow(
        f"""
        WITH upserted AS (
            INSERT INTO rate_pools AS p (name, rate_per_second, created_at, updated_at)
            VALUES ($1, $2, $3, $3)
            ON CONFLICT (name) DO UPDATE
            SET rate_per_second = EXCLUDED.rate_per_second, updated_at = EXCLUDED.updated_at
            RETURNING p.*, (xmax = 0) AS created
        )
        SELECT u.*, pg_notify('{POOLS_CHANNEL}', u.name) IS NULL AS _ FROM upserted u
        """,
        name, rate, now,
    )
    assert row is not None
    return _pool(row), bool(row["created"])


async def get(db: Executor, name: str) -> RatePool | None:
    row = await db.fetchrow("SELECT * FROM rate_pools WHERE name = $1", name)
    return _pool(row) if row is not None else None


async def rates(db: Executor, names: list[str]) -> dict[str, int]:
    """The rates of these pools (unknown ones left out)."""
    rows = await db.fetch("SELECT name, rate_per_second FROM rate_pools WHERE name = ANY($1)",
                          names)
    return {row["name"]: row["rate_per_second"] for row in rows}


async def delete(db: Pool, name: str) -> str:
    """Delete a pool no live campaign names: "deleted", "in_use" or "missing"."""
    async with db.acquire() as conn, conn.transaction():
        # The lock first (an activation holds it FOR SHARE), then a fresh snapshot.
        if await conn.fetchval("SELECT 1 FROM rate_pools WHERE name = $1 FOR UPDATE",
                               name) is None:
            return "missing"
        if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM campaigns WHERE rate_pool = $1 "
                "AND status IN ('live', 'paused'))", name):
            return "in_use"
        await conn.execute("DELETE FROM rate_pools WHERE name = $1", name)
    return "deleted"


async def hold(db: Executor, name: str) -> bool:
    """Whether the pool exists, holding it (FOR SHARE) until the caller's transaction ends:
    it cannot be deleted meanwhile (a campaign naming it is being activated)."""
    return await db.fetchval("SELECT 1 FROM rate_pools WHERE name = $1 FOR SHARE",
                             name) is not None


async def campaigns_of(db: Executor, name: str) -> list[str]:
    """The live (or paused) campaigns that name the pool."""
    rows = await db.fetch(
        "SELECT id FROM campaigns WHERE rate_pool = $1 AND status IN ('live', 'paused') "
        "ORDER BY id", name)
    return [row["id"] for row in rows]


async def shares(db: Executor, name: str) -> list[PoolShare]:
    """Every holder's row of the pool (expired ones included, with expires_in ≤ 0)."""
    rows = await db.fetch(
        """
        SELECT holder, demand, granted,
               CASE WHEN released_until > clock_timestamp() THEN released ELSE 0 END
                   AS released,
               members,
               extract(epoch FROM expires_at - clock_timestamp())::float8 AS expires_in
        FROM rate_pool_shares WHERE pool = $1 ORDER BY holder
        """,
        name,
    )
    return [PoolShare(row["holder"], row["demand"], row["granted"], row["released"],
                      dict(row["members"]), row["expires_in"]) for row in rows]


# $1 pool, $2 holder, $3 demand, $4 ttl seconds, $5 members (json), $6 release seconds
_SHARE = """
WITH pool AS (
    SELECT rate_per_second::float8 AS rate FROM rate_pools WHERE name = $1
),
mine AS (
    SELECT granted, released, released_until FROM rate_pool_shares
    WHERE pool = $1 AND holder = $2 AND expires_at > clock_timestamp()
),
others AS (
    SELECT coalesce(sum(granted), 0) AS granted,
           coalesce(sum(CASE WHEN released_until > clock_timestamp() THEN released END), 0)
               AS released,
           coalesce(sum(demand), 0) AS demand
    FROM rate_pool_shares
    WHERE pool = $1 AND holder <> $2 AND expires_at > clock_timestamp()
),
plan AS (
    SELECT p.rate,
           coalesce((SELECT granted FROM mine), 0) AS current,
           $3::float8 * least(1.0, p.rate / nullif($3::float8 + o.demand, 0)) AS target,
           -- Our own release still counts too: those calls are in the last second.
           p.rate - o.granted - o.released - coalesce((
               SELECT released FROM mine WHERE released_until > clock_timestamp()), 0) AS free
    FROM pool p, others o
),
decided AS (
    SELECT rate, current,
           CASE WHEN coalesce(target, 0) <= current THEN coalesce(target, 0)
                ELSE greatest(current, least(target, free)) END AS granted
    FROM plan
),
written AS (
    INSERT INTO rate_pool_shares AS s (pool, holder, demand, granted, released,
                                       released_until, members, expires_at)
    SELECT $1, $2, $3, d.granted,
           CASE WHEN d.granted < d.current THEN d.current - d.granted ELSE 0 END,
           CASE WHEN d.granted < d.current
                THEN clock_timestamp() + make_interval(secs => $6) END,
           $5::jsonb, clock_timestamp() + make_interval(secs => $4)
    FROM decided d
    ON CONFLICT (pool, holder) DO UPDATE
    SET demand = EXCLUDED.demand,
        granted = EXCLUDED.granted,
        -- A new release adds to one still active (both still count in the last second).
        released = CASE
            WHEN EXCLUDED.released_until IS NULL THEN
                CASE WHEN s.released_until > clock_timestamp() THEN s.released ELSE 0 END
            WHEN s.released_until > clock_timestamp() THEN s.released + EXCLUDED.released
            ELSE EXCLUDED.released END,
        released_until = CASE
            WHEN EXCLUDED.released_until IS NULL THEN
                CASE WHEN s.released_until > clock_timestamp() THEN s.released_until END
            ELSE EXCLUDED.released_until END,
        members = EXCLUDED.members,
        expires_at = EXCLUDED.expires_at
    RETURNING granted
)
SELECT (SELECT granted FROM written) AS granted, (SELECT rate FROM pool) AS rate,
       (SELECT coalesce(target, 0) FROM plan) AS target,
       (SELECT extract(epoch FROM min(released_until) - clock_timestamp())::float8
        FROM rate_pool_shares
        WHERE pool = $1 AND released_until > clock_timestamp()
          AND expires_at > clock_timestamp()) AS free_in,
       (SELECT extract(epoch FROM min(expires_at) - clock_timestamp())::float8
        FROM rate_pool_shares
        WHERE pool = $1 AND holder <> $2 AND expires_at > clock_timestamp()
          AND (granted > 0 OR released_until > clock_timestamp())) AS others_expire_in
"""


@dataclass(frozen=True, slots=True)
class Granted:
    """What a share statement gave: calls/s to spend, the pool's rate, the fair target."""

    granted: float
    rate: float
    target: float  # demand × min(1, rate / Σ demand): granted once the others gave it up
    free_in: float | None = None  # seconds until the first release still reserved ends
    # seconds until the first other holder's row expires, if it is not renewed (a dead
    # daemon's share is free then: the survivors look again at that moment)
    others_expire_in: float | None = None


async def share(db: Pool, pool: str, holder: str, demand: float, ttl: float,
                members: dict[str, float] | None = None,
                release_seconds: float = RELEASE_SECONDS, *,
                notify: bool = False) -> Granted | None:
    """Publish `holder`'s demand on `pool` and take its share (see the module docstring):
    what was granted, or None when the pool no longer exists. With `notify`, the pool's
    other holders are told to look again (our demand changed).

    After a decrease the caller must lower its local rate at once; after an increase it may
    raise it (the transaction has committed, so the capacity is written as ours)."""
    async with db.acquire() as conn, conn.transaction():
        # The pool row's lock first, in its own statement: the share statement's snapshot,
        # taken after it, sees every other holder's committed share (one CTE locking the
        # row would read the others from a snapshot taken before the wait).
        if await conn.fetchval("SELECT 1 FROM rate_pools WHERE name = $1 FOR UPDATE",
                               pool) is None:
            return None
        row = await conn.fetchrow(_SHARE, pool, holder, max(0.0, demand), ttl,
                                  members or {}, release_seconds)
        if notify:
            await conn.execute("SELECT pg_notify($1, $2)", POOLS_CHANNEL, pool)
    assert row is not None
    return Granted(float(row["granted"]), float(row["rate"]), float(row["target"]),
                   row["free_in"], row["others_expire_in"])


async def tighten(db: Executor, pool: str, holder: str, amount: float, seconds: float) -> None:
    """Shorten `holder`'s release on `pool` to what its last calls still spend: at most
    `amount` calls/s above its granted share, for at most `seconds` from now (the holder's
    pacer knows: `Pacer.excess`, read as it lowered its rate). Only ever narrows the
    reservation (the smaller amount, the earlier end), and tells the other holders, who
    may take the capacity sooner than `RELEASE_SECONDS`."""
    await db.execute(
        f"""
        WITH tightened AS (
            UPDATE rate_pool_shares
            SET released = least(released, $3::float8),
                released_until = least(released_until,
                                       clock_timestamp() + make_interval(secs => $4::float8))
            WHERE pool = $1 AND holder = $2 AND released_until > clock_timestamp()
            RETURNING pool
        )
        SELECT pg_notify('{POOLS_CHANNEL}', pool) FROM tightened
        """,
        pool, holder, max(0.0, amount), max(0.0, seconds),
    )


async def leave(db: Executor, holder: str, pools: list[str] | None = None) -> None:
    """Give up `holder`'s shares (all, or of these pools): demand 0, and what it held stays
    released for a second, like a decrease (its last calls still count)."""
    await db.execute(
        """
        UPDATE rate_pool_shares
        SET demand = 0, members = '{}',
            released = granted + CASE WHEN released_until > clock_timestamp()
                                      THEN released ELSE 0 END,
            released_until = clock_timestamp() + make_interval(secs => $3),
            granted = 0,
            expires_at = greatest(expires_at, clock_timestamp() + make_interval(secs => $3))
        WHERE holder = $1 AND ($2::text[] IS NULL OR pool = ANY($2::text[]))
        """,
        holder, pools, RELEASE_SECONDS,
    )


def members_view(members: dict[str, Any]) -> dict[str, float]:
    return {str(key): float(value) for key, value in members.items()}

"""The only place with SQL queries (the schema lives in migrations/). Always parameterised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg as _asyncpg

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    )
    # A pool or a connection: both run queries.
    Executor: TypeAlias = Pool | Connection
else:
    Pool = Connection = Executor = Any

Record = Any  # asyncpg.Record rows: the one place `Any` is allowed (STYLE rule 9)

# What a lost or restarted database raises. InternalClientError included: a connection
# that a PostgreSQL restart left mid-operation answers the next statement with it ("cannot
# switch to state 12; another operation is in progress"), and not catching it killed the
# engine in the 30-minute soak.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    _asyncpg.PostgresError, _asyncpg.InterfaceError, _asyncpg.InternalClientError, OSError)

# The daemon's open pools (one, usually), for `after_error` (asyncpg's Pool takes no weak
# reference: closed ones are dropped at each registration and each use).
_POOLS: list[Any] = []


def register(pool: Pool) -> None:
    """Known to `after_error` (called by `create_pool`)."""
    _POOLS[:] = [known for known in _POOLS if not known.is_closing()]
    _POOLS.append(pool)


def after_error(exc: BaseException) -> None:
    """What a database error asks of the pools. An InternalClientError ("another operation
    is in progress") comes from a connection a lost server left mid-operation: the pool
    would hand it out again (its release does not reset the session: see
    `infra.database._keep_session`) and every statement on it would fail the same way, so
    every pooled connection is replaced at its next acquire (asyncpg's
    `expire_connections`, which only bumps the pool's generation)."""
    if isinstance(exc, _asyncpg.InternalClientError):
        _POOLS[:] = [known for known in _POOLS if not known.is_closing()]
        for pool in _POOLS:
            pool._generation += 1  # = `await pool.expire_connections()`, without the await

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

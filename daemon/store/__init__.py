"""The only place with SQL queries (the schema lives in migrations/). Always parameterised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

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

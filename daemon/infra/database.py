"""Opening the database: the configured server, or the embedded default; one asyncpg pool."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from daemon.errors import DatabaseError
from daemon.infra.config import Config, redact_url
from daemon.infra.embedded import EmbeddedPostgres
from daemon.infra.logs import get_logger
from daemon.store import Pool, register

__all__ = ["Pool", "create_pool", "open_database"]

log = get_logger(__name__)


# One encoder for every value (`json.dumps` with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(
            type_name,
            encoder=_ENCODER.encode,
            decoder=json.loads,
            schema="pg_catalog",
        )


async def _keep_session(connection: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's own, which rolls
    back a transaction left open and drops the listener callbacks.

    asyncpg's default adds a round trip per release (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`): 262 → 87 µs per pooled query without it. Nothing leaves session
    state on a pooled connection: settings are `SET LOCAL` (within a transaction), there is
    no cursor WITH HOLD, advisory locks are transaction-scoped but the migrator's, which it
    releases, and the listener unlistens its channels
    (tests/integration/foundation/test_pool_session.py)."""


# Every session: no JIT. The engine's statements touch a few hundred rows each, but once
# autovacuum has analyzed a big run (1.8 M recipients), the prepared claim's generic plan is
# estimated at ~750,000 (a LIMIT of unknown size), over `jit_above_cost` and the inline and
# optimize thresholds: every claim then spent ~300 ms compiling (auto_explain: "JIT ...
# Optimization 240 ms, Emission 116 ms") and a 1,000/s run fell to 280/s (docs/bench.md).
# Every commit durable, whatever the server's default: the engine's guarantees stand on a
# commit that was acknowledged (a claim before its call, an outcome before the recorder
# forgets it). With `synchronous_commit = off`, a crash of the server forgets the last
# acknowledged commits: an outcome write lost that way left its recipients pending and
# claimed by a live holder, and the run never finished (docs/configuration.md).
SERVER_SETTINGS = {"jit": "off", "synchronous_commit": "on"}


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> Pool:
    """A pool whose connections decode json/jsonb to Python objects, with JIT off and every
    commit durable."""
    try:
        pool: Pool = await asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, init=_init_connection,
            reset=_keep_session, command_timeout=60, server_settings=SERVER_SETTINGS,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseError(f"cannot connect to {redact_url(dsn)}: {exc}") from None
    register(pool)  # a connection broken mid-operation makes it replace its connections
    return pool


@asynccontextmanager
async def open_database(config: Config, *, max_size: int | None = None) -> AsyncIterator[Pool]:
    """The pool for `config`: `database.url`, or the embedded server under `state_dir`."""
    embedded: EmbeddedPostgres | None = None
    if config.database.url is not None:
        dsn = config.database.url.get_secret_value()
        log.info("database.opening", url=config.database.display_url)
    else:
        embedded = await EmbeddedPostgres.start(Path(config.state_dir))
        dsn = embedded.uri()
        log.info("database.opening", embedded=str(embedded.pgdata))
    try:
        pool = await create_pool(dsn, max_size=max_size or config.database.pool_size)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await embedded.close()

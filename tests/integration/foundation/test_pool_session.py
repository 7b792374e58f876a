"""Pooled connections are not reset by a query on release (daemon/infra/database.py): what the
daemon does on them leaves no session state behind for the next user."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import asyncpg

from daemon.infra import migrate
from daemon.infra.clock import SystemClock
from daemon.infra.database import create_pool
from daemon.store import Pool
from daemon.store.listen import Listener
from tests.conftest import with_database

ROOT = Path(__file__).resolve().parents[3]


async def _each_connection(pool: Pool, query: str) -> list[object]:
    """`query` on every connection of the pool (all acquired at once)."""
    size = pool.get_max_size()
    connections = [await pool.acquire() for _ in range(size)]
    try:
        return [await connection.fetchval(query) for connection in connections]
    finally:
        for connection in connections:
            await pool.release(connection)


async def test_an_open_transaction_is_rolled_back_on_release(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        connection = await pool.acquire()
        transaction = connection.transaction()
        await transaction.start()
        await connection.execute("SET LOCAL statement_timeout = '1234ms'")
        await connection.execute("CREATE TEMP TABLE leftover (n int) ON COMMIT DROP")
        await pool.release(connection)  # never committed: asyncpg rolls it back
        async with pool.acquire() as again:
            assert not again.is_in_transaction()
            assert await again.fetchval("SHOW statement_timeout") == "0"
            assert await again.fetchval("SELECT to_regclass('pg_temp.leftover')") is None
    finally:
        await pool.close()


async def test_the_migrator_leaves_no_advisory_lock(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=2, max_size=2)
    try:
        await migrate.apply(pool)
        held = await _each_connection(
            pool, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                  "AND pid = pg_backend_pid()")
        assert held == [0, 0]
    finally:
        await pool.close()


async def test_the_listener_leaves_no_channel_listened(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        connected = asyncio.Event()
        listener = Listener(pool, SystemClock(), {"campaignd_test": lambda _: None},
                            connected.set)
        task = asyncio.get_running_loop().create_task(listener.run(), name="test.listener")
        async with asyncio.timeout(10):
            await connected.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        async with pool.acquire() as connection:
            assert await connection.fetch("SELECT pg_listening_channels()") == []
    finally:
        await pool.close()


def _statements(path: Path) -> list[str]:
    """The SQL statements of a migration, or the string literals of a module that begin one."""
    text = path.read_text()
    if path.suffix == ".sql":
        text = re.sub(r"--[^\n]*", "", text)
        return [statement.strip() for statement in text.split(";")]
    literals = re.finditer(r"""(?<![\w)\]])["']{1,3}([^"']*)""", text)
    # A literal right after another one continues it (implicit concatenation): not a start.
    return [statement.strip() for match in literals
            if not text[:match.start()].rstrip().endswith(("'", '"'))
            for statement in match.group(1).split(";")]


def test_no_session_level_setting_in_the_sql() -> None:
    """A `SET` without LOCAL (or `set_config(..., false)`) would outlive its query on a pooled
    connection: every setting the daemon makes is transaction-local."""
    sources = [*ROOT.joinpath("daemon").rglob("*.py"), *ROOT.joinpath("migrations").glob("*.sql")]
    session_set = re.compile(r"(?:SET|RESET)\s+(?!LOCAL\b)(?:SESSION\s+)?[a-z_.]+\s*(?:=|TO\b|$)",
                             re.IGNORECASE)
    session_config = re.compile(r"set_config\([^)]*,\s*false\s*\)", re.IGNORECASE)
    found = [f"{path.relative_to(ROOT)}: {statement[:60]}"
             for path in sources for statement in _statements(path)
             if session_set.match(statement) or session_config.search(statement)]
    assert found == []


def test_session_advisory_locks_only_in_the_migrator() -> None:
    """A session-level advisory lock outlives its transaction on a pooled connection: only the
    migrator takes one (and unlocks it, tested above); others use `pg_advisory_xact_lock`."""
    session_lock = re.compile(r"pg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE)
    sources = [*ROOT.joinpath("daemon").rglob("*.py"), *ROOT.joinpath("migrations").glob("*.sql")]
    found = [str(path.relative_to(ROOT)) for path in sources
             if session_lock.search(path.read_text())]
    assert found == ["daemon/infra/migrate.py"]


async def test_a_connection_left_mid_operation_makes_the_pool_replace_its_connections(
    database_url: str,
) -> None:
    # The soak's engine death: after a PostgreSQL restart one pooled connection answered
    # every statement with InternalClientError, and the pool kept handing it out.
    import asyncpg

    from daemon.store import after_error

    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        assert await pool.fetchval("SELECT pg_backend_pid()") == before  # kept: one connection
        after_error(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
        assert await pool.fetchval("SELECT pg_backend_pid()") == before  # closed ones go anyway
        after_error(asyncpg.InternalClientError("another operation (2) is in progress"))
        assert await pool.fetchval("SELECT pg_backend_pid()") != before  # replaced
    finally:
        await pool.close()


async def test_no_statement_of_the_daemon_is_jit_compiled(database_url: str) -> None:
    """JIT is off on every pooled session: a big run's prepared claim, once analyzed, was
    planned over the JIT thresholds and spent ~300 ms compiling per claim (a 1,000/s run
    fell to 280/s). Here the thresholds are lowered to 0 so that any JIT would show."""
    pool = await create_pool(database_url, min_size=2, max_size=2)
    try:
        assert await _each_connection(pool, "SHOW jit") == ["off", "off"]
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute("SET LOCAL jit_above_cost = 0")
            plan = await connection.fetchval(
                "EXPLAIN (ANALYZE, FORMAT JSON) SELECT sum(g) FROM generate_series(1, 1000) g")
        assert "JIT" not in plan[0]
    finally:
        await pool.close()


async def test_every_commit_of_the_daemon_is_durable_on_a_server_set_to_commit_async(
        database_url: str) -> None:
    """`synchronous_commit` is on for the daemon's sessions even where the server's or the
    database's default is off. A crash of such a server forgets commits it acknowledged:
    an outcome write the recorder had dropped from its buffer, leaving its recipients
    pending and claimed by a live holder, the run never finishing (the fault suite's
    immediate restart, on a cluster set to `synchronous_commit=off`, hung that way)."""
    name = f"async_commit_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        url = with_database(database_url, name)  # keeps ?host=/socket (the embedded server)
        plain = await asyncpg.connect(url)
        try:
            assert await plain.fetchval("SHOW synchronous_commit") == "off"  # the default
        finally:
            await plain.close()
        pool = await create_pool(url, min_size=2, max_size=2)
        try:
            assert await _each_connection(pool, "SHOW synchronous_commit") == ["on", "on"]
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

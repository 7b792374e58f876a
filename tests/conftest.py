"""Shared fixtures: a fresh, migrated PostgreSQL database per test.

The server is `TEST_DATABASE_URL` when set, else one embedded server (pgserver)
per test session. A template database is migrated once; each test gets
`CREATE DATABASE ... TEMPLATE` (fast) and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from daemon.infra import migrate
from daemon.infra.database import create_pool
from daemon.store import Pool

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` (keeps host, user and query such as ?host=/socket)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server URL with rights to create databases."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    from pgserver import get_server  # type: ignore[attr-defined]

    folder = Path(tempfile.mkdtemp(prefix="campaignd-test-pg-"))
    server = get_server(folder / "pg", cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres"))
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def template_name(server_url: str) -> Iterator[str]:
    """A migrated template database, created once per session."""
    name = f"campaignd_tpl_{uuid.uuid4().hex[:10]}"

    async def build() -> None:
        await _admin(server_url, f'CREATE DATABASE "{name}"')
        pool = await create_pool(with_database(server_url, name), max_size=2)
        try:
            await migrate.apply(pool)
        finally:
            await pool.close()

    asyncio.run(build())
    yield name
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _fresh(server_url: str, template: str) -> str:
    name = f"campaignd_t_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


@pytest.fixture
async def database_url(server_url: str, template_name: str) -> AsyncIterator[str]:
    """The URL of a fresh, migrated database, dropped after the test."""
    name = await _fresh(server_url, template_name)
    yield with_database(server_url, name)
    await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_database_url(server_url: str) -> AsyncIterator[str]:
    """The URL of a fresh database with no schema at all."""
    name = f"campaignd_e_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    yield with_database(server_url, name)
    await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    """An asyncpg pool (json/jsonb decoded) on a fresh, migrated database."""
    pool = await create_pool(database_url, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()

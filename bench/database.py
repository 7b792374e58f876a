"""The bench's own PostgreSQL database: created per bench run, dropped afterwards.

The server is, in order: `--database-url` / `BENCH_DATABASE_URL`, the machine's
PostgreSQL at postgresql://postgres@127.0.0.1:5432/postgres if it answers, else an
embedded server (pgserver) in a temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

MACHINE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class BenchDatabase:
    url: str                 # the bench's own database
    server: str              # "given", "machine" or "embedded"
    postmaster_pid: int | None


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` (host, user and query kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _reachable(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await connection.close()
    return True


async def _admin(url: str, statement: str) -> Any:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def _server(given: str | None) -> AsyncIterator[tuple[str, str]]:
    if given:
        yield given, "given"
        return
    if await _reachable(MACHINE_URL):
        yield MACHINE_URL, "machine"
        return
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    from pgserver import get_server

    folder = Path(tempfile.mkdtemp(prefix="campaignd-bench-pg-"))
    print(f"bench: no PostgreSQL at {MACHINE_URL}; starting an embedded one in {folder}",
          file=sys.stderr)
    server = await asyncio.to_thread(get_server, folder / "pg", cleanup_mode="delete")
    try:
        yield str(server.get_uri("postgres")), "embedded"
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def bench_database(given: str | None = None) -> AsyncIterator[BenchDatabase]:
    """A fresh, empty database (the daemon migrates it), dropped on exit."""
    given = given or os.environ.get("BENCH_DATABASE_URL")
    async with _server(given) as (server_url, kind):
        name = f"campaignd_bench_{uuid.uuid4().hex[:12]}"
        await _admin(server_url, f'CREATE DATABASE "{name}"')
        try:
            yield BenchDatabase(
                url=with_database(server_url, name),
                server=kind,
                postmaster_pid=await _postmaster_pid(server_url),
            )
        finally:
            await _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _postmaster_pid(url: str) -> int | None:
    """The postmaster's pid, if that server runs on this machine (for its CPU time)."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        backend = int(await connection.fetchval("SELECT pg_backend_pid()"))
        try:
            parent = psutil.Process(backend).parent()
        except psutil.Error:
            return None
        if parent is None or "postgres" not in parent.name():
            return None
        return int(parent.pid)
    finally:
        await connection.close()

"""The embedded PostgreSQL default: a server under `<state_dir>/pg`, via `pgserver`.

Started on first use and reused across restarts (the data persists). A
`kill -9` may leave the server running or a stale pid file behind: pgserver
reuses a running server and replaces a dead one's pid file; we also drop the
handles of dead processes so that the last live handle still stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import asyncpg

from daemon.errors import DatabaseError

DATABASE_NAME = "campaignd"


def _forget_dead_handles(pgdata: Path) -> None:
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """A handle on the embedded server; `close()` releases it (the last handle stops it)."""

    def __init__(self, server: Any, pgdata: Path) -> None:
        self._server = server
        self.pgdata = pgdata

    @classmethod
    async def start(cls, state_dir: Path) -> EmbeddedPostgres:
        pgdata = state_dir / "pg"
        try:
            server = await asyncio.to_thread(_get_server, state_dir, pgdata)
        except Exception as exc:  # pgserver raises assorted errors; one clear message here
            raise DatabaseError(f"cannot start the embedded PostgreSQL in {pgdata}: {exc}") from exc
        embedded = cls(server, pgdata)
        await embedded._ensure_database()
        return embedded

    def uri(self, database: str = DATABASE_NAME) -> str:
        return str(self._server.get_uri(database))

    async def _ensure_database(self) -> None:
        connection = await asyncpg.connect(self.uri("postgres"))
        try:
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE_NAME
            )
            if not exists:
                # Another process may create it between our check and our CREATE.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await connection.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        finally:
            await connection.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._server.cleanup)


def _get_server(state_dir: Path, pgdata: Path) -> Any:
    # Imported here: it is slow to import and only the embedded default needs it.
    from pgserver import get_server  # type: ignore[attr-defined]

    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _forget_dead_handles(pgdata)
    return get_server(pgdata, cleanup_mode="stop")

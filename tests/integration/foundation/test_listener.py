"""The listener when the server ends its connection: it says why and listens again."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from daemon.infra.clock import SystemClock
from daemon.infra.database import create_pool
from daemon.store import listen
from daemon.store.listen import Listener


async def test_a_terminated_connection_is_logged_as_such_and_listened_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listen, "HEALTH_CHECK_EVERY", 0.05)
    monkeypatch.setattr(listen, "RECONNECT_FIRST", 0.05)
    pool = await create_pool(database_url, min_size=1, max_size=3)
    connected = asyncio.Event()
    connects: list[int] = []

    def on_connect() -> None:
        connects.append(1)
        connected.set()

    listener = Listener(pool, SystemClock(), {"campaignd_test": lambda _: None}, on_connect)
    try:
        with capture_logs() as logs:
            task = asyncio.create_task(listener.run())
            async with asyncio.timeout(10):
                await connected.wait()
                connected.clear()
                await pool.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')")
                await connected.wait()  # listening again
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await pool.close()
    lost = [e for e in logs if e["event"] == "listener.disconnected"]
    assert len(connects) == 2 and lost
    # The reason, not asyncpg's complaint about a proxy already handed back to the pool.
    assert all("released back to the pool" not in e["error"] for e in lost), lost

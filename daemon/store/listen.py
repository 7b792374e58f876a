"""LISTEN on PostgreSQL channels from one held connection, reconnecting when it drops.

A dropped connection loses the notifications sent meanwhile, so `on_connect` is called
after every (re)connection: the engine then re-reads what it would have been told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from daemon.infra.clock import Clock
from daemon.infra.logs import get_logger
from daemon.store import DATABASE_ERRORS, Pool, after_error

log = get_logger(__name__)

HEALTH_CHECK_EVERY = 5.0
RECONNECT_FIRST = 0.2
RECONNECT_MAX = 10.0


class Listener:
    """Calls `handlers[channel](payload)` for each notification on those channels."""

    def __init__(self, pool: Pool, clock: Clock, handlers: Mapping[str, Callable[[str], None]],
                 on_connect: Callable[[], None]) -> None:
        self._pool = pool
        self._clock = clock
        self._handlers = dict(handlers)
        self._on_connect = on_connect

    def _dispatch(self, _connection: Any, _pid: int, channel: str, payload: object) -> None:
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(str(payload))

    async def run(self) -> None:
        """Listen until cancelled."""
        delay = RECONNECT_FIRST
        while True:
            try:
                await self._session()
            except DATABASE_ERRORS as exc:
                after_error(exc)
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a stop, not a lost link
                    raise asyncio.CancelledError from exc
                log.warning("listener.disconnected", error=str(exc), retry_in=round(delay, 2))
            await self._clock.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)

    async def _session(self) -> None:
        async with self._pool.acquire() as connection:
            lost = asyncio.Event()

            def terminated(_: Any) -> None:
                lost.set()

            connection.add_termination_listener(terminated)
            try:
                for channel in self._handlers:
                    await connection.add_listener(channel, self._dispatch)
                self._on_connect()
                while not lost.is_set():
                    await self._clock.sleep(HEALTH_CHECK_EVERY)
                    if lost.is_set():
                        break
                    try:
                        await connection.execute("SELECT 1")  # raises when the link is gone
                    except asyncpg.InterfaceError as exc:
                        # Closed by the server's end, the connection was already handed
                        # back to the pool (its proxy refuses every call): that is the news.
                        if "released back to the pool" not in str(exc):
                            raise
                        break
                raise ConnectionResetError("the server closed the listening connection")
            finally:
                with contextlib.suppress(asyncpg.InterfaceError):
                    connection.remove_termination_listener(terminated)
                # A connection the server's end closed was already handed back to the pool:
                # its proxy then raises InterfaceError on any call, is_closed() included
                # (logged as the reason of the reconnection before; nothing is left to undo).
                with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresError,
                                         OSError):
                    if not connection.is_closed():
                        for channel in self._handlers:
                            await connection.remove_listener(channel, self._dispatch)

"""Per-installation secrets (`installation_secrets`): created once, then only read."""

from __future__ import annotations

from daemon.store import Executor

_SELECT = "SELECT value FROM installation_secrets WHERE name = $1"
_INSERT = (
    "INSERT INTO installation_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
)


async def get_or_create(executor: Executor, name: str, candidate: bytes) -> bytes:
    """The secret `name`; if there is none yet, `candidate` becomes it.

    Race-safe across daemons: the INSERT of the loser does nothing, and the
    SELECT that follows (its own statement, so its own snapshot under READ
    COMMITTED) sees the winner's value.
    """
    value = await executor.fetchval(_SELECT, name)
    if value is None:
        await executor.execute(_INSERT, name, candidate)
        value = await executor.fetchval(_SELECT, name)
    return bytes(value)

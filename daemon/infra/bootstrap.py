"""First start: with no active API token, create an admin token and write it to a 0600 file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from daemon.infra.logs import get_logger
from daemon.models import TokenScope
from daemon.store import Executor, tokens

log = get_logger(__name__)

ADMIN_TOKEN_FILE = "admin-token"


def admin_token_path(state_dir: Path) -> Path:
    return state_dir / ADMIN_TOKEN_FILE


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)  # the umask may have cleared bits; never wider than 0600 either way
    os.replace(tmp, path)


async def ensure_admin_token(db: Executor, state_dir: Path) -> Path | None:
    """Create and store an admin token if none is active; returns the file written, if any."""
    if await tokens.count_active(db) > 0:
        return None
    existing = {info.name for info in await tokens.list_all(db)}
    name = "admin"
    suffix = 2
    while name in existing:
        name = f"admin-{suffix}"
        suffix += 1
    try:
        token = await tokens.create(db, name, TokenScope.ADMIN)
    except tokens.TokenNameTaken:
        return None  # another daemon starting at the same moment bootstrapped it
    path = admin_token_path(state_dir)
    await asyncio.to_thread(_write_private, path, token + "\n")
    log.info("token.bootstrapped", name=name, path=str(path))
    return path

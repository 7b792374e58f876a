"""API tokens: stored as sha256 hashes with a scope; revocable."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from daemon.models import TokenScope
from daemon.store import Executor

TOKEN_PREFIX = "cmpd_"


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    scope: TokenScope
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenNameTaken(Exception):
    """A token with this name exists already."""


def new_token() -> str:
    """A fresh random token (the only time it exists in clear)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough (no dictionary to guess from).
    return hashlib.sha256(token.encode()).hexdigest()


async def create(db: Executor, name: str, scope: TokenScope) -> str:
    """Store a new token named `name`; returns it in clear."""
    token = new_token()
    try:
        await db.execute(
            "INSERT INTO api_tokens (name, scope, token_hash) VALUES ($1, $2, $3)",
            name, scope.value, hash_token(token),
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "api_tokens_name_key":
            raise TokenNameTaken(name) from None
        raise
    return token


async def count_active(db: Executor) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL")
    return count


async def list_all(db: Executor) -> list[TokenInfo]:
    rows = await db.fetch(
        "SELECT name, scope, created_at, revoked_at, last_used_at FROM api_tokens ORDER BY id"
    )
    return [
        TokenInfo(r["name"], TokenScope(r["scope"]), r["created_at"], r["revoked_at"],
                  r["last_used_at"])
        for r in rows
    ]


async def revoke(db: Executor, name: str) -> bool:
    """Revoke the token named `name`; False if there is no such active token."""
    result: str = await db.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return result.endswith(" 1")


# `last_used_at` is written at most once a minute per token, whatever the traffic: the
# lookup (once per token cache entry, see api.auth) updates the row only when the time it
# holds is older than that, so a busy token costs one row version a minute.
LAST_USED_RESOLUTION_SECONDS = 60.0
_SCOPE_OF = """
    WITH token AS (
        SELECT id, scope, last_used_at FROM api_tokens
        WHERE token_hash = $1 AND revoked_at IS NULL
    ),
    touched AS (
        UPDATE api_tokens a SET last_used_at = $2::timestamptz
        FROM token t
        WHERE a.id = t.id
          AND (t.last_used_at IS NULL
               OR t.last_used_at < $2::timestamptz - make_interval(secs => $3::float8))
        RETURNING a.id
    )
    SELECT scope, (SELECT count(*) FROM touched) AS touched FROM token
"""


async def scope_of(db: Executor, token: str, now: datetime) -> TokenScope | None:
    """The scope of an active token, or None when it is unknown or revoked; records that
    it was used at `now` (to the minute)."""
    row = await db.fetchrow(_SCOPE_OF, hash_token(token), now, LAST_USED_RESOLUTION_SECONDS)
    return TokenScope(row["scope"]) if row else None

"""Profile writes that come from delivery: dead push tokens and one-click unsubscribes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from daemon.models import Channel
from daemon.store import Executor
from daemon.store.suppressions import addresses_sql

# One statement for a whole batch: group the dead tokens by profile, then rewrite
# each affected profile's array without them (order of the others kept).
_REMOVE_TOKENS = """
WITH dead AS (
    SELECT profile_id, array_agg(token) AS tokens
    FROM unnest($1::text[], $2::text[]) AS d(profile_id, token)
    GROUP BY profile_id
)
UPDATE profiles AS p
SET push_tokens = ARRAY(
        SELECT t.token
        FROM unnest(p.push_tokens) WITH ORDINALITY AS t(token, position)
        WHERE t.token <> ALL (dead.tokens)
        ORDER BY t.position
    ),
    updated_at = now()
FROM dead
WHERE p.id = dead.profile_id AND p.push_tokens && dead.tokens
"""

# Fixed statements per channel: the column name never comes from input. A profile
# already unsubscribed is not rewritten (idempotent, no updated_at churn). The address is
# suppressed too (store.suppressions): the one the link names ($2, when it names one), and
# the profile's current ones; so the opt-out holds for an erased profile and for the
# profile created again with that address.
def _unsubscribe(channel: Channel) -> str:
    column = f"sub_{channel.value}"
    return f"""
        WITH changed AS (
            UPDATE profiles SET {column} = false, updated_at = now()
            WHERE id = $1 AND {column} RETURNING id
        ),
        profile AS (SELECT email, phone, push_tokens FROM profiles WHERE id = $1),
        suppressed AS (
            INSERT INTO suppressions (channel, address_sha256)
            SELECT '{channel.value}', d
            FROM (SELECT $2::bytea AS d UNION {addresses_sql(channel, "profile")}) a
            WHERE d IS NOT NULL
            ON CONFLICT DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM changed) AS changed,
               (SELECT count(*) FROM suppressed) AS suppressed
    """


_UNSUBSCRIBE = {channel: _unsubscribe(channel) for channel in Channel}


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    changed: bool  # the profile was subscribed (False: already off, or no such profile)
    suppressed: int  # addresses newly suppressed


async def remove_push_tokens(executor: Executor, dead: Iterable[tuple[str, str]]) -> int:
    """Remove each (profile_id, token) from its profile; returns the profiles changed."""
    profile_ids: list[str] = []
    tokens: list[str] = []
    for profile_id, token in dead:
        profile_ids.append(profile_id)
        tokens.append(token)
    if not profile_ids:
        return 0
    status: str = await executor.execute(_REMOVE_TOKENS, profile_ids, tokens)
    return int(status.rsplit(" ", 1)[-1])


async def unsubscribe(executor: Executor, profile_id: str, channel: Channel,
                      address_sha256: bytes | None = None) -> Unsubscribed:
    """Turn `channel` off for the profile, and suppress its addresses on the channel (and
    `address_sha256`, the one the link was sent to, when known)."""
    row = await executor.fetchrow(_UNSUBSCRIBE[channel], profile_id, address_sha256)
    if row is None:  # pragma: no cover - a SELECT without FROM returns its row
        return Unsubscribed(False, 0)
    return Unsubscribed(bool(row["changed"]), int(row["suppressed"]))

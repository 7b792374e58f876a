"""Profile writes that come from delivery: dead push tokens and one-click unsubscribes."""

from __future__ import annotations

from collections.abc import Iterable

from daemon.models import Channel
from daemon.store import Executor

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
# already unsubscribed is not rewritten (idempotent, no updated_at churn).
_UNSUBSCRIBE = {
    Channel.EMAIL: "UPDATE profiles SET sub_email = false, updated_at = now() "
    "WHERE id = $1 AND sub_email",
    Channel.SMS: "UPDATE profiles SET sub_sms = false, updated_at = now() "
    "WHERE id = $1 AND sub_sms",
    Channel.PUSH: "UPDATE profiles SET sub_push = false, updated_at = now() "
    "WHERE id = $1 AND sub_push",
}


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


async def unsubscribe(executor: Executor, profile_id: str, channel: Channel) -> bool:
    """Turn `channel` off for the profile; True if this changed it (False: already off,
    or no such profile)."""
    status: str = await executor.execute(_UNSUBSCRIBE[channel], profile_id)
    return status != "UPDATE 0"

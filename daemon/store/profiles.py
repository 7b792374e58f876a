"""Profiles: upsert, read, erase, and bulk imports through a COPY-loaded staging table."""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from daemon.models import Channel
from daemon.store import Connection, Executor, Record
from daemon.store.audiences import BULK_TIMEOUT, BULK_WORK_MEM
from daemon.store.suppressions import addresses_sql, suppressed_sql

_COLUMNS = (
    "id, email, phone, push_tokens, attributes, sub_email, sub_sms, sub_push, created_at, "
    "updated_at"
)

# Which fields an import line gave (bits of `profile_import.given`).
GIVEN_EMAIL, GIVEN_PHONE, GIVEN_PUSH_TOKENS, GIVEN_ATTRIBUTES = 1, 2, 4, 8


def _new_subscription(channel: Channel, given: str, address: str) -> str:
    """SQL: a new profile's subscription to `channel`: as given, else on unless the address
    is suppressed."""
    return f"coalesce({given}, NOT {suppressed_sql(channel, address)})"


@dataclass(frozen=True, slots=True)
class ProfileData:
    email: str | None
    phone: str | None
    push_tokens: list[str]
    attributes: dict[str, Any]
    # None: keep the stored value (a new profile is subscribed, unless its address is
    # suppressed: see store.suppressions).
    sub_email: bool | None
    sub_sms: bool | None
    sub_push: bool | None


async def upsert(
    db: Executor, profile_id: str, data: ProfileData, now: datetime
) -> tuple[Record, bool]:
    """Create or replace the profile (subscriptions given as None are kept); (row, created)."""
    row: Record = await db.fetchrow(
        f"""
        INSERT INTO profiles AS p (id, email, phone, push_tokens, attributes,
                                   sub_email, sub_sms, sub_push, created_at, updated_at)
        VALUES ($1, $2, $3, $4, $5, {_new_subscription(Channel.EMAIL, "$6", "$2::text")},
                {_new_subscription(Channel.SMS, "$7", "$3::text")},
                {_new_subscription(Channel.PUSH, "$8", "$4::text[]")}, $9, $9)
        ON CONFLICT (id) DO UPDATE SET
            email = EXCLUDED.email, phone = EXCLUDED.phone, push_tokens = EXCLUDED.push_tokens,
            attributes = EXCLUDED.attributes,
            sub_email = coalesce($6, p.sub_email), sub_sms = coalesce($7, p.sub_sms),
            sub_push = coalesce($8, p.sub_push), updated_at = $9
        RETURNING {_COLUMNS}, (xmax = 0) AS created
        """,
        profile_id, data.email, data.phone, data.push_tokens, data.attributes,
        data.sub_email, data.sub_sms, data.sub_push, now,
    )
    return row, bool(row["created"])


async def get(db: Executor, profile_id: str) -> Record | None:
    row: Record | None = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM profiles WHERE id = $1", profile_id
    )
    return row


# An erased profile's opt-outs stay, as suppressions of its addresses.
_ERASE = f"""
    WITH gone AS (
        DELETE FROM profiles WHERE id = $1
        RETURNING email, phone, push_tokens, sub_email, sub_sms, sub_push
    ),
    kept AS (
        INSERT INTO suppressions (channel, address_sha256)
        SELECT 'email', d FROM ({addresses_sql(Channel.EMAIL, "gone")} AND NOT gone.sub_email) e
        UNION ALL
        SELECT 'sms', d FROM ({addresses_sql(Channel.SMS, "gone")} AND NOT gone.sub_sms) s
        UNION ALL
        SELECT 'push', d FROM ({addresses_sql(Channel.PUSH, "gone")} WHERE NOT gone.sub_push) p
        ON CONFLICT DO NOTHING
    )
    SELECT count(*) FROM gone
"""


async def delete(db: Executor, profile_id: str) -> bool:
    """Erase the profile and its audience memberships (a trigger deletes them); the
    channels it was unsubscribed from stay suppressed for its addresses."""
    erased: int = await db.fetchval(_ERASE, profile_id)
    return erased == 1


# -- bulk import -------------------------------------------------------------------------------

IMPORT_COLUMNS = ("line", "id", "email", "phone", "push_tokens", "attributes", "sub_email",
                  "sub_sms", "sub_push", "given")


async def create_import_table(conn: Connection) -> None:
    """The staging table of one import (dropped at commit), and memory enough for the
    import's sorts and hashes to stay off disk (this transaction only)."""
    await conn.execute(f"SET LOCAL work_mem = '{BULK_WORK_MEM}'")
    await conn.execute(
        """
        CREATE TEMP TABLE profile_import (
            line bigint, id text, email text, phone text, push_tokens text[], attributes text,
            sub_email boolean, sub_sms boolean, sub_push boolean, given integer
        ) ON COMMIT DROP
        """
    )


async def copy_import_rows(conn: Connection, rows: AsyncIterable[tuple[Any, ...]]) -> None:
    """Stream rows (IMPORT_COLUMNS order) into the staging table with one binary COPY.
    `attributes` travel as JSON text (cast in the merge): the pool's jsonb codec is a text
    one, which binary COPY cannot use."""
    await conn.copy_records_to_table("profile_import", records=rows, columns=IMPORT_COLUMNS,
                                     timeout=BULK_TIMEOUT)


@dataclass(frozen=True, slots=True)
class Merged:
    created: int
    updated: int
    profiles: int  # distinct ids staged: created + updated unless a concurrent write raced
    source: str    # the staged profiles, one row per id (_UNFOLDED or _FOLDED)


# The staged profiles, one row per id, as the merge reads them: the staging table itself
# when no id is on two lines (the usual import), else the lines folded (the last one wins,
# the first one gives the audience order).
_UNFOLDED = """(SELECT id, email, phone, push_tokens, attributes::jsonb AS attributes, sub_email,
                  sub_sms, sub_push, given, line AS first_line FROM profile_import)"""
_FOLDED = "profile_latest"


# The merge and the membership statements, reading `{source}` (_UNFOLDED or _FOLDED) as l.
_MERGE_UPDATE = f"""
    UPDATE profiles p SET
        email = CASE WHEN l.given & {GIVEN_EMAIL} <> 0 THEN l.email ELSE p.email END,
        phone = CASE WHEN l.given & {GIVEN_PHONE} <> 0 THEN l.phone ELSE p.phone END,
        push_tokens = CASE WHEN l.given & {GIVEN_PUSH_TOKENS} <> 0
                           THEN coalesce(l.push_tokens, '{{}}') ELSE p.push_tokens END,
        attributes = CASE WHEN l.given & {GIVEN_ATTRIBUTES} <> 0
                          THEN p.attributes || coalesce(l.attributes, '{{}}')
                          ELSE p.attributes END,
        sub_email = coalesce(l.sub_email, p.sub_email),
        sub_sms = coalesce(l.sub_sms, p.sub_sms),
        sub_push = coalesce(l.sub_push, p.sub_push),
        updated_at = $1
    FROM {{source}} l
    WHERE p.id = l.id
"""
_MERGE_INSERT = f"""
    INSERT INTO profiles (id, email, phone, push_tokens, attributes, sub_email, sub_sms,
                          sub_push, created_at, updated_at)
    SELECT l.id, l.email, l.phone, coalesce(l.push_tokens, '{{}}'),
           coalesce(l.attributes, '{{}}'),
           {_new_subscription(Channel.EMAIL, "l.sub_email", "l.email")},
           {_new_subscription(Channel.SMS, "l.sub_sms", "l.phone")},
           {_new_subscription(Channel.PUSH, "l.sub_push", "l.push_tokens")}, $1, $1
    FROM {{source}} l
    WHERE NOT EXISTS (SELECT 1 FROM profiles p WHERE p.id = l.id)
"""
_ADD_MEMBERS = """
    INSERT INTO audience_members (audience_id, profile_id)
    SELECT $1, l.id FROM {source} l
    WHERE NOT EXISTS (SELECT 1 FROM audience_members m
                      WHERE m.audience_id = $1 AND m.profile_id = l.id)
    ORDER BY l.first_line
"""


async def merge_import(conn: Connection, now: datetime) -> Merged:
    """Apply the staged lines (the last line of an id wins): fields given replace the stored
    ones, attributes merge key by key, absent fields are kept.

    Ids on several lines are folded once into `profile_latest` (one sort, in memory);
    staging tables are analysed so that the joins are hash joins, not a million index
    probes. When created + updated == profiles, every staged profile is either new in this
    transaction or row-locked by its UPDATE, so no erasure can remove it before commit
    (memberships rely on that; they have no foreign key). Otherwise a concurrent write
    raced the import: the caller gives up. The INSERT is a plain one (ON CONFLICT doubles
    its cost): a profile created meanwhile by another transaction raises
    UniqueViolationError, for the caller to give up as well."""
    await conn.execute("ANALYZE profile_import", timeout=BULK_TIMEOUT)
    # Sorting by bytes (ids are ASCII): 5x cheaper than by the database's collation.
    counts: Record = await conn.fetchrow(
        'SELECT count(*) AS lines, count(DISTINCT id COLLATE "C") AS ids FROM profile_import',
        timeout=BULK_TIMEOUT,
    )
    source = _UNFOLDED
    if counts["ids"] < counts["lines"]:
        source = _FOLDED
        await conn.execute(
            f"""
            CREATE TEMP TABLE {_FOLDED} ON COMMIT DROP AS
            SELECT DISTINCT ON (id COLLATE "C") id, email, phone, push_tokens,
                   attributes::jsonb AS attributes, sub_email, sub_sms, sub_push, given,
                   min(line) OVER (PARTITION BY id COLLATE "C" ORDER BY line DESC ROWS
                                   BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
                       AS first_line
            FROM profile_import ORDER BY id COLLATE "C", line DESC
            """,
            timeout=BULK_TIMEOUT,
        )
        await conn.execute(f"ANALYZE {_FOLDED}", timeout=BULK_TIMEOUT)
    updated = await conn.execute(_MERGE_UPDATE.replace("{source}", source), now,
                                 timeout=BULK_TIMEOUT)
    created = await conn.execute(_MERGE_INSERT.replace("{source}", source), now,
                                 timeout=BULK_TIMEOUT)
    return Merged(_count(created), _count(updated), counts["ids"], source)


async def add_imported_to_audience(conn: Connection, audience_id: str, merged: Merged) -> int:
    """Add the staged profiles that are not members yet, in the order of their first line
    (after `merge_import`, whose row locks stand in for a foreign key, and
    `audiences.hold`, which keeps other transactions from adding members meanwhile)."""
    result = await conn.execute(_ADD_MEMBERS.replace("{source}", merged.source), audience_id,
                                timeout=BULK_TIMEOUT)
    return _count(result)


def _count(status: str) -> int:
    """The row count of a command tag such as `INSERT 0 42` or `UPDATE 42`."""
    return int(status.rsplit(" ", 1)[-1])

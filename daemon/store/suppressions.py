"""Suppressions by address: an opt-out that outlives the profile it came from.

A one-click unsubscribe, and the erasure of a profile unsubscribed from a channel, leave
the sha256 of the channel's address (`suppressions`): a profile created again with that
address starts unsubscribed from the channel, so its sends are excluded (`opted_out`).
Only a digest is kept, so an erasure leaves no address in clear. Addresses are
normalised the same way here (in SQL) and in `address_digest` (in Python, for the
unsubscribe links): an email's ASCII letters in lower case (locale-independent), a phone
number or push token as it is.
"""

from __future__ import annotations

import hashlib

from daemon.models import Channel

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASCII_LOWER = str.maketrans(_UPPER, _UPPER.lower())


def address_digest(channel: Channel, address: str) -> bytes:
    """The suppression key of `address` on `channel`."""
    normal = address.translate(_ASCII_LOWER) if channel is Channel.EMAIL else address
    return hashlib.sha256(normal.encode("utf-8")).digest()


def digest_sql(channel: Channel, expression: str) -> str:
    """SQL for the digest of the address `expression` (a column or parameter) holds."""
    if channel is Channel.EMAIL:
        # In the "C" collation, lower() maps A-Z only, whatever the database's locale (as
        # `address_digest` does); and it is ~5x cheaper than translate().
        expression = f'lower(({expression}) COLLATE "C")'
    return f"sha256(convert_to({expression}, 'UTF8'))"


def suppressed_sql(channel: Channel, address: str) -> str:
    """SQL: the address (a push channel: any of the tokens of the array) is suppressed.

    The digest and the probe cost ~1 µs a row (an import creates ~100,000 profiles/s), so
    they are made only when the channel has any suppression: the uncorrelated EXISTS is
    evaluated once per statement (an InitPlan), and CASE skips the per-row probe."""
    if channel is Channel.PUSH:
        probe = (f"EXISTS (SELECT 1 FROM unnest({address}) AS t(token) JOIN suppressions sup "
                 f"ON sup.channel = 'push' "
                 f"AND sup.address_sha256 = {digest_sql(channel, 't.token')})")
    else:
        probe = (f"EXISTS (SELECT 1 FROM suppressions sup WHERE sup.channel = '{channel.value}' "
                 f"AND sup.address_sha256 = {digest_sql(channel, address)})")
    return (f"CASE WHEN EXISTS (SELECT 1 FROM suppressions WHERE channel = '{channel.value}') "
            f"THEN {probe} ELSE false END")


def addresses_sql(channel: Channel, row: str) -> str:
    """SQL FROM-less select list source: the digests of `row`'s addresses on `channel`
    (`row` a relation with email, phone, push_tokens), as `SELECT d FROM ...`."""
    if channel is Channel.PUSH:
        return (f"SELECT {digest_sql(channel, 't.token')} AS d "
                f"FROM {row}, unnest({row}.push_tokens) AS t(token)")
    column = "email" if channel is Channel.EMAIL else "phone"
    return (f"SELECT {digest_sql(channel, f'{row}.{column}')} AS d FROM {row} "
            f"WHERE {row}.{column} IS NOT NULL")

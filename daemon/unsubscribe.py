"""One-click unsubscribe links (RFC 8058): signed tokens naming a profile and a channel.

A token is `<payload>.<mac>`, both unpadded base64url: payload = one letter
for the channel followed by the profile id (UTF-8); mac =
HMAC-SHA256 over a domain-separation label and the payload, keyed with the
installation's `unsubscribe_key` (32 random bytes in `installation_secrets`,
created on first use). Tokens do not expire: an unsubscribe link must keep
working for as long as the mail sits in a mailbox. They are not secret about
whom they name (the profile id is readable), only unforgeable.

Links name the address they were sent to, as the digest that suppresses it
(`store.suppressions`): payload = an upper-case letter (`E`, `S`, `P`), the 32-byte digest
in base64url (43 characters), then the profile id. An unsubscribe of a profile erased since
then still suppresses that address. Links of the first form (a lower-case letter `e`, `s`,
`p` and the profile id, no digest) stay valid.

`url_for` is called once per email: one HMAC, one sha256 and three base64 encodings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from daemon.models import Channel
from daemon.store import Executor
from daemon.store import secrets as secret_store
from daemon.store.suppressions import address_digest

KEY_NAME = "unsubscribe_key"
KEY_BYTES = 32
# Long enough for any profile id (128 chars, or a few hundred bytes inline), bounded
# so that a hostile URL costs nothing to refuse.
MAX_TOKEN_CHARS = 1024
_LABEL = b"campaignd/unsubscribe/v1\x00"
_LETTERS = {Channel.EMAIL: "e", Channel.SMS: "s", Channel.PUSH: "p"}
_CHANNELS = {letter: channel for channel, letter in _LETTERS.items()}
_CHANNELS_WITH_DIGEST = {letter.upper(): channel for channel, letter in _LETTERS.items()}
_DIGEST_CHARS = 43  # 32 bytes, unpadded base64url
_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class Target:
    """Who unsubscribes from what."""

    profile_id: str
    channel: Channel
    address_sha256: bytes | None = None  # the suppression key of the address it was sent to


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes | None:
    """The bytes of canonical unpadded base64url `text`, or None."""
    raw_text = text.encode("ascii", errors="replace")
    if not raw_text or not _BASE64URL.issuperset(raw_text):
        return None
    try:
        raw = base64.urlsafe_b64decode(raw_text + b"=" * (-len(raw_text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Refuse non-canonical spellings (unused low bits set): one token per payload.
    return raw if _encode(raw) == text else None


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, _LABEL + payload, hashlib.sha256)


def sign(key: bytes, profile_id: str, channel: Channel, address: str | None = None) -> str:
    """The token for (`profile_id`, `channel`), naming `address` when given."""
    if address is None:
        payload = (_LETTERS[channel] + profile_id).encode("utf-8")
    else:
        digest = _encode(address_digest(channel, address))
        payload = (_LETTERS[channel].upper() + digest + profile_id).encode("utf-8")
    return f"{_encode(payload)}.{_encode(_mac(key, payload))}"


def verify(key: bytes, token: str) -> Target | None:
    """What `token` names, or None if it was not made with `key` (forged, altered, truncated)."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    payload_text, dot, mac_text = token.partition(".")
    if not dot:
        return None
    payload = _decode(payload_text)
    mac = _decode(mac_text)
    if payload is None or mac is None:
        return None
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:  # pragma: no cover - we only sign UTF-8
        return None
    channel = _CHANNELS.get(text[:1])
    if channel is not None:
        return Target(profile_id=text[1:], channel=channel) if len(text) >= 2 else None
    channel = _CHANNELS_WITH_DIGEST.get(text[:1])
    digest = _decode(text[1:1 + _DIGEST_CHARS])
    if channel is None or digest is None or len(digest) != 32 or len(text) < 2 + _DIGEST_CHARS:
        return None
    return Target(profile_id=text[1 + _DIGEST_CHARS:], channel=channel, address_sha256=digest)


def url_for(base_url: str, key: bytes, profile_id: str, channel: Channel,
            address: str | None = None) -> str:
    """`{base_url}/v1/unsubscribe/{token}`: the List-Unsubscribe URL of one message (sent
    to `address`)."""
    token = sign(key, profile_id, channel, address)
    return f"{base_url.rstrip('/')}/v1/unsubscribe/{token}"


async def load_key(executor: Executor) -> bytes:
    """The installation's signing key, created (race-safely) on first use."""
    return await secret_store.get_or_create(executor, KEY_NAME, secrets.token_bytes(KEY_BYTES))

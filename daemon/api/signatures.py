"""Standard Webhooks signatures on triggers (https://www.standardwebhooks.com).

The sender signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 and a
`whsec_` secret, and sends `webhook-signature: v1,<base64> [v1,<base64> ...]`.
Any configured secret may match (rotation); timestamps more than five minutes
away from our clock, either way, are refused (replay protection); the
comparison is constant-time. The `webhook-id` then acts as the idempotency key.

A trigger secret may be bound to campaigns (`{ secret = ..., campaigns = [...] }` in
`auth.webhook_secrets`): the URL is not signed, so without a binding a request signed for
one campaign would verify at any other's URL. `trigger_keys` gives each key its campaigns
and `verify_trigger` which campaigns the matching keys allow.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import SecretStr

from daemon.api.problems import problem
from daemon.errors import Problem
from daemon.infra.config import BoundWebhookSecret
from daemon.infra.webhook_signing import digest, sign, signing_key, signing_keys

__all__ = ["SignedTrigger", "TriggerKey", "is_signed", "sign", "signing_keys", "trigger_keys",
           "verify", "verify_trigger"]

TOLERANCE_SECONDS = 5 * 60
CLAIM_MARGIN_SECONDS = 60
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_ID_LENGTH = 255


def is_signed(headers: Mapping[str, str]) -> bool:
    """The request carries Standard Webhooks headers (and no bearer token)."""
    return any(name in headers for name in HEADERS)


def _refused(detail: str) -> Problem:
    return problem(401, "invalid_signature", detail)


@dataclass(frozen=True, slots=True)
class TriggerKey:
    """A key that signs triggers, and the campaigns it may trigger (None: any)."""

    key: bytes
    campaigns: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class SignedTrigger:
    """A verified request: its `webhook-id`, its timestamp, and what its signers allow."""

    webhook_id: str
    timestamp: int
    campaigns: frozenset[str] | None  # None: any campaign

    def allows(self, campaign_id: str) -> bool:
        return self.campaigns is None or campaign_id in self.campaigns

    @property
    def taken_until(self) -> datetime:
        """How long its webhook-id stays taken: while a request carrying it could still
        verify (its timestamp within the tolerance), plus a margin for several daemons'
        clocks."""
        return (datetime.fromtimestamp(self.timestamp, UTC)
                + timedelta(seconds=TOLERANCE_SECONDS + CLAIM_MARGIN_SECONDS))


def trigger_keys(secrets: Sequence[SecretStr | BoundWebhookSecret]) -> list[TriggerKey]:
    """The keys of `auth.webhook_secrets`, each with the campaigns it is bound to."""
    keys = []
    for secret in secrets:
        if isinstance(secret, BoundWebhookSecret):
            keys.append(TriggerKey(signing_key(secret.secret.get_secret_value()),
                                   frozenset(secret.campaigns)))
        else:
            keys.append(TriggerKey(signing_key(secret.get_secret_value()), None))
    return keys


def _digest(text: str) -> bytes:
    """A signature's bytes (empty when it is not base64: it then matches nothing)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _matches(
    keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now: datetime
) -> tuple[str, int, list[int]]:
    """(webhook-id, timestamp, indices of the keys that signed) of a correctly signed, fresh
    request; else a 401 problem."""
    if not keys:
        raise _refused("signed triggers are not enabled here (auth.webhook_secrets is empty)")
    webhook_id = headers.get("webhook-id", "")
    timestamp_text = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not webhook_id or not timestamp_text or not signatures:
        raise _refused("webhook-id, webhook-timestamp and webhook-signature are all required")
    if len(webhook_id) > MAX_ID_LENGTH or not webhook_id.isprintable():
        raise _refused(f"webhook-id must be 1 to {MAX_ID_LENGTH} printable characters")
    if not timestamp_text.isascii() or not timestamp_text.isdigit() or len(timestamp_text) > 12:
        raise _refused("webhook-timestamp must be whole seconds since the epoch")
    timestamp = int(timestamp_text)
    if abs(now.timestamp() - timestamp) > TOLERANCE_SECONDS:
        raise _refused("webhook-timestamp is more than 5 minutes away from the server's clock")
    given = [_digest(value) for version, _, value in (s.partition(",") for s in signatures.split())
             if version == "v1"]
    matched = []
    for index, key in enumerate(keys):
        expected = digest(key, webhook_id, timestamp, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in given):
            matched.append(index)
    if not matched:
        raise _refused("no webhook-signature matches this body with a configured secret")
    return webhook_id, timestamp, matched


def verify(
    keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now: datetime
) -> str:
    """The `webhook-id` of a correctly signed, fresh request; else a 401 problem."""
    return _matches(keys, headers, body, now)[0]


def verify_trigger(
    keys: Sequence[TriggerKey], headers: Mapping[str, str], body: bytes, now: datetime
) -> SignedTrigger:
    """A correctly signed, fresh trigger, with the campaigns its signing keys allow (the
    union: a secret listed twice, bound and unbound, allows any); else a 401 problem."""
    webhook_id, timestamp, matched = _matches([k.key for k in keys], headers, body, now)
    campaigns: frozenset[str] | None = frozenset()
    for index in matched:
        bound = keys[index].campaigns
        campaigns = None if bound is None or campaigns is None else campaigns | bound
    return SignedTrigger(webhook_id, timestamp, campaigns)

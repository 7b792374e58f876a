"""Standard Webhooks signatures on triggers (https://www.standardwebhooks.com).

The sender signs `{webhook-id}.{webhook-timestamp}.{body}` with HMAC-SHA256 and a
`whsec_` secret, and sends `webhook-signature: v1,<base64> [v1,<base64> ...]`.
Any configured secret may match (rotation); timestamps more than five minutes
away from our clock, either way, are refused (replay protection); the
comparison is constant-time. The `webhook-id` then acts as the idempotency key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime

from daemon.api.problems import problem
from daemon.errors import Problem
from daemon.infra.webhook_signing import digest, sign, signing_keys

__all__ = ["is_signed", "sign", "signing_keys", "verify"]

TOLERANCE_SECONDS = 5 * 60
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_ID_LENGTH = 255


def is_signed(headers: Mapping[str, str]) -> bool:
    """The request carries Standard Webhooks headers (and no bearer token)."""
    return any(name in headers for name in HEADERS)


def _refused(detail: str) -> Problem:
    return problem(401, "invalid_signature", detail)


def _digest(text: str) -> bytes:
    """A signature's bytes (empty when it is not base64: it then matches nothing)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def verify(
    keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now: datetime
) -> str:
    """The `webhook-id` of a correctly signed, fresh request; else a 401 problem."""
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
    for key in keys:
        expected = digest(key, webhook_id, timestamp, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in given):
            return webhook_id
    raise _refused("no webhook-signature matches this body with a configured secret")

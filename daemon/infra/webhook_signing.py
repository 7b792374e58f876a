"""Standard Webhooks signing (https://www.standardwebhooks.com), for every sender and verifier.

A message is signed by HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` with the
key a `whsec_<base64>` secret holds, sent as `webhook-signature: v1,<base64>`. The webhook
provider signs its messages, the notification deliverer its events, and the API verifies
signed triggers and receipts (`daemon/api/signatures.py`) with the same functions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret (validated when the config was loaded)."""
    return base64.b64decode(secret.removeprefix(PREFIX))


def signing_keys(secrets: Sequence[SecretStr]) -> list[bytes]:
    """The HMAC keys of `whsec_` secrets."""
    return [signing_key(secret.get_secret_value()) for secret in secrets]


def digest(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> bytes:
    """The raw HMAC-SHA256 of a message."""
    return hmac.digest(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of a message (what a sender computes)."""
    return "v1," + base64.b64encode(digest(key, webhook_id, timestamp, body)).decode("ascii")


def headers(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a signed message."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, webhook_id, timestamp, body),
    }

"""Standard Webhooks verification, checked against the reference package as the signer."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from standardwebhooks.webhooks import Webhook

from daemon.api import signatures
from daemon.errors import Problem

KEY = b"k" * 32
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BODY = b'{"context": {"promo": "X"}}'


def _headers(when: datetime = NOW, body: bytes = BODY, msg_id: str = "msg_1") -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(msg_id, when, body.decode()),
    }


def test_our_signature_is_the_reference_one() -> None:
    ours = signatures.sign(KEY, "msg_1", int(NOW.timestamp()), BODY)
    assert ours == Webhook(SECRET).sign("msg_1", NOW, BODY.decode())


def test_a_reference_signature_verifies_and_gives_the_webhook_id() -> None:
    keys = signatures.signing_keys([])  # no secret: refused
    with pytest.raises(Problem):
        signatures.verify(keys, _headers(), BODY, NOW)
    keys = signatures.signing_keys([SecretStr("whsec_" + base64.b64encode(b"o" * 32).decode()),
                                    SecretStr(SECRET)])
    assert signatures.verify(keys, _headers(), BODY, NOW) == "msg_1"


@pytest.mark.parametrize(
    ("headers", "body", "now"),
    [
        (_headers(), BODY + b" ", NOW),
        (_headers(), BODY, NOW + timedelta(seconds=301)),
        (_headers(), BODY, NOW - timedelta(seconds=301)),
        ({**_headers(), "webhook-signature": "v2," + _headers()["webhook-signature"][3:]},
         BODY, NOW),
        ({**_headers(), "webhook-signature": "v1,@@@"}, BODY, NOW),
        ({**_headers(), "webhook-id": "x" * 256}, BODY, NOW),
        ({**_headers(), "webhook-timestamp": "-5"}, BODY, NOW),
        ({**_headers(), "webhook-timestamp": "1e9"}, BODY, NOW),
        ({k: v for k, v in _headers().items() if k != "webhook-id"}, BODY, NOW),
    ],
)
def test_refusals_are_401_invalid_signature(
    headers: dict[str, str], body: bytes, now: datetime
) -> None:
    keys = [KEY]
    with pytest.raises(Problem) as info:
        signatures.verify(keys, headers, body, now)
    assert (info.value.status, info.value.code) == (401, "invalid_signature")


def test_tolerance_is_five_minutes_both_ways() -> None:
    for offset in (-300, 300):
        when = NOW + timedelta(seconds=offset)
        assert signatures.verify([KEY], _headers(when), BODY, NOW) == "msg_1"


def test_a_trigger_is_allowed_what_any_key_that_signed_it_allows() -> None:
    other = signatures.TriggerKey(b"o" * 32, None)
    bound = signatures.TriggerKey(KEY, frozenset({"w1", "w2"}))
    signed = signatures.verify_trigger([other, bound], _headers(), BODY, NOW)
    assert (signed.webhook_id, signed.timestamp) == ("msg_1", int(NOW.timestamp()))
    assert signed.allows("w1") and not signed.allows("w3")
    assert signatures.verify_trigger([bound, signatures.TriggerKey(KEY, None)], _headers(),
                                     BODY, NOW).allows("w3")

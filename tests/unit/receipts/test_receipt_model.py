"""Receipt rules without I/O: Twilio's signature, the order of statuses, our key in ids."""

from __future__ import annotations

import itertools

import pytest
from twilio.request_validator import RequestValidator

from daemon.receipts import twilio_signature
from daemon.receipts.model import FINAL, TWILIO_STATUSES, DeliveryStatus, rank, recipient_key

TOKEN = "12345"
# The example of Twilio's security documentation.
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}


def test_our_signature_is_twilios_documented_example() -> None:
    expected = RequestValidator(TOKEN).compute_signature(DOC_URL, DOC_PARAMS)
    assert twilio_signature.signature(TOKEN, DOC_URL, DOC_PARAMS.items()) == expected
    assert twilio_signature.valid(TOKEN, DOC_URL, list(DOC_PARAMS.items()), expected)


@pytest.mark.parametrize("url", ["https://h.example/r", "https://h.example:443/r",
                                 "http://h.example/r?m=run_1:2", "http://[::1]:80/r"])
def test_the_url_is_accepted_with_or_without_its_default_port(url: str) -> None:
    validator = RequestValidator(TOKEN)
    params = {"MessageSid": "SM1", "MessageStatus": "sent"}
    for variant in twilio_signature.url_variants(url):
        given = validator.compute_signature(variant, params)
        assert twilio_signature.valid(TOKEN, url, list(params.items()), given)
        if "[" not in url:  # twilio's remove_port splits an IPv6 literal at its first colon
            assert validator.validate(url, params, given)


def test_a_signature_of_other_params_or_token_is_refused() -> None:
    good = twilio_signature.signature(TOKEN, DOC_URL, DOC_PARAMS.items())
    assert not twilio_signature.valid(TOKEN, DOC_URL, [*DOC_PARAMS.items(), ("x", "1")], good)
    assert not twilio_signature.valid("54321", DOC_URL, list(DOC_PARAMS.items()), good)
    assert not twilio_signature.valid(TOKEN, DOC_URL, list(DOC_PARAMS.items()), "")


def test_repeated_names_sign_each_distinct_value_sorted_as_twilios_validator() -> None:
    from multidict import MultiDict

    params = [("b", "2"), ("a", "z"), ("a", "y"), ("a", "y")]
    expected = RequestValidator(TOKEN).compute_signature(DOC_URL, MultiDict(params))
    assert twilio_signature.signature(TOKEN, DOC_URL, params) == expected


def test_the_greatest_status_wins_whatever_the_order() -> None:
    statuses = list(DeliveryStatus)
    for order in itertools.permutations(statuses):
        best = max(order, key=lambda status: status.rank)
        assert best is DeliveryStatus.BOUNCED
    assert all(rank(s.value) > rank("sent") for s in FINAL)
    assert rank(None) == 0


def test_twilio_statuses_map_onto_ours() -> None:
    assert TWILIO_STATUSES["undelivered"] is DeliveryStatus.BOUNCED
    assert TWILIO_STATUSES["delivered"] is DeliveryStatus.DELIVERED
    assert not TWILIO_STATUSES["sending"].final


@pytest.mark.parametrize(("message_id", "key"), [
    ("run_01ABC:7", ("run_01ABC", 7)),
    ("run_01ABC:7.1", ("run_01ABC", 7)),
    ("<run_01ABC=3A7@mail.example>", ("run_01ABC", 7)),
    ("run_01ABC=3A7@mail.example", ("run_01ABC", 7)),
    ("SM0123", None), ("run_:7", None), ("run_01ABC:x", None), ("", None),
])
def test_our_key_is_found_in_message_ids(message_id: str, key: tuple[str, int] | None) -> None:
    assert recipient_key(message_id) == key

"""Unsubscribe tokens: they name a profile and a channel, and cannot be forged or altered."""

from __future__ import annotations

import pytest

from daemon.models import Channel
from daemon.store.suppressions import address_digest
from daemon.unsubscribe import MAX_TOKEN_CHARS, Target, sign, url_for, verify

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.mark.parametrize("channel", list(Channel))
@pytest.mark.parametrize("profile_id", ["p1", "ann@example.com", "a:b.c_d-e", "Zoë 🎉", "x" * 128])
def test_a_signed_token_verifies_to_what_it_names(profile_id: str, channel: Channel) -> None:
    token = sign(KEY, profile_id, channel)
    assert verify(KEY, token) == Target(profile_id, channel)


def test_tokens_are_url_safe() -> None:
    token = sign(KEY, "ann@example.com/../?#&=", Channel.EMAIL)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_a_token_made_with_another_key_is_refused() -> None:
    assert verify(KEY, sign(OTHER_KEY, "p1", Channel.EMAIL)) is None


def test_changing_the_channel_is_refused() -> None:
    sms_token = sign(KEY, "p1", Channel.SMS)
    email_payload = sign(KEY, "p1", Channel.EMAIL).split(".")[0]
    forged = email_payload + "." + sms_token.split(".")[1]
    assert verify(KEY, forged) is None


def test_changing_the_profile_is_refused() -> None:
    token = sign(KEY, "p1", Channel.EMAIL)
    other_payload = sign(KEY, "p2", Channel.EMAIL).split(".")[0]
    assert verify(KEY, other_payload + "." + token.split(".")[1]) is None


def test_every_single_character_alteration_is_refused() -> None:
    token = sign(KEY, "p1", Channel.EMAIL)
    for index, original in enumerate(token):
        for replacement in "Aa0_.":
            if replacement == original:
                continue
            altered = token[:index] + replacement + token[index + 1 :]
            assert verify(KEY, altered) is None, (index, replacement)


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_tokens_are_refused(cut: int) -> None:
    token = sign(KEY, "p1", Channel.EMAIL)
    assert verify(KEY, token[:-cut]) is None
    assert verify(KEY, token[cut:]) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "abc",
        "abc.",
        ".abc",
        "a.b.c",
        "ZXA.%%%",
        "ZXA=.abc",
        "é.é",
        "x" * (MAX_TOKEN_CHARS + 1),
    ],
)
def test_garbage_is_refused(garbage: str) -> None:
    assert verify(KEY, garbage) is None


def test_a_validly_signed_payload_without_a_profile_is_refused() -> None:
    # Sign "e" + "" (no profile id): the MAC is right, the content is not.
    assert verify(KEY, sign(KEY, "", Channel.EMAIL)) is None


def test_url_for_builds_the_public_url() -> None:
    url = url_for("https://campaigns.example.com/", KEY, "p1", Channel.EMAIL)
    prefix = "https://campaigns.example.com/v1/unsubscribe/"
    assert url.startswith(prefix)
    assert verify(KEY, url.removeprefix(prefix)) == Target("p1", Channel.EMAIL)


def test_a_link_names_the_digest_of_the_address_it_was_sent_to() -> None:
    token = sign(KEY, "p1", Channel.EMAIL, "Ann@Example.com")
    target = verify(KEY, token)
    assert target == Target("p1", Channel.EMAIL, address_digest(Channel.EMAIL, "ann@example.com"))
    assert "ann" not in token.lower()  # a digest, not the address
    assert verify(KEY, sign(KEY, "p1", Channel.EMAIL)) == Target("p1", Channel.EMAIL)
    payload, _, mac = token.partition(".")
    assert verify(KEY, payload[:-1] + "." + mac) is None

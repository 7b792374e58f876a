"""Building emails: encoded-words, Message-IDs, parts; parsed back with the `email` package."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest

from daemon.providers.mime import InvalidEmail, build, encoded_words, message_id

DATE = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def _build(**content: Any) -> EmailMessage:
    envelope = build(
        idempotency_key="run_1:5",
        recipient=content.pop("to", "ann@example.org"),
        content={"from": "shop@example.com", "subject": "Hi", "text": "Hello", **content},
        date=DATE,
        unsubscribe_url=None,
    )
    parsed = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.mark.parametrize(
    "subject",
    [
        "é" * 200,  # two bytes per character: words must not split one
        "🎉 Soldes d'été 🎉 " * 12,  # four-byte characters
        "Prix : 10 € " * 30,
    ],
)
def test_long_non_ascii_subjects_round_trip(subject: str) -> None:
    assert str(_build(subject=subject)["Subject"]) == subject


def test_encoded_words_stay_within_75_characters() -> None:
    folded = encoded_words("Ünïcödé " * 40)
    words = folded.split("\r\n ")
    assert len(words) > 1
    assert all(len(word) <= 75 and word.startswith("=?utf-8?b?") for word in words)


def test_message_id_escapes_what_a_msg_id_cannot_hold() -> None:
    assert message_id("run_1:5", "example.com") == "<run_1=3A5@example.com>"
    assert message_id("a=b", "x.org") == "<a=3Db@x.org>"  # '=' escaped too: no collisions
    assert message_id("a b<>", "x.org") == "<a=20b=3C=3E@x.org>"


def test_the_message_id_takes_the_senders_domain() -> None:
    parsed = _build(**{"from": "News <news@mail.shop.example>"})
    assert str(parsed["Message-ID"]) == "<run_1=3A5@mail.shop.example>"


def test_an_internationalised_domain_is_sent_as_idna() -> None:
    envelope = build(
        idempotency_key="k",
        recipient="ann@bücher.example",
        content={"from": "a@b.example", "subject": "s", "text": "t"},
        date=DATE,
        unsubscribe_url=None,
    )
    assert envelope.recipient == "ann@xn--bcher-kva.example"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"subject": "a\nb"}, "subject contains a line break"),
        ({"from": "not an address"}, "from is not an email address"),
        ({"to": "ann@example.org\r\nX: y"}, "to contains a line break"),
        ({"to": "jöhn@example.org"}, "non-ASCII local part"),
        ({"text": None, "html": None}, "neither text nor html"),
        ({"reply_to": "a@b.c\nBcc: x@y.z"}, "reply_to contains a line break"),
    ],
)
def test_invalid_content_is_refused(content: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEmail, match=reason):
        _build(**content)


def test_a_7bit_body_holding_the_boundary_gets_another_boundary() -> None:
    first = _build(text="x", html="<p>x</p>")
    boundary = first.get_boundary()
    assert boundary is not None
    second = _build(text=f"--{boundary}\nsneaky", html="<p>x</p>")
    assert second.get_boundary() != boundary
    body = second.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == f"--{boundary}\nsneaky"


def test_very_long_lines_are_quoted_printable() -> None:
    parsed = _build(text="a" * 5000)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content().rstrip() == "a" * 5000


@pytest.mark.parametrize("control", ["\x0b", "\x0c", "\x1c", "\x00", "\x1f", "\x7f", "\x85",
                                     "\u2028"])
def test_controls_in_a_rendered_subject_become_spaces(control: str) -> None:
    envelope = build(
        idempotency_key="k", recipient="ann@example.org",
        content={"from": "a@b.example", "subject": f"Hi{control}X-Evil: 1\tok", "text": "t"},
        date=DATE, unsubscribe_url=None,
    )
    head = envelope.data.split(b"\r\n\r\n", 1)[0]
    assert not any((byte < 0x20 and byte not in (0x09, 0x0a, 0x0d)) or byte == 0x7f
                   for byte in head)
    parsed = email.message_from_bytes(envelope.data, policy=email.policy.default)
    assert parsed["Subject"] == "Hi X-Evil: 1\tok"
    assert parsed["X-Evil"] is None

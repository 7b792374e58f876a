"""The smtp provider against an in-process aiosmtpd server: MIME, TLS, AUTH, errors, the pool."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra.clock import FakeClock
from daemon.models import Channel
from daemon.providers.base import Address, Message
from daemon.providers.settings import SmtpProviderSettings
from daemon.providers.smtp import IDLE_CHECK_AFTER, SmtpProvider

from .smtp_sink import Sink, start_sink
from .tls_certs import Certificate, self_signed

START = datetime(2026, 3, 14, 9, 26, 53, tzinfo=UTC)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await start_sink()
    yield server
    await server.close()


@pytest.fixture
def certificate(tmp_path: Path) -> Certificate:
    return self_signed(tmp_path)


def _settings(port: int, **extra: Any) -> SmtpProviderSettings:
    base = {"kind": "smtp", "host": "127.0.0.1", "port": port, "tls": "none", "timeout": 5}
    return SmtpProviderSettings.model_validate({**base, **extra})


async def _provider(settings: SmtpProviderSettings, clock: FakeClock | None = None) -> SmtpProvider:
    provider = SmtpProvider("mail", settings, clock=clock or FakeClock(START))
    await provider.start()
    return provider


def _message(n: int = 1, email_to: str = "jane@example.org", **content: Any) -> Message:
    return Message(
        idempotency_key=f"run_7:{n}",
        campaign_id="spring",
        run_id="run_7",
        channel=Channel.EMAIL,
        profile_id=f"p{n}",
        to=Address(email=email_to),
        content={
            "from": "Boutique Élan <shop@example.com>",
            "reply_to": "Service client <help@example.com>",
            "subject": "Bonjour Jérôme ✓ — votre code",
            "text": "Votre code : X1 — à bientôt\nFrom the shop",
            "html": "<p>Votre code : <b>X1</b> — à bientôt</p>",
            **content,
        },
        unsubscribe_url=f"https://campaigns.example.com/v1/unsubscribe/tok{n}",
    )


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n")


def _parsed(sink: Sink, index: int = 0) -> EmailMessage:
    content = sink.messages[index].content
    assert isinstance(content, bytes)
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


async def test_a_message_arrives_with_every_header_right(sink: Sink) -> None:
    provider = await _provider(_settings(sink.port))
    result = await provider.send(_message())
    await provider.close()

    envelope = sink.messages[0]
    assert envelope.mail_from == "shop@example.com"
    assert envelope.rcpt_tos == ["jane@example.org"]
    parsed = _parsed(sink)
    assert parsed["From"].addresses[0].display_name == "Boutique Élan"
    assert parsed["From"].addresses[0].addr_spec == "shop@example.com"
    assert str(parsed["To"]) == "jane@example.org"
    assert str(parsed["Subject"]) == "Bonjour Jérôme ✓ — votre code"
    assert parsed["Reply-To"].addresses[0].display_name == "Service client"
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert str(parsed["Message-ID"]) == "<run_7=3A1@example.com>"
    assert result.provider_message_id == "<run_7=3A1@example.com>"
    assert parsed["Date"].datetime == START
    assert str(parsed["List-Unsubscribe"]) == (
        "<https://campaigns.example.com/v1/unsubscribe/tok1>"
    )
    assert str(parsed["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None and html is not None
    # Received over SMTP, lines end in CRLF: a mail client shows them as line breaks.
    assert _lines(text.get_content()) == "Votre code : X1 — à bientôt\nFrom the shop"
    assert _lines(html.get_content()) == "<p>Votre code : <b>X1</b> — à bientôt</p>"
    raw = sink.messages[0].content
    assert isinstance(raw, bytes)
    assert b"=0D" not in raw and b"\r\r" not in raw
    assert all(line.endswith(b"\r") for line in raw.split(b"\n")[:-1])
    assert raw.isascii()  # 7-bit clean: RFC 2047 headers and quoted-printable bodies
    assert b"\n>From" not in raw  # no mbox mangling


async def test_the_message_id_is_deterministic_and_unique_per_message(sink: Sink) -> None:
    provider = await _provider(_settings(sink.port))
    await provider.send(_message(1))
    await provider.send(_message(1))  # a retry of the same message
    await provider.send(_message(2))
    await provider.close()
    ids = [str(_parsed(sink, i)["Message-ID"]) for i in range(3)]
    assert ids[0] == ids[1] != ids[2]


async def test_text_only_and_html_only_are_single_parts_without_unsubscribe(
    sink: Sink,
) -> None:
    provider = await _provider(_settings(sink.port))
    await provider.send(_message(1, html=None))
    await provider.send(_message(2, text=None, subject="Plain ASCII subject"))
    await provider.close()
    first, second = _parsed(sink, 0), _parsed(sink, 1)
    assert first.get_content_type() == "text/plain"
    # A single-part body ends with the message's final line break.
    assert _lines(first.get_content()) == "Votre code : X1 — à bientôt\nFrom the shop\n"
    assert second.get_content_type() == "text/html"
    assert str(second["Subject"]) == "Plain ASCII subject"


async def test_an_email_without_unsubscribe_url_has_no_list_headers(sink: Sink) -> None:
    provider = await _provider(_settings(sink.port))
    message = _message()
    await provider.send(
        Message(
            idempotency_key=message.idempotency_key,
            campaign_id=message.campaign_id,
            run_id=message.run_id,
            channel=message.channel,
            profile_id=message.profile_id,
            to=message.to,
            content=message.content,
        )
    )
    await provider.close()
    parsed = _parsed(sink)
    assert "List-Unsubscribe" not in parsed
    assert "List-Unsubscribe-Post" not in parsed


async def test_a_header_injection_attempt_is_a_permanent_failure(sink: Sink) -> None:
    provider = await _provider(_settings(sink.port))
    with pytest.raises(PermanentError, match="invalid_email: subject contains a line break"):
        await provider.send(_message(subject="Hi\r\nBcc: victim@example.org"))
    with pytest.raises(PermanentError, match="invalid_email"):
        await provider.send(_message(email_to="a@b.c>\r\nRCPT TO:<x@y.z"))
    await provider.close()
    assert sink.messages == []
    assert sink.connections == 0  # refused before any connection was needed


async def test_a_550_on_rcpt_is_permanent_with_the_server_reply(sink: Sink) -> None:
    sink.rcpt_reply = "550 5.1.1 <jane@example.org>: no such user"
    provider = await _provider(_settings(sink.port))
    with pytest.raises(PermanentError) as caught:
        await provider.send(_message())
    assert caught.value.reason == "smtp_550: 5.1.1 <jane@example.org>: no such user"
    # The session is reset and reused for the next message.
    sink.rcpt_reply = None
    await provider.send(_message(2))
    await provider.close()
    assert len(sink.messages) == 1
    assert sink.connections == 1


async def test_a_451_on_data_is_transient(sink: Sink) -> None:
    sink.data_reply = "451 4.3.0 Try again later"
    provider = await _provider(_settings(sink.port))
    with pytest.raises(TransientError) as caught:
        await provider.send(_message())
    await provider.close()
    assert caught.value.reason == "smtp_451: 4.3.0 Try again later"


async def test_a_552_on_data_is_permanent(sink: Sink) -> None:
    sink.data_reply = "552 5.3.4 Message too big"
    provider = await _provider(_settings(sink.port))
    with pytest.raises(PermanentError, match=r"smtp_552: 5\.3\.4 Message too big"):
        await provider.send(_message())
    await provider.close()


async def test_dropped_connections_are_reopened_on_the_next_send(sink: Sink) -> None:
    provider = await _provider(_settings(sink.port, pool_size=1))
    await provider.send(_message(1))
    sink.drop_all_connections()
    await asyncio.sleep(0.05)  # let the client see the close (a real server's idle timeout)
    await provider.send(_message(2))
    await provider.close()
    assert len(sink.messages) == 2
    assert sink.connections == 2


async def test_a_connection_that_dies_before_data_is_retried_once_on_a_fresh_one(
    sink: Sink,
) -> None:
    provider = await _provider(_settings(sink.port, pool_size=1))
    await provider.send(_message(1))
    sink.drop_on_next_mail = 1  # the server closes as the next MAIL arrives
    await provider.send(_message(2))
    await provider.close()
    assert len(sink.messages) == 2
    assert str(_parsed(sink, 1)["Message-ID"]) == "<run_7=3A2@example.com>"
    assert sink.connections == 2


async def test_a_fresh_connection_that_dies_is_transient_not_retried(sink: Sink) -> None:
    sink.drop_on_next_mail = 5
    provider = await _provider(_settings(sink.port, pool_size=1))
    with pytest.raises(TransientError):
        await provider.send(_message(1))
    await provider.close()
    assert sink.connections == 1
    assert sink.drop_on_next_mail == 4


async def test_an_idle_connection_is_checked_with_noop(sink: Sink) -> None:
    clock = FakeClock(START)
    provider = await _provider(_settings(sink.port, pool_size=1), clock)
    await provider.send(_message(1))
    await provider.send(_message(2))
    assert sink.noops == 0
    clock.advance(IDLE_CHECK_AFTER + 1)
    await provider.send(_message(3))
    await provider.close()
    assert sink.noops == 1
    assert sink.connections == 1
    assert len(sink.messages) == 3


async def test_many_messages_share_at_most_pool_size_connections(sink: Sink) -> None:
    provider = await _provider(_settings(sink.port, pool_size=3))
    await asyncio.gather(*(provider.send(_message(n)) for n in range(60)))
    await provider.close()
    assert len(sink.messages) == 60
    assert 1 <= sink.connections <= 3
    ids = {str(_parsed(sink, i)["Message-ID"]) for i in range(60)}
    assert len(ids) == 60


async def test_sequential_messages_reuse_one_connection(sink: Sink) -> None:
    provider = await _provider(_settings(sink.port, pool_size=4))
    for n in range(10):
        await provider.send(_message(n))
    await provider.close()
    assert sink.connections == 1


async def test_a_refused_connection_is_transient() -> None:
    sink = await start_sink()
    port = sink.port
    await sink.close()
    provider = await _provider(_settings(port))
    with pytest.raises(TransientError, match="connection_error"):
        await provider.send(_message())
    await provider.close()


async def test_starttls_with_auth(certificate: Certificate) -> None:
    sink = await start_sink(starttls=certificate.server_context(), auth=True)
    try:
        settings = _settings(
            sink.port,
            tls="starttls",
            tls_ca_file=str(certificate.cert_file),
            username="mailer",
            password="s3cret",
        )
        provider = await _provider(settings)
        await provider.send(_message())
        await provider.probe()
        await provider.close()
    finally:
        await sink.close()
    assert len(sink.messages) == 1
    assert _parsed(sink)["Subject"] == "Bonjour Jérôme ✓ — votre code"


async def test_a_wrong_password_is_transient_and_fails_the_probe(
    certificate: Certificate,
) -> None:
    sink = await start_sink(starttls=certificate.server_context(), auth=True)
    try:
        settings = _settings(
            sink.port,
            tls="starttls",
            tls_ca_file=str(certificate.cert_file),
            username="mailer",
            password="wrong",
        )
        provider = await _provider(settings)
        with pytest.raises(TransientError, match="smtp_connect: smtp_535"):
            await provider.send(_message())
        with pytest.raises(ProviderError, match="535"):
            await provider.probe()
        await provider.close()
    finally:
        await sink.close()
    assert sink.messages == []


async def test_an_untrusted_certificate_is_refused(certificate: Certificate) -> None:
    sink = await start_sink(starttls=certificate.server_context())
    try:
        provider = await _provider(_settings(sink.port, tls="starttls"))
        with pytest.raises(TransientError, match=r"tls_error|connection_error"):
            await provider.send(_message())
        await provider.close()
    finally:
        await sink.close()
    assert sink.messages == []


async def test_implicit_tls(certificate: Certificate) -> None:
    sink = await start_sink(implicit_tls=certificate.server_context())
    try:
        settings = _settings(sink.port, tls="tls", tls_ca_file=str(certificate.cert_file))
        provider = await _provider(settings)
        await provider.send(_message())
        await provider.close()
    finally:
        await sink.close()
    assert len(sink.messages) == 1

"""The webhook provider against a real HTTP server that verifies Standard Webhooks signatures."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from daemon.errors import PermanentError, TransientError
from daemon.models import Channel
from daemon.providers.base import REQUEST_SENT, Address, Message
from daemon.providers.settings import WebhookProviderSettings
from daemon.providers.webhook import WebhookProvider

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@dataclass
class Gateway:
    """A gateway stand-in: records each request and answers what `respond` says."""

    respond: Callable[[dict[str, Any]], web.Response] = lambda _: web.json_response({"ok": 1})
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    peers: set[object] = field(default_factory=set)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/send"))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert request.transport is not None
        self.peers.add(request.transport.get_extra_info("peername"))
        self.requests.append((dict(request.headers), body))
        return self.respond(json.loads(body))


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    state = Gateway()
    app = web.Application()
    app.router.add_post("/send", state.handle)
    state.server = TestServer(app, host="127.0.0.1", port=0)
    await state.server.start_server()
    yield state
    await state.server.close()


async def _provider(gateway: Gateway, **extra: Any) -> AsyncIterator[WebhookProvider]:
    settings = WebhookProviderSettings.model_validate(
        {"kind": "webhook", "url": gateway.url, "timeout": 2, **extra}
    )
    provider = WebhookProvider("hook", settings)
    await provider.start()
    yield provider
    await provider.close()


@pytest.fixture
async def signed(gateway: Gateway) -> AsyncIterator[WebhookProvider]:
    async for provider in _provider(gateway, secret=SECRET, headers={"X-Tenant": "acme"}):
        yield provider


def _message(channel: Channel = Channel.SMS, **to: Any) -> Message:
    address = Address(**to) if to else Address(phone="+33612345678")
    return Message(
        idempotency_key="run_1:42",
        campaign_id="spring",
        run_id="run_1",
        channel=channel,
        profile_id="p42",
        to=address,
        content={"body": "Code X1 — élan"},
    )


async def test_a_signed_post_verifies_with_the_reference_package(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    result = await signed.send(_message())

    assert len(gateway.requests) == 1
    headers, body = gateway.requests[0]
    payload = Webhook(SECRET).verify(body, headers)
    assert payload == {
        "id": "run_1:42",
        "campaign_id": "spring",
        "run_id": "run_1",
        "channel": "sms",
        "profile_id": "p42",
        "to": {"phone": "+33612345678"},
        "content": {"body": "Code X1 — élan"},
    }
    assert headers["webhook-id"] == "run_1:42"
    assert headers["Idempotency-Key"] == "run_1:42"
    assert headers["X-Tenant"] == "acme"
    assert headers["Content-Type"] == "application/json"
    assert result.provider_message_id == "run_1:42"


async def test_a_tampered_body_fails_the_reference_verification(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    await signed.send(_message())
    headers, body = gateway.requests[0]
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body.replace(b"X1", b"X2"), headers)


async def test_without_a_secret_no_signature_headers_are_sent(gateway: Gateway) -> None:
    async for provider in _provider(gateway):
        await provider.send(_message(Channel.EMAIL, email="a@example.com"))
    headers, body = gateway.requests[0]
    assert "webhook-signature" not in {name.lower() for name in headers}
    assert headers["Idempotency-Key"] == "run_1:42"
    assert json.loads(body)["to"] == {"email": "a@example.com"}


async def test_the_id_in_the_answer_becomes_the_provider_message_id(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    gateway.respond = lambda _: web.json_response({"id": "gw-77"}, status=202)
    result = await signed.send(_message())
    assert result.provider_message_id == "gw-77"


async def test_a_400_is_permanent_with_the_start_of_the_body(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    gateway.respond = lambda _: web.Response(status=400, text="bad number " + "x" * 500)
    with pytest.raises(PermanentError) as caught:
        await signed.send(_message())
    assert caught.value.reason.startswith("http_400: bad number xxx")
    assert len(caught.value.reason) == len("http_400: ") + 200


async def test_a_429_is_transient_and_carries_retry_after_seconds(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    gateway.respond = lambda _: web.Response(status=429, headers={"Retry-After": "7"})
    with pytest.raises(TransientError) as caught:
        await signed.send(_message())
    assert caught.value.reason == "http_429"
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize("status", [408, 500, 503])
async def test_408_and_5xx_are_transient(
    gateway: Gateway, signed: WebhookProvider, status: int
) -> None:
    gateway.respond = lambda _: web.Response(status=status, text="busy")
    with pytest.raises(TransientError) as caught:
        await signed.send(_message())
    assert caught.value.reason == f"http_{status}: busy"
    assert caught.value.retry_after is None


async def test_a_refused_connection_is_transient(gateway: Gateway) -> None:
    assert gateway.server is not None
    async for provider in _provider(gateway):
        await gateway.server.close()
        with pytest.raises(TransientError, match="connection_error"):
            await provider.send(_message())


async def test_a_slow_gateway_is_a_transient_timeout(gateway: Gateway) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    app = web.Application()
    app.router.add_post("/send", slow)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        settings = WebhookProviderSettings(
            kind="webhook", url=str(server.make_url("/send")), timeout=0.2
        )
        provider = WebhookProvider("hook", settings)
        await provider.start()
        with pytest.raises(TransientError, match="timeout"):
            await provider.send(_message())
        await provider.close()
    finally:
        await server.close()


async def test_push_is_one_post_per_token_and_sent_if_one_is_accepted(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    def answer(payload: dict[str, Any]) -> web.Response:
        if payload["to"]["push_token"] == "dead":
            return web.Response(status=404, text="unknown token")
        return web.json_response({"id": "ok-" + payload["to"]["push_token"]})

    gateway.respond = answer
    result = await signed.send(_message(Channel.PUSH, push_tokens=("dead", "live")))

    assert result.provider_message_id == "ok-live"
    seen = sorted(
        (json.loads(body)["to"]["push_token"], headers["webhook-id"])
        for headers, body in gateway.requests
    )
    assert seen == [("dead", "run_1:42.0"), ("live", "run_1:42.1")]
    for headers, body in gateway.requests:
        Webhook(SECRET).verify(body, headers)


async def test_push_with_every_token_refused_is_permanent(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    gateway.respond = lambda _: web.Response(status=410, text="gone")
    with pytest.raises(PermanentError, match="http_410: gone"):
        await signed.send(_message(Channel.PUSH, push_tokens=("a", "b")))
    assert len(gateway.requests) == 2


async def test_push_with_a_transient_failure_and_no_acceptance_is_transient(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    def answer(payload: dict[str, Any]) -> web.Response:
        if payload["to"]["push_token"] == "a":
            return web.Response(status=410)
        return web.Response(status=503, headers={"Retry-After": "3"})

    gateway.respond = answer
    with pytest.raises(TransientError) as caught:
        await signed.send(_message(Channel.PUSH, push_tokens=("a", "b")))
    assert caught.value.retry_after == 3.0


async def test_a_message_without_an_address_for_its_channel_is_permanent(
    gateway: Gateway, signed: WebhookProvider
) -> None:
    with pytest.raises(PermanentError, match="no_address"):
        await signed.send(_message(Channel.EMAIL, phone="+331"))
    assert gateway.requests == []


def test_secrets_stay_out_of_reprs() -> None:
    settings = WebhookProviderSettings.model_validate(
        {
            "kind": "webhook",
            "url": "https://user:pw@gw.example:8443/send?key=sekrit",
            "secret": SECRET,
            "headers": {"Authorization": "Bearer hdr-token"},
        }
    )
    for text in (repr(settings), repr(WebhookProvider("hook", settings))):
        assert SECRET not in text
        assert "hdr-token" not in text
    assert repr(WebhookProvider("hook", settings)) == (
        "WebhookProvider(name='hook', url='https://gw.example:8443/send')"
    )


async def test_connections_are_kept_alive_and_bounded_by_concurrency(gateway: Gateway) -> None:
    async for provider in _provider(gateway, concurrency=3):
        for _ in range(10):
            await provider.send(_message())
        assert len(gateway.peers) == 1
        await asyncio.gather(*(provider.send(_message()) for _ in range(30)))
    assert len(gateway.requests) == 40
    assert len(gateway.peers) <= 3


async def test_the_request_leaving_is_reported_to_the_engine(
    gateway: Gateway,
) -> None:
    # The engine counts a call's rate from when its request went out (pacing.Pacer.sent).
    reported: list[float] = []
    loop = asyncio.get_running_loop()
    async for provider in _provider(gateway):
        token = REQUEST_SENT.set(reported.append)
        try:
            before = loop.time()
            await provider.send(_message())
            after = loop.time()
        finally:
            REQUEST_SENT.reset(token)
        assert reported and all(before <= t <= after for t in reported)
        received = len(gateway.requests)
        reported.clear()
        await provider.send(_message())  # no engine hook set: nothing reported
        assert not reported and len(gateway.requests) == received + 1

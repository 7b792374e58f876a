"""The twilio provider against a local stand-in that checks what Twilio checks."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.models import Channel
from daemon.providers.base import Address, Message
from daemon.providers.settings import TwilioProviderSettings
from daemon.providers.twilio import TwilioProvider

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "tok_" + "9" * 28


def _twilio_error(status: int, code: int, message: str) -> web.Response:
    # The shape of Twilio's 2010-04-01 JSON errors.
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


@dataclass
class FakeTwilio:
    forms: list[dict[str, str]] = field(default_factory=list)
    override: web.Response | None = None
    server: TestServer | None = None

    def _authorised(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
        return request.headers.get("Authorization") == expected

    async def messages(self, request: web.Request) -> web.Response:
        if request.match_info["sid"] != SID or not self._authorised(request):
            return web.json_response(
                {
                    "code": 20003,
                    "detail": "Your AccountSid or AuthToken was incorrect.",
                    "message": "Authenticate",
                    "more_info": "https://www.twilio.com/docs/errors/20003",
                    "status": 401,
                },
                status=401,
            )
        assert request.content_type == "application/x-www-form-urlencoded"
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.forms.append(form)
        if self.override is not None:
            return self.override
        if not form.get("To", "").startswith("+"):
            return _twilio_error(400, 21211, f"Invalid 'To' Phone Number: {form.get('To')}")
        if "Body" not in form or ("From" not in form and "MessagingServiceSid" not in form):
            return _twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' is required")
        return web.json_response(
            {"sid": f"SM{len(self.forms):032d}", "status": "queued", "to": form["To"]},
            status=201,
        )

    async def account(self, request: web.Request) -> web.Response:
        if request.match_info["sid"] != SID or not self._authorised(request):
            return _twilio_error(401, 20003, "Authenticate")
        return web.json_response({"sid": SID, "status": "active"})


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", fake.messages)
    app.router.add_get("/2010-04-01/Accounts/{sid}.json", fake.account)
    fake.server = TestServer(app, host="127.0.0.1", port=0)
    await fake.server.start_server()
    yield fake
    await fake.server.close()


async def _provider(twilio: FakeTwilio, public_url: str | None = None, **extra: Any
                    ) -> TwilioProvider:
    assert twilio.server is not None
    settings = TwilioProviderSettings.model_validate(
        {
            "kind": "twilio",
            "account_sid": SID,
            "auth_token": TOKEN,
            "base_url": str(twilio.server.make_url("")),
            **({"from": "+15005550006"} if "messaging_service_sid" not in extra else {}),
            **extra,
        }
    )
    provider = TwilioProvider("sms", settings, public_url=public_url)
    await provider.start()
    return provider


def _sms(phone: str = "+33612345678", **content: Any) -> Message:
    return Message(
        idempotency_key="run_3:1",
        campaign_id="c",
        run_id="run_3",
        channel=Channel.SMS,
        profile_id="p1",
        to=Address(phone=phone),
        content={"body": "Votre code : X1", **content},
    )


async def test_a_message_is_posted_as_twilio_expects(twilio: FakeTwilio) -> None:
    provider = await _provider(twilio)
    result = await provider.send(_sms())
    await provider.close()
    assert twilio.forms == [
        {"To": "+33612345678", "From": "+15005550006", "Body": "Votre code : X1"}
    ]
    assert result.provider_message_id == "SM" + "1".zfill(32)


async def test_with_a_public_url_each_message_asks_for_status_callbacks(
        twilio: FakeTwilio) -> None:
    provider = await _provider(twilio, public_url="https://campaigns.example.com/")
    await provider.send(_sms())
    await provider.close()
    # The receipt endpoint of this provider, with our key of the recipient (run_3, 1).
    assert twilio.forms[0]["StatusCallback"] == (
        "https://campaigns.example.com/v1/receipts/twilio/sms?m=run_3:1")


async def test_the_messages_own_from_wins(twilio: FakeTwilio) -> None:
    provider = await _provider(twilio)
    await provider.send(_sms(**{"from": "SHOP"}))
    await provider.close()
    assert twilio.forms[0]["From"] == "SHOP"


async def test_a_messaging_service_is_used_when_configured(twilio: FakeTwilio) -> None:
    provider = await _provider(twilio, messaging_service_sid="MG" + "1" * 32)
    await provider.send(_sms())
    await provider.close()
    assert twilio.forms[0]["MessagingServiceSid"] == "MG" + "1" * 32
    assert "From" not in twilio.forms[0]


async def test_an_invalid_number_is_permanent_with_twilios_words(twilio: FakeTwilio) -> None:
    provider = await _provider(twilio)
    with pytest.raises(PermanentError) as caught:
        await provider.send(_sms(phone="0612"))
    await provider.close()
    assert caught.value.reason == "twilio_21211: Invalid 'To' Phone Number: 0612"


async def test_wrong_credentials_are_permanent_and_fail_the_probe(twilio: FakeTwilio) -> None:
    provider = await _provider(twilio, auth_token="wrong")
    with pytest.raises(PermanentError, match="twilio_20003: Authenticate"):
        await provider.send(_sms())
    with pytest.raises(ProviderError, match="twilio_20003"):
        await provider.probe()
    await provider.close()


async def test_the_probe_passes_with_good_credentials(twilio: FakeTwilio) -> None:
    provider = await _provider(twilio)
    await provider.probe()
    await provider.close()
    assert twilio.forms == []  # nothing was sent


async def test_429_is_transient_with_retry_after(twilio: FakeTwilio) -> None:
    twilio.override = _twilio_error(429, 20429, "Too Many Requests")
    twilio.override.headers["Retry-After"] = "2"
    provider = await _provider(twilio)
    with pytest.raises(TransientError) as caught:
        await provider.send(_sms())
    await provider.close()
    assert caught.value.reason == "twilio_20429: Too Many Requests"
    assert caught.value.retry_after == 2.0


async def test_a_5xx_without_json_is_transient(twilio: FakeTwilio) -> None:
    twilio.override = web.Response(status=502, text="<html>Bad Gateway</html>")
    provider = await _provider(twilio)
    with pytest.raises(TransientError, match="http_502"):
        await provider.send(_sms())
    await provider.close()


async def test_a_message_without_phone_is_refused_locally(twilio: FakeTwilio) -> None:
    provider = await _provider(twilio)
    with pytest.raises(PermanentError, match="no_address"):
        await provider.send(_sms(phone=""))
    await provider.close()
    assert twilio.forms == []


def test_the_auth_token_is_not_in_reprs() -> None:
    settings = TwilioProviderSettings.model_validate(
        {"kind": "twilio", "account_sid": SID, "auth_token": TOKEN, "from": "+1"}
    )
    assert TOKEN not in repr(settings)
    assert TOKEN not in repr(TwilioProvider("sms", settings))

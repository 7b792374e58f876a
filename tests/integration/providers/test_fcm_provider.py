"""The fcm provider against local stand-ins for Google's token endpoint and FCM v1.

The token endpoint verifies the JWT grant as Google does: RS256 signature with
the service account's public key, `aud`, `iss`, `scope`, a one-hour lifetime.
FCM checks the bearer token and the message shape, and answers with FCM's
documented error bodies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra.clock import FakeClock
from daemon.models import Channel
from daemon.providers.base import Address, Message
from daemon.providers.fcm import SCOPE, FcmProvider, ServiceAccountError, load_service_account
from daemon.providers.settings import FcmProviderSettings

PROJECT = "shop-prod"
CLIENT_EMAIL = "campaignd@shop-prod.iam.gserviceaccount.com"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"


def _fcm_error(status: int, status_name: str, message: str, code: str | None) -> web.Response:
    details: list[dict[str, Any]] = []
    if code is not None:
        details.append({"@type": FCM_ERROR, "errorCode": code})
    return web.json_response(
        {"error": {"code": status, "message": message, "status": status_name, "details": details}},
        status=status,
    )


@dataclass
class Google:
    public_key: rsa.RSAPublicKey
    clock: FakeClock
    token_uri: str = ""
    grants: int = 0
    issued: set[str] = field(default_factory=set)
    revoked: set[str] = field(default_factory=set)
    sends: list[dict[str, Any]] = field(default_factory=list)
    grant_delay: float = 0.0
    server: TestServer | None = None

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            claims = jwt.decode(
                str(form.get("assertion")),
                self.public_key,
                algorithms=["RS256"],
                audience=self.token_uri,
                # Times are checked below against the test's clock, not the machine's.
                options={
                    "require": ["iss", "aud", "iat", "exp", "scope"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            return web.json_response(
                {"error": "invalid_grant", "error_description": str(exc)}, status=400
            )
        header = jwt.get_unverified_header(str(form.get("assertion")))
        assert header["kid"] == "key-1"
        assert claims["iss"] == CLIENT_EMAIL
        assert claims["scope"] == SCOPE
        assert claims["exp"] - claims["iat"] == 3600
        if not claims["iat"] <= self.clock.now().timestamp() < claims["exp"]:
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT: iat/exp"}, status=400
            )
        if self.grant_delay:
            await asyncio.sleep(self.grant_delay)
        self.grants += 1
        access_token = f"ya29.token-{self.grants}"
        self.issued.add(access_token)
        return web.json_response(
            {"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}
        )

    async def send(self, request: web.Request) -> web.Response:
        assert request.match_info["project"] == PROJECT
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer not in self.issued or bearer in self.revoked:
            return _fcm_error(
                401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", None
            )
        document = await request.json()
        message = document["message"]
        assert set(message) <= {"token", "notification", "data"}
        assert all(isinstance(v, str) for v in message.get("data", {}).values())
        self.sends.append(message)
        token = message["token"]
        if token.startswith("dead"):
            return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        if token.startswith("bad"):
            return _fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            )
        if token.startswith("payload"):
            return web.json_response(
                {
                    "error": {
                        "code": 400,
                        "message": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
                        "status": "INVALID_ARGUMENT",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.BadRequest",
                                "fieldViolations": [{"field": "message.data[0].value"}],
                            }
                        ],
                    }
                },
                status=400,
            )
        if token.startswith("busy"):
            response = _fcm_error(503, "UNAVAILABLE", "The service is unavailable.", "UNAVAILABLE")
            response.headers["Retry-After"] = "10"
            return response
        if token.startswith("quota"):
            return _fcm_error(
                429, "RESOURCE_EXHAUSTED", "Quota exceeded for the sender.", "QUOTA_EXCEEDED"
            )
        return web.json_response({"name": f"projects/{PROJECT}/messages/{len(self.sends)}"})


@pytest.fixture
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def google(private_key: rsa.RSAPrivateKey, clock: FakeClock) -> AsyncIterator[Google]:
    fake = Google(public_key=private_key.public_key(), clock=clock)
    app = web.Application()
    app.router.add_post("/token", fake.token)
    app.router.add_post("/v1/projects/{project}/messages:send", fake.send)
    fake.server = TestServer(app, host="127.0.0.1", port=0)
    await fake.server.start_server()
    fake.token_uri = str(fake.server.make_url("/token"))
    yield fake
    await fake.server.close()


def _account_file(folder: Path, key: rsa.RSAPrivateKey, token_uri: str, **extra: Any) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    document = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "key-1",
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "token_uri": token_uri,
        **extra,
    }
    path = folder / "service-account.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def provider(
    tmp_path: Path, private_key: rsa.RSAPrivateKey, google: Google, clock: FakeClock
) -> AsyncIterator[FcmProvider]:
    assert google.server is not None
    settings = FcmProviderSettings(
        kind="fcm",
        service_account_file=_account_file(tmp_path, private_key, google.token_uri),
        base_url=str(google.server.make_url("")),
        timeout=5,
    )
    fcm = FcmProvider("push", settings, clock=clock)
    await fcm.start()
    yield fcm
    await fcm.close()


def _push(*tokens: str, **content: Any) -> Message:
    return Message(
        idempotency_key="run_9:4",
        campaign_id="c",
        run_id="run_9",
        channel=Channel.PUSH,
        profile_id="p4",
        to=Address(push_tokens=tokens),
        content={
            "title": "Soldes",
            "body": "−20 % ce soir",
            "data": {"promo": "X1", "n": 3},
            **content,
        },
    )


async def test_a_push_is_sent_with_the_granted_token(provider: FcmProvider, google: Google) -> None:
    result = await provider.send(_push("tok-a"))
    assert result.provider_message_id == f"projects/{PROJECT}/messages/1"
    assert result.invalid_push_tokens == ()
    assert google.grants == 1
    assert google.sends == [
        {
            "token": "tok-a",
            "notification": {"title": "Soldes", "body": "−20 % ce soir"},
            "data": {"promo": "X1", "n": "3"},
        }
    ]


async def test_the_access_token_is_cached_and_granted_once_for_concurrent_senders(
    provider: FcmProvider, google: Google
) -> None:
    google.grant_delay = 0.05
    await asyncio.gather(*(provider.send(_push(f"tok-{n}")) for n in range(20)))
    await provider.send(_push("tok-late"))
    assert google.grants == 1
    assert len(google.sends) == 21


async def test_the_token_is_renewed_shortly_before_it_expires(
    provider: FcmProvider, google: Google, clock: FakeClock
) -> None:
    await provider.send(_push("tok-a"))
    clock.advance(3599 - 61)
    await provider.send(_push("tok-b"))
    assert google.grants == 1
    clock.advance(2)  # now within 60 s of expiry
    await provider.send(_push("tok-c"))
    assert google.grants == 2


async def test_a_401_renews_the_token_once_and_retries(
    provider: FcmProvider, google: Google
) -> None:
    await provider.send(_push("tok-a"))
    google.revoked.add("ya29.token-1")
    result = await provider.send(_push("tok-b"))
    assert result.provider_message_id is not None
    assert google.grants == 2
    assert [send["token"] for send in google.sends] == ["tok-a", "tok-b"]


async def test_one_call_per_token_and_dead_tokens_are_reported(
    provider: FcmProvider, google: Google
) -> None:
    result = await provider.send(_push("dead-1", "live-1", "bad-1", "live-1"))
    assert sorted(send["token"] for send in google.sends) == ["bad-1", "dead-1", "live-1"]
    assert result.provider_message_id is not None
    assert set(result.invalid_push_tokens) == {"dead-1", "bad-1"}


async def test_all_tokens_dead_is_permanent_and_names_them(provider: FcmProvider) -> None:
    with pytest.raises(PermanentError) as caught:
        await provider.send(_push("dead-1", "dead-2"))
    assert caught.value.reason == "fcm_UNREGISTERED: Requested entity was not found."
    assert set(caught.value.invalid_push_tokens) == {"dead-1", "dead-2"}


async def test_a_payload_error_does_not_condemn_the_token(provider: FcmProvider) -> None:
    with pytest.raises(PermanentError) as caught:
        await provider.send(_push("payload-1"))
    assert caught.value.reason.startswith("fcm_INVALID_ARGUMENT: Invalid value")
    assert caught.value.invalid_push_tokens == ()


async def test_unavailable_is_transient_with_retry_after(provider: FcmProvider) -> None:
    with pytest.raises(TransientError) as caught:
        await provider.send(_push("busy-1"))
    assert caught.value.reason == "fcm_UNAVAILABLE: The service is unavailable."
    assert caught.value.retry_after == 10.0


async def test_quota_exceeded_is_transient(provider: FcmProvider) -> None:
    with pytest.raises(TransientError, match="fcm_QUOTA_EXCEEDED"):
        await provider.send(_push("quota-1"))


async def test_transient_and_dead_without_acceptance_is_transient(provider: FcmProvider) -> None:
    with pytest.raises(TransientError):
        await provider.send(_push("dead-1", "busy-1"))


async def test_a_refused_grant_is_transient_for_sends_and_fails_the_probe(
    tmp_path: Path, google: Google, clock: FakeClock
) -> None:
    assert google.server is not None
    wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = FcmProviderSettings(
        kind="fcm",
        service_account_file=_account_file(tmp_path, wrong_key, google.token_uri),
        base_url=str(google.server.make_url("")),
    )
    fcm = FcmProvider("push", settings, clock=clock)
    await fcm.start()
    try:
        with pytest.raises(TransientError, match="token_grant_failed: invalid_grant"):
            await fcm.send(_push("tok-a"))
        with pytest.raises(ProviderError, match="invalid_grant"):
            await fcm.probe()
    finally:
        await fcm.close()
    assert google.sends == []


async def test_the_probe_passes_with_a_good_key(provider: FcmProvider, google: Google) -> None:
    await provider.probe()
    assert google.grants == 1
    assert google.sends == []


def test_a_service_account_file_is_checked(tmp_path: Path, private_key: rsa.RSAPrivateKey) -> None:
    good = _account_file(tmp_path, private_key, "https://oauth2.googleapis.com/token")
    account = load_service_account(good)
    assert account.project_id == PROJECT
    assert "PRIVATE" not in repr(account)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"project_id": "x", "private_key": "nope"}))
    with pytest.raises(ServiceAccountError, match="lacks client_email, token_uri"):
        load_service_account(incomplete)
    bad_key = tmp_path / "bad-key.json"
    bad_key.write_text(
        json.dumps(
            {"project_id": "x", "client_email": "a@b", "token_uri": "u", "private_key": "nope"}
        )
    )
    with pytest.raises(ServiceAccountError, match="not a PEM private key"):
        load_service_account(bad_key)
    with pytest.raises(ServiceAccountError, match="cannot read"):
        load_service_account(tmp_path / "absent.json")

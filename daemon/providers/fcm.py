"""The `fcm` provider: Firebase Cloud Messaging HTTP v1, authenticated with a service account.

Access tokens come from the OAuth2 JWT-bearer grant (RFC 7523): a JWT signed
RS256 with the service account's key (`iss` = client_email, `scope` = FCM,
`aud` = token_uri) is POSTed to `token_uri`. The token is cached until 60 s
before it expires; one refresh serves every concurrent sender (a lock, checked
twice). A 401 from FCM refreshes the token once and retries that call.

One call per push token: `POST {base_url}/v1/projects/{project}/messages:send`.
The recipient is sent if at least one token was accepted. Tokens FCM reports
dead (an `FcmError` detail with `UNREGISTERED` or `INVALID_ARGUMENT`) are
returned in `invalid_push_tokens`, for the engine to remove from the profile.
An INVALID_ARGUMENT that comes only with a `BadRequest` detail is about the
payload, not the token, and does not condemn the token. QUOTA_EXCEEDED,
UNAVAILABLE, INTERNAL, 408, 429 and 5xx are transient (`Retry-After` honoured).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra.clock import Clock, SystemClock
from daemon.providers import http
from daemon.providers.base import Message, SendResult
from daemon.providers.settings import FcmProviderSettings

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
REFRESH_MARGIN = 60.0
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_DEAD_TOKEN_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT"})
_TRANSIENT_CODES = frozenset(
    {"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}
)


class ServiceAccountError(ValueError):
    """The service-account file is unreadable or incomplete (the message says which)."""


@dataclass(frozen=True)
class ServiceAccount:
    project_id: str
    client_email: str
    token_uri: str
    private_key_id: str | None
    private_key: RSAPrivateKey = field(repr=False)


def load_service_account(path: Path) -> ServiceAccount:
    """Read and check Google's service-account JSON (blocking: call it in a thread)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ServiceAccountError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise ServiceAccountError(f"{path} is not JSON") from None
    if not isinstance(document, dict):
        raise ServiceAccountError(f"{path} is not a JSON object")
    missing = [
        key
        for key in ("project_id", "client_email", "private_key", "token_uri")
        if not isinstance(document.get(key), str) or not document[key]
    ]
    if missing:
        raise ServiceAccountError(f"{path} lacks {', '.join(missing)}")
    try:
        key = serialization.load_pem_private_key(document["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        raise ServiceAccountError(f"{path}: private_key is not a PEM private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise ServiceAccountError(f"{path}: private_key is not an RSA key")
    key_id = document.get("private_key_id")
    return ServiceAccount(
        project_id=document["project_id"],
        client_email=document["client_email"],
        token_uri=document["token_uri"],
        private_key_id=key_id if isinstance(key_id, str) else None,
        private_key=key,
    )


@dataclass(frozen=True)
class _Failure:
    """Why FCM refused one token."""

    error: ProviderError
    dead_token: bool


def _failure(status: int, body: bytes, retry_after: float | None) -> _Failure:
    document = http.json_object(body)
    error = document.get("error") if document else None
    if not isinstance(error, dict):
        reason = http.status_reason(status, body)
        if http.is_transient_status(status):
            return _Failure(TransientError(reason, retry_after=retry_after), dead_token=False)
        return _Failure(PermanentError(reason), dead_token=False)
    codes = [
        str(detail.get("errorCode"))
        for detail in error.get("details") or []
        if isinstance(detail, dict) and detail.get("@type") == _FCM_ERROR_TYPE
    ]
    status_name = str(error.get("status") or "")
    name = codes[0] if codes else status_name or f"http_{status}"
    message = " ".join(str(error.get("message") or "").split())
    reason = f"fcm_{name}: {message}"[: http.REASON_BODY_CHARS + 30]
    if http.is_transient_status(status) or _TRANSIENT_CODES.intersection([*codes, status_name]):
        return _Failure(TransientError(reason, retry_after=retry_after), dead_token=False)
    dead = bool(_DEAD_TOKEN_CODES.intersection(codes))
    return _Failure(PermanentError(reason), dead_token=dead)


def _data(value: Any) -> dict[str, str]:
    """FCM `data` takes strings only: other JSON values are sent as their JSON text."""
    if not isinstance(value, dict):
        return {}
    return {
        str(key): item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
        for key, item in value.items()
    }


class FcmProvider:
    """Sends each push token of a message as one FCM v1 `messages:send` call."""

    writes_unsubscribe_url = False  # the engine signs it only if a template reads it

    def __init__(
        self, name: str, settings: FcmProviderSettings, *, clock: Clock | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._account: ServiceAccount | None = None
        self._send_url = ""
        self._access_token: str | None = None
        self._expires_at = 0.0  # on the monotonic clock
        self._refresh_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"FcmProvider(name={self.name!r}, file={str(self.settings.service_account_file)!r})"

    async def start(self) -> None:
        if self._session is not None:
            return
        try:
            account = await asyncio.to_thread(
                load_service_account, self.settings.service_account_file
            )
        except ServiceAccountError as exc:
            raise ProviderError(f"service_account_file: {exc}") from None
        self._account = account
        self._send_url = (
            f"{self.settings.base_url.rstrip('/')}/v1/projects/{account.project_id}/messages:send"
        )
        self._session = http.new_session(
            concurrency=self.settings.concurrency, timeout=self.settings.timeout
        )

    # -- access tokens ------------------------------------------------------------------------

    def _assertion(self, account: ServiceAccount) -> str:
        issued = int(self._clock.now().timestamp())
        claims = {
            "iss": account.client_email,
            "scope": SCOPE,
            "aud": account.token_uri,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME,
        }
        headers = {"kid": account.private_key_id} if account.private_key_id else None
        return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)

    async def _grant(self) -> None:
        """Fetch a new access token (TransientError if the token endpoint fails)."""
        session, account = self._session, self._account
        if session is None or account is None:
            raise RuntimeError(f"provider {self.name} is not started (or closed)")
        form = {"grant_type": GRANT_TYPE, "assertion": self._assertion(account)}
        try:
            async with session.post(account.token_uri, data=form) as response:
                body = await http.read_answer(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError("token_" + http.connection_failure(exc).reason) from None
        answer = http.json_object(body) or {}
        token = answer.get("access_token")
        if status != 200 or not isinstance(token, str):
            error = answer.get("error")
            described = answer.get("error_description")
            detail = f"{error}: {described}" if error else http.status_reason(status, body)
            raise TransientError(f"token_grant_failed: {detail}"[: http.REASON_BODY_CHARS])
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        self._access_token = token
        # Renew a minute early; a token that lives less than two minutes, at half-life.
        margin = min(REFRESH_MARGIN, lifetime / 2)
        self._expires_at = self._clock.monotonic() + lifetime - margin

    async def _token(self, stale: str | None = None) -> str:
        """A valid access token; `stale` is one FCM refused, to be replaced (once, for all)."""
        current = self._access_token
        if current is not None and current != stale and self._clock.monotonic() < self._expires_at:
            return current
        async with self._refresh_lock:
            current = self._access_token
            if current is None or current == stale or self._clock.monotonic() >= self._expires_at:
                await self._grant()
            assert self._access_token is not None
            return self._access_token

    # -- sending ------------------------------------------------------------------------------

    def _body(self, message: Message, token: str) -> bytes:
        content = message.content
        notification = {
            key: str(content[key]) for key in ("title", "body") if content.get(key) is not None
        }
        document: dict[str, Any] = {"token": token, "notification": notification}
        data = _data(content.get("data"))
        if data:
            document["data"] = data
        return json.dumps({"message": document}, separators=(",", ":"), ensure_ascii=False).encode()

    async def _post(self, body: bytes, access_token: str) -> tuple[int, bytes, str | None]:
        session = self._session
        if session is None:
            raise RuntimeError(f"provider {self.name} is not started (or closed)")
        headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        try:
            async with session.post(self._send_url, data=body, headers=headers) as response:
                return (
                    response.status,
                    await http.read_answer(response),
                    response.headers.get("Retry-After"),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise http.connection_failure(exc) from None

    async def _send_one(self, message: Message, token: str) -> str | _Failure:
        """The FCM message name, or why FCM refused this token."""
        body = self._body(message, token)
        access_token = await self._token()
        status, answer, retry_after = await self._post(body, access_token)
        if status == 401:  # the access token was revoked or expired early: renew once
            access_token = await self._token(stale=access_token)
            status, answer, retry_after = await self._post(body, access_token)
        if status == 200:
            parsed = http.json_object(answer)
            name = parsed.get("name") if parsed else None
            return str(name) if name else ""
        wait = http.parse_retry_after(retry_after, self._clock.now())
        return _failure(status, answer, wait)

    async def send(self, message: Message) -> SendResult:
        tokens = list(dict.fromkeys(message.to.push_tokens))  # each device once
        if not tokens:
            raise PermanentError("no_address: no push token")
        results = await asyncio.gather(
            *(self._send_one(message, token) for token in tokens), return_exceptions=True
        )
        accepted: list[str] = []
        dead: list[str] = []
        failures: list[ProviderError] = []
        for token, result in zip(tokens, results, strict=True):
            if isinstance(result, str):
                accepted.append(result)
            elif isinstance(result, _Failure):
                failures.append(result.error)
                if result.dead_token:
                    dead.append(token)
            elif isinstance(result, ProviderError):
                failures.append(result)
            else:
                raise result  # a bug or a cancellation: not ours to classify
        if accepted:
            return SendResult(
                provider_message_id=accepted[0] or None, invalid_push_tokens=tuple(dead)
            )
        transient = [error for error in failures if isinstance(error, TransientError)]
        if transient:
            waits = [error.retry_after for error in transient if error.retry_after is not None]
            raise TransientError(transient[0].reason, retry_after=max(waits) if waits else None)
        raise PermanentError(failures[0].reason, invalid_push_tokens=tuple(dead))

    async def probe(self) -> None:
        """A token grant: checks the key, the account and the token endpoint; nothing is sent."""
        try:
            await self._grant()
        except TransientError as exc:
            raise ProviderError(exc.reason) from None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

"""The `twilio` provider: Twilio's Programmable Messaging REST API (2010-04-01).

`POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json`, form fields `To`,
`From` (the message's `from`, else the configured one) or
`MessagingServiceSid`, and `Body`, with HTTP Basic auth (account SID, auth
token). The answer's `sid` is the provider message id. Twilio's error JSON
(`{"code", "message", "more_info", "status"}`) becomes the reason
`twilio_<code>: <message>`. 408, 429 and 5xx are transient (`Retry-After`
honoured); any other 4xx is permanent. Twilio's Messages API takes no
idempotency key, so a call in flight at a crash may be repeated on recovery.

With `server.public_url`, every message carries `StatusCallback =
{public_url}/v1/receipts/twilio/{name}?m=<idempotency key>`: Twilio posts each status
change there (`daemon.api.receipts`), and the key names the recipient even before the
send's outcome is written (the signature covers the query string).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import aiohttp

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra.clock import Clock, SystemClock
from daemon.providers import http
from daemon.providers.base import Message, SendResult
from daemon.providers.settings import TwilioProviderSettings


def error_reason(status: int, body: bytes) -> str:
    """`twilio_<code>: <message>` from Twilio's error JSON, else `http_<status>: <body>`."""
    error = http.json_object(body)
    if error is not None and error.get("code") is not None:
        message = " ".join(str(error.get("message") or "").split())
        return f"twilio_{error['code']}: {message}"[: http.REASON_BODY_CHARS + 20]
    return http.status_reason(status, body)


class TwilioProvider:
    """Sends each SMS as one Messages.json call."""

    writes_unsubscribe_url = False  # the engine signs it only if a template reads it

    def __init__(
        self, name: str, settings: TwilioProviderSettings, *, clock: Clock | None = None,
        public_url: str | None = None,
    ) -> None:
        self.name = name
        self._status_callback = (
            f"{public_url.rstrip('/')}/v1/receipts/twilio/{quote(name, safe='')}?m="
            if public_url else None)
        self.settings = settings
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        account = settings.base_url.rstrip("/") + f"/2010-04-01/Accounts/{settings.account_sid}"
        self._messages_url = account + "/Messages.json"
        self._account_url = account + ".json"

    def __repr__(self) -> str:
        return f"TwilioProvider(name={self.name!r}, account_sid={self.settings.account_sid!r})"

    async def start(self) -> None:
        if self._session is None:
            credentials = (
                f"{self.settings.account_sid}:{self.settings.auth_token.get_secret_value()}"
            )
            self._session = http.new_session(
                concurrency=self.settings.concurrency,
                timeout=self.settings.timeout,
                headers={
                    "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()
                },
            )

    def _form(self, message: Message) -> dict[str, str]:
        if not message.to.phone:
            raise PermanentError("no_address: no phone number")
        body = message.content.get("body")
        if not isinstance(body, str) or not body:
            raise PermanentError("invalid_content: an SMS needs a body")
        form = {"To": message.to.phone, "Body": body}
        sender: Any = message.content.get("from") or self.settings.from_
        if sender:
            form["From"] = str(sender)
        else:
            assert self.settings.messaging_service_sid is not None  # settings require one
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        if self._status_callback is not None:
            form["StatusCallback"] = self._status_callback + quote(message.idempotency_key,
                                                                   safe=":")
        return form

    async def send(self, message: Message) -> SendResult:
        session = self._session
        if session is None:
            raise RuntimeError(f"provider {self.name} is not started (or closed)")
        form = self._form(message)
        try:
            async with session.post(self._messages_url, data=form) as response:
                answer = await http.read_answer(response)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise http.connection_failure(exc) from None
        if 200 <= status < 300:
            parsed = http.json_object(answer)
            sid = parsed.get("sid") if parsed else None
            return SendResult(provider_message_id=str(sid) if sid else None)
        reason = error_reason(status, answer)
        if http.is_transient_status(status):
            wait = http.parse_retry_after(retry_after, self._clock.now())
            raise TransientError(reason, retry_after=wait)
        raise PermanentError(reason)

    async def probe(self) -> None:
        """`GET` the account resource: checks the URL, the SID and the auth token."""
        session = self._session
        if session is None:
            raise RuntimeError(f"provider {self.name} is not started (or closed)")
        try:
            async with session.get(self._account_url) as response:
                answer = await http.read_answer(response)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(http.connection_failure(exc).reason) from None
        if status != 200:
            raise ProviderError(error_reason(status, answer))

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

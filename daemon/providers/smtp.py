"""The `smtp` provider: a pool of long-lived aiosmtplib connections.

`pool_size` connections are opened lazily and reused across messages (never a
connection per message). A connection the server dropped while idle is noticed
(aiosmtplib tracks connection loss) and reopened on its next use; one idle for
a while is checked with NOOP first. When a reused connection turns out dead
before the message's DATA was sent (a disconnect, or 421 "closing"), the
message is retried once on a fresh connection: nothing was transferred, so
this cannot duplicate it.

Replies: 4xx = transient, 5xx = permanent, reason `smtp_<code>: <server text>`.
Connection errors, timeouts, TLS and AUTH failures while connecting are
transient (a misconfigured server fails every message; retries then fail them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

import aiosmtplib

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra.clock import Clock, SystemClock
from daemon.infra.logs import get_logger
from daemon.providers import mime
from daemon.providers.base import Message, SendResult
from daemon.providers.settings import SmtpProviderSettings

log = get_logger(__name__)

# A connection unused for this long is checked with NOOP before a message (NATs and
# servers drop idle connections silently; the check costs one round trip, rarely).
IDLE_CHECK_AFTER = 30.0
_REASON_CHARS = 200


def _reply_reason(code: int, text: str) -> str:
    return f"smtp_{code}: {' '.join(text.split())}"[: _REASON_CHARS + 10]


def _classify_reply(exc: aiosmtplib.SMTPResponseException) -> ProviderError:
    reason = _reply_reason(exc.code, exc.message)
    if 400 <= exc.code < 500:
        return TransientError(reason)
    return PermanentError(reason)


def _connection_failure(exc: BaseException) -> TransientError:
    if isinstance(exc, TimeoutError):
        return TransientError("timeout")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return TransientError("smtp_connect: " + _reply_reason(exc.code, exc.message))
    if isinstance(exc, ssl.SSLError):
        return TransientError(f"tls_error: {exc.reason or type(exc).__name__}")
    return TransientError(f"connection_error: {type(exc).__name__}")


class _RetryOnFreshConnection(Exception):
    """The connection died before DATA: the message was not transferred."""


def _failure_of(retry: _RetryOnFreshConnection) -> ProviderError:
    """The error to report when a connection died before DATA and no retry is left."""
    cause = retry.__cause__
    if isinstance(cause, aiosmtplib.SMTPResponseException):  # 421: the server is closing
        return _classify_reply(cause)
    return _connection_failure(cause or retry)


class _Connection:
    """One pooled SMTP session, opened lazily and reopened after a drop."""

    def __init__(self, factory: Callable[[], aiosmtplib.SMTP], clock: Clock) -> None:
        self._factory = factory
        self._clock = clock
        self._client: aiosmtplib.SMTP | None = None
        self._last_used = 0.0

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def open(self) -> aiosmtplib.SMTP:
        """A fresh session (connect, EHLO, STARTTLS and AUTH as configured)."""
        self.drop()
        client = self._factory()
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise _connection_failure(exc) from None
        self._client = client
        self._last_used = self._clock.monotonic()
        return client

    async def session(self) -> tuple[aiosmtplib.SMTP, bool]:
        """(a usable session, whether it was reused)."""
        client = self._client
        if client is not None and client.is_connected:
            if self._clock.monotonic() - self._last_used < IDLE_CHECK_AFTER:
                return client, True
            try:
                await client.noop()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
            except BaseException:
                self.drop()  # cancelled mid-NOOP: the session state is unknown
                raise
            else:
                self._last_used = self._clock.monotonic()
                return client, True
        return await self.open(), False

    async def transaction(self, client: aiosmtplib.SMTP, envelope: mime.Envelope) -> str:
        """MAIL, RCPT, DATA; returns the server's final reply text."""
        data_sent = False
        try:
            await client.mail(envelope.sender)
            await client.rcpt(envelope.recipient)
            data_sent = True
            response = await client.data(envelope.data)
        except aiosmtplib.SMTPResponseException as exc:
            if not client.is_connected:  # 421: the server is closing
                self.drop()
                if not data_sent:
                    raise _RetryOnFreshConnection from exc
            elif not data_sent:
                await self._reset(client)
            raise _classify_reply(exc) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.drop()
            if not data_sent and not isinstance(exc, TimeoutError):
                raise _RetryOnFreshConnection from exc
            raise _connection_failure(exc) from None
        except BaseException:
            self.drop()  # cancelled mid-transaction: the session state is unknown
            raise
        self._last_used = self._clock.monotonic()
        return response.message

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        """RSET after a refused MAIL/RCPT, so that the next message starts a clean envelope."""
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self.drop()
        except BaseException:
            self.drop()
            raise

    def drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def quit(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        if client.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit(timeout=2.0)
        client.close()


class SmtpProvider:
    """Sends each email through a pool of `pool_size` kept-alive SMTP sessions."""

    writes_unsubscribe_url = True  # List-Unsubscribe (RFC 8058)

    def __init__(
        self, name: str, settings: SmtpProviderSettings, *, clock: Clock | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock or SystemClock()
        self._tls_context: ssl.SSLContext | None = None
        self._local_hostname = "localhost"
        self._pool: asyncio.LifoQueue[_Connection] | None = None

    def __repr__(self) -> str:
        return f"SmtpProvider(name={self.name!r}, host={self.settings.host!r})"

    async def start(self) -> None:
        if self._pool is not None:
            return
        if self.settings.tls != "none":
            # Loading the CA store reads files: off the event loop.
            self._tls_context = await asyncio.to_thread(self._make_tls_context)
        # getfqdn() may resolve names: off the event loop, once.
        self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        pool: asyncio.LifoQueue[_Connection] = asyncio.LifoQueue()
        for _ in range(self.settings.pool_size):
            pool.put_nowait(_Connection(self._client, self._clock))
        self._pool = pool

    def _make_tls_context(self) -> ssl.SSLContext:
        cafile = self.settings.tls_ca_file
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)

    def _client(self) -> aiosmtplib.SMTP:
        settings = self.settings
        password = settings.password.get_secret_value() if settings.password else None
        return aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.effective_port,
            username=settings.username,
            password=password if settings.username else None,
            local_hostname=self._local_hostname,
            timeout=settings.timeout,
            use_tls=settings.tls == "tls",
            start_tls=settings.tls == "starttls",
            tls_context=self._tls_context,
        )

    async def send(self, message: Message) -> SendResult:
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"provider {self.name} is not started (or closed)")
        if not message.to.email:
            raise PermanentError("no_address: no email address")
        try:
            envelope = mime.build(
                idempotency_key=message.idempotency_key,
                recipient=message.to.email,
                content=message.content,
                date=self._clock.now(),
                unsubscribe_url=message.unsubscribe_url,
            )
        except mime.InvalidEmail as exc:
            raise PermanentError(f"invalid_email: {exc}") from None
        connection = await pool.get()
        try:
            client, reused = await connection.session()
            try:
                await connection.transaction(client, envelope)
            except _RetryOnFreshConnection as exc:
                if not reused:
                    raise _failure_of(exc) from None
                client = await connection.open()
                try:
                    await connection.transaction(client, envelope)
                except _RetryOnFreshConnection as again:
                    raise _failure_of(again) from None
        finally:
            pool.put_nowait(connection)
        return SendResult(provider_message_id=envelope.message_id)

    async def probe(self) -> None:
        """Connect, EHLO, STARTTLS and AUTH as configured, then QUIT; nothing is sent."""
        connection = _Connection(self._client, self._clock)
        try:
            await connection.open()
        except TransientError as exc:
            raise ProviderError(exc.reason) from None
        finally:
            await connection.quit()

    async def close(self) -> None:
        """Wait for in-flight sends to give their connections back, then QUIT them all."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        connections = [await pool.get() for _ in range(self.settings.pool_size)]
        await asyncio.gather(*(connection.quit() for connection in connections))

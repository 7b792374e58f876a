"""An aiosmtpd server in the test's own event loop that records messages and connections."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session


@dataclass
class Sink:
    """What the server saw, and what it should answer."""

    messages: list[Envelope] = field(default_factory=list)
    connections: int = 0
    noops: int = 0
    open_sessions: list[SMTP] = field(default_factory=list)
    rcpt_reply: str | None = None  # e.g. "550 5.1.1 No such user"
    data_reply: str | None = None  # e.g. "451 4.3.0 Try again later"
    drop_on_next_mail: int = 0  # close the connection on the next N MAIL commands
    port: int = 0
    server: asyncio.AbstractServer | None = None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.drop_on_next_mail:
            self.drop_on_next_mail -= 1
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        self.messages.append(envelope)
        return "250 2.0.0 Ok: queued"

    def drop_all_connections(self) -> None:
        for session in self.open_sessions:
            if session.transport is not None:
                session.transport.close()

    async def close(self) -> None:
        self.drop_all_connections()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class _CountingSMTP(SMTP):
    def __init__(self, sink: Sink, **kwargs: Any) -> None:
        super().__init__(sink, **kwargs)
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink.connections += 1
        self._sink.open_sessions.append(self)
        super().connection_made(transport)

    async def smtp_NOOP(self, arg: str) -> None:
        self._sink.noops += 1
        await super().smtp_NOOP(arg)


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"mailer", b"s3cret")
    return AuthResult(success=ok, handled=False)  # let aiosmtpd answer 235 or 535


async def start_sink(
    *,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    auth: bool = False,
) -> Sink:
    sink = Sink()
    kwargs: dict[str, Any] = {"hostname": "sink.test"}
    if starttls is not None:
        kwargs.update(tls_context=starttls, require_starttls=True)
    if auth:
        kwargs.update(authenticator=_authenticate, auth_require_tls=True)
    loop = asyncio.get_running_loop()
    sink.server = await loop.create_server(
        lambda: _CountingSMTP(sink, **kwargs), "127.0.0.1", 0, ssl=implicit_tls
    )
    sink.port = sink.server.sockets[0].getsockname()[1]
    return sink

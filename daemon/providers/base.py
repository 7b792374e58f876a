"""The Provider protocol and the message it delivers.

A provider turns one rendered `Message` into one call to its service. It
returns a `SendResult` on acceptance and raises `TransientError` (worth a
retry: timeouts, 5xx, 429, SMTP 4xx) or `PermanentError` (other 4xx, SMTP 5xx,
invalid address) otherwise. The engine owns rate, concurrency and retries;
a provider only talks to its service.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.models import Channel
from daemon.providers.settings import ProviderSettings

# Set by the engine around a paced call: a provider that knows when its request went out
# (HTTP providers: when the headers are written, after any new connection is open) calls it
# with that moment, in event-loop time, so the campaign's rate is counted from there.
REQUEST_SENT: ContextVar[Callable[[float], None] | None] = ContextVar(
    "request_sent", default=None)


@dataclass(frozen=True, slots=True)
class Address:
    """Where a message goes; the channel decides which field is used."""

    email: str | None = None
    phone: str | None = None
    push_tokens: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Message:
    """One rendered message for one recipient of one run."""

    idempotency_key: str  # deterministic from run and recipient: retries and restarts reuse it
    campaign_id: str
    run_id: str
    channel: Channel
    profile_id: str
    to: Address
    # Rendered fields: email {from, reply_to?, subject, html?, text?}; sms {from?, body};
    # push {title, body, data?}.
    content: Mapping[str, Any]
    # Email: the RFC 8058 one-click URL, when a template or the provider reads it (else None).
    unsubscribe_url: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the provider said when it accepted a message."""

    provider_message_id: str | None = None
    # Push tokens the service reported as dead (FCM UNREGISTERED): the engine
    # removes them from the profile.
    invalid_push_tokens: tuple[str, ...] = field(default=())


class Provider(Protocol):
    """A configured delivery service."""

    @property
    def name(self) -> str:
        """The provider's name in the config (`[providers.NAME]`)."""

    @property
    def settings(self) -> ProviderSettings:
        """Its validated settings."""

    @property
    def writes_unsubscribe_url(self) -> bool:
        """Whether it puts `Message.unsubscribe_url` on the wire (SMTP's List-Unsubscribe):
        else an email's URL is signed only for the templates that read it."""

    async def start(self) -> None:
        """Open sessions/pools. Called once before the first send."""

    async def send(self, message: Message) -> SendResult:
        """Deliver one message, or raise TransientError / PermanentError."""

    async def probe(self) -> None:
        """Check credentials and reachability without sending (raises ProviderError)."""

    async def close(self) -> None:
        """Release sessions/pools after in-flight sends have finished."""

"""One recipient's delivery: its message (rendered), and what a provider's answer means.

Pure of I/O except for the template rendering: the campaign worker's senders (`sending.py`)
call these around the provider call.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from daemon.errors import PermanentError, ProviderError, TransientError
from daemon.infra.config import Config
from daemon.models import Channel, ExclusionReason
from daemon.planning import planner
from daemon.providers.base import Address, Message, SendResult
from daemon.store.engine import RunRow
from daemon.store.recipients import Claimed, OutcomeRow
from daemon.templates import CompiledContent, RenderError
from daemon.unsubscribe import url_for

# Failure reasons (`run_recipients.reason` of failed recipients); `error` has the details.
REJECTED = "rejected"  # a permanent error from the provider
RETRIES_EXHAUSTED = "retries_exhausted"  # transient errors up to delivery.max_attempts
RENDER_ERROR = "render_error"  # the templates failed for this recipient


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """The config keys delivery reads (refreshed on SIGHUP)."""

    max_attempts: int
    backoff_base: float
    backoff_max: float
    base_url: str

    @classmethod
    def from_config(cls, config: Config) -> DeliverySettings:
        return cls(config.delivery.max_attempts, config.delivery.backoff_base,
                   config.delivery.backoff_max, config.server.base_url)


class RunState(enum.Enum):
    WAITING = "waiting"  # frozen, before its first delivery time
    ACTIVE = "active"  # sending
    CLOSING = "closing"  # deadline, cancel or end: no new calls; ending once calls finish
    DONE = "done"


@dataclass(eq=False)
class RunExecution:
    """A running run on this instance: its queue of claimed recipients and its tallies."""

    row: RunRow
    campaign_variables: dict[str, Any]
    state: RunState = RunState.WAITING
    queue: deque[Claimed] = field(default_factory=deque)
    cursor: int = -1  # highest position claimed fresh
    fresh_exhausted: bool = False
    next_retry_at: datetime | None = None
    in_call: int = 0  # provider calls under way (their outcome not yet buffered)
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while in_call == 0
    unrecorded: int = 0  # claimed and neither written nor released
    ready: bool = False  # in the worker's round-robin of runs with work
    counts: dict[str, int] = field(default_factory=dict)
    calls: int = 0  # provider calls made by this instance
    progress_calls: int = 0  # calls at the last progress line
    progress_at: float = 0.0  # monotonic time of the last progress line
    started_mono: float = 0.0
    # (row, its scheduled_for in ISO 8601): formatted once per run, not per message.
    _scheduled_iso: tuple[RunRow, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.idle.set()

    def scheduled_iso(self) -> str:
        """`row.scheduled_for` as templates see it (`run.scheduled_for`)."""
        cached = self._scheduled_iso
        if cached is None or cached[0] is not self.row:
            cached = self._scheduled_iso = (self.row, self.row.scheduled_for.isoformat())
        return cached[1]

    def call_started(self) -> None:
        self.in_call += 1
        self.idle.clear()

    def call_ended(self) -> None:
        """The call's outcome is buffered (or the call was abandoned)."""
        self.in_call -= 1
        if self.in_call == 0:
            self.idle.set()

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def first_delivery(self) -> datetime:
        return self.row.started_at or self.row.scheduled_for


def variables(run: RunExecution, recipient: Claimed, unsubscribe_url: str | None
              ) -> dict[str, Any]:
    """What the templates see for this recipient."""
    context = dict(run.row.context)
    if recipient.context:
        context.update(recipient.context)
    return {
        "profile": {
            "id": recipient.profile_id, "email": recipient.email, "phone": recipient.phone,
            "push_tokens": list(recipient.push_tokens), "attributes": recipient.attributes,
        },
        "context": context,
        "campaign": dict(run.campaign_variables),  # the worker's: a template may change it
        "run": {"id": run.id, "scheduled_for": run.scheduled_iso()},
        "unsubscribe_url": unsubscribe_url,
    }


def build_message(
    run: RunExecution, recipient: Claimed, content: CompiledContent, channel: Channel,
    settings: DeliverySettings, unsubscribe_key: bytes | None, *,
    provider_writes_unsubscribe: bool = False,
) -> Message:
    """The rendered message (raises RenderError). Its idempotency key `<run_id>:<position>`
    is the same for every attempt, before and after a restart. An email's unsubscribe URL
    (an HMAC per message) is signed only when something reads it: a template, or a
    provider that writes `List-Unsubscribe`; otherwise templates see None and so does the
    provider."""
    unsubscribe = None
    if channel is Channel.EMAIL and unsubscribe_key is not None and (
            content.uses_unsubscribe_url or provider_writes_unsubscribe):
        unsubscribe = url_for(settings.base_url, unsubscribe_key, recipient.profile_id, channel,
                              recipient.email)
    rendered = content.render(variables(run, recipient, unsubscribe))
    return Message(
        idempotency_key=f"{run.id}:{recipient.position}",
        campaign_id=str(run.campaign_variables["id"]),
        run_id=run.id,
        channel=channel,
        profile_id=recipient.profile_id,
        to=Address(email=recipient.email, phone=recipient.phone,
                   push_tokens=recipient.push_tokens),
        content=rendered,
        unsubscribe_url=unsubscribe,
    )


def _row(run: RunExecution, recipient: Claimed, status: str, at: datetime, *,
         reason: str | None = None, error: str | None = None, calls: int = 1,
         message_id: str | None = None, retry_at: datetime | None = None,
         provider: str | None = None) -> OutcomeRow:
    return OutcomeRow(run.id, recipient.position, status, reason, error, calls, message_id,
                      retry_at, at, provider)


def render_failure(run: RunExecution, recipient: Claimed, exc: RenderError, at: datetime
                   ) -> OutcomeRow:
    return _row(run, recipient, "failed", at, reason=RENDER_ERROR, error=exc.reason, calls=0)


def unsubscribed(run: RunExecution, recipient: Claimed, at: datetime) -> OutcomeRow:
    """The profile unsubscribed from the channel after the run started: not sent."""
    return _row(run, recipient, "excluded", at, reason=ExclusionReason.OPTED_OUT.value, calls=0)


def sent(run: RunExecution, recipient: Claimed, result: SendResult, at: datetime,
         provider: str | None = None) -> OutcomeRow:
    # Receipts are looked up by (provider, provider_message_id): both are recorded.
    return _row(run, recipient, "sent", at, message_id=result.provider_message_id,
                provider=provider)


def after_error(
    run: RunExecution, recipient: Claimed, error: ProviderError, at: datetime,
    settings: DeliverySettings,
) -> OutcomeRow:
    """The outcome of a failed call: failed now (permanent, or retries exhausted), excluded
    (a retry could only start after the deadline), or pending with a retry time."""
    if isinstance(error, PermanentError) or not isinstance(error, TransientError):
        return _row(run, recipient, "failed", at, reason=REJECTED, error=error.reason)
    attempts = recipient.attempts + 1
    decision = planner.after_transient(
        attempts=attempts, max_attempts=settings.max_attempts, now=at,
        delay=planner.backoff_delay(attempts, settings.backoff_base, settings.backoff_max),
        retry_after=error.retry_after, deadline=run.row.deadline,
    )
    if decision.exhausted:
        return _row(run, recipient, "failed", at, reason=RETRIES_EXHAUSTED, error=error.reason)
    if decision.past_deadline:
        reason = run.row.deadline_reason or ExclusionReason.CAMPAIGN_END
        return _row(run, recipient, "excluded", at, reason=reason.value, error=error.reason)
    return _row(run, recipient, "pending", at, error=error.reason, retry_at=decision.retry_at)

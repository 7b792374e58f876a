"""A receipt, the delivery statuses and their order, and what each provider's words mean.

A recipient's `delivery` is the greatest status heard for its message, in the order
queued < sent < delivered < failed < bounced. Taking the greatest makes receipts
idempotent (the same one twice changes nothing) and their arrival order irrelevant,
and a final status (delivered, failed, bounced) never goes back to an intermediate one
(queued, sent). A message reported delivered and later bounced (an email bounced after
the receiving server accepted it) ends bounced.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime


class DeliveryStatus(enum.StrEnum):
    """`run_recipients.delivery` (mirrored by the SQL CHECK in migration 0012)."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    BOUNCED = "bounced"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def final(self) -> bool:
        return self in FINAL


_RANK = {status: rank for rank, status in enumerate(DeliveryStatus, start=1)}
FINAL = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.FAILED, DeliveryStatus.BOUNCED})


def rank(status: str | None) -> int:
    """The order of a stored `delivery` value (0: none yet)."""
    return _RANK[DeliveryStatus(status)] if status else 0


# Twilio's MessageStatus values (https://www.twilio.com/docs/messaging/api/message-resource
# #message-status-values) in our words. `undelivered` is the carrier's refusal: a bounce.
TWILIO_STATUSES: dict[str, DeliveryStatus] = {
    "accepted": DeliveryStatus.QUEUED,
    "scheduled": DeliveryStatus.QUEUED,
    "queued": DeliveryStatus.QUEUED,
    "sending": DeliveryStatus.QUEUED,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.DELIVERED,
    "partially_delivered": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.BOUNCED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}

# Our idempotency key `<run_id>:<position>` inside a message id: as is (webhook ids, with
# `.<n>` per push token), or =XX-escaped inside an SMTP Message-ID `<run_..=3A5@domain>`.
_KEY = re.compile(
    r"^<?(run_[0-9A-Za-z]{1,64})(?::|=3A)([0-9]{1,18})(?:\.[0-9]{1,6})?(?:@[^>]*)?>?$")


def recipient_key(message_id: str) -> tuple[str, int] | None:
    """(run_id, position) when `message_id` carries our idempotency key, else None."""
    match = _KEY.match(message_id)
    if match is None:
        return None
    return match.group(1), int(match.group(2))


@dataclass(frozen=True, slots=True)
class Receipt:
    """One status report for one message of one provider."""

    provider: str
    message_id: str  # the provider's id (Twilio's sid, the gateway's id) or our key
    status: DeliveryStatus
    reason: str | None = None  # the provider's words (Twilio's ErrorCode, a bounce reason)
    occurred_at: datetime | None = None  # when the provider says it happened
    # The recipient, when the receipt carries our key (Twilio's callback URL, a webhook id
    # in key form): then it is known even before the send's outcome is written.
    key: tuple[str, int] | None = None


class Result(enum.StrEnum):
    """What became of one receipt (`campaignd_receipts_total{result}`)."""

    APPLIED = "applied"  # the recipient's delivery changed
    UNCHANGED = "unchanged"  # known, but it said nothing new (a repeat, or an older status)
    PENDING = "pending"  # its recipient's outcome is not written yet: kept, applied later
    UNKNOWN = "unknown"  # no message of this provider has this id (404); kept a while

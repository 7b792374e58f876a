"""Domain types and statuses. The string values are the same as the SQL CHECKs."""

from __future__ import annotations

import enum
from typing import NewType

CampaignId = NewType("CampaignId", str)
AudienceId = NewType("AudienceId", str)
ProfileId = NewType("ProfileId", str)
RunId = NewType("RunId", str)

# Ids chosen by clients: 1-128 chars of A-Z a-z 0-9 . _ : @ -
ID_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    LIVE = "live"
    PAUSED = "paused"  # SPEC §9.1: no call starts; resumed to live
    COMPLETED = "completed"
    STOPPED = "stopped"


class RunStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"  # reported for a running run of a paused campaign (never stored)
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED)


class RecipientStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    EXCLUDED = "excluded"


class ExclusionReason(enum.StrEnum):
    TIME_CAP = "time_cap"
    CAMPAIGN_END = "campaign_end"
    OPTED_OUT = "opted_out"
    NO_ADDRESS = "no_address"
    DUPLICATE = "duplicate"
    CANCELLED = "cancelled"


class EndReason(enum.StrEnum):
    DELIVERED = "delivered"
    TIME_CAP = "time_cap"
    CAMPAIGN_END = "campaign_end"
    CANCELLED = "cancelled"
    ERROR = "error"


class TokenScope(enum.StrEnum):
    ADMIN = "admin"
    TRIGGER = "trigger"


class NotificationEvent(enum.StrEnum):
    """Lifecycle notifications (SPEC §9.4), as `type` in their JSON and in `events = [...]`."""

    RUN_STARTED = "run.started"
    RUN_PAUSED = "run.paused"
    RUN_RESUMED = "run.resumed"
    RUN_REPLANNED = "run.replanned"
    RUN_FINISHED = "run.finished"
    CAMPAIGN_COMPLETED = "campaign.completed"


class NotificationStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"

"""The API's request and response models (pydantic v2); the OpenAPI document is built from them.

Request models validate; response models document (handlers build plain dicts
in the same shape, and the OpenAPI test checks real answers against them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from daemon.api.fields import (
    Email,
    Id,
    JsonObject,
    Name,
    Phone,
    PushToken,
    QueryModel,
    RequestModel,
    ResponseModel,
    Timestamp,
    is_address,
)
from daemon.api.validation import LIST, ONE
from daemon.models import CampaignStatus, Channel, EndReason, RecipientStatus, RunStatus
from daemon.planning.windows import DAY_SECONDS, DAYS, parse_clock
from daemon.providers.mime import HEADER_CONTROLS
from daemon.templates import is_template

# -- errors -------------------------------------------------------------------------------------


class ProblemFieldError(ResponseModel):
    loc: str = Field(description="The field, dotted: `throttle.rate_per_second`, `recipients.3`.")
    msg: str


class ProblemBody(ResponseModel):
    """An error (RFC 9457 problem details) with a stable machine `code`."""

    type: str
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine code: see the error table in docs/api.md.")
    errors: list[ProblemFieldError]


# -- campaigns ----------------------------------------------------------------------------------

Template = Annotated[str, StringConstraints(min_length=1, max_length=500_000)]
ShortTemplate = Annotated[str, StringConstraints(min_length=1, max_length=2_000)]


def _address_or_template(value: str | None) -> str | None:
    if value is not None and not is_template(value) and not is_address(value):
        raise ValueError("must be an email address (`a@b.c` or `Name <a@b.c>`) or a template")
    return value


class EmailContent(RequestModel):
    """Email content: `html` or `text` (or both). Every field is a Jinja2 template."""

    from_: ShortTemplate = Field(alias="from")
    reply_to: ShortTemplate | None = None
    subject: ShortTemplate
    html: Template | None = None
    text: Template | None = None

    _addresses = field_validator("from_", "reply_to")(_address_or_template)

    @field_validator("subject")
    @classmethod
    def _one_line(cls, value: str) -> str:
        found = HEADER_CONTROLS.search(value)
        if found:
            raise ValueError(f"must not hold control characters (found U+{ord(found[0]):04X}; "
                             "a tab is allowed)")
        return value

    @model_validator(mode="after")
    def _html_or_text(self) -> EmailContent:
        if self.html is None and self.text is None:
            raise ValueError("an email needs html or text (or both)")
        return self


class SmsContent(RequestModel):
    """SMS content: `from` (a sender id or number; else the provider's) and `body`."""

    from_: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
        default=None, alias="from"
    )
    body: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]


class PushContent(RequestModel):
    """Push content; string values of `data` are templates too."""

    title: ShortTemplate
    body: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    data: JsonObject | None = None


CONTENT_MODELS: dict[Channel, type[RequestModel]] = {
    Channel.EMAIL: EmailContent,
    Channel.SMS: SmsContent,
    Channel.PUSH: PushContent,
}
_CONTENT_SCHEMA = WithJsonSchema({
    "description": "The message for the campaign's channel (its fields are Jinja2 templates).",
    "anyOf": [
        {"$ref": "#/components/schemas/EmailContent"},
        {"$ref": "#/components/schemas/SmsContent"},
        {"$ref": "#/components/schemas/PushContent"},
    ],
})
# Validated against the channel's model by the handler (it depends on `channel`).
Content = Annotated[dict[str, Any], _CONTENT_SCHEMA]


DayName = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ClockTime = Annotated[str, Field(pattern=r"^\d\d:\d\d(:\d\d)?$", examples=["08:00"])]


class SendWindow(RequestModel):
    """A weekly window (SPEC §9.2): open on `days`, from `from` to `to` (wall time in
    `timezone`, DST included)."""

    timezone: str = Field(description="An IANA zone name: `Europe/Paris`.", max_length=64)
    days: list[DayName] | None = Field(
        default=None, min_length=1, max_length=7,
        description="Days open (`mon`..`sun`); absent: every day.")
    from_: ClockTime = Field(alias="from", description="Opening, `HH:MM` (or `HH:MM:SS`).")
    to: ClockTime = Field(description="Closing, `HH:MM` or `HH:MM:SS` (up to `24:00`), after "
                                      "`from`.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Paris)") from None
        return value

    @field_validator("from_", "to")
    @classmethod
    def _clock(cls, value: str, info: ValidationInfo) -> str:
        seconds = parse_clock(value)
        opening = info.data.get("from_")
        if info.field_name == "to" and opening is not None and seconds <= parse_clock(opening):
            raise ValueError(f"must be later than from ({opening})")
        if info.field_name == "from_" and seconds == DAY_SECONDS:
            raise ValueError("24:00 is the end of a day, not an opening")
        return value


def _shape(value: Any) -> str:
    return LIST if isinstance(value, list) else ONE


OneOrList = Annotated[
    Annotated[SendWindow, Tag(ONE)] | Annotated[
        Annotated[list[SendWindow], Field(min_length=1, max_length=50)], Tag(LIST)],
    Discriminator(_shape, custom_error_type="window_shape",
                  custom_error_message="must be a window object or a list of 1 to 50"),
]


class Schedule(RequestModel):
    start_at: Timestamp | None = Field(
        default=None, description="First delivery no earlier than this (RFC 3339, with offset)."
    )
    end_at: Timestamp | None = Field(
        default=None, description="No trigger or delivery after this. Absent: a one-shot campaign."
    )

    windows: OneOrList | None = Field(
        default=None,
        description="When sending is allowed (SPEC §9.2): a window or a list (their union); "
                    "absent or null: always.")

    def stored_windows(self) -> list[dict[str, Any]] | None:
        """The windows as stored: always a list, `days` filled in."""
        if self.windows is None:
            return None
        given = self.windows if isinstance(self.windows, list) else [self.windows]
        return [{"timezone": w.timezone, "days": list(w.days or DAYS), "from": w.from_,
                 "to": w.to} for w in given]

    @field_validator("end_at")
    @classmethod
    def _after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start_at")
        if value is not None and start is not None and value <= start:
            raise ValueError("must be later than start_at")
        return value


class Throttle(RequestModel):
    rate_per_second: Annotated[int, Field(ge=1, le=2000)] | None = Field(
        default=None, description="Messages per second, 1 to `limits.max_rate_per_second`."
    )
    pool: Id | None = Field(
        default=None, description="A rate pool (SPEC §9.3) whose limit the campaign shares "
                                  "with the pool's other campaigns, on every daemon.")

    @field_validator("rate_per_second")
    @classmethod
    def _within_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = (info.context or {}).get("max_rate_per_second")
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"must be at most {limit} (limits.max_rate_per_second)")
        return value


class CampaignCreate(RequestModel):
    id: Id | None = Field(default=None, description="Chosen by you; generated when absent.")
    name: Name
    channel: Channel = Field(strict=False)
    content: Content
    audience: Id | None = Field(default=None, description="The default audience of triggers.")
    schedule: Schedule | None = None
    throttle: Throttle | None = None


class CampaignPatch(RequestModel):
    """Fields given replace the stored ones; `schedule`/`throttle` keys replace one by one."""

    name: Name | None = None
    channel: Channel | None = Field(default=None, strict=False)
    content: Content | None = None
    audience: Id | None = None
    schedule: Schedule | None = None
    throttle: Throttle | None = None


class SendWindowOut(ResponseModel):
    timezone: str
    days: list[DayName]
    from_: str = Field(alias="from")
    to: str


class ScheduleOut(ResponseModel):
    start_at: datetime | None
    end_at: datetime | None
    windows: list[SendWindowOut] | None = None


class ThrottleOut(ResponseModel):
    rate_per_second: int | None
    pool: str | None = None


class Campaign(ResponseModel):
    id: str
    name: str
    channel: Channel
    content: dict[str, Any]
    audience: str | None
    schedule: ScheduleOut
    throttle: ThrottleOut
    status: CampaignStatus
    created_at: datetime
    updated_at: datetime
    activated_at: datetime | None
    finished_at: datetime | None


class CampaignPage(ResponseModel):
    items: list[Campaign]
    next_cursor: str | None


class PageQuery(QueryModel):
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,500}$")] | None = Field(
        default=None, description="`next_cursor` of the previous page, as given."
    )


class CampaignListQuery(PageQuery):
    status: CampaignStatus | None = None


# -- triggers -----------------------------------------------------------------------------------


class InlineRecipient(RequestModel):
    """A recipient given in the trigger; a stored profile with this id is the base."""

    profile_id: Id
    email: Email | None = None
    phone: Phone | None = None
    push_tokens: Annotated[list[PushToken], Field(max_length=100)] | None = None
    push_token: PushToken | None = None
    attributes: JsonObject | None = None
    context: JsonObject | None = Field(
        default=None, description="Overlays the trigger's context for this recipient."
    )

    @model_validator(mode="after")
    def _one_token_form(self) -> InlineRecipient:
        if self.push_token is not None and self.push_tokens is not None:
            raise ValueError("give push_token or push_tokens, not both")
        return self


MAX_INLINE_RECIPIENTS = 1_000_000  # the schema's bound; the configured limit is lower


class TriggerBody(RequestModel):
    """All optional: `audience` and `recipients` exclusive; neither: the campaign's audience."""

    context: JsonObject | None = Field(default=None, description="Seen by templates as `context`.")
    audience: Id | None = None
    recipients: list[InlineRecipient] | None = Field(
        default=None, min_length=1, max_length=MAX_INLINE_RECIPIENTS,
        description="At most `limits.max_inline_recipients` (10,000 by default).",
    )

    @field_validator("recipients", mode="before")
    @classmethod
    def _count(cls, value: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_inline_recipients")
        if isinstance(value, list) and limit is not None and len(value) > limit:
            raise ValueError(
                f"at most {limit} recipients per trigger (limits.max_inline_recipients)"
            )
        return value

    @model_validator(mode="after")
    def _exclusive(self) -> TriggerBody:
        if self.audience is not None and self.recipients is not None:
            raise ValueError("give audience or recipients, not both")
        return self


class TriggerQuery(QueryModel):
    dry_run: bool = Field(default=False, description="Validate and preview; create nothing.")


class RunLinks(ResponseModel):
    run: str


class TriggerAccepted(ResponseModel):
    run_id: str
    campaign_id: str
    status: RunStatus
    scheduled_for: datetime
    links: RunLinks


class OpenInterval(ResponseModel):
    from_: datetime = Field(alias="from")
    to: datetime


class TriggerPreview(ResponseModel):
    """What the run would do if it started at `scheduled_for`; nothing is created."""

    targeted: int
    eligible: int
    excluded: dict[str, int] = Field(description="Planned exclusions, by reason.")
    rate_per_second: int | None
    scheduled_for: datetime
    deadline: datetime | None
    deadline_reason: str | None = Field(description="`time_cap` or `campaign_end`.")
    expected_duration_seconds: float | None = Field(description="None when unthrottled.")
    expected_end: datetime | None
    capacity: int | None = Field(
        default=None, description="Recipients the plan can reach (None: unthrottled).")
    open_intervals: list[OpenInterval] | None = Field(
        default=None, description="With send windows: the open time counted (at most 100).")


# -- runs ---------------------------------------------------------------------------------------


class Excluded(ResponseModel):
    time_cap: int
    campaign_end: int
    opted_out: int
    no_address: int
    duplicate: int
    cancelled: int


class DeliveryCounts(ResponseModel):
    """Over the `sent` recipients: what their providers' receipts said (SPEC §9.5)."""

    delivered: int
    bounced: int
    failed: int
    unknown: int = Field(description="Sent, with no final receipt (yet).")


class Counts(ResponseModel):
    targeted: int
    sent: int
    failed: int
    pending: int
    excluded: Excluded
    delivery: DeliveryCounts


class SendWindowState(ResponseModel):
    open: bool
    closes_at: datetime | None = Field(description="When open: when sending stops.")
    next_opening: datetime | None = Field(description="When closed: when sending resumes.")
    timezone: str = Field(description="The (first) window's zone, to show times in.")


class RunPool(ResponseModel):
    name: str
    share_per_second: float = Field(description="Calls/s the campaign may spend now, over "
                                                "every daemon (0 while none holds a share).")


class RunReport(ResponseModel):
    id: str
    campaign_id: str
    status: RunStatus
    created_at: datetime
    scheduled_for: datetime
    started_at: datetime | None
    finished_at: datetime | None
    rate_per_second: int | None
    deadline: datetime | None
    end_reason: EndReason | None
    counts: Counts
    rerun_of: str | None = Field(
        default=None, description="The run this one reruns (`POST /v1/runs/{id}/rerun`).")
    reruns: list[str] = Field(default_factory=list,
                              description="The reruns of this run, oldest first.")
    send_window: SendWindowState | None = Field(
        default=None, description="With send windows, in a run's own report: open or not now.")
    pool: RunPool | None = Field(
        default=None, description="A pooled campaign's run, in its own report: the pool and "
                                  "the campaign's current share of it.")


class RunPage(ResponseModel):
    items: list[RunReport]
    next_cursor: str | None


class Totals(Counts):
    runs: int


class CampaignReport(ResponseModel):
    campaign_id: str
    status: CampaignStatus
    totals: Totals
    runs: list[RunReport] = Field(description="The most recent runs first (at most 100).")
    runs_next_cursor: str | None = Field(
        description="More runs: `GET /v1/campaigns/{id}/runs?cursor=`."
    )


class RecipientDelivery(ResponseModel):
    status: Literal["queued", "sent", "delivered", "failed", "bounced"]
    reason: str | None = Field(description="The provider's words (a Twilio error code, a "
                                           "bounce reason).")
    at: datetime | None


class Recipient(ResponseModel):
    position: int
    profile_id: str
    status: RecipientStatus
    reason: str | None
    error: str | None
    attempts: int
    provider_message_id: str | None
    updated_at: datetime | None
    delivery: RecipientDelivery | None = Field(
        description="The latest news of a sent message from its provider (receipts).")


class RecipientPage(ResponseModel):
    items: list[Recipient]
    next_cursor: str | None


class RecipientQuery(PageQuery):
    status: RecipientStatus | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    delivery: Literal["queued", "sent", "delivered", "failed", "bounced", "unknown"] | None = (
        Field(default=None, description="By receipt: a delivery status, or `unknown` (sent, no "
                                        "final receipt yet)."))

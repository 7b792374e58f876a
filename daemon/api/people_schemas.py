"""Profile, audience and bulk-import models (the rest of the API's are in `schemas.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from daemon.api.fields import (
    Email,
    Id,
    JsonObject,
    Phone,
    PushToken,
    QueryModel,
    RequestModel,
    ResponseModel,
)


class SubscriptionsPatch(RequestModel):
    email: bool | None = None
    sms: bool | None = None
    push: bool | None = None


class ProfileBody(RequestModel):
    """A whole profile; absent `subscriptions` keep the stored ones (new: all subscribed)."""

    id: Id | None = Field(default=None, description="If given, must equal the path's id.")
    email: Email | None = None
    phone: Phone | None = None
    push_tokens: Annotated[list[PushToken], Field(max_length=100)] = Field(default_factory=list)
    attributes: JsonObject = Field(default_factory=dict)
    subscriptions: SubscriptionsPatch | None = None


class ProfileLine(RequestModel):
    """One NDJSON line of `POST /v1/profiles/import`: fields given replace the stored ones
    (`attributes` are merged key by key); absent fields are kept."""

    id: Id
    email: Email | None = None
    phone: Phone | None = None
    push_tokens: Annotated[list[PushToken], Field(max_length=100)] | None = None
    attributes: JsonObject | None = None
    subscriptions: SubscriptionsPatch | None = None


class MemberLine(RequestModel):
    """One NDJSON line of `POST /v1/audiences/{id}/members`."""

    profile_id: Id


class Subscriptions(ResponseModel):
    email: bool
    sms: bool
    push: bool


class Profile(ResponseModel):
    id: str
    email: str | None
    phone: str | None
    push_tokens: list[str]
    attributes: dict[str, Any]
    subscriptions: Subscriptions
    created_at: datetime
    updated_at: datetime


class AudienceBody(RequestModel):
    name: Annotated[str, StringConstraints(max_length=200)] | None = None


class Audience(ResponseModel):
    id: str
    name: str | None
    size: int = Field(description="How many profiles are members.")
    created_at: datetime
    updated_at: datetime


class ImportQuery(QueryModel):
    audience: Id | None = Field(default=None, description="Also add every imported profile.")


class LineError(ResponseModel):
    line: int = Field(description="1-based line number in the body (CSV: the header is line 1).")
    reason: str


class ImportResult(ResponseModel):
    received: int = Field(description="Lines read (empty lines and the CSV header excluded).")
    imported: int = Field(description="Good lines, upserted.")
    created: int
    updated: int
    rejected: int
    errors: list[LineError] = Field(description="The first 100 rejected lines.")
    audience: str | None
    added_to_audience: int


class MembersResult(ResponseModel):
    received: int
    added: int
    already_members: int
    rejected: int = Field(description="Bad lines and unknown profile ids.")
    errors: list[LineError] = Field(description="The first 100 rejected lines.")



"""Field types shared by the API models: ids, addresses, timestamps, bounded JSON objects.

Request models are strict (no "5" for 5, no 1 for true) and refuse unknown
fields, so that a typo is an error rather than a silently ignored key. Enums and
timestamps relax strictness where JSON can only carry strings.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
)

from daemon.models import ID_PATTERN

EMAIL_PATTERN = r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$"
PHONE_PATTERN = r"^\+[1-9][0-9]{1,14}$"
MAX_OBJECT_BYTES = 64 * 1024

_DISPLAY_ADDRESS = re.compile(r"^[^<>]*<([^<>]+)>$")


class RequestModel(BaseModel):
    """A request body: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)


class QueryModel(BaseModel):
    """A query string: values arrive as strings and are converted (lax)."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(BaseModel):
    """A response body (documented; serialised with `model_dump(mode="json")`)."""

    model_config = ConfigDict(populate_by_name=True)


Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Email = Annotated[str, StringConstraints(max_length=254, pattern=EMAIL_PATTERN)]
Phone = Annotated[str, StringConstraints(pattern=PHONE_PATTERN)]
PushToken = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def is_address(value: str) -> bool:
    """`a@b.c` or `Name <a@b.c>`."""
    match = _DISPLAY_ADDRESS.match(value.strip())
    address = match.group(1) if match else value.strip()
    return len(address) <= 254 and re.match(EMAIL_PATTERN, address) is not None


def _timestamp_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string with an offset")
    return value


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date-time out of range") from None


# RFC 3339 with an offset (a naive time is refused), held and returned in UTC.
Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_timestamp_text),
    AfterValidator(_in_utc),
    Field(strict=False),
]


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_size(value: Any) -> int:
    """Bytes of `value` as compact JSON (UTF-8)."""
    text = _ENCODE(value)
    return len(text) if text.isascii() else len(text.encode())


def _bounded_object(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    # A body no larger than the limit cannot hold a larger object: callers with many
    # objects to check (inline recipients, import lines) say so, and skip the encoding.
    if (info.context or {}).get("small_body"):
        return value
    if json_size(value) > MAX_OBJECT_BYTES:
        raise ValueError(f"larger than {MAX_OBJECT_BYTES // 1024} KiB as JSON")
    return value


# A free JSON object (context, attributes) of at most 64 KiB.
JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded_object)]

"""Turning untrusted input into models: JSON decoding, storable-JSON checks, pydantic errors.

Every refusal is a `Problem`: 400 for bytes that are not JSON, 422 with one
`errors[].loc` per bad field otherwise. Values that PostgreSQL cannot store
(NUL characters, lone surrogates, non-finite numbers) are refused here, so
that no input reaches the database only to fail there with a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from daemon.api.bodies import JSON_TYPES, read_limited, require_content_type
from daemon.api.problems import problem
from daemon.errors import FieldError, Problem

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_ERRORS = 50
MAX_DEPTH = 64
# Characters PostgreSQL text and jsonb refuse: NUL, and UTF-16 halves with no partner.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(raw: bytes) -> Any:
    """The JSON document in `raw` (UTF-8), or a 400 `malformed_json` problem."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise problem(400, "malformed_json", "the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise problem(400, "malformed_json", f"invalid JSON at {where}: {exc.msg}") from None
    except RecursionError:
        raise problem(400, "malformed_json", "the JSON is nested too deeply") from None
    except ValueError as exc:  # huge integers, 1e999, NaN
        raise problem(400, "malformed_json", f"invalid JSON: {exc}") from None


async def read_body(request: web.Request, max_bytes: int, *, empty: Any = None,
                    allow_empty: bool = False) -> Any:
    """The JSON body: 415 unless application/json, 413 past `max_bytes`, 400 if malformed.
    With `allow_empty`, a missing or blank body reads as `empty` (a JSON `null` is not
    empty: it reads as None, for the model to refuse)."""
    if allow_empty and not request.body_exists:
        return empty
    require_content_type(request, JSON_TYPES)
    raw = await read_limited(request, max_bytes)
    if allow_empty and not raw.strip():
        return empty
    return decode_storable(raw)


# The one way to spell NUL or a UTF-16 half in valid UTF-8 JSON is an escape: \u0000,
# \ud800...\udfff (a surrogate pair, as `ensure_ascii` encoders write emoji, matches
# too: the walk then finds the pair whole and lets it pass).
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def decode_storable(raw: bytes) -> Any:
    """`decode_json`, then a 422 if a value cannot be stored (non-finite numbers are refused
    while decoding). Cheap for the usual body: the full walk runs only when the text has a
    risky escape, the depth walk (containers only) only when it has over MAX_DEPTH brackets."""
    value = decode_json(raw)
    if _RISKY_ESCAPE.search(raw) or (
        raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _too_deep(value)
    ):
        check_storable(value)
    return value


def _too_deep(value: Any) -> bool:
    """Whether containers nest deeper than MAX_DEPTH (scalars are not looked at)."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth >= MAX_DEPTH:
            return True
        children = item.values() if type(item) is dict else item
        stack.extend((child, depth + 1) for child in children
                     if type(child) is dict or type(child) is list)
    return False


def storable_errors(value: Any, root: str = "") -> list[FieldError]:
    """Where `value` holds what PostgreSQL cannot store, or nests deeper than MAX_DEPTH."""
    errors: list[FieldError] = []
    stack: list[tuple[Any, str, int]] = [(value, root, 0)]
    while stack and len(errors) < MAX_ERRORS:
        item, loc, depth = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                errors.append(FieldError(loc, "NUL characters and lone surrogates are refused"))
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                errors.append(FieldError(loc, f"nested deeper than {MAX_DEPTH} levels"))
                continue
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                child_loc = f"{loc}.{key}" if loc else str(key)
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    errors.append(FieldError(loc, "NUL characters and lone surrogates are refused"))
                stack.append((child, child_loc, depth + 1))
        elif isinstance(item, float) and not math.isfinite(item):
            errors.append(FieldError(loc, "numbers must be finite"))
    return errors


def check_storable(value: Any, root: str = "") -> None:
    """Raise a 422 problem if `value` cannot be stored as text/jsonb."""
    errors = storable_errors(value, root)
    if errors:
        raise invalid(errors)


def invalid(errors: list[FieldError], detail: str | None = None) -> Problem:
    """A 422 `validation_error` listing `errors` (at most MAX_ERRORS of them)."""
    shown = errors[:MAX_ERRORS]
    if detail is None:
        first = shown[0]
        detail = f"{first.loc}: {first.msg}" if first.loc else first.msg
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
    return problem(422, "validation_error", detail, shown)


def _message(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "this field is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


# The tags of "one or a list" unions (`one_or_list`): pydantic puts them in an error's loc,
# where the client never wrote them; they are left out of `errors[].loc`.
ONE, LIST = "~one", "~list"


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic's errors as FieldErrors with dotted locations (`recipients.3.email`)."""
    errors = []
    for error in exc.errors(include_url=False, include_input=False):
        parts = [str(part) for part in error["loc"] if part not in (ONE, LIST)]
        if prefix:
            parts.insert(0, prefix)
        errors.append(FieldError(".".join(parts), _message(error)))
    return errors


def parse(
    model: type[ModelT], data: Any, *, context: Mapping[str, Any] | None = None, prefix: str = "",
    checked: bool = False,
) -> ModelT:
    """`data` validated as `model`, or a 422 problem naming every bad field. `checked`: the
    data came from `decode_storable` (no need to walk it again)."""
    if not checked:
        check_storable(data, prefix)
    try:
        return model.model_validate(data, context=dict(context or {}))
    except ValidationError as exc:
        raise invalid(field_errors(exc, prefix)) from None
    except RecursionError:
        raise invalid([FieldError(prefix, "nested too deeply")]) from None


def parse_query(model: type[ModelT], request: web.Request) -> ModelT:
    """The query string validated as `model` (each parameter at most once; loc `query.NAME`)."""
    values: dict[str, str] = {}
    errors: list[FieldError] = []
    for name in request.query:
        given = request.query.getall(name)
        if len(given) > 1:
            errors.append(FieldError(f"query.{name}", "given more than once"))
        values[name] = given[0]
    if errors:
        raise invalid(errors)
    return parse(model, values, prefix="query")


def encode_cursor(position: Any) -> str:
    """An opaque cursor for `position` (JSON-able): clients pass it back as given."""
    text = json.dumps(position, separators=(",", ":"), default=str)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    """The position a cursor encodes, or a 422 on `query.cursor`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        raise invalid([FieldError("query.cursor", "not a cursor this server returned")]) from None


def _foreign_cursor() -> Problem:
    return invalid([FieldError("query.cursor", "not a cursor this server returned")])


def time_cursor(cursor: str) -> tuple[datetime, str]:
    """A (created_at, id) cursor: `[RFC 3339 with offset, id]`."""
    position = decode_cursor(cursor)
    if (not isinstance(position, list) or len(position) != 2
            or not all(isinstance(part, str) for part in position)):
        raise _foreign_cursor()
    try:
        moment = datetime.fromisoformat(position[0])
        if moment.tzinfo is None:
            raise ValueError("naive")
        return moment.astimezone(UTC), position[1]
    except (ValueError, OverflowError):
        raise _foreign_cursor() from None


def position_cursor(cursor: str | None) -> int:
    """A position cursor (-1: from the start)."""
    if cursor is None:
        return -1
    value = decode_cursor(cursor)
    if type(value) is not int or not -1 <= value < 2**63:
        raise _foreign_cursor()
    return value

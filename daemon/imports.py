"""Streamed bulk bodies (NDJSON or CSV) parsed chunk by chunk, never held whole.

`Lines` cuts byte chunks into numbered lines; `CsvRecords` joins the lines of a
quoted field that holds newlines; `ProfileRows` and `MemberRows` turn a chunk's
lines into rows ready for COPY, and report each bad line (number and reason) to
a `Tally`. A bad line never stops the good ones. Memory stays bounded by one
chunk plus one line (MAX_LINE_BYTES; a longer line is skipped and reported).

The work is done per chunk, not per line through generators: at a million lines,
per-line overhead is what a bulk import is made of.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from daemon.api.fields import EMAIL_PATTERN, MAX_OBJECT_BYTES, PHONE_PATTERN
from daemon.api.people_schemas import ProfileLine
from daemon.api.validation import MAX_DEPTH, decode_storable, field_errors
from daemon.errors import Problem
from daemon.models import ID_PATTERN
from daemon.store.profiles import GIVEN_ATTRIBUTES, GIVEN_EMAIL, GIVEN_PHONE, GIVEN_PUSH_TOKENS

Format = Literal["ndjson", "csv"]
MEDIA_TYPES: dict[str, Format] = {"application/x-ndjson": "ndjson", "text/csv": "csv"}

MAX_LINE_BYTES = 1024 * 1024
MAX_REPORTED = 100
MAX_PUSH_TOKEN = 4096

_ID = re.compile(ID_PATTERN)
_EMAIL = re.compile(EMAIL_PATTERN)
_PHONE = re.compile(PHONE_PATTERN)
_UNREADABLE = f"not UTF-8, or longer than {MAX_LINE_BYTES // 1024} KiB"
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_quote = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept as is

Line = tuple[int, str | None]  # (1-based number, text; None: unreadable)
ProfileRow = tuple[Any, ...]  # store.profiles.IMPORT_COLUMNS
_GIVEN_BITS = {"email": GIVEN_EMAIL, "phone": GIVEN_PHONE, "push_tokens": GIVEN_PUSH_TOKENS,
               "attributes": GIVEN_ATTRIBUTES}
_PLAIN_KEYS = frozenset(("id", "email", "phone", "attributes"))


def _refuse_float(text: str) -> float:
    raise ValueError(text)  # not for the plain path (non-finite numbers need the full one)


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


# The C scanner of a decoder built once (json.loads with hooks builds one per call).
_SCAN: Callable[[str, int], tuple[Any, int]] = vars(
    json.JSONDecoder(parse_float=_refuse_float, parse_constant=_refuse_constant))["scan_once"]


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    reason: str


@dataclass
class Tally:
    """What a bulk body held: lines read, lines refused, the first MAX_REPORTED reasons."""

    received: int = 0
    rejected: int = 0
    errors: list[LineError] = field(default_factory=list)

    def refuse(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(LineError(line, reason))


class Lines:
    """Numbered non-blank lines from byte chunks (`\\n` or `\\r\\n`)."""

    def __init__(self) -> None:
        self.number = 0
        self._pending = b""
        self._skipping = False  # inside a line longer than MAX_LINE_BYTES

    def feed(self, chunk: bytes) -> list[Line]:
        data = self._pending + chunk if self._pending else chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._keep(data)
            return []
        self._keep(data[end + 1:])
        lines: list[Line] = []
        block = data[:end]
        try:
            texts: list[str | None] = list(block.decode("utf-8").split("\n"))
        except UnicodeDecodeError:
            texts = [_decode(raw) for raw in block.split(b"\n")]
        first = self.number + 1
        self.number += len(texts)
        if self._skipping:  # the end of an overlong line
            self._skipping = False
            texts[0] = None
        for offset, text in enumerate(texts):
            if text is None or len(text) > MAX_LINE_BYTES:
                lines.append((first + offset, None))
            elif text.strip():
                lines.append((first + offset, text[:-1] if text.endswith("\r") else text))
        return lines

    def _keep(self, rest: bytes) -> None:
        if self._skipping or len(rest) > MAX_LINE_BYTES:
            self._pending, self._skipping = b"", True
        else:
            self._pending = rest

    def finish(self) -> list[Line]:
        """The last line, when the body does not end with a newline."""
        if self._skipping:
            return [(self.number + 1, None)]
        if self._pending.strip():
            text = _decode(self._pending)
            return [(self.number + 1, text.rstrip("\r") if text is not None else None)]
        return []


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class CsvRecords:
    """CSV records from lines: a quoted field may hold newlines, so a record spans lines
    until its quotes balance; it is numbered by its first line."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self._parts: list[str] = []
        self._first = 0

    def feed(self, lines: list[Line]) -> list[tuple[int, list[str]]]:
        complete: list[tuple[int, str]] = []
        for number, text in lines:
            if text is None:
                self._refuse(number, _UNREADABLE)
                self._parts = []
                continue
            if not self._parts:
                self._first = number
            self._parts.append(text)
            record = "\n".join(self._parts) if len(self._parts) > 1 else text
            if record.count('"') % 2 == 1 and len(record) <= MAX_LINE_BYTES:
                continue  # inside quotes: the record goes on
            self._parts = []
            if "\x00" in record:
                self._refuse(self._first, "NUL characters are refused")
            else:
                complete.append((self._first, record))
        return self._parse(complete)

    def _parse(self, records: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
        try:
            rows = list(csv.reader([text for _, text in records], strict=True))
            return [(number, cells) for (number, _), cells in zip(records, rows, strict=True)]
        except (csv.Error, ValueError):
            pass  # one record is bad: parse them one by one to find it
        parsed: list[tuple[int, list[str]]] = []
        for number, text in records:
            try:
                parsed.append((number, next(csv.reader([text], strict=True))))
            except (csv.Error, StopIteration) as exc:
                self._refuse(number, f"invalid CSV: {exc}")
        return parsed

    def finish(self) -> None:
        if self._parts:
            self._refuse(self._first, "invalid CSV: a quoted field is not closed")
            self._parts = []

    def _refuse(self, number: int, reason: str) -> None:
        self.tally.received += 1
        self.tally.refuse(number, reason)


class _BulkParser:
    """Chunks in, rows out; the format-specific parts are in the subclasses."""

    csv_required: str

    def __init__(self, fmt: Format, tally: Tally) -> None:
        self.fmt = fmt
        self.tally = tally
        self.lines = Lines()
        self.records = CsvRecords(tally)
        self.header: list[str] | None = None
        self.header_refused = False

    def feed(self, chunk: bytes) -> list[Any]:
        return self._rows(self.lines.feed(chunk))

    def finish(self) -> list[Any]:
        rows = self._rows(self.lines.finish())
        if self.fmt == "csv":
            self.records.finish()
        return rows

    def _rows(self, lines: list[Line]) -> list[Any]:
        if self.fmt == "ndjson":
            return self._ndjson(lines)
        rows: list[Any] = []
        for number, cells in self.records.feed(lines):
            if self.header_refused:
                continue  # nothing after a bad header can be read
            if self.header is None:
                self._read_header(number, cells)
                continue
            self.tally.received += 1
            if len(cells) != len(self.header):
                self.tally.refuse(number, f"{len(cells)} cells for {len(self.header)} columns")
                continue
            row = self.csv_row(number, cells)
            if row is not None:
                rows.append(row)
        return rows

    def _read_header(self, number: int, cells: list[str]) -> None:
        header = [cell.strip() for cell in cells]
        problem = None
        if self.csv_required not in header:
            problem = f"no {self.csv_required!r} column"
        elif len(set(header)) != len(header):
            problem = "repeated column names"
        if problem is None:
            self.header = header
            self.configure(header)
        else:
            self.header_refused = True
            self.tally.received += 1
            self.tally.refuse(number, f"invalid CSV header: {problem}")

    def _ndjson(self, lines: list[Line]) -> list[Any]:
        rows: list[Any] = []
        self.tally.received += len(lines)
        plain = self.plain_row
        for number, text in lines:
            if text is None:
                self.tally.refuse(number, _UNREADABLE)
                continue
            row = plain(number, text)
            if row is None:
                row = self._checked_row(number, text)
            if row is not None:
                rows.append(row)
        return rows

    def _checked_row(self, number: int, text: str) -> Any:
        """The row of a line through the full checks (every reason reported), or None."""
        try:
            value = decode_storable(text.encode())
        except Problem as exc:
            reason = exc.errors[0] if exc.errors else None
            self.tally.refuse(number, f"{reason.loc}: {reason.msg}" if reason and reason.loc
                              else reason.msg if reason else exc.detail or "invalid JSON")
            return None
        # A line within the object limit cannot hold a larger object: no need to measure.
        return self.json_row(number, value, len(text) <= MAX_OBJECT_BYTES)

    def plain_row(self, number: int, text: str) -> Any:
        """The row of a line the full checks would take as is, or None for those to decide."""
        return None

    def configure(self, header: list[str]) -> None:
        raise NotImplementedError

    def csv_row(self, number: int, cells: list[str]) -> Any:
        raise NotImplementedError

    def json_row(self, number: int, value: Any, small: bool) -> Any:
        raise NotImplementedError


def _encode_object(value: dict[str, Any]) -> str:
    """`value` as compact JSON: flat string pairs spelled out directly (two C calls a pair,
    not a JSON encoder made for each object), anything else by the encoder."""
    for item in value.values():
        if type(item) is not str:
            return _ENCODE(value)
    return "{" + ",".join([f"{_quote(key)}:{_quote(item)}" for key, item in value.items()]) + "}"


def _bad_id(value: str) -> str | None:
    # The words pydantic uses for the same rule on NDJSON lines and JSON bodies.
    return None if _ID.fullmatch(value) else f"String should match pattern '{ID_PATTERN}'"


class ProfileRows(_BulkParser):
    """Profile lines as staging rows (store.profiles.IMPORT_COLUMNS)."""

    csv_required = "id"

    def configure(self, header: list[str]) -> None:
        self._columns = {name: header.index(name) for name in ("id", "email", "phone",
                                                               "push_token") if name in header}
        self._attribute_indexes = [index for index, name in enumerate(header)
                                   if name not in self._columns]
        self._keys = {index: _quote(header[index]) for index in self._attribute_indexes}

    def csv_row(self, number: int, cells: list[str]) -> ProfileRow | None:
        columns = self._columns
        profile_id = cells[columns["id"]]
        email = cells[columns["email"]] if "email" in columns else ""
        phone = cells[columns["phone"]] if "phone" in columns else ""
        token = cells[columns["push_token"]] if "push_token" in columns else ""
        reason = _bad_id(profile_id)
        if reason:
            return self._refused(number, "id", reason)
        if email and (len(email) > 254 or not _EMAIL.fullmatch(email)):
            return self._refused(number, "email", "not an email address")
        if phone and not _PHONE.fullmatch(phone):
            return self._refused(number, "phone", "not an E.164 number (+ and up to 15 digits)")
        if len(token) > MAX_PUSH_TOKEN:
            return self._refused(number, "push_token", f"longer than {MAX_PUSH_TOKEN}")
        # Flat string pairs: spelled out directly (two C calls a pair, not the JSON encoder).
        pairs = [f"{self._keys[index]}:{_quote(cells[index])}"
                 for index in self._attribute_indexes if cells[index]]
        encoded = "{" + ",".join(pairs) + "}" if pairs else None
        if encoded is not None and len(encoded) > MAX_OBJECT_BYTES:
            return self._refused(number, "attributes", "larger than 64 KiB as JSON")
        given = ((GIVEN_EMAIL if email else 0) | (GIVEN_PHONE if phone else 0)
                 | (GIVEN_PUSH_TOKENS if token else 0) | (GIVEN_ATTRIBUTES if encoded else 0))
        return (number, profile_id, email or None, phone or None, [token] if token else None,
                encoded, None, None, None, given)

    def plain_row(self, number: int, text: str) -> ProfileRow | None:
        """The usual line (id, email, phone, attributes; no escapes, no numbers with a
        fraction) checked without pydantic: anything else, valid or not, and any doubt,
        goes to the full checks (`json_row`), which alone word the refusals."""
        if "\\u" in text or len(text) > MAX_OBJECT_BYTES or (
            text.count("{") + text.count("[") > MAX_DEPTH
        ):
            return None
        try:
            value, end = _SCAN(text, 0)
        except (StopIteration, ValueError, RecursionError):
            return None
        if end != len(text) or type(value) is not dict or not value.keys() <= _PLAIN_KEYS:
            return None
        profile_id = value.get("id")
        email = value.get("email")
        phone = value.get("phone")
        attributes = value.get("attributes")
        if type(profile_id) is not str or not _ID.fullmatch(profile_id) or (
            email is not None
            and (type(email) is not str or len(email) > 254 or not _EMAIL.fullmatch(email))
        ) or (
            phone is not None and (type(phone) is not str or not _PHONE.fullmatch(phone))
        ) or (attributes is not None and type(attributes) is not dict):
            return None
        given = ((GIVEN_EMAIL if "email" in value else 0) | (GIVEN_PHONE if "phone" in value else 0)
                 | (GIVEN_ATTRIBUTES if "attributes" in value else 0))
        return (number, profile_id, email, phone, None,
                None if attributes is None else _encode_object(attributes),
                None, None, None, given)

    def json_row(self, number: int, value: Any, small: bool) -> ProfileRow | None:
        try:
            line = ProfileLine.model_validate(value, context={"small_body": small})
        except ValidationError as exc:
            first = field_errors(exc)[0]
            self.tally.refuse(number, f"{first.loc}: {first.msg}" if first.loc else first.msg)
            return None
        given = 0
        for name in line.model_fields_set:
            given |= _GIVEN_BITS.get(name, 0)
        subscriptions = line.subscriptions
        return (
            number, line.id, line.email, line.phone, line.push_tokens,
            None if line.attributes is None else _ENCODE(line.attributes),
            subscriptions.email if subscriptions else None,
            subscriptions.sms if subscriptions else None,
            subscriptions.push if subscriptions else None,
            given,
        )

    def _refused(self, number: int, loc: str, reason: str) -> ProfileRow | None:
        """Refuse the line; None (no row) for the caller to return."""
        self.tally.refuse(number, f"{loc}: {reason}")
        return None


class MemberRows(_BulkParser):
    """Member lines as (line, profile_id) rows."""

    csv_required = "profile_id"

    def configure(self, header: list[str]) -> None:
        self._column = header.index("profile_id")

    def csv_row(self, number: int, cells: list[str]) -> tuple[int, str] | None:
        return self._member(number, cells[self._column])

    def json_row(self, number: int, value: Any, small: bool) -> tuple[int, str] | None:
        if not isinstance(value, dict) or set(value) != {"profile_id"}:
            self.tally.refuse(number, 'expected {"profile_id": "..."}')
            return None
        profile_id = value["profile_id"]
        if not isinstance(profile_id, str):
            self.tally.refuse(number, "profile_id: must be a string")
            return None
        return self._member(number, profile_id)

    def _member(self, number: int, profile_id: str) -> tuple[int, str] | None:
        reason = _bad_id(profile_id)
        if reason:
            self.tally.refuse(number, f"profile_id: {reason}")
            return None
        return (number, profile_id)


async def rows(
    chunks: AsyncIterable[bytes], parser: ProfileRows | MemberRows
) -> AsyncIterator[Any]:
    """The body's rows, one at a time (as COPY takes them), parsed a chunk at a time."""
    async for chunk in chunks:
        for row in parser.feed(chunk):
            yield row
    for row in parser.finish():
        yield row


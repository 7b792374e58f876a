"""Streamed bulk bodies (NDJSON or CSV) parsed line by line, never held whole.

`records()` turns a stream of byte chunks into numbered logical lines (a CSV
record may span physical lines inside quotes); `profiles()` and `members()` turn
those into validated rows or `LineError`s. A bad line is reported and skipped;
it never stops the good ones. Memory stays bounded by one chunk plus one line
(at most MAX_LINE_BYTES; a longer line is skipped and reported).
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from daemon.api.fields import RequestModel
from daemon.api.schemas import MemberLine, ProfileLine
from daemon.api.validation import decode_json, field_errors, storable_errors
from daemon.errors import Problem

Format = Literal["ndjson", "csv"]
MEDIA_TYPES: dict[str, Format] = {"application/x-ndjson": "ndjson", "text/csv": "csv"}

MAX_LINE_BYTES = 1024 * 1024
MAX_REPORTED = 100
CSV_KNOWN = ("id", "email", "phone", "push_token")


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

    def refuse(self, error: LineError) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_REPORTED:
            self.errors.append(error)


async def lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, str | None]]:
    """(line number, text) for each non-empty line; text None when the line is too long or
    not UTF-8 (the caller reports it)."""
    number = 0
    pending = b""
    skipping = False  # inside a line longer than MAX_LINE_BYTES
    async for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not skipping:
                    pending += chunk[start:]
                    if len(pending) > MAX_LINE_BYTES:
                        pending, skipping = b"", True
                break
            number += 1
            if skipping:
                skipping = False
                yield number, None
            else:
                text = _decode(pending + chunk[start:end])
                if text is None or text.strip():
                    yield number, text
            pending = b""
            start = end + 1
    if skipping:
        yield number + 1, None
    elif pending.strip():
        yield number + 1, _decode(pending)


def _decode(raw: bytes) -> str | None:
    try:
        return raw.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return None


def _reason_for_unreadable() -> str:
    return f"not UTF-8, or longer than {MAX_LINE_BYTES // 1024} KiB"


async def csv_records(
    numbered: AsyncIterable[tuple[int, str | None]], tally: Tally
) -> AsyncIterator[tuple[int, list[str]]]:
    """CSV records (a quoted field may hold newlines: the record spans lines until its quotes
    balance), numbered by their first line."""
    parts: list[str] = []
    first = 0
    size = 0
    async for number, text in numbered:
        if text is None:
            tally.received += 1
            tally.refuse(LineError(number, _reason_for_unreadable()))
            parts, size = [], 0
            continue
        if not parts:
            first = number
        parts.append(text)
        size += len(text)
        record = "\n".join(parts)
        if record.count('"') % 2 == 1 and size <= MAX_LINE_BYTES:
            continue  # inside quotes: the record goes on
        parts, size = [], 0
        try:
            yield first, next(csv.reader([record], strict=True))
        except (csv.Error, StopIteration) as exc:
            tally.received += 1
            tally.refuse(LineError(first, f"invalid CSV: {exc}"))
    if parts:
        tally.received += 1
        tally.refuse(LineError(first, "invalid CSV: a quoted field is not closed"))


def _first_error(exc: ValidationError) -> str:
    errors = field_errors(exc)
    first = errors[0]
    return f"{first.loc}: {first.msg}" if first.loc else first.msg


def validate(model: type[RequestModel], data: Any) -> RequestModel | str:
    """The line as `model`, or the reason it is refused."""
    problems = storable_errors(data)
    if problems:
        return f"{problems[0].loc}: {problems[0].msg}" if problems[0].loc else problems[0].msg
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return _first_error(exc)
    except RecursionError:
        return "nested too deeply"


def _json_line(text: str) -> Any:
    try:
        return decode_json(text.encode())
    except Problem as exc:
        return exc


async def json_objects(
    numbered: AsyncIterable[tuple[int, str | None]], tally: Tally
) -> AsyncIterator[tuple[int, Any]]:
    """NDJSON: one JSON value per line."""
    async for number, text in numbered:
        tally.received += 1
        if text is None:
            tally.refuse(LineError(number, _reason_for_unreadable()))
            continue
        value = _json_line(text)
        if isinstance(value, Problem):
            tally.refuse(LineError(number, value.detail or "invalid JSON"))
            continue
        yield number, value


async def csv_objects(
    numbered: AsyncIterable[tuple[int, str | None]], tally: Tally, columns: tuple[str, ...],
    known: tuple[str, ...],
) -> AsyncIterator[tuple[int, Any]]:
    """CSV as dicts: a header naming at least `columns`; cells of `known` columns become
    fields, other cells string attributes; empty cells are absent."""
    records = csv_records(numbered, tally)
    header: list[str] | None = None
    async for number, cells in records:
        if header is None:
            header = [cell.strip() for cell in cells]
            missing = [c for c in columns if c not in header]
            if missing or len(set(header)) != len(header):
                why = f"no {missing[0]!r} column" if missing else "repeated column names"
                tally.received += 1
                tally.refuse(LineError(number, f"invalid CSV header: {why}"))
                async for _ in records:  # nothing after a bad header can be read
                    pass
                return
            continue
        tally.received += 1
        if len(cells) != len(header):
            tally.refuse(LineError(number, f"{len(cells)} cells for {len(header)} columns"))
            continue
        yield number, _csv_object(header, cells, known)


def _csv_object(header: list[str], cells: list[str], known: tuple[str, ...]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, cell in zip(header, cells, strict=True):
        if cell == "":
            continue
        if name == "push_token":
            data["push_tokens"] = [cell]
        elif name in known:
            data[name] = cell
        else:
            attributes[name] = cell
    if attributes:
        data["attributes"] = attributes
    return data


async def objects(
    chunks: AsyncIterable[bytes], fmt: Format, tally: Tally, *, csv_columns: tuple[str, ...],
    csv_known: tuple[str, ...],
) -> AsyncIterator[tuple[int, Any]]:
    """The body's lines as (line number, JSON-like value), bad lines tallied."""
    numbered = lines(chunks)
    if fmt == "ndjson":
        async for item in json_objects(numbered, tally):
            yield item
    else:
        async for item in csv_objects(numbered, tally, csv_columns, csv_known):
            yield item


async def profiles(
    chunks: AsyncIterable[bytes], fmt: Format, tally: Tally
) -> AsyncIterator[tuple[int, ProfileLine]]:
    """Valid profile lines with their numbers; the others go to `tally`."""
    async for number, data in objects(chunks, fmt, tally, csv_columns=("id",),
                                      csv_known=CSV_KNOWN):
        line = validate(ProfileLine, data)
        if isinstance(line, str):
            tally.refuse(LineError(number, line))
        else:
            assert isinstance(line, ProfileLine)
            yield number, line


async def members(
    chunks: AsyncIterable[bytes], fmt: Format, tally: Tally
) -> AsyncIterator[tuple[int, str]]:
    """Valid `profile_id`s with their line numbers; the others go to `tally`."""
    async for number, data in objects(chunks, fmt, tally, csv_columns=("profile_id",),
                                      csv_known=("profile_id",)):
        if isinstance(data, dict) and fmt == "csv":
            data = {"profile_id": data.get("profile_id")}
        line = validate(MemberLine, data)
        if isinstance(line, str):
            tally.refuse(LineError(number, line))
        else:
            assert isinstance(line, MemberLine)
            yield number, line.profile_id

"""Bulk bodies: lines cut anywhere by chunks, CSV quoting, bad lines reported, not fatal."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemon import imports
from daemon.imports import MAX_LINE_BYTES, Lines, MemberRows, ProfileRows, Tally


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _lines(data: bytes, size: int) -> list[tuple[int, str | None]]:
    splitter = Lines()
    found = []
    for chunk in _split(data, size):
        found += splitter.feed(chunk)
    return found + splitter.finish()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_lines_are_the_same_whatever_the_chunking(size: int) -> None:
    data = "a\r\nbé\n\n  \nc\nlast".encode()
    assert _lines(data, size) == [(1, "a"), (2, "bé"), (5, "c"), (6, "last")]


def test_bad_utf8_and_overlong_lines_are_numbered_and_skipped() -> None:
    too_long = MAX_LINE_BYTES + 5
    data = b"ok\n\xff\xfe\n" + b"x" * too_long + b"\nafter\n" + b"y" * too_long
    assert _lines(data, 65536) == [(1, "ok"), (2, None), (3, None), (4, "after"), (5, None)]


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for chunk in _split(data, size):
        yield chunk


async def _rows(parser: ProfileRows | MemberRows, text: str, size: int = 5) -> list[Any]:
    return [row async for row in imports.rows(_chunks(text.encode(), size), parser)]


async def test_csv_profiles_become_staging_rows_with_what_was_given() -> None:
    tally = Tally()
    text = ('id,email,phone,push_token,plan\n'
            'a,a@b.co,,t1,"gold, ""vip"""\n'
            'b,,+33612345678,,\n')
    rows = await _rows(ProfileRows("csv", tally), text)
    assert rows == [
        (2, "a", "a@b.co", None, ["t1"], '{"plan":"gold, \\"vip\\""}', None, None, None,
         1 | 4 | 8),
        (3, "b", None, "+33612345678", None, None, None, None, None, 2),
    ]
    assert (tally.received, tally.rejected) == (2, 0)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("bad id,a@b.co", "id:"),
        ("x,not-mail", "email:"),
        ('x,"unclosed', "not closed"),
        ("x,a@b.co,extra", "3 cells for 2 columns"),
        ("x,a\x00@b.co", "NUL"),
        ('"x\n",a@b.co', "id:"),  # `$` would match before a final newline: fullmatch
        ('x,"a@b.co\n"', "email:"),
    ],
)
async def test_bad_csv_lines_are_reported_by_number(line: str, reason: str) -> None:
    tally = Tally()
    rows = await _rows(ProfileRows("csv", tally), f"id,email\nok,ok@b.co\n{line}\nlast,\n")
    assert [row[1] for row in rows] == (["ok"] if "unclosed" in line else ["ok", "last"])
    assert tally.rejected == 1
    assert tally.errors[0].line == 3
    assert reason in tally.errors[0].reason


async def test_ndjson_profiles_keep_absent_fields_absent() -> None:
    tally = Tally()
    lines = [{"id": "a", "attributes": {"k": "v"}, "subscriptions": {"sms": False}},
             {"id": "b", "email": None}]
    rows = await _rows(ProfileRows("ndjson", tally), "".join(json.dumps(x) + "\n" for x in lines))
    assert rows == [
        (1, "a", None, None, None, '{"k":"v"}', None, False, None, 8),
        (2, "b", None, None, None, None, None, None, None, 1),
    ]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{", "invalid JSON"),
        ('{"id": "a", "x": 1}', "x: unknown field"),
        ('{"id": "a", "attributes": {"k": "\\u0000"}}', "attributes.k"),
        ('{"id": "a", "attributes": {"n": 1e999}}', "out of range"),
        ("[1]", "object"),
    ],
)
async def test_bad_ndjson_lines_are_reported(line: str, reason: str) -> None:
    tally = Tally()
    rows = await _rows(ProfileRows("ndjson", tally), f'{{"id": "ok"}}\n{line}\n')
    assert len(rows) == 1
    assert tally.errors[0].line == 2
    assert reason in tally.errors[0].reason, tally.errors[0].reason


async def test_a_bad_csv_header_stops_reading() -> None:
    tally = Tally()
    assert await _rows(MemberRows("csv", tally), "id,other\na,b\n") == []
    assert tally.errors[0].line == 1
    assert "profile_id" in tally.errors[0].reason


async def test_member_lines() -> None:
    tally = Tally()
    text = '{"profile_id": "a"}\n{"profile_id": 3}\n{"id": "b"}\n{"profile_id": "c"}\n'
    assert await _rows(MemberRows("ndjson", tally), text) == [(1, "a"), (4, "c")]
    assert [e.line for e in tally.errors] == [2, 3]


async def test_only_the_first_hundred_errors_are_kept() -> None:
    tally = Tally()
    await _rows(MemberRows("ndjson", tally), "x\n" * 250, size=100)
    assert (tally.received, tally.rejected, len(tally.errors)) == (250, 250, 100)


@pytest.mark.parametrize("line", [
    '{"id":"p1","email":"a@b.co","attributes":{"first_name":"Ann"}}',
    '{"id":"p1","attributes":{"n":1,"x":[1,2],"y":null,"z":true,"ü":"é\\"q"}}',
    '{"id":"p1","email":null,"phone":"+331234","attributes":null}',
    '{"id":"p1","id":"p2"}',
    '{"id":"p1\\n"}', '{"id":"p 1"}', '{"id":""}', '{"id":1}', '{"email":"a@b.co"}',
    '{"id":"p1","email":"a@b"}', '{"id":"p1","email":"a\u00a0b@c.de"}',
    '{"id":"p1","email":"a\x1cb@c.de"}', '{"id":"p1","phone":"+0123"}',
    '{"id":"p1","attributes":[]}', '{"id":"p1","extra":1}', '{"id":"p1"} ', ' {"id":"p1"}',
    '{"id":"p1","attributes":{"a":1.5}}', '{"id":"p1","attributes":{"a":1e999}}',
    '{"id":"p1","attributes":{"a":NaN}}', '{"id":"p\\u0031"}', '[1]', '"x"', '{"id":"p1"',
])
def test_the_plain_path_takes_a_line_only_as_the_full_checks_would(line: str) -> None:
    plain = ProfileRows("ndjson", Tally()).plain_row(7, line)
    tally = Tally()
    checked = ProfileRows("ndjson", tally)._checked_row(7, line)
    if plain is not None:
        assert plain[:5] + plain[6:] == checked[:5] + checked[6:]
        assert json.loads(plain[5] or "null") == json.loads(checked[5] or "null")
    assert (checked is None) == (tally.rejected == 1)


def test_usual_lines_take_the_plain_path() -> None:
    rows = ProfileRows("ndjson", Tally())
    assert rows.plain_row(1, '{"id":"p1","email":"a@b.co","attributes":{"k":"v","n":2}}') == (
        1, "p1", "a@b.co", None, None, '{"k":"v","n":2}', None, None, None, 9)
    assert rows.plain_row(2, '{"id":"p1","attributes":{"a":1.5}}') is None

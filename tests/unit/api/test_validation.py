"""Untrusted JSON: what PostgreSQL could not store is refused before it gets there."""

from __future__ import annotations

import pytest

from daemon.api.validation import decode_cursor, decode_storable, encode_cursor, storable_errors
from daemon.errors import Problem


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"a": "\\u0000"}', 422),
        (b'{"a": ["\\ud800"]}', 422),
        (b'{"\\udfff": 1}', 422),
        (b'{"a": NaN}', 400),
        (b'{"a": -Infinity}', 400),
        (b'{"a": 1e400}', 400),
        (b'{"a": "\\xed\\xa0\\x80"}'.replace(b"\\x", b"x"), 200),
        (b'"\xed\xa0\x80"', 400),  # a surrogate encoded in UTF-8 is not UTF-8
        (b"[" * 70 + b"]" * 70, 422),
        (b"[" * 60 + b"]" * 60, 200),
        (b'{"a": "\\\\u0000"}', 200),  # an escaped backslash, then text: fine
    ],
)
def test_decode_storable(raw: bytes, status: int) -> None:
    if status == 200:
        decode_storable(raw)
        return
    with pytest.raises(Problem) as info:
        decode_storable(raw)
    assert info.value.status == status


def test_storable_errors_name_the_place() -> None:
    errors = storable_errors({"a": [1, {"b": "x\x00"}]}, "context")
    assert [e.loc for e in errors] == ["context.a.1.b"]


@pytest.mark.parametrize("value", [-1, 42, ["2026-01-01T00:00:00Z", "run_x"]])
def test_cursors_round_trip(value: object) -> None:
    assert decode_cursor(encode_cursor(value)) == value


@pytest.mark.parametrize("cursor", ["%%%", "!!", "e30", "W1"])
def test_foreign_cursors_are_422_or_decoded_safely(cursor: str) -> None:
    try:
        decode_cursor(cursor)
    except Problem as exc:
        assert exc.status == 422


def test_an_emoji_escaped_as_a_surrogate_pair_is_fine() -> None:
    assert decode_storable(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


def test_deep_nesting_hidden_among_many_brackets_is_found() -> None:
    wide = b'{"many": [' + b",".join([b"[]"] * 100) + b'], "deep": ' + b"[" * 70 + b"]" * 70 + b"}"
    with pytest.raises(Problem) as info:
        decode_storable(wide)
    assert info.value.errors[0].loc.startswith("deep")
    decode_storable(b'{"many": [' + b",".join([b"[]"] * 100) + b"]}")

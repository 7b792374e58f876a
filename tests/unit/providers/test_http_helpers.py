"""Retry-After parsing and answer snippets shared by the HTTP providers."""

from __future__ import annotations

from datetime import UTC, datetime

from daemon.providers.http import parse_retry_after, snippet, status_reason

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("120", NOW) == 120.0


def test_retry_after_as_an_http_date_is_the_time_left() -> None:
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 GMT", NOW) == 30.0


def test_retry_after_in_the_past_is_zero() -> None:
    assert parse_retry_after("Sun, 01 Mar 2026 11:00:00 GMT", NOW) == 0.0


def test_retry_after_garbage_or_absent_is_none() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("", NOW) is None
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None


def test_snippet_is_one_bounded_line() -> None:
    assert snippet(b"line one\n  line two\r\n") == "line one line two"
    assert len(snippet(b"y" * 1000)) == 200
    assert snippet(b"\xff\xfeabc") == "\ufffd\ufffdabc"


def test_status_reason_omits_an_empty_body() -> None:
    assert status_reason(404, b"") == "http_404"
    assert status_reason(400, b"bad") == "http_400: bad"

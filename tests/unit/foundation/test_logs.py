"""Log lines: one JSON object each, dates in RFC 3339 UTC, secrets masked."""

from __future__ import annotations

import enum
import io
import json
import logging
from datetime import UTC, datetime, timedelta, timezone

from daemon.infra import logs


class Colour(enum.Enum):
    RED = "red"


def test_json_lines_with_dates_enums_and_masked_secrets() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    try:
        paris = timezone(timedelta(hours=1))
        logs.get_logger("t").info(
            "run.started",
            started_at=datetime(2026, 12, 1, 9, 0, tzinfo=paris),
            colour=Colour.RED,
            password="hunter2",
            took=timedelta(seconds=1.5),
        )
        logging.getLogger("aiohttp.server").warning("from the stdlib")
    finally:
        logs.configure("info", "json")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "run.started" and first["level"] == "info"
    assert first["started_at"] == "2026-12-01T08:00:00Z"
    assert first["colour"] == "red" and first["took"] == 1.5
    assert first["password"] == "***"
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None
    assert first["ts"] <= datetime.now(UTC).isoformat()
    assert second["event"] == "from the stdlib" and second["logger"] == "aiohttp.server"


def test_the_level_drops_events_below_it_and_follows_set_level() -> None:
    stream = io.StringIO()
    logs.configure("warning", "json", stream=stream)
    try:
        log = logs.get_logger("t")
        log.info("run.started")
        log.warning("run.slow")
        logs.set_level("info")
        log.info("run.finished")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("run.failed")
    finally:
        logs.configure("info", "json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("run.slow", "warning"), ("run.finished", "info"), ("run.failed", "error")]
    assert all(line["logger"] == "t" for line in lines)
    assert "ValueError: boom" in lines[-1]["exception"]

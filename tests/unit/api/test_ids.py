"""Server-made ids sort by time and are unique."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from daemon.ids import new_campaign_id, new_run_id, ulid
from daemon.models import ID_PATTERN


def test_ulids_sort_by_time_and_differ_within_a_millisecond() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [ulid(start + timedelta(milliseconds=i)) for i in range(100)]
    assert ids == sorted(ids)
    assert len({ulid(start) for _ in range(1000)}) == 1000
    assert all(len(i) == 26 for i in ids)


def test_prefixed_ids_are_valid_client_ids_too() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    assert re.fullmatch(r"run_[0-9A-Z]{26}", new_run_id(now))
    assert re.match(ID_PATTERN, new_campaign_id(now))


def test_ids_increase_within_one_millisecond_and_when_the_clock_steps_back() -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    ids = [ulid(now) for _ in range(50)] + [ulid(now - timedelta(seconds=1)) for _ in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)

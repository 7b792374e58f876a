"""`schedule.windows` over HTTP (SPEC §9.2): stored as a list, validated naming the key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.cli.runs import window_wait
from tests.integration.api.conftest import Api, campaign_body

OFFICE = {"timezone": "Europe/Paris", "days": ["mon", "tue", "wed", "thu", "fri"],
          "from": "08:00", "to": "20:00"}


async def test_one_window_is_stored_as_a_list_and_days_default_to_all(api: Api) -> None:
    body = campaign_body(schedule={"windows": {"timezone": "Asia/Kolkata", "from": "09:30",
                                               "to": "24:00"}})
    created = await api.json("POST", "/v1/campaigns", 201, json=body)
    assert created["schedule"]["windows"] == [
        {"timezone": "Asia/Kolkata", "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
         "from": "09:30", "to": "24:00"}]
    assert await api.json("GET", f"/v1/campaigns/{created['id']}", 200) == created


async def test_a_list_is_kept_and_a_patch_can_clear_it(api: Api) -> None:
    weekend = {"timezone": "Europe/London", "days": ["sat", "sun"], "from": "10:00",
               "to": "16:00"}
    created = await api.json("POST", "/v1/campaigns", 201,
                             json=campaign_body(schedule={"windows": [OFFICE, weekend]}))
    assert created["schedule"]["windows"] == [OFFICE, weekend]
    path = f"/v1/campaigns/{created['id']}"
    # Another schedule key keeps the windows; null clears them.
    kept = await api.json("PATCH", path, 200,
                          json={"schedule": {"start_at": "2026-12-01T00:00:00Z"}})
    assert kept["schedule"]["windows"] == [OFFICE, weekend]
    cleared = await api.json("PATCH", path, 200, json={"schedule": {"windows": None}})
    assert cleared["schedule"]["windows"] is None


@pytest.mark.parametrize(
    ("window", "loc"),
    [
        ({**OFFICE, "timezone": "Europe/Pariss"}, "schedule.windows.timezone"),
        ({**OFFICE, "timezone": "../../etc/passwd"}, "schedule.windows.timezone"),
        ({**OFFICE, "days": ["monday"]}, "schedule.windows.days.0"),
        ({**OFFICE, "days": []}, "schedule.windows.days"),
        ({**OFFICE, "from": "8:00"}, "schedule.windows.from"),
        ({**OFFICE, "from": "25:00"}, "schedule.windows.from"),
        ({**OFFICE, "to": "20:60"}, "schedule.windows.to"),
        ({**OFFICE, "from": "20:00", "to": "08:00"}, "schedule.windows.to"),
        ({**OFFICE, "from": "08:00", "to": "08:00"}, "schedule.windows.to"),
        ({**OFFICE, "from": "24:00", "to": "24:00"}, "schedule.windows.from"),
        ({**OFFICE, "extra": 1}, "schedule.windows.extra"),
        ({"days": ["mon"], "from": "08:00", "to": "20:00"}, "schedule.windows.timezone"),
    ],
)
async def test_a_bad_window_is_422_naming_the_key(api: Api, window: dict[str, Any],
                                                  loc: str) -> None:
    problem = await api.json("POST", "/v1/campaigns", 422,
                             json=campaign_body(schedule={"windows": window}))
    assert problem["code"] == "validation_error"
    locs = [error["loc"] for error in problem["errors"]]
    assert loc in locs, problem


async def test_a_bad_window_in_a_list_names_its_index(api: Api) -> None:
    problem = await api.json("POST", "/v1/campaigns", 422, json=campaign_body(
        schedule={"windows": [OFFICE, {**OFFICE, "timezone": "Mars/Olympus"}]}))
    assert "schedule.windows.1.timezone" in [error["loc"] for error in problem["errors"]]


async def test_an_empty_list_is_refused(api: Api) -> None:
    problem = await api.json("POST", "/v1/campaigns", 422,
                             json=campaign_body(schedule={"windows": []}))
    assert "schedule.windows" in [error["loc"] for error in problem["errors"]]


# The API tests' clock: Sunday 2026-03-01 12:00 UTC (13:00 in Paris).
MORNINGS = {"timezone": "Europe/Paris", "days": ["mon", "tue", "wed", "thu", "fri"],
            "from": "08:00", "to": "12:00"}
TRIGGERS = "/v1/campaigns/spring-sale/triggers"


async def test_a_trigger_while_closed_is_scheduled_for_the_next_opening(api: Api) -> None:
    await api.live_campaign(audience="a", throttle={"rate_per_second": 2},
                            schedule={"windows": MORNINGS})
    await api.audience("a", "p1")
    accepted = await api.json("POST", TRIGGERS, 202, token="trigger")
    assert accepted["scheduled_for"] == "2026-03-02T07:00:00Z"
    stored = await api.pool.fetchval("SELECT scheduled_for FROM runs WHERE id = $1",
                                     accepted["run_id"])
    assert stored.isoformat() == "2026-03-02T07:00:00+00:00"


async def test_a_trigger_while_open_is_scheduled_now(api: Api) -> None:
    always = {"timezone": "Europe/Paris", "from": "00:00", "to": "24:00"}
    await api.live_campaign(audience="a", schedule={"windows": always})
    await api.audience("a", "p1")
    accepted = await api.json("POST", TRIGGERS, 202, token="trigger")
    assert accepted["scheduled_for"] == "2026-03-01T12:00:00Z"


async def test_the_preview_lists_the_open_time_and_the_capacity(api: Api) -> None:
    await api.live_campaign(audience="a", throttle={"rate_per_second": 2},
                            schedule={"windows": MORNINGS})
    await api.audience("a", "p1", "p2")
    preview = await api.json("POST", TRIGGERS + "?dry_run=true", 200, token="trigger")
    assert preview["scheduled_for"] == "2026-03-02T07:00:00Z"
    assert preview["deadline"] == "2026-03-02T19:00:00Z"  # wall time: 12 hours
    assert preview["open_intervals"] == [{"from": "2026-03-02T07:00:00Z",
                                          "to": "2026-03-02T11:00:00Z"}]
    assert preview["capacity"] == 2 * 4 * 3600
    assert await api.pool.fetchval("SELECT count(*) FROM runs") == 0


async def test_without_windows_the_preview_has_no_intervals(api: Api) -> None:
    await api.live_campaign(audience="a", throttle={"rate_per_second": 2})
    await api.audience("a", "p1")
    preview = await api.json("POST", TRIGGERS + "?dry_run=true", 200, token="trigger")
    assert preview["open_intervals"] is None
    assert preview["capacity"] == 2 * 12 * 3600


async def test_the_run_report_says_when_the_window_opens(api: Api) -> None:
    await api.live_campaign(audience="a", throttle={"rate_per_second": 2},
                            schedule={"windows": MORNINGS})
    await api.audience("a", "p1")
    accepted = await api.json("POST", TRIGGERS, 202, token="trigger")
    report = await api.json("GET", f"/v1/runs/{accepted['run_id']}", 200)
    assert report["send_window"] == {"open": False, "closes_at": None,
                                     "next_opening": "2026-03-02T07:00:00Z",
                                     "timezone": "Europe/Paris"}
    assert window_wait(report["send_window"]) == (
        "waiting for window (opens Mon 08:00 Europe/Paris)")
    # Monday 09:00 in Paris: open until noon there.
    api.clock.advance((datetime(2026, 3, 2, 8, 0, tzinfo=UTC) - api.clock.now()).total_seconds())
    report = await api.json("GET", f"/v1/runs/{accepted['run_id']}", 200)
    assert report["send_window"]["open"] is True
    assert report["send_window"]["closes_at"] == "2026-03-02T11:00:00Z"
    assert window_wait(report["send_window"]) is None


async def test_a_run_without_windows_reports_none(api: Api) -> None:
    await api.live_campaign(audience="a")
    await api.audience("a", "p1")
    accepted = await api.json("POST", TRIGGERS, 202, token="trigger")
    report = await api.json("GET", f"/v1/runs/{accepted['run_id']}", 200)
    assert report["send_window"] is None

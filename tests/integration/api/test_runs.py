"""Runs: the report, cancel, recipient outcomes, a campaign's runs and report."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from daemon.api.validation import encode_cursor
from tests.integration.api.conftest import Api

ZERO = {"targeted": 0, "sent": 0, "failed": 0, "pending": 0,
        "excluded": {"time_cap": 0, "campaign_end": 0, "opted_out": 0, "no_address": 0,
                     "duplicate": 0, "cancelled": 0},
        "delivery": {"delivered": 0, "bounced": 0, "failed": 0, "unknown": 0}}


async def _triggered(api: Api, **campaign: Any) -> str:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"},
                            **campaign)
    await api.audience("a", "p1")
    answer = await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202)
    return str(answer["run_id"])


async def _start(api: Api, run_id: str) -> None:
    """What the engine does at start: freeze 3 recipients, count them."""
    await api.pool.execute(
        """UPDATE runs SET status = 'running', started_at = $2, deadline = $3,
                  targeted = 3, sent = 1, pending = 1, excluded_opted_out = 1
           WHERE id = $1""",
        run_id, api.clock.now(), api.clock.now(),
    )
    await api.pool.executemany(
        """INSERT INTO run_recipients (run_id, position, profile_id, status, reason, attempts)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        [(run_id, 0, "p1", "sent", None, 1), (run_id, 1, "p2", "excluded", "opted_out", 0),
         (run_id, 2, "p3", "pending", None, 0)],
    )


async def test_report_of_a_scheduled_run_has_zero_counts(api: Api) -> None:
    run_id = await _triggered(api, throttle={"rate_per_second": 165})
    report = await api.json("GET", f"/v1/runs/{run_id}", 200, token="trigger")
    assert report == {
        "id": run_id, "campaign_id": "spring-sale", "status": "scheduled",
        "created_at": "2026-03-01T12:00:00Z", "scheduled_for": "2026-03-01T12:00:00Z",
        "started_at": None, "finished_at": None, "rate_per_second": 165, "deadline": None,
        "end_reason": None, "counts": ZERO, "send_window": None, "pool": None,
        "rerun_of": None, "reruns": [],
    }


async def test_report_reads_the_engine_counts(api: Api) -> None:
    run_id = await _triggered(api)
    await _start(api, run_id)
    report = await api.json("GET", f"/v1/runs/{run_id}", 200)
    assert report["status"] == "running"
    assert report["counts"]["targeted"] == 3
    assert report["counts"]["excluded"]["opted_out"] == 1
    assert report["deadline"] == "2026-03-01T12:00:00Z"


@pytest.mark.parametrize("run_id", ["run_nope", "nope", "run_"])
async def test_unknown_run_is_404(api: Api, run_id: str) -> None:
    assert (await api.json("GET", f"/v1/runs/{run_id}", 404))["code"] == "not_found"


async def test_cancel_a_scheduled_run_at_once_and_notify(api: Api) -> None:
    run_id = await _triggered(api)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(api.database_url)
    await listener.add_listener("campaignd_control", lambda *a: heard.put_nowait(a[3]))
    try:
        api.clock.advance(2)
        report = await api.json("POST", f"/v1/runs/{run_id}/cancel", 200)
        assert report["status"] == "cancelled"
        assert report["end_reason"] == "cancelled"
        assert report["finished_at"] == "2026-03-01T12:00:02Z"
        assert report["counts"] == ZERO
        async with asyncio.timeout(5):
            assert await heard.get() == run_id
    finally:
        await listener.close()
    # Again: the same answer, nothing changes.
    assert await api.json("POST", f"/v1/runs/{run_id}/cancel", 200) == report


async def test_cancel_a_running_run_asks_the_engine(api: Api) -> None:
    run_id = await _triggered(api)
    await _start(api, run_id)
    report = await api.json("POST", f"/v1/runs/{run_id}/cancel", 202)
    assert report["status"] == "running"
    requested = await api.pool.fetchval(
        "SELECT cancel_requested_at FROM runs WHERE id = $1", run_id)
    assert requested == api.clock.now()


async def test_cancel_a_finished_run_is_409(api: Api) -> None:
    run_id = await _triggered(api)
    await api.pool.execute("UPDATE runs SET status = 'completed', end_reason = 'delivered'")
    assert (await api.json("POST", f"/v1/runs/{run_id}/cancel", 409))["code"] == "run_finished"


async def test_cancel_needs_admin(api: Api) -> None:
    run_id = await _triggered(api)
    await api.json("POST", f"/v1/runs/{run_id}/cancel", 403, token="trigger")


async def test_stop_cancels_scheduled_runs_and_asks_running_ones(api: Api) -> None:
    running = await _triggered(api)
    await _start(api, running)
    scheduled = (await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202))["run_id"]
    await api.json("POST", "/v1/campaigns/spring-sale/stop", 200)
    rows = {r["id"]: r for r in await api.pool.fetch("SELECT * FROM runs")}
    assert rows[scheduled]["status"] == "cancelled"
    assert rows[scheduled]["end_reason"] == "cancelled"
    assert rows[running]["status"] == "running"
    assert rows[running]["cancel_requested_at"] == api.clock.now()


async def test_recipients_page_by_position_and_filter(api: Api) -> None:
    run_id = await _triggered(api)
    await _start(api, run_id)
    first = await api.json("GET", f"/v1/runs/{run_id}/recipients?limit=2", 200, token="trigger")
    assert [r["profile_id"] for r in first["items"]] == ["p1", "p2"]
    assert first["items"][0] == {"position": 0, "profile_id": "p1", "status": "sent",
                                 "reason": None, "error": None, "attempts": 1,
                                 "provider_message_id": None, "updated_at": None,
                                 "delivery": None}
    rest = await api.json("GET", f"/v1/runs/{run_id}/recipients?cursor={first['next_cursor']}",
                          200)
    assert [r["profile_id"] for r in rest["items"]] == ["p3"]
    assert rest["next_cursor"] is None
    excluded = await api.json("GET", f"/v1/runs/{run_id}/recipients?status=excluded"
                              "&reason=opted_out", 200)
    assert [r["profile_id"] for r in excluded["items"]] == ["p2"]
    by_reason = await api.json("GET", f"/v1/runs/{run_id}/recipients?reason=opted_out", 200)
    assert [r["profile_id"] for r in by_reason["items"]] == ["p2"]
    problem = await api.json("GET", f"/v1/runs/{run_id}/recipients?status=lost", 422)
    assert problem["errors"][0]["loc"] == "query.status"
    problem = await api.json("GET", f"/v1/runs/{run_id}/recipients?cursor=InNpeCI", 422)
    assert problem["errors"][0]["loc"] == "query.cursor"
    await api.json("GET", "/v1/runs/run_nope/recipients", 404)


async def test_campaign_runs_and_report(api: Api) -> None:
    first = await _triggered(api)
    await _start(api, first)
    api.clock.advance(1)
    second = (await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202))["run_id"]
    page = await api.json("GET", "/v1/campaigns/spring-sale/runs?limit=1", 200)
    assert [r["id"] for r in page["items"]] == [second]
    older = await api.json("GET", f"/v1/campaigns/spring-sale/runs?cursor={page['next_cursor']}",
                           200)
    assert [r["id"] for r in older["items"]] == [first]
    assert older["next_cursor"] is None
    report = await api.json("GET", "/v1/campaigns/spring-sale/report", 200)
    assert report["campaign_id"] == "spring-sale"
    assert report["status"] == "live"
    assert report["totals"] == {"runs": 2, "targeted": 3, "sent": 1, "failed": 0, "pending": 1,
                                "excluded": {**ZERO["excluded"], "opted_out": 1},
                                "delivery": {**ZERO["delivery"], "unknown": 1}}
    assert [r["id"] for r in report["runs"]] == [second, first]
    assert report["runs_next_cursor"] is None
    await api.json("GET", "/v1/campaigns/nope/report", 404)
    await api.json("GET", "/v1/campaigns/nope/runs", 404)
    await api.json("GET", "/v1/campaigns/spring-sale/report", 403, token="trigger")


@pytest.mark.parametrize(
    "position",
    [["2026-01-01T00:00:00", "x"], ["9999-12-31T23:59:59+00:00", "x"],
     ["0001-01-01T00:00:00+05:00", "x"], [None, None], ["2026-01-01T00:00:00Z", ["x"]],
     2**70, -2**70, 1.5, True, {"a": 1}],
)
async def test_forged_cursors_are_422_never_500(api: Api, position: object) -> None:
    run_id = await _triggered(api)
    cursor = encode_cursor(position)
    for path in ("/v1/campaigns", "/v1/campaigns/spring-sale/runs",
                 f"/v1/runs/{run_id}/recipients"):
        response = await api.get(f"{path}?cursor={cursor}")
        assert response.status in (200, 422), (path, await response.text())

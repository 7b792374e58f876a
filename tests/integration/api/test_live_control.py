"""Live control over HTTP (SPEC §9.1): pause, resume, the PATCH of a live or paused campaign,
their refusals, the dry-run re-plans, and concurrent requests ending in one state."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from tests.integration.api.conftest import EMAIL_CONTENT, Api

PATH = "/v1/campaigns/spring-sale"


async def _live(api: Api, **fields: Any) -> dict[str, Any]:
    """A live windowed campaign of audience `a` (so that it takes several triggers)."""
    return await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"},
                                   **fields)


async def _running_run(api: Api, *, rate: int, recipients: int, excluded: int,
                       seconds_left: float, claimed: int = 0) -> str:
    """A running run as the engine leaves it: `recipients - excluded` pending, the last
    `excluded` excluded `time_cap` by its plan, the first `claimed` claimed for a call."""
    await api.audience("a", "p1")
    answer = await api.json("POST", PATH + "/triggers", 202)
    run_id = str(answer["run_id"])
    now = api.clock.now()
    await api.pool.execute(
        """UPDATE runs SET status = 'running', started_at = $2, deadline = $3,
                  deadline_reason = 'time_cap', rate_per_second = $4, targeted = $5,
                  pending = $5::bigint - $6::bigint, excluded_time_cap = $6
           WHERE id = $1""",
        run_id, now, now + timedelta(seconds=seconds_left), rate, recipients, excluded)
    await api.pool.executemany(
        """INSERT INTO run_recipients (run_id, position, profile_id, status, reason)
           VALUES ($1, $2, $3, $4, $5)""",
        [(run_id, n, f"q{n}", "pending" if n < recipients - excluded else "excluded",
          None if n < recipients - excluded else "time_cap") for n in range(recipients)])
    await api.pool.executemany(
        "INSERT INTO run_claims (run_id, position, holder, claimed_at) VALUES ($1, $2, 'h', $3)",
        [(run_id, n, now) for n in range(claimed)])
    return run_id


async def _counts(api: Api, run_id: str) -> dict[str, Any]:
    report: dict[str, Any] = await api.json("GET", f"/v1/runs/{run_id}", 200)
    counts = report["counts"]
    assert counts["targeted"] == (counts["sent"] + counts["failed"] + counts["pending"]
                                  + sum(counts["excluded"].values()))
    return report


async def test_pause_and_resume_move_the_campaign_and_repeat_quietly(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    paused = await api.json("POST", PATH + "/pause", 200)
    assert paused["status"] == "paused"
    assert await api.json("POST", PATH + "/pause", 200) == paused
    # Triggers are still accepted while paused (the run waits).
    await api.audience("a", "p1")
    await api.json("POST", PATH + "/triggers", 202)
    live = await api.json("POST", PATH + "/resume", 200)
    assert live["status"] == "live"
    assert (await api.json("POST", PATH + "/resume", 200))["status"] == "live"
    listed = await api.json("GET", "/v1/campaigns?status=live", 200)
    assert [c["id"] for c in listed["items"]] == ["spring-sale"]


async def test_a_running_run_reads_paused_while_its_campaign_is(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    run_id = await _running_run(api, rate=10, recipients=5, excluded=0, seconds_left=600)
    await api.json("POST", PATH + "/pause", 200)
    assert (await _counts(api, run_id))["status"] == "paused"
    await api.json("POST", PATH + "/resume", 200)
    assert (await _counts(api, run_id))["status"] == "running"


async def test_stop_works_on_a_paused_campaign(api: Api) -> None:
    await api.live_campaign()
    await api.json("POST", PATH + "/pause", 200)
    assert (await api.json("POST", PATH + "/stop", 200))["status"] == "stopped"


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_control_of_unknown_or_not_live_campaigns_is_refused(api: Api, action: str) -> None:
    await api.json("POST", f"/v1/campaigns/nope/{action}", 404)
    await api.json("POST", "/v1/campaigns", 201, json={
        "id": "spring-sale", "name": "Spring", "channel": "email", "content": EMAIL_CONTENT})
    problem = await api.json("POST", f"{PATH}/{action}", 409)
    assert problem["code"] == "campaign_not_live"
    await api.json("POST", PATH + "/activate", 200)
    await api.json("POST", PATH + "/stop", 200)
    problem = await api.json("POST", f"{PATH}/{action}", 409)
    assert problem["code"] == "campaign_not_live"


async def test_patch_of_a_live_campaign_takes_name_and_rate_only(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    updated = await api.json("PATCH", PATH, 200,
                             json={"name": "Renamed", "throttle": {"rate_per_second": 25}})
    assert (updated["name"], updated["throttle"]["rate_per_second"]) == ("Renamed", 25)
    assert updated["status"] == "live"
    problem = await api.json("PATCH", PATH, 409, json={
        "throttle": {"rate_per_second": 5, "pool": "x"}, "schedule": {"end_at": None}})
    assert problem["code"] == "campaign_not_editable"
    assert [e["loc"] for e in problem["errors"]] == ["schedule", "throttle.pool"]
    assert (await api.json("GET", PATH, 200))["throttle"]["rate_per_second"] == 25


@pytest.mark.parametrize("rate", [0, 2001, "10", None])
async def test_a_bad_live_rate_is_422_naming_it(api: Api, rate: Any) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    problem = await api.json("PATCH", PATH, 422, json={"throttle": {"rate_per_second": rate}})
    assert problem["errors"][0]["loc"] == "throttle.rate_per_second"


async def test_an_unthrottled_live_campaign_cannot_be_given_a_rate(api: Api) -> None:
    await api.live_campaign()
    problem = await api.json("PATCH", PATH, 409, json={"throttle": {"rate_per_second": 5}})
    assert problem["code"] == "campaign_not_editable"
    assert problem["errors"][0]["loc"] == "throttle.rate_per_second"


async def test_a_rate_change_reaches_the_scheduled_runs(api: Api) -> None:
    await api.live_campaign(audience="a", throttle={"rate_per_second": 10},
                            schedule={"start_at": "2026-03-02T00:00:00Z",
                                      "end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    run_id = (await api.json("POST", PATH + "/triggers", 202))["run_id"]
    await api.json("PATCH", PATH, 200, json={"throttle": {"rate_per_second": 30}})
    assert (await api.json("GET", f"/v1/runs/{run_id}", 200))["rate_per_second"] == 30


async def test_dry_run_patch_shows_the_replan_and_changes_nothing(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    # 100 s left at 10/s: 1,000 reachable; 1,200 targeted, 200 excluded by the plan.
    run_id = await _running_run(api, rate=10, recipients=1200, excluded=200, seconds_left=100)
    before = await _counts(api, run_id)
    # At 5/s: 500 reachable, 500 more excluded.
    answer = await api.json("PATCH", PATH + "?dry_run=true", 200,
                            json={"throttle": {"rate_per_second": 5}})
    assert answer["campaign"]["throttle"]["rate_per_second"] == 5
    [replan] = answer["replans"]
    assert (replan["run_id"], replan["capacity"]) == (run_id, 500)
    assert (replan["reinstated"], replan["excluded"]) == (0, 500)
    assert replan["after"]["pending"] == 500
    assert replan["after"]["excluded"]["time_cap"] == 700
    assert replan["before"] == before["counts"]
    # At 12/s: 1,200 reachable: the 200 come back.
    answer = await api.json("PATCH", PATH + "?dry_run=true", 200,
                            json={"throttle": {"rate_per_second": 12}})
    [replan] = answer["replans"]
    assert (replan["reinstated"], replan["excluded"]) == (200, 0)
    assert replan["after"]["excluded"]["time_cap"] == 0
    # Nothing was applied.
    assert (await api.json("GET", PATH, 200))["throttle"]["rate_per_second"] == 10
    assert await _counts(api, run_id) == before


async def test_the_replan_keeps_the_recipients_claimed_for_a_call(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    run_id = await _running_run(api, rate=10, recipients=100, excluded=0, seconds_left=100,
                                claimed=30)
    # At 1/s with 10 s left: a capacity of 10, but 30 are claimed (maybe in a call).
    api.clock.advance(90)
    answer = await api.json("PATCH", PATH + "?dry_run=true", 200,
                            json={"throttle": {"rate_per_second": 1}})
    [replan] = answer["replans"]
    assert (replan["run_id"], replan["capacity"]) == (run_id, 10)
    assert replan["after"]["pending"] == 30
    assert replan["excluded"] == 70


async def test_dry_run_resume_counts_the_time_the_pause_spent(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    run_id = await _running_run(api, rate=10, recipients=1000, excluded=0, seconds_left=100)
    await api.json("POST", PATH + "/pause", 200)
    api.clock.advance(40)  # 60 s left: 600 reachable
    answer = await api.json("POST", PATH + "/resume?dry_run=true", 200)
    assert answer["campaign"]["status"] == "live"
    [replan] = answer["replans"]
    assert (replan["capacity"], replan["excluded"]) == (600, 400)
    assert (await api.json("GET", PATH, 200))["status"] == "paused"
    assert (await _counts(api, run_id))["counts"]["pending"] == 1000


async def test_a_draft_patch_dry_run_writes_nothing(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json={
        "id": "spring-sale", "name": "Spring", "channel": "email", "content": EMAIL_CONTENT})
    answer = await api.json("PATCH", PATH + "?dry_run=true", 200, json={"name": "Other"})
    assert answer["name"] == "Other"
    assert (await api.json("GET", PATH, 200))["name"] == "Spring"


async def test_concurrent_controls_leave_one_consistent_state(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    requests = []
    for n in range(20):
        if n % 3 == 0:
            requests.append(api.post(PATH + "/pause"))
        elif n % 3 == 1:
            requests.append(api.post(PATH + "/resume"))
        else:
            requests.append(api.patch(PATH, json={"throttle": {"rate_per_second": 10 + n}}))
    answers = await asyncio.gather(*requests)
    assert all(a.status == 200 for a in answers)
    row = await api.pool.fetchrow(
        "SELECT status, paused_at, rate_per_second FROM campaigns WHERE id = 'spring-sale'")
    assert row is not None
    assert row["status"] in ("live", "paused")
    assert (row["paused_at"] is not None) == (row["status"] == "paused")
    assert row["rate_per_second"] in {10 + n for n in range(20) if n % 3 == 2}


async def test_metrics_count_campaigns_by_status(api: Api) -> None:
    await _live(api, throttle={"rate_per_second": 10})
    await api.json("POST", PATH + "/pause", 200)
    response = await api.get("/metrics")
    text = await response.text()
    assert 'campaignd_campaigns{status="paused"} 1.0' in text
    assert 'campaignd_campaigns{status="live"} 0.0' in text
    assert "campaignd_replans_total 0.0" in text

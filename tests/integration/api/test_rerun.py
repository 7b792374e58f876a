"""`POST /v1/runs/{id}/rerun` (SPEC §9.4): selection, order, frozen data, idempotency,
refusals, dry runs; the reports' `rerun_of` and `reruns`."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.api.conftest import Api
from tests.integration.api.test_cli import cli

# (position, profile_id, status, reason) of the source run, not in table order.
OUTCOMES = [
    (0, "p0", "sent", None), (1, "p1", "excluded", "time_cap"),
    (2, "p2", "failed", "provider_rejected"), (3, "p3", "excluded", "opted_out"),
    (4, "p4", "excluded", "campaign_end"), (5, "p5", "excluded", "time_cap"),
    (6, "p6", "excluded", "cancelled"), (7, "p7", "failed", "timeout"),
    (8, "p8", "excluded", "time_cap"), (9, "p9", "excluded", "no_address"),
]


async def _source(api: Api, *, status: str = "completed", **campaign: Any) -> str:
    """A triggered run of a live campaign, made `status` with OUTCOMES frozen (as the
    engine would have left it)."""
    campaign.setdefault("schedule", {"end_at": "2026-04-01T00:00:00Z"})
    await api.live_campaign(throttle={"rate_per_second": 7}, **campaign)
    answer = await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202, json={
        "recipients": [{"profile_id": "p0", "email": "p0@example.com"}],
        "context": {"order": 42}})
    run_id = str(answer["run_id"])
    counts = {"sent": 1, "failed": 2, "excluded_time_cap": 3, "excluded_opted_out": 1,
              "excluded_campaign_end": 1, "excluded_cancelled": 1, "excluded_no_address": 1}
    sets = ", ".join(f"{column} = {n}" for column, n in counts.items())
    await api.pool.execute(
        f"""UPDATE runs SET status = $2, started_at = $3, finished_at = $3,
                   end_reason = 'time_cap', targeted = 10, {sets} WHERE id = $1""",
        run_id, status, api.clock.now())
    await api.pool.executemany(
        """INSERT INTO run_recipients (run_id, position, profile_id, email, phone, push_tokens,
                                       attributes, context, status, reason)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        [(run_id, pos, pid, f"{pid}@frozen.example", "+15550000" + pid[1:] * 3, [f"tok-{pid}"],
          {"name": pid.upper()}, {"seat": pos}, status_, reason)
         for pos, pid, status_, reason in reversed(OUTCOMES)])
    return run_id


async def _inline(api: Api, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    rows = await api.pool.fetch(
        "SELECT position, profile_id, data FROM run_inline_recipients WHERE run_id = $1 "
        "ORDER BY position", run_id)
    return [(r["position"], r["profile_id"], r["data"]) for r in rows]


async def test_rerun_copies_exactly_the_selected_recipients_in_source_order(api: Api) -> None:
    source = await _source(api)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 202,
                            json={"only": ["time_cap", "failed"]})
    assert answer["rerun_of"] == source
    assert answer["recipients"] == 5
    assert answer["status"] == "scheduled"
    assert answer["scheduled_for"] == "2026-03-01T12:00:00Z"
    new = answer["run_id"]
    assert answer["links"] == {"run": f"/v1/runs/{new}"}
    inline = await _inline(api, new)
    assert [(pos, pid) for pos, pid, _ in inline] == [
        (1, "p1"), (2, "p2"), (5, "p5"), (7, "p7"), (8, "p8")]
    assert inline[0][2] == {"email": "p1@frozen.example", "phone": "+15550000111",
                            "push_tokens": ["tok-p1"], "attributes": {"name": "P1"},
                            "context": {"seat": 1}}
    run = await api.pool.fetchrow("SELECT * FROM runs WHERE id = $1", new)
    assert run["inline_count"] == 5
    assert run["context"] == {"order": 42}
    assert run["rate_per_second"] == 7
    assert run["rerun_of"] == source
    assert not run["one_shot"] and run["audience_id"] is None


@pytest.mark.parametrize(("only", "expected"), [
    (["time_cap"], ["p1", "p5", "p8"]),
    (["campaign_end"], ["p4"]),
    (["cancelled"], ["p6"]),
    (["failed"], ["p2", "p7"]),
    (["cancelled", "campaign_end", "time_cap", "failed"],
     ["p1", "p2", "p4", "p5", "p6", "p7", "p8"]),
])
async def test_each_value_selects_its_recipients(api: Api, only: list[str],
                                                 expected: list[str]) -> None:
    source = await _source(api)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 202, json={"only": only})
    assert [pid for _, pid, _ in await _inline(api, answer["run_id"])] == expected
    assert answer["recipients"] == len(expected)


async def test_reports_name_the_rerun_and_its_source(api: Api) -> None:
    source = await _source(api)
    first = (await api.json("POST", f"/v1/runs/{source}/rerun", 202,
                            json={"only": ["time_cap"]}))["run_id"]
    api.clock.advance(1)
    second = (await api.json("POST", f"/v1/runs/{source}/rerun", 202,
                             json={"only": ["failed"]}))["run_id"]
    report = await api.json("GET", f"/v1/runs/{source}", 200)
    assert report["rerun_of"] is None
    assert report["reruns"] == [first, second]
    rerun = await api.json("GET", f"/v1/runs/{first}", 200, token="trigger")
    assert rerun["rerun_of"] == source and rerun["reruns"] == []
    listed = await api.json("GET", "/v1/campaigns/spring-sale/runs", 200)
    by_id = {item["id"]: item for item in listed["items"]}
    assert by_id[source]["reruns"] == [first, second]
    assert by_id[second]["rerun_of"] == source


async def test_the_same_idempotency_key_gives_the_same_rerun(api: Api) -> None:
    source = await _source(api)
    headers = {"Idempotency-Key": "rerun-1"}
    first = await api.json("POST", f"/v1/runs/{source}/rerun", 202,
                           json={"only": ["time_cap", "failed"]}, headers=headers)
    again = await api.json("POST", f"/v1/runs/{source}/rerun", 202,
                           json={"only": ["failed", "time_cap", "failed"]}, headers=headers)
    assert again == first
    assert await api.pool.fetchval(
        "SELECT count(*) FROM runs WHERE rerun_of = $1", source) == 1
    other = await api.json("POST", f"/v1/runs/{source}/rerun", 422,
                           json={"only": ["time_cap"]}, headers=headers)
    assert other["code"] == "idempotency_key_reused"
    bad = await api.json("POST", f"/v1/runs/{source}/rerun", 422, json={"only": ["failed"]},
                         headers={"Idempotency-Key": "k" * 256})
    assert bad["code"] == "validation_error"


async def test_unknown_run_is_404(api: Api) -> None:
    for run_id in ("run_nope", "nope"):
        body = await api.json("POST", f"/v1/runs/{run_id}/rerun", 404,
                              json={"only": ["failed"]})
        assert body["code"] == "not_found"


@pytest.mark.parametrize("body", [
    {"only": []}, {"only": ["opted_out"]}, {"only": ["time_cap", "nope"]}, {},
    {"only": "failed"}, {"only": ["failed"], "extra": 1},
])
async def test_bad_only_is_422_naming_it(api: Api, body: dict[str, Any]) -> None:
    source = await _source(api)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 422, json=body)
    assert answer["code"] == "validation_error"
    fields = [error["loc"] for error in answer["errors"]]
    assert any(f.startswith("only") or f == "extra" for f in fields), fields
    assert await api.pool.fetchval("SELECT count(*) FROM runs WHERE rerun_of = $1",
                                   source) == 0


async def test_a_running_or_scheduled_source_is_409_run_not_finished(api: Api) -> None:
    source = await _source(api, status="running")
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 409, json={"only": ["failed"]})
    assert answer["code"] == "run_not_finished"
    await api.pool.execute("UPDATE runs SET status = 'scheduled' WHERE id = $1", source)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 409, json={"only": ["failed"]})
    assert answer["code"] == "run_not_finished"
    dry = await api.json("POST", f"/v1/runs/{source}/rerun?dry_run=true", 409,
                         json={"only": ["failed"]})
    assert dry["code"] == "run_not_finished"


@pytest.mark.parametrize("campaign_status", ["draft", "stopped"])
async def test_a_draft_or_stopped_campaign_is_409_campaign_not_live(
        api: Api, campaign_status: str) -> None:
    source = await _source(api)
    await api.pool.execute("UPDATE campaigns SET status = $1", campaign_status)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 409, json={"only": ["failed"]})
    assert answer["code"] == "campaign_not_live"


async def test_a_paused_campaign_takes_a_rerun(api: Api) -> None:
    source = await _source(api)
    await api.json("POST", "/v1/campaigns/spring-sale/pause", 200)
    await api.json("POST", f"/v1/runs/{source}/rerun", 202, json={"only": ["failed"]})


async def test_a_completed_one_shot_campaign_takes_a_rerun_and_stays_completed(api: Api) -> None:
    source = await _source(api, schedule={})
    await api.pool.execute("UPDATE campaigns SET status = 'completed', finished_at = now()")
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 202, json={"only": ["failed"]})
    assert answer["recipients"] == 2
    assert (await api.json("GET", "/v1/campaigns/spring-sale", 200))["status"] == "completed"
    # Still a single one-shot run: a trigger is refused as before.
    refused = await api.json("POST", "/v1/campaigns/spring-sale/triggers", 409,
                             json={"recipients": [{"profile_id": "x", "email": "x@e.com"}]})
    assert refused["code"] == "campaign_already_triggered"


async def test_a_campaign_past_its_end_is_409_campaign_ended(api: Api) -> None:
    source = await _source(api)
    api.clock.advance(40 * 86400)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 409, json={"only": ["failed"]})
    assert answer["code"] == "campaign_ended"


async def test_nothing_to_rerun_is_409_and_creates_nothing(api: Api) -> None:
    source = await _source(api)
    await api.pool.execute("UPDATE run_recipients SET reason = 'opted_out' "
                           "WHERE run_id = $1 AND reason = 'cancelled'", source)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 409,
                            json={"only": ["cancelled"]})
    assert answer["code"] == "nothing_to_rerun"
    assert await api.pool.fetchval("SELECT count(*) FROM runs") == 1


async def test_dry_run_counts_by_reason_and_creates_nothing(api: Api) -> None:
    source = await _source(api)
    answer = await api.json("POST", f"/v1/runs/{source}/rerun?dry_run=true", 200,
                            json={"only": ["time_cap", "failed", "cancelled"]})
    assert answer == {"rerun_of": source, "campaign_id": "spring-sale", "recipients": 6,
                      "by_reason": {"time_cap": 3, "failed": 2, "cancelled": 1}}
    zero = await api.json("POST", f"/v1/runs/{source}/rerun?dry_run=true", 200,
                          json={"only": ["campaign_end"]})
    assert zero["by_reason"] == {"campaign_end": 1}
    assert await api.pool.fetchval("SELECT count(*) FROM runs") == 1
    assert await api.pool.fetchval("SELECT count(*) FROM run_inline_recipients "
                                   "WHERE run_id <> $1", source) == 0


async def test_rerun_needs_an_admin_token(api: Api) -> None:
    source = await _source(api)
    response = await api.post(f"/v1/runs/{source}/rerun", json={"only": ["failed"]},
                              token="trigger")
    assert response.status == 403
    response = await api.post(f"/v1/runs/{source}/rerun", data=json.dumps({"only": ["failed"]}),
                              headers={"Content-Type": "text/plain"})
    assert response.status == 415


async def test_cli_rerun_and_dry_run(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    source = await _source(api)
    code, out, _ = await cli(api, capsys, "runs", "rerun", source, "--only", "time_cap",
                             "--dry-run")
    assert code == 0 and json.loads(out)["by_reason"] == {"time_cap": 3}
    code, out, _ = await cli(api, capsys, "runs", "rerun", source, "--only",
                             "time_cap, failed", "--idempotency-key", "k1")
    assert code == 0
    made = json.loads(out)
    assert (made["rerun_of"], made["recipients"]) == (source, 5)
    code, out, _ = await cli(api, capsys, "runs", "rerun", source, "--only", "failed,time_cap",
                             "--idempotency-key", "k1")
    assert json.loads(out)["run_id"] == made["run_id"]
    code, _, err = await cli(api, capsys, "runs", "rerun", source, "--only", "opted_out")
    assert code == 1 and err.startswith("campaignd: 422 validation_error: only.0")


async def test_a_rerun_while_the_windows_are_closed_waits_for_the_next_opening(api: Api) -> None:
    office = {"timezone": "Europe/Paris", "days": ["mon", "tue", "wed", "thu", "fri"],
              "from": "08:00", "to": "20:00"}  # closed on Sunday 2026-03-01
    source = await _source(api, schedule={"end_at": "2026-04-01T00:00:00Z",
                                          "windows": office})
    answer = await api.json("POST", f"/v1/runs/{source}/rerun", 202, json={"only": ["failed"]})
    assert answer["scheduled_for"] == "2026-03-02T07:00:00Z"
    stored = await api.pool.fetchval("SELECT scheduled_for FROM runs WHERE id = $1",
                                     answer["run_id"])
    assert stored.isoformat() == "2026-03-02T07:00:00+00:00"

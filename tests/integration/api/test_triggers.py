"""Triggers: the run they create, the campaign rules, idempotency, signatures, concurrency."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from tests.integration.api.conftest import (
    OLD_WEBHOOK_SECRET,
    START,
    WEBHOOK_SECRET,
    Api,
    campaign_body,
)

TRIGGERS = "/v1/campaigns/spring-sale/triggers"


async def _run_row(api: Api, run_id: str) -> asyncpg.Record:
    row = await api.pool.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    assert row is not None
    return row


async def test_trigger_creates_a_scheduled_run_and_notifies_the_engine(api: Api) -> None:
    await api.live_campaign(audience="newsletter", throttle={"rate_per_second": 165})
    await api.audience("newsletter", "p1")
    notified: list[str] = []
    heard = asyncio.Event()

    def on_notify(*args: Any) -> None:
        notified.append(args[3])
        heard.set()

    listener = await asyncpg.connect(api.database_url)
    await listener.add_listener("campaignd_runs", on_notify)
    try:
        response = await api.post(TRIGGERS, json={"context": {"promo": "X1"}}, token="trigger")
        assert response.status == 202
        answer = await response.json()
        assert response.headers["Location"] == f"/v1/runs/{answer['run_id']}"
        assert answer == {
            "run_id": answer["run_id"], "campaign_id": "spring-sale", "status": "scheduled",
            "scheduled_for": "2026-03-01T12:00:00Z", "links": {"run": response.headers["Location"]},
        }
        row = await _run_row(api, answer["run_id"])
        assert row["status"] == "scheduled"
        assert row["audience_id"] == "newsletter"
        assert row["rate_per_second"] == 165
        assert row["context"] == {"promo": "X1"}
        assert row["inline_count"] == 0
        assert row["one_shot"] is True
        async with asyncio.timeout(5):
            await heard.wait()
        assert notified == [answer["run_id"]]
    finally:
        await listener.close()


async def test_scheduled_for_is_start_at_when_later_than_now(api: Api) -> None:
    await api.live_campaign(audience="a", schedule={"start_at": "2026-03-01T14:00:00+01:00",
                                                    "end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    later = await api.json("POST", TRIGGERS, 202)
    assert later["scheduled_for"] == "2026-03-01T13:00:00Z"
    api.clock.advance(3600 * 2)
    now = await api.json("POST", TRIGGERS, 202)
    assert now["scheduled_for"] == "2026-03-01T14:00:00Z"


async def test_inline_recipients_are_copied_with_only_the_given_fields(api: Api) -> None:
    await api.live_campaign()
    recipients = [
        {"profile_id": "p1", "email": "a@b.co", "attributes": {"n": 1}, "context": {"c": 2}},
        {"profile_id": "p2", "push_token": "tok"},
        {"profile_id": "p3", "push_tokens": ["t1", "t2"], "phone": "+33612345678",
         "email": None},
    ]
    answer = await api.json("POST", TRIGGERS, 202, json={"recipients": recipients})
    row = await _run_row(api, answer["run_id"])
    assert row["audience_id"] is None
    assert row["inline_count"] == 3
    stored = await api.pool.fetch(
        "SELECT position, profile_id, data FROM run_inline_recipients WHERE run_id = $1 "
        "ORDER BY position", answer["run_id"])
    assert [(r["position"], r["profile_id"], r["data"]) for r in stored] == [
        (0, "p1", {"email": "a@b.co", "attributes": {"n": 1}, "context": {"c": 2}}),
        (1, "p2", {"push_tokens": ["tok"]}),
        (2, "p3", {"push_tokens": ["t1", "t2"], "phone": "+33612345678"}),
    ]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"audience": "a", "recipients": [{"profile_id": "p"}]}, ""),
        ({"recipients": [{"email": "a@b.co"}]}, "recipients.0.profile_id"),
        ({"recipients": [{"profile_id": "p", "email": "nope"}]}, "recipients.0.email"),
        ({"recipients": [{"profile_id": "p", "phone": "0612"}]}, "recipients.0.phone"),
        ({"recipients": [{"profile_id": "p", "push_token": "a", "push_tokens": ["b"]}]},
         "recipients.0"),
        ({"context": {"big": "x" * 70_000}}, "context"),
        ({"context": []}, "context"),
        ({"recipients": [{"profile_id": "p"}] * 4}, "recipients"),
        ({"audience": "not an id"}, "audience"),
        ({"extra": 1}, "extra"),
    ],
)
async def test_invalid_trigger_bodies_are_422(api: Api, body: dict[str, Any], loc: str) -> None:
    api.reconfigure(CAMPAIGND_LIMITS_MAX_INLINE_RECIPIENTS="3")
    await api.live_campaign()
    problem = await api.json("POST", TRIGGERS, 422, json=body)
    assert problem["code"] == "validation_error"
    assert loc in [e["loc"] for e in problem["errors"]], problem


async def test_no_audience_anywhere_is_422(api: Api) -> None:
    await api.live_campaign()
    problem = await api.json("POST", TRIGGERS, 422)
    assert problem["errors"][0]["loc"] == "audience"


async def test_unknown_audience_is_422(api: Api) -> None:
    await api.live_campaign(audience="later")
    problem = await api.json("POST", TRIGGERS, 422, json={})
    assert problem["errors"][0]["loc"] == "audience"
    problem = await api.json("POST", TRIGGERS, 422, json={"audience": "other"})
    assert "other" in problem["errors"][0]["msg"]


async def test_trigger_body_over_max_trigger_bytes_is_413(api: Api) -> None:
    api.reconfigure(CAMPAIGND_SERVER_MAX_TRIGGER_BYTES="2048")
    await api.live_campaign()
    body = {"recipients": [{"profile_id": f"p{i}"} for i in range(200)]}
    assert (await api.json("POST", TRIGGERS, 413, json=body))["code"] == "body_too_large"


async def test_draft_stopped_and_unknown_campaigns_refuse(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body(audience="a"))
    await api.audience("a", "p1")
    assert (await api.json("POST", TRIGGERS, 409))["code"] == "campaign_not_live"
    await api.json("POST", "/v1/campaigns/spring-sale/activate", 200)
    await api.json("POST", "/v1/campaigns/spring-sale/stop", 200)
    assert (await api.json("POST", TRIGGERS, 409))["code"] == "campaign_not_live"
    assert (await api.json("POST", "/v1/campaigns/nope/triggers", 404))["code"] == "not_found"


async def test_one_shot_takes_a_single_trigger(api: Api) -> None:
    await api.live_campaign(audience="a")
    await api.audience("a", "p1")
    await api.json("POST", TRIGGERS, 202)
    assert (await api.json("POST", TRIGGERS, 409))["code"] == "campaign_already_triggered"
    await api.pool.execute("UPDATE campaigns SET status = 'completed'")
    assert (await api.json("POST", TRIGGERS, 409))["code"] == "campaign_already_triggered"


async def test_windowed_campaign_takes_triggers_until_end_at(api: Api) -> None:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-03-01T13:00:00Z"})
    await api.audience("a", "p1")
    first = await api.json("POST", TRIGGERS, 202)
    second = await api.json("POST", TRIGGERS, 202)
    assert first["run_id"] < second["run_id"]
    api.clock.advance(3600)  # exactly end_at: the campaign is still `live` in the database
    assert (await api.json("POST", TRIGGERS, 409))["code"] == "campaign_ended"


async def test_idempotent_replay_returns_the_same_run(api: Api) -> None:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    key = {"Idempotency-Key": "order-42"}
    first = await api.json("POST", TRIGGERS, 202, json={"context": {"a": 1, "b": 2}},
                           headers=key)
    # The same JSON, keys in another order and other spacing, is the same body.
    same = await api.json("POST", TRIGGERS, 202, data='{"context":{"b":2,"a":1}}',
                          headers={**key, "Content-Type": "application/json"})
    assert same == first
    problem = await api.json("POST", TRIGGERS, 422, json={"context": {"a": 2}}, headers=key)
    assert problem["code"] == "idempotency_key_reused"
    assert await api.pool.fetchval("SELECT count(*) FROM runs") == 1
    # Once stopped, the campaign takes no trigger, but a replay still finds its run.
    await api.json("POST", "/v1/campaigns/spring-sale/stop", 200)
    replay = await api.json("POST", TRIGGERS, 202, json={"context": {"a": 1, "b": 2}},
                            headers=key)
    assert replay["run_id"] == first["run_id"]
    assert replay["status"] == "cancelled"


@pytest.mark.parametrize("key", ["", "x" * 256, "é"])
async def test_bad_idempotency_keys_are_422(api: Api, key: str) -> None:
    await api.live_campaign(audience="a")
    headers = {"Idempotency-Key": key.encode("utf-8").decode("latin-1")}
    problem = await api.json("POST", TRIGGERS, 422, headers=headers)
    assert problem["errors"][0]["loc"] == "header.Idempotency-Key"


async def test_twenty_identical_idempotent_requests_make_one_run(api: Api) -> None:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    responses = await asyncio.gather(*(
        api.post(TRIGGERS, json={"context": {"n": 1}}, headers={"Idempotency-Key": "same"})
        for _ in range(20)
    ))
    assert [r.status for r in responses] == [202] * 20
    run_ids = {(await r.json())["run_id"] for r in responses}
    assert len(run_ids) == 1
    assert await api.pool.fetchval("SELECT count(*) FROM runs") == 1


async def test_twenty_simultaneous_one_shot_triggers_accept_exactly_one(api: Api) -> None:
    await api.live_campaign(audience="a")
    await api.audience("a", "p1")
    responses = await asyncio.gather(*(
        api.post(TRIGGERS, json={"context": {"n": n}}) for n in range(20)
    ))
    statuses = sorted(r.status for r in responses)
    assert statuses == [202] + [409] * 19
    codes = {(await r.json())["code"] for r in responses if r.status == 409}
    assert codes == {"campaign_already_triggered"}
    assert await api.pool.fetchval("SELECT count(*) FROM runs") == 1


async def test_triggers_need_a_token_of_trigger_or_admin_scope(api: Api) -> None:
    await api.live_campaign(audience="a")
    await api.audience("a", "p1")
    assert (await api.json("POST", TRIGGERS, 401, token=None))["code"] == "unauthorized"
    await api.json("POST", TRIGGERS, 401, token="cmpd_wrong")
    await api.json("POST", TRIGGERS, 202, token="trigger")


def _signed(secret: str, body: str, msg_id: str, when: Any) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
        "Content-Type": "application/json",
    }


async def test_standard_webhooks_signed_trigger_is_accepted_and_idempotent(api: Api) -> None:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    body = json.dumps({"context": {"promo": "W"}})
    headers = _signed(WEBHOOK_SECRET, body, "msg_1", START)
    first = await api.json("POST", TRIGGERS, 202, data=body, headers=headers, token=None)
    again = await api.json("POST", TRIGGERS, 202, data=body, headers=headers, token=None)
    assert again["run_id"] == first["run_id"]
    row = await _run_row(api, first["run_id"])
    assert row["idempotency_key"] == "msg_1"
    # The previous secret still verifies (rotation); several signatures may be sent.
    rotated = _signed(OLD_WEBHOOK_SECRET, body, "msg_2", START)
    rotated["webhook-signature"] = "v1,bm9wZQ== " + rotated["webhook-signature"]
    second = await api.json("POST", TRIGGERS, 202, data=body, headers=rotated, token=None)
    assert second["run_id"] != first["run_id"]


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"body": '{"context": {"promo": "tampered"}}'}, "no webhook-signature matches"),
        ({"when": -301}, "5 minutes"),
        ({"when": 301}, "5 minutes"),
        ({"secret": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="}, "no webhook-signature"),
        ({"drop": "webhook-timestamp"}, "required"),
        ({"timestamp": "soon"}, "whole seconds"),
    ],
)
async def test_bad_signatures_are_401(api: Api, change: dict[str, Any], detail: str) -> None:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    body = '{"context": {"promo": "W"}}'
    when = START + timedelta(seconds=change.get("when", 0))
    headers = _signed(change.get("secret", WEBHOOK_SECRET), body, "msg_x", when)
    if "drop" in change:
        del headers[change["drop"]]
    if "timestamp" in change:
        headers["webhook-timestamp"] = change["timestamp"]
    problem = await api.json("POST", TRIGGERS, 401, data=change.get("body", body),
                             headers=headers, token=None)
    assert problem["code"] == "invalid_signature"
    assert detail in problem["detail"]


async def test_signature_within_tolerance_is_accepted(api: Api) -> None:
    await api.live_campaign(audience="a", schedule={"end_at": "2026-04-01T00:00:00Z"})
    await api.audience("a", "p1")
    for offset in (-299, 299):
        headers = _signed(WEBHOOK_SECRET, "{}", f"msg_{offset}", START + timedelta(seconds=offset))
        await api.json("POST", TRIGGERS, 202, data="{}", headers=headers, token=None)


async def test_signed_triggers_are_refused_without_configured_secrets(api: Api) -> None:
    api.reconfigure(CAMPAIGND_AUTH_WEBHOOK_SECRETS="")
    await api.live_campaign(audience="a")
    headers = _signed(WEBHOOK_SECRET, "{}", "msg_1", START)
    problem = await api.json("POST", TRIGGERS, 401, data="{}", headers=headers, token=None)
    assert "not enabled" in problem["detail"]


async def test_triggers_are_logged_and_counted(api: Api) -> None:
    await api.live_campaign(audience="a")
    await api.audience("a", "p1")
    with capture_logs() as logs:
        accepted = await api.json("POST", TRIGGERS, 202)
        await api.json("POST", TRIGGERS, 409)
    events = [(e["event"], e.get("run_id"), e.get("code")) for e in logs
              if e["event"].startswith("trigger.")]
    assert events == [("trigger.accepted", accepted["run_id"], None),
                      ("trigger.rejected", None, "campaign_already_triggered")]
    counter = api.ctx.metrics.trigger_requests
    assert counter.labels("202")._value.get() == 1
    assert counter.labels("409")._value.get() == 1


async def test_dry_run_previews_without_creating_a_run(api: Api) -> None:
    await api.live_campaign(audience="a", throttle={"rate_per_second": 2})
    await api.audience("a", "p1", "p2", "p3")
    preview = await api.json("POST", TRIGGERS + "?dry_run=true", 200, token="trigger")
    assert preview["targeted"] == 3
    assert preview["eligible"] == 3
    assert preview["rate_per_second"] == 2
    assert preview["scheduled_for"] == "2026-03-01T12:00:00Z"
    inline = await api.json("POST", TRIGGERS + "?dry_run=true", 200,
                            json={"recipients": [{"profile_id": "x"}, {"profile_id": "x"}]})
    assert inline["targeted"] == 2
    assert inline["excluded"]["duplicate"] == 1
    assert await api.pool.fetchval("SELECT count(*) FROM runs") == 0
    # A dry run validates like a real trigger.
    await api.json("POST", TRIGGERS, 202)
    problem = await api.json("POST", TRIGGERS + "?dry_run=true", 409)
    assert problem["code"] == "campaign_already_triggered"
    problem = await api.json("POST", TRIGGERS + "?dry_run=maybe", 422)
    assert problem["errors"][0]["loc"] == "query.dry_run"

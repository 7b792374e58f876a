"""Campaigns over HTTP: create, list, read, edit/delete drafts, activate, stop."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.integration.api.conftest import EMAIL_CONTENT, Api, campaign_body


async def test_create_returns_201_with_location_and_the_stored_campaign(api: Api) -> None:
    body = campaign_body(
        audience="newsletter",
        schedule={"start_at": "2026-12-01T09:00:00+01:00", "end_at": None},
        throttle={"rate_per_second": 165},
    )
    response = await api.post("/v1/campaigns", json=body)
    assert response.status == 201
    assert response.headers["Location"] == "/v1/campaigns/spring-sale"
    created = await response.json()
    assert created["status"] == "draft"
    assert created["schedule"] == {"start_at": "2026-12-01T08:00:00Z", "end_at": None,
                                   "windows": None}
    assert created["throttle"] == {"rate_per_second": 165, "pool": None}
    assert created["content"] == EMAIL_CONTENT
    assert await api.json("GET", "/v1/campaigns/spring-sale", 200) == created


async def test_create_without_id_generates_one(api: Api) -> None:
    body = campaign_body()
    del body["id"]
    created = await api.json("POST", "/v1/campaigns", 201, json=body)
    assert created["id"].startswith("cmp_")


async def test_duplicate_id_is_409_already_exists(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    problem = await api.json("POST", "/v1/campaigns", 409, json=campaign_body())
    assert problem["code"] == "already_exists"


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"channel": "fax"}, "channel"),
        ({"id": "bad id!"}, "id"),
        ({"name": ""}, "name"),
        ({"throttle": {"rate_per_second": 0}}, "throttle.rate_per_second"),
        ({"throttle": {"rate_per_second": 2001}}, "throttle.rate_per_second"),
        ({"throttle": {"rate_per_second": "5"}}, "throttle.rate_per_second"),
        ({"throttle": {"rate_per_second": 5.5}}, "throttle.rate_per_second"),
        ({"schedule": {"start_at": "2026-12-01T09:00:00"}}, "schedule.start_at"),
        ({"schedule": {"start_at": 1700000000}}, "schedule.start_at"),
        ({"schedule": {"start_at": "2026-12-02T00:00:00Z", "end_at": "2026-12-01T00:00:00Z"}},
         "schedule.end_at"),
        ({"schedule": {"start_at": "0001-01-01T00:00:00+14:00"}}, "schedule.start_at"),
        ({"content": {"from": "shop@example.com", "text": "t"}}, "content.subject"),
        ({"content": {**EMAIL_CONTENT, "subject": "{{ oops"}}, "content.subject"),
        ({"content": {**EMAIL_CONTENT, "from": "not an address"}}, "content.from"),
        ({"content": {"from": "a@b.co", "subject": "s"}}, "content"),
        ({"content": {**EMAIL_CONTENT, "body": "sms?"}}, "content.body"),
        ({"unknown": 1}, "unknown"),
        ({"name": "x\u0000y"}, "name"),
        *(({"content": {**EMAIL_CONTENT, "subject": f"Hi{control}there"}}, "content.subject")
          for control in ("\x0b", "\x0c", "\x1c", "\x01", "\x7f", "\x85", "\n", "\r")),
    ],
)
async def test_invalid_bodies_are_422_naming_the_field(
    api: Api, fields: dict[str, Any], loc: str
) -> None:
    problem = await api.json("POST", "/v1/campaigns", 422, json=campaign_body(**fields))
    assert problem["code"] == "validation_error"
    assert loc in [error["loc"] for error in problem["errors"]], problem


async def test_a_tab_in_a_subject_is_allowed(api: Api) -> None:
    content = {**EMAIL_CONTENT, "subject": "Hi\tthere"}
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body(content=content))


async def test_template_syntax_error_names_field_and_line(api: Api) -> None:
    content = {**EMAIL_CONTENT, "html": "<p>\n{% if %}</p>"}
    problem = await api.json("POST", "/v1/campaigns", 422, json=campaign_body(content=content))
    assert problem["errors"][0]["loc"] == "content.html"
    assert "line 2" in problem["errors"][0]["msg"]


async def test_rate_above_configured_limit_is_refused(api: Api) -> None:
    api.reconfigure(CAMPAIGND_LIMITS_MAX_RATE_PER_SECOND="100")
    problem = await api.json("POST", "/v1/campaigns", 422,
                             json=campaign_body(throttle={"rate_per_second": 101}))
    assert problem["errors"][0]["loc"] == "throttle.rate_per_second"


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b'{"a": NaN}', "application/json", 400, "malformed_json"),
        (b'{"a": 1e999}', "application/json", 400, "malformed_json"),
        (b"\xff\xfe", "application/json", 400, "malformed_json"),
        (b"[]", "application/json", 422, "validation_error"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b'{"name": "\\ud800"}', "application/json", 422, "validation_error"),
    ],
)
async def test_malformed_requests(
    api: Api, raw: bytes, content_type: str, status: int, code: str
) -> None:
    problem = await api.json("POST", "/v1/campaigns", status, data=raw,
                             headers={"Content-Type": content_type})
    assert problem["code"] == code


async def test_body_over_max_body_bytes_is_413(api: Api) -> None:
    big = json.dumps(campaign_body(content={**EMAIL_CONTENT, "text": "x" * 1_100_000}))
    problem = await api.json("POST", "/v1/campaigns", 413, data=io.BytesIO(big.encode()),
                             headers={"Content-Type": "application/json"})
    assert problem["code"] == "body_too_large"


async def test_list_paginates_with_cursor_and_filters_by_status(api: Api) -> None:
    for index in range(5):
        await api.json("POST", "/v1/campaigns", 201, json=campaign_body(id=f"c{index}"))
        api.clock.advance(1)
    await api.json("POST", "/v1/campaigns/c3/activate", 200)
    first = await api.json("GET", "/v1/campaigns?limit=2", 200)
    assert [c["id"] for c in first["items"]] == ["c0", "c1"]
    second = await api.json("GET", f"/v1/campaigns?limit=2&cursor={first['next_cursor']}", 200)
    third = await api.json("GET", f"/v1/campaigns?limit=2&cursor={second['next_cursor']}", 200)
    assert [c["id"] for c in second["items"] + third["items"]] == ["c2", "c3", "c4"]
    assert third["next_cursor"] is None
    live = await api.json("GET", "/v1/campaigns?status=live", 200)
    assert [c["id"] for c in live["items"]] == ["c3"]


@pytest.mark.parametrize(
    ("query", "loc"),
    [("limit=0", "query.limit"), ("limit=abc", "query.limit"), ("status=nope", "query.status"),
     ("cursor=%%%", "query.cursor"), ("cursor=WzFd", "query.cursor"), ("foo=1", "query.foo"),
     ("limit=1&limit=2", "query.limit")],
)
async def test_bad_list_queries_are_422(api: Api, query: str, loc: str) -> None:
    problem = await api.json("GET", f"/v1/campaigns?{query}", 422)
    assert problem["errors"][0]["loc"] == loc


async def test_unknown_or_malformed_id_is_404(api: Api) -> None:
    assert (await api.json("GET", "/v1/campaigns/nope", 404))["code"] == "not_found"
    assert (await api.json("GET", "/v1/campaigns/bad%20id", 404))["code"] == "not_found"


async def test_patch_edits_a_draft_and_merges_schedule_keys(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body(
        schedule={"start_at": "2026-12-01T00:00:00Z", "end_at": "2026-12-31T00:00:00Z"}))
    patched = await api.json("PATCH", "/v1/campaigns/spring-sale", 200, json={
        "name": "Renamed", "schedule": {"end_at": None}, "throttle": {"rate_per_second": 10},
    })
    assert patched["name"] == "Renamed"
    assert patched["schedule"] == {"start_at": "2026-12-01T00:00:00Z", "end_at": None,
                                   "windows": None}
    assert patched["throttle"] == {"rate_per_second": 10, "pool": None}
    assert patched["updated_at"] == patched["created_at"]  # the fake clock did not move


async def test_patch_switching_channel_needs_matching_content(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    problem = await api.json("PATCH", "/v1/campaigns/spring-sale", 422, json={"channel": "sms"})
    assert problem["errors"][0]["loc"].startswith("content")
    sms = await api.json("PATCH", "/v1/campaigns/spring-sale", 200,
                         json={"channel": "sms", "content": {"body": "Hi {{ context.x }}"}})
    assert sms["channel"] == "sms"


async def test_patch_refuses_unknown_fields_and_the_id(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    problem = await api.json("PATCH", "/v1/campaigns/spring-sale", 422, json={"id": "other"})
    assert problem["errors"][0]["loc"] == "id"


async def test_live_campaign_cannot_be_edited_or_deleted(api: Api) -> None:
    await api.live_campaign()
    # SPEC §9.1: a live campaign takes only its name and rate.
    problem = await api.json("PATCH", "/v1/campaigns/spring-sale", 409,
                             json={"name": "x", "content": EMAIL_CONTENT})
    assert problem["code"] == "campaign_not_editable"
    assert [e["loc"] for e in problem["errors"]] == ["content"]
    problem = await api.json("DELETE", "/v1/campaigns/spring-sale", 409)
    assert problem["code"] == "campaign_not_editable"


async def test_delete_a_draft(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    await api.json("DELETE", "/v1/campaigns/spring-sale", 204)
    await api.json("GET", "/v1/campaigns/spring-sale", 404)
    await api.json("DELETE", "/v1/campaigns/spring-sale", 404)


async def test_activate_is_idempotent_and_refuses_finished_campaigns(api: Api) -> None:
    live = await api.live_campaign()
    assert live["status"] == "live"
    assert live["activated_at"] == "2026-03-01T12:00:00Z"
    again = await api.json("POST", "/v1/campaigns/spring-sale/activate", 200)
    assert again == live
    await api.json("POST", "/v1/campaigns/spring-sale/stop", 200)
    problem = await api.json("POST", "/v1/campaigns/spring-sale/activate", 409)
    assert problem["code"] == "campaign_not_editable"


async def test_activate_refuses_an_end_in_the_past(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body(
        schedule={"end_at": "2026-03-01T11:59:59Z"}))
    problem = await api.json("POST", "/v1/campaigns/spring-sale/activate", 409)
    assert problem["code"] == "campaign_ended"
    stored = await api.json("GET", "/v1/campaigns/spring-sale", 200)
    assert stored["status"] == "draft"


async def test_activate_refuses_a_channel_without_provider(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    channels = api.ctx.config.channels.model_copy(update={"email": "missing"})
    api.ctx.config = api.ctx.config.model_copy(update={"channels": channels})
    problem = await api.json("POST", "/v1/campaigns/spring-sale/activate", 409)
    assert problem["code"] == "no_provider"


async def test_activate_refuses_content_that_no_longer_compiles(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    await api.pool.execute(
        """UPDATE campaigns SET content = jsonb_set(content, '{text}', '"{{ broken"')"""
    )
    problem = await api.json("POST", "/v1/campaigns/spring-sale/activate", 422)
    assert problem["errors"][0]["loc"] == "content.text"


async def test_stop_refuses_drafts_and_completed_and_repeats_quietly(api: Api) -> None:
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    problem = await api.json("POST", "/v1/campaigns/spring-sale/stop", 409)
    assert problem["code"] == "campaign_not_live"
    await api.json("POST", "/v1/campaigns/spring-sale/activate", 200)
    api.clock.advance(5)
    stopped = await api.json("POST", "/v1/campaigns/spring-sale/stop", 200)
    assert stopped["status"] == "stopped"
    assert stopped["finished_at"] == "2026-03-01T12:00:05Z"
    assert await api.json("POST", "/v1/campaigns/spring-sale/stop", 200) == stopped
    await api.pool.execute("UPDATE campaigns SET status = 'completed'")
    problem = await api.json("POST", "/v1/campaigns/spring-sale/stop", 409)
    assert problem["code"] == "campaign_not_live"


async def test_campaign_endpoints_need_an_admin_token(api: Api) -> None:
    assert (await api.json("GET", "/v1/campaigns", 401, token=None))["code"] == "unauthorized"
    assert (await api.json("GET", "/v1/campaigns", 403, token="trigger"))["code"] == "forbidden"
    await api.json("POST", "/v1/campaigns", 403, token="trigger", json=campaign_body())

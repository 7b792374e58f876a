"""`/v1/rate-pools/{name}` and `throttle.pool` (SPEC §9.3) over HTTP."""

from __future__ import annotations

import pytest

from daemon.store import pools
from tests.integration.api.conftest import Api, campaign_body


async def test_put_creates_then_changes_and_get_shows_members_and_shares(api: Api) -> None:
    created = await api.json("PUT", "/v1/rate-pools/landing", 201,
                             json={"rate_per_second": 165})
    assert (created["name"], created["rate_per_second"]) == ("landing", 165)
    assert created["members"] == [] and created["shares"] == []
    changed = await api.json("PUT", "/v1/rate-pools/landing", 200,
                             json={"rate_per_second": 100})
    assert changed["rate_per_second"] == 100
    await api.live_campaign(id="a", throttle={"pool": "landing"})
    await api.live_campaign(id="b", throttle={"pool": "landing", "rate_per_second": 20})
    await pools.share(api.pool, "landing", "daemon-1", 120, 30.0, {"a": 100, "b": 20})
    seen = await api.json("GET", "/v1/rate-pools/landing", 200)
    assert seen["members"] == ["a", "b"]
    assert seen["shares"] == [{"holder": "daemon-1", "demand": 120, "share": 100,
                               "released": 0, "campaigns": {"a": 100, "b": 20}}]


async def test_a_campaign_names_its_pool_and_shows_it(api: Api) -> None:
    await api.json("PUT", "/v1/rate-pools/landing", 201, json={"rate_per_second": 165})
    created = await api.json("POST", "/v1/campaigns", 201,
                             json=campaign_body(throttle={"pool": "landing"}))
    assert created["throttle"] == {"rate_per_second": None, "pool": "landing"}


async def test_an_unknown_pool_is_422_naming_throttle_pool(api: Api) -> None:
    problem = await api.json("POST", "/v1/campaigns", 422,
                             json=campaign_body(throttle={"pool": "nope"}))
    assert [e["loc"] for e in problem["errors"]] == ["throttle.pool"]
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body())
    problem = await api.json("PATCH", "/v1/campaigns/spring-sale", 422,
                             json={"throttle": {"pool": "nope"}})
    assert [e["loc"] for e in problem["errors"]] == ["throttle.pool"]


async def test_a_draft_whose_pool_was_deleted_cannot_be_activated(api: Api) -> None:
    await api.json("PUT", "/v1/rate-pools/landing", 201, json={"rate_per_second": 165})
    await api.json("POST", "/v1/campaigns", 201, json=campaign_body(throttle={"pool": "landing"}))
    await api.json("DELETE", "/v1/rate-pools/landing", 204)
    problem = await api.json("POST", "/v1/campaigns/spring-sale/activate", 409)
    assert problem["code"] == "no_pool"


async def test_delete_refuses_while_a_live_campaign_names_it(api: Api) -> None:
    await api.json("PUT", "/v1/rate-pools/landing", 201, json={"rate_per_second": 165})
    await api.live_campaign(throttle={"pool": "landing"})
    problem = await api.json("DELETE", "/v1/rate-pools/landing", 409)
    assert problem["code"] == "pool_in_use"
    await api.json("POST", "/v1/campaigns/spring-sale/stop", 200)
    await api.json("DELETE", "/v1/rate-pools/landing", 204)
    await api.json("GET", "/v1/rate-pools/landing", 404)
    await api.json("DELETE", "/v1/rate-pools/landing", 404)


@pytest.mark.parametrize("body", [{"rate_per_second": 0}, {"rate_per_second": 2001},
                                  {"rate_per_second": "5"}, {}, {"rate_per_second": 5, "x": 1}])
async def test_a_bad_rate_is_422(api: Api, body: dict[str, object]) -> None:
    problem = await api.json("PUT", "/v1/rate-pools/landing", 422, json=body)
    assert problem["code"] == "validation_error"


async def test_a_bad_name_is_404_and_pools_need_an_admin_token(api: Api) -> None:
    await api.json("GET", "/v1/rate-pools/bad%20name!", 404)
    response = await api.request("PUT", "/v1/rate-pools/landing", token="trigger",
                                 json={"rate_per_second": 5})
    assert response.status == 403


async def test_provider_pools_are_readable_not_writable(api: Api) -> None:
    problem = await api.json("PUT", "/v1/rate-pools/provider:hook", 409,
                             json={"rate_per_second": 5})
    assert problem["code"] == "pool_reserved"
    problem = await api.json("DELETE", "/v1/rate-pools/provider:hook", 409)
    assert problem["code"] == "pool_reserved"

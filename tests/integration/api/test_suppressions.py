"""An unsubscribe outlives the profile: the address stays suppressed, so a profile
created again with it starts unsubscribed and a trigger excludes it (`opted_out`)."""

from __future__ import annotations

from typing import Any

from daemon import unsubscribe
from daemon.models import Channel
from tests.integration.api.conftest import Api

NDJSON = {"Content-Type": "application/x-ndjson"}


async def _link(api: Api, profile_id: str, address: str | None) -> str:
    """The unsubscribe path of an email sent to `address` (None: a link of the first form,
    which names no address)."""
    key = await unsubscribe.load_key(api.pool)
    return unsubscribe.url_for("", key, profile_id, Channel.EMAIL, address)


async def _profile(api: Api, profile_id: str, status: int, **fields: Any) -> dict[str, Any]:
    body = {"email": "Ann@Example.com", **fields}
    answer: dict[str, Any] = await api.json("PUT", f"/v1/profiles/{profile_id}", status,
                                            json=body)
    return answer


async def _excluded(api: Api, profile_id: str) -> dict[str, int]:
    """What a trigger of a campaign on an audience of just this profile would exclude."""
    await api.json("PUT", "/v1/audiences/one", 201, json={"name": "one"})
    await api.json("POST", "/v1/audiences/one/members", 200,
                   data=f'{{"profile_id": "{profile_id}"}}\n', headers=NDJSON)
    await api.live_campaign(audience="one")
    preview = await api.json("POST", "/v1/campaigns/spring-sale/triggers?dry_run=true", 200,
                             json={})
    excluded: dict[str, int] = preview["excluded"]
    return excluded


async def test_unsubscribing_an_erased_profile_suppresses_its_address(api: Api) -> None:
    await _profile(api, "p1", 201)
    link = await _link(api, "p1", "Ann@Example.com")  # the email it was sent
    await api.json("DELETE", "/v1/profiles/p1", 204)
    answer = await api.json("POST", link, 200, token=None)
    assert answer == {"unsubscribed": True, "channel": "email"}
    again = await _profile(api, "p1", 201, email="ann@example.com")  # the case may differ
    assert again["subscriptions"]["email"] is False
    assert again["subscriptions"]["sms"] is True
    assert (await _excluded(api, "p1"))["opted_out"] == 1


async def test_an_unsubscribed_profile_erased_and_created_again_stays_unsubscribed(
    api: Api,
) -> None:
    await _profile(api, "p1", 201)
    await api.json("POST", await _link(api, "p1", None), 200, token=None)
    await api.json("DELETE", "/v1/profiles/p1", 204)
    # Another id, the same address: still unsubscribed; another address is not.
    assert (await _profile(api, "p2", 201))["subscriptions"]["email"] is False
    other = await _profile(api, "p3", 201, email="bob@example.com")
    assert other["subscriptions"]["email"] is True


async def test_an_opt_out_through_the_api_survives_erasure(api: Api) -> None:
    await _profile(api, "p1", 201, phone="+33612345678",
                   subscriptions={"email": True, "sms": False})
    await api.json("DELETE", "/v1/profiles/p1", 204)
    created = await _profile(api, "p1", 201, phone="+33612345678")
    assert created["subscriptions"] == {"email": True, "sms": False, "push": True}


async def test_imports_create_suppressed_profiles_unsubscribed(api: Api) -> None:
    await _profile(api, "p1", 201)
    await api.json("POST", await _link(api, "p1", "ann@example.com"), 200, token=None)
    await api.json("DELETE", "/v1/profiles/p1", 204)
    lines = '{"id": "p9", "email": "ANN@example.com"}\n{"id": "p8", "email": "x@example.com"}\n'
    await api.json("POST", "/v1/profiles/import", 200, data=lines, headers=NDJSON)
    assert (await api.json("GET", "/v1/profiles/p9", 200))["subscriptions"]["email"] is False
    assert (await api.json("GET", "/v1/profiles/p8", 200))["subscriptions"]["email"] is True


async def test_an_explicit_subscription_at_creation_wins(api: Api) -> None:
    await _profile(api, "p1", 201)
    await api.json("POST", await _link(api, "p1", None), 200, token=None)
    await api.json("DELETE", "/v1/profiles/p1", 204)
    created = await _profile(api, "p1", 201, subscriptions={"email": True})
    assert created["subscriptions"]["email"] is True


async def test_emails_match_by_ascii_case_only_in_sql_and_in_links_alike(api: Api) -> None:
    await _profile(api, "p1", 201, email="ÄNN@Example.com")
    link = await _link(api, "p1", "ÄNN@Example.com")
    await api.json("DELETE", "/v1/profiles/p1", 204)
    await api.json("POST", link, 200, token=None)
    same = await _profile(api, "p2", 201, email="Änn@EXAMPLE.COM")
    assert same["subscriptions"]["email"] is False
    other = await _profile(api, "p3", 201, email="änn@example.com")  # not an ASCII letter
    assert other["subscriptions"]["email"] is True

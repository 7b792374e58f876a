"""Audiences: create/rename, read with size, delete; members added in bulk and removed."""

from __future__ import annotations

from tests.integration.api.conftest import Api

NDJSON = {"Content-Type": "application/x-ndjson"}


async def _order(api: Api, audience_id: str) -> list[str]:
    rows = await api.pool.fetch(
        "SELECT profile_id FROM audience_members WHERE audience_id = $1 ORDER BY position",
        audience_id)
    return [r["profile_id"] for r in rows]


async def test_put_creates_then_renames(api: Api) -> None:
    response = await api.put("/v1/audiences/news", json={"name": "Newsletter"})
    assert response.status == 201
    assert response.headers["Location"] == "/v1/audiences/news"
    created = await response.json()
    assert created["size"] == 0
    assert created["name"] == "Newsletter"
    api.clock.advance(1)
    renamed = await api.json("PUT", "/v1/audiences/news", 200, json={"name": "News"})
    assert renamed["name"] == "News"
    assert renamed["updated_at"] == "2026-03-01T12:00:01Z"
    assert renamed["created_at"] == created["created_at"]
    # No body at all is fine too (an unnamed audience).
    await api.json("PUT", "/v1/audiences/bare", 201)
    problem = await api.json("PUT", "/v1/audiences/news", 422, json={"name": 3})
    assert problem["errors"][0]["loc"] == "name"


async def test_members_keep_insertion_order_and_report_unknown_ids(api: Api) -> None:
    await api.audience("a", "p1", "p2")
    for pid in ("p3", "p4"):
        await api.put(f"/v1/profiles/{pid}", json={})
    body = ('{"profile_id": "p4"}\n{"profile_id": "ghost"}\n{"profile_id": "p1"}\n'
            'oops\n{"profile_id": "p3"}\n{"profile_id": "p4"}\n')
    result = await api.json("POST", "/v1/audiences/a/members", 200, data=body, headers=NDJSON)
    assert result == {
        "received": 6, "added": 2, "already_members": 2, "rejected": 2,
        "errors": [{"line": 2, "reason": "no profile with id 'ghost'"},
                   {"line": 4, "reason": result["errors"][1]["reason"]}],
    }
    assert await _order(api, "a") == ["p1", "p2", "p4", "p3"]
    assert (await api.json("GET", "/v1/audiences/a", 200))["size"] == 4


async def test_members_from_csv(api: Api) -> None:
    await api.audience("a")
    await api.put("/v1/profiles/p1", json={})
    result = await api.json("POST", "/v1/audiences/a/members", 200,
                            data="profile_id,ignored\np1,x\n,y\n",
                            headers={"Content-Type": "text/csv"})
    assert (result["added"], result["rejected"]) == (1, 1)


async def test_remove_member_and_delete_audience(api: Api) -> None:
    await api.audience("a", "p1", "p2")
    await api.json("DELETE", "/v1/audiences/a/members/p1", 204)
    await api.json("DELETE", "/v1/audiences/a/members/p1", 404)
    assert await _order(api, "a") == ["p2"]
    await api.json("DELETE", "/v1/audiences/a", 204)
    await api.json("GET", "/v1/audiences/a", 404)
    await api.json("DELETE", "/v1/audiences/a", 404)
    assert (await api.json("GET", "/v1/profiles/p2", 200))["id"] == "p2"


async def test_members_of_an_unknown_audience_is_404(api: Api) -> None:
    await api.json("POST", "/v1/audiences/none/members", 404, data="", headers=NDJSON)


async def test_audiences_need_admin(api: Api) -> None:
    await api.json("GET", "/v1/audiences/a", 403, token="trigger")


async def test_a_json_null_body_is_422_like_profiles(api: Api) -> None:
    headers = {"Content-Type": "application/json"}
    for path in ("/v1/audiences/x", "/v1/profiles/x"):
        problem = await api.json("PUT", path, 422, data="null", headers=headers)
        assert problem["code"] == "validation_error"
    await api.json("GET", "/v1/audiences/x", 404)
    # A blank body is no body: an unnamed audience.
    await api.json("PUT", "/v1/audiences/x", 201, data=" ", headers=headers)

"""Memberships without foreign keys: erasures remove them, even while an import holds them;
re-imports count and add correctly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from daemon.store import audiences
from tests.integration.api.conftest import Api
from tests.integration.api.test_audiences import NDJSON
from tests.integration.api.test_audiences import _order as _members


async def _waiting_on_a_lock(api: Api) -> None:
    async with asyncio.timeout(10):
        while not await api.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ):
            await asyncio.sleep(0.01)


async def _while_held(api: Api, statements: list[str], request: Awaitable[Any]) -> Any:
    """`request`'s answer, sent while a transaction that ran `statements` (an import in
    progress) makes it wait for a lock; the transaction then commits."""
    async with api.pool.acquire() as conn, conn.transaction():
        for statement in statements:
            await conn.execute(statement)
        task = asyncio.create_task(request)
        await _waiting_on_a_lock(api)
    return await task


async def test_reimport_counts_updates_and_adds_only_new_members(api: Api) -> None:
    await api.json("PUT", "/v1/audiences/a", 201, json={})
    body = '{"id": "x", "attributes": {"k": 1}}\n{"id": "y"}\n{"id": "x", "email": "x@e.io"}\n'
    first = await api.json("POST", "/v1/profiles/import?audience=a", 200, data=body,
                           headers=NDJSON)
    assert (first["created"], first["updated"], first["added_to_audience"]) == (2, 0, 2)
    again = body + '{"id": "z"}\n'
    second = await api.json("POST", "/v1/profiles/import?audience=a", 200, data=again,
                            headers=NDJSON)
    assert (second["created"], second["updated"], second["added_to_audience"]) == (1, 2, 1)
    assert await _members(api, "a") == ["x", "y", "z"]
    profile = await api.json("GET", "/v1/profiles/x", 200)
    assert (profile["email"], profile["attributes"]) == ("x@e.io", {})  # its last line wins


async def test_erasing_a_profile_held_by_an_import_removes_the_new_membership(api: Api) -> None:
    await api.audience("a", "p1")
    await api.audience("b")
    # What an import holds before its commit: the updated profile and its membership.
    await _while_held(api, ["UPDATE profiles SET email = 'e@x.io' WHERE id = 'p1'",
                            "INSERT INTO audience_members (audience_id, profile_id) "
                            "VALUES ('b', 'p1')"],
                      api.json("DELETE", "/v1/profiles/p1", 204))
    assert await api.pool.fetchval(
        "SELECT count(*) FROM audience_members WHERE profile_id = 'p1'") == 0


async def test_deleting_an_audience_held_by_an_import_removes_its_new_members(api: Api) -> None:
    await api.audience("a", "p1")
    await _while_held(api, ["SELECT true FROM audiences WHERE id = 'a' FOR KEY SHARE",
                            "INSERT INTO audience_members (audience_id, profile_id) "
                            "VALUES ('a', 'late')"],
                      api.json("DELETE", "/v1/audiences/a", 204))
    assert await _members(api, "a") == []


async def test_adding_members_skips_a_profile_erased_meanwhile(api: Api) -> None:
    await api.audience("a")
    await api.audience("b", "p1", "p2")
    result = await _while_held(api, ["DELETE FROM profiles WHERE id = 'p1'"], api.json(
        "POST", "/v1/audiences/a/members", 200, headers=NDJSON,
        data='{"profile_id": "p1"}\n{"profile_id": "p2"}\n'))
    assert result["added"] == 1
    assert await _members(api, "a") == ["p2"]
    assert await _members(api, "b") == ["p2"]


async def test_imports_into_one_audience_wait_for_each_other(api: Api) -> None:
    await api.audience("a")
    await api.audience("b", "p1", "p2")
    async with api.pool.acquire() as conn, conn.transaction():
        # An import into `a` in progress: it holds the audience and has added p1.
        assert await audiences.hold(conn, "a")
        await conn.execute("INSERT INTO audience_members (audience_id, profile_id) "
                           "VALUES ('a', 'p1')")
        add = asyncio.create_task(api.json(
            "POST", "/v1/audiences/a/members", 200, headers=NDJSON,
            data='{"profile_id": "p2"}\n{"profile_id": "p1"}\n'))
        again = asyncio.create_task(api.json(
            "POST", "/v1/profiles/import?audience=a", 200, headers=NDJSON,
            data='{"id": "p1"}\n{"id": "p3"}\n'))
        await _waiting_on_a_lock(api)
    assert (await add)["added"] == 1
    assert (await again)["added_to_audience"] == 1  # p3: p1 was a member once it waited
    members = await _members(api, "a")
    assert members[0] == "p1" and sorted(members) == ["p1", "p2", "p3"]

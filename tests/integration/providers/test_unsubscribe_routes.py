"""One-click unsubscribe against PostgreSQL: the key, the routes, dead push tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from daemon import unsubscribe
from daemon.api import app as app_module
from daemon.api import unsubscribe as routes
from daemon.api.context import AppContext
from daemon.infra import config as config_module
from daemon.infra.clock import FakeClock
from daemon.infra.metrics import Metrics
from daemon.models import Channel
from daemon.store import Pool, profiles_tokens
from daemon.store import secrets as secret_store

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client(pool: Pool) -> AsyncIterator[Client]:
    config = config_module.load(None, {})
    app = app_module.build_app(
        AppContext(config=config, pool=pool, clock=FakeClock(), metrics=Metrics())
    )
    if routes not in app_module.ROUTE_MODULES:
        routes.add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def _profile(pool: Pool, profile_id: str = "p1") -> None:
    await pool.execute(
        "INSERT INTO profiles (id, email, phone) VALUES ($1, 'a@example.com', '+331')",
        profile_id,
    )


async def _subscriptions(pool: Pool, profile_id: str = "p1") -> tuple[bool, bool, bool]:
    row = await pool.fetchrow(
        "SELECT sub_email, sub_sms, sub_push FROM profiles WHERE id = $1", profile_id
    )
    assert row is not None
    return (row["sub_email"], row["sub_sms"], row["sub_push"])


async def _path(pool: Pool, profile_id: str, channel: Channel) -> str:
    key = await unsubscribe.load_key(pool)
    return unsubscribe.url_for("", key, profile_id, channel)


async def _expect_problem(response: ClientResponse, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    assert (await response.json())["code"] == code


async def test_the_key_is_created_once_and_kept(pool: Pool) -> None:
    first = await unsubscribe.load_key(pool)
    second = await unsubscribe.load_key(pool)
    assert first == second
    assert len(first) == 32
    stored = await pool.fetchval(
        "SELECT value FROM installation_secrets WHERE name = $1", unsubscribe.KEY_NAME
    )
    assert bytes(stored) == first


async def test_concurrent_first_uses_agree_on_one_key(pool: Pool) -> None:
    candidates = [bytes([n]) * 32 for n in range(8)]
    keys = await asyncio.gather(
        *(secret_store.get_or_create(pool, "race", candidate) for candidate in candidates)
    )
    assert len(set(keys)) == 1
    assert keys[0] in candidates


async def test_post_unsubscribes_from_email_only(pool: Pool, client: Client) -> None:
    await _profile(pool)
    path = await _path(pool, "p1", Channel.EMAIL)
    response = await client.post(
        path,
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status == 200
    assert await response.json() == {"unsubscribed": True, "channel": "email"}
    assert await _subscriptions(pool) == (False, True, True)


async def test_post_is_idempotent(pool: Pool, client: Client) -> None:
    await _profile(pool)
    path = await _path(pool, "p1", Channel.SMS)
    for _ in range(2):
        response = await client.post(path)
        assert response.status == 200
    assert await _subscriptions(pool) == (True, False, True)


async def test_a_token_for_an_erased_profile_still_answers_200(pool: Pool, client: Client) -> None:
    path = await _path(pool, "gone", Channel.EMAIL)
    response = await client.post(path)
    assert response.status == 200


async def test_get_shows_a_form_and_changes_nothing(pool: Pool, client: Client) -> None:
    await _profile(pool)
    path = await _path(pool, "p1", Channel.EMAIL)
    response = await client.get(path)
    assert response.status == 200
    assert response.content_type == "text/html"
    page = await response.text()
    assert '<form method="post">' in page and "<button" in page
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    head = await client.head(path)
    assert head.status == 200
    assert await _subscriptions(pool) == (True, True, True)


async def test_a_browser_post_gets_an_html_page(pool: Pool, client: Client) -> None:
    await _profile(pool)
    path = await _path(pool, "p1", Channel.PUSH)
    response = await client.post(
        path, data={"List-Unsubscribe": "One-Click"}, headers={"Accept": "text/html"}
    )
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "unsubscribed" in await response.text()
    assert await _subscriptions(pool) == (True, True, False)


async def test_a_bad_token_is_404_invalid_token(pool: Pool, client: Client) -> None:
    await _profile(pool)
    path = await _path(pool, "p1", Channel.EMAIL)
    tampered = path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB")
    await _expect_problem(await client.post(tampered), 404, "invalid_token")
    await _expect_problem(await client.post("/v1/unsubscribe/nonsense"), 404, "invalid_token")
    page = await client.get(tampered)
    assert page.status == 404
    assert page.content_type == "text/html"
    assert await _subscriptions(pool) == (True, True, True)


async def test_a_token_signed_with_another_installations_key_is_refused(
    pool: Pool, client: Client
) -> None:
    await _profile(pool)
    foreign = unsubscribe.url_for("", b"k" * 32, "p1", Channel.EMAIL)
    await _expect_problem(await client.post(foreign), 404, "invalid_token")
    assert await _subscriptions(pool) == (True, True, True)


async def test_dead_push_tokens_are_removed_in_one_batch(pool: Pool) -> None:
    await pool.execute(
        "INSERT INTO profiles (id, push_tokens) VALUES "
        "('a', ARRAY['t1','t2','t3']), ('b', ARRAY['u1']), ('c', ARRAY['v1','v2'])"
    )
    changed = await profiles_tokens.remove_push_tokens(
        pool, [("a", "t2"), ("a", "t3"), ("b", "u1"), ("c", "absent"), ("nobody", "x")]
    )
    assert changed == 2
    rows = await pool.fetch("SELECT id, push_tokens FROM profiles ORDER BY id")
    assert [(row["id"], row["push_tokens"]) for row in rows] == [
        ("a", ["t1"]),
        ("b", []),
        ("c", ["v1", "v2"]),
    ]
    assert await profiles_tokens.remove_push_tokens(pool, []) == 0

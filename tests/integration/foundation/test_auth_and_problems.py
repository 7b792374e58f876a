"""Bearer tokens (401/403), problem+json for framework errors, body limits, readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from daemon.api.app import build_app
from daemon.api.auth import requires
from daemon.api.context import AppContext, context
from daemon.api.validation import read_body
from daemon.infra import config as config_module
from daemon.infra.bootstrap import ensure_admin_token
from daemon.infra.clock import FakeClock
from daemon.infra.metrics import Metrics
from daemon.models import TokenScope
from daemon.store import Pool, tokens


@requires(TokenScope.ADMIN)
async def admin_only(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@requires(TokenScope.TRIGGER)
async def trigger_ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def echo(request: web.Request) -> web.Response:
    body = await read_body(request, context(request).config.server.max_body_bytes)
    return web.json_response(body)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(
    pool: Pool, clock: FakeClock
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    cfg = config_module.load(None, {"CAMPAIGND_SERVER_MAX_BODY_BYTES": "2048"})
    app = build_app(AppContext(config=cfg, pool=pool, clock=clock, metrics=Metrics()))
    app.router.add_get("/t/admin", admin_only)
    app.router.add_get("/t/trigger", trigger_ok)
    app.router.add_post("/t/echo", echo)
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def expect_problem(response: object, status: int, code: str) -> dict[str, object]:
    from aiohttp import ClientResponse

    assert isinstance(response, ClientResponse)
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, object] = await response.json()
    assert body["code"] == code and body["status"] == status
    assert {"type", "title", "detail", "errors"} <= set(body)
    return body


async def test_missing_unknown_and_revoked_tokens_get_401(
    client: TestClient, pool: Pool, clock: FakeClock
) -> None:
    await expect_problem(await client.get("/t/admin"), 401, "unauthorized")
    await expect_problem(await client.get("/t/admin", headers={"Authorization": "Basic x"}),
                         401, "unauthorized")
    await expect_problem(await client.get("/t/admin", headers=bearer("cmpd_nope")),
                         401, "unauthorized")
    token = await tokens.create(pool, "ops", TokenScope.ADMIN)
    assert (await client.get("/t/admin", headers=bearer(token))).status == 200
    assert await tokens.revoke(pool, "ops")
    clock.advance(10)  # past the lookup cache
    await expect_problem(await client.get("/t/admin", headers=bearer(token)), 401, "unauthorized")


async def test_trigger_scope_is_refused_admin_routes(client: TestClient, pool: Pool) -> None:
    trigger = await tokens.create(pool, "hook", TokenScope.TRIGGER)
    admin = await tokens.create(pool, "root", TokenScope.ADMIN)
    await expect_problem(await client.get("/t/admin", headers=bearer(trigger)), 403, "forbidden")
    assert (await client.get("/t/trigger", headers=bearer(trigger))).status == 200
    assert (await client.get("/t/trigger", headers=bearer(admin))).status == 200


async def test_token_names_are_unique_and_hashes_stored(pool: Pool) -> None:
    token = await tokens.create(pool, "a", TokenScope.TRIGGER)
    with pytest.raises(tokens.TokenNameTaken):
        await tokens.create(pool, "a", TokenScope.ADMIN)
    stored = await pool.fetchval("SELECT token_hash FROM api_tokens WHERE name='a'")
    assert stored == tokens.hash_token(token) and token not in stored


async def test_bootstrap_creates_one_admin_token_file(pool: Pool, tmp_path: Path) -> None:
    path = await ensure_admin_token(pool, tmp_path)
    assert path is not None and (path.stat().st_mode & 0o777) == 0o600
    token = path.read_text().strip()
    assert await tokens.scope_of(pool, token, FakeClock().now()) is TokenScope.ADMIN
    assert await ensure_admin_token(pool, tmp_path) is None  # an active token exists


async def test_framework_errors_are_problems(client: TestClient) -> None:
    await expect_problem(await client.get("/nope"), 404, "not_found")
    body = await expect_problem(await client.delete("/healthz"), 405, "method_not_allowed")
    assert "GET" in str(body["detail"])


async def test_json_bodies_400_413_415(client: TestClient) -> None:
    for bad in (b"{nope", b'{"x": NaN}', b'{"x": 1e999}'):
        await expect_problem(await client.post("/t/echo", data=bad,
                                               headers={"Content-Type": "application/json"}),
                             400, "malformed_json")
    body = await expect_problem(await client.post("/t/echo", data=b'{"x": "\\u0000"}',
                                                  headers={"Content-Type": "application/json"}),
                                422, "validation_error")
    assert body["errors"] == [{"loc": "x", "msg": "NUL characters and lone surrogates are refused"}]
    await expect_problem(await client.post("/t/echo", data=b"{}",
                                           headers={"Content-Type": "text/plain"}),
                         415, "unsupported_media_type")
    await expect_problem(await client.post("/t/echo", json={"x": "y" * 4000}),
                         413, "body_too_large")
    ok = await client.post("/t/echo", json={"x": 1})
    assert ok.status == 200 and await ok.json() == {"x": 1}


async def test_readyz_and_metrics(client: TestClient, pool: Pool) -> None:
    response = await client.get("/readyz")
    assert response.status == 200
    admin = await tokens.create(pool, "admin", TokenScope.ADMIN)
    metrics = await (await client.get("/metrics", headers=bearer(admin))).text()
    assert "campaignd_http_requests_total" in metrics

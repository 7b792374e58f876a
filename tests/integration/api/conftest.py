"""An API server on a fresh database, with tokens of both scopes and a fake clock.

    async def test_x(api: Api) -> None:
        response = await api.post("/v1/campaigns", json=CAMPAIGN)
        assert response.status == 201
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from daemon.api.app import build_app
from daemon.api.context import AppContext
from daemon.infra import config as config_module
from daemon.infra.clock import FakeClock
from daemon.infra.metrics import Metrics
from daemon.models import TokenScope
from daemon.store import Pool, tokens

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WEBHOOK_KEY = b"0123456789abcdef0123456789abcdef"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()
OLD_WEBHOOK_KEY = b"fedcba9876543210fedcba9876543210"
OLD_WEBHOOK_SECRET = "whsec_" + base64.b64encode(OLD_WEBHOOK_KEY).decode()

EMAIL_CONTENT = {
    "from": "shop@example.com",
    "subject": "Hi {{ profile.attributes.first_name }}",
    "html": "<p>Code {{ context.promo }}</p>",
    "text": "Code {{ context.promo }}",
}


def campaign_body(**fields: Any) -> dict[str, Any]:
    """A valid email campaign body; `fields` override."""
    body: dict[str, Any] = {"id": "spring-sale", "name": "Spring sale", "channel": "email",
                            "content": EMAIL_CONTENT}
    body.update(fields)
    return body


class Api:
    """A test client that sends the admin token unless told otherwise."""

    def __init__(self, client: TestClient[web.Request, web.Application], ctx: AppContext,
                 clock: FakeClock, admin: str, trigger: str, env: dict[str, str]) -> None:
        self.env = env
        self.database_url = ""
        self.client = client
        self.ctx = ctx
        self.clock = clock
        self.admin_token = admin
        self.trigger_token = trigger
        self.pool = ctx.pool

    def reconfigure(self, **env: str) -> None:
        """Reload the config with these extra CAMPAIGND_* variables (the server keeps running)."""
        self.ctx.config = config_module.load(None, {**self.env, **env})

    def _headers(self, token: str | None, headers: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(headers or {})
        if token is not None:
            merged.setdefault("Authorization", f"Bearer {token}")
        return merged

    async def request(self, method: str, path: str, *, token: str | None = "admin",
                      headers: Mapping[str, str] | None = None, **kwargs: Any) -> ClientResponse:
        chosen = {"admin": self.admin_token, "trigger": self.trigger_token}.get(
            token or "", token
        )
        return await self.client.request(method, path, headers=self._headers(chosen, headers),
                                         **kwargs)

    async def get(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("DELETE", path, **kwargs)

    async def json(self, method: str, path: str, status: int, **kwargs: Any) -> Any:
        """The JSON answer, asserting its status (the body is shown when it differs)."""
        response = await self.request(method, path, **kwargs)
        text = await response.text()
        assert response.status == status, f"{response.status}: {text}"
        return await response.json(content_type=None) if text else None

    async def live_campaign(self, **fields: Any) -> dict[str, Any]:
        """Create and activate a campaign; returns it."""
        created = await self.json("POST", "/v1/campaigns", 201, json=campaign_body(**fields))
        result: dict[str, Any] = await self.json(
            "POST", f"/v1/campaigns/{created['id']}/activate", 200
        )
        return result

    async def audience(self, audience_id: str, *profile_ids: str) -> None:
        """An audience holding these (new) profiles, in this order."""
        await self.json("PUT", f"/v1/audiences/{audience_id}", 201, json={"name": audience_id})
        for profile_id in profile_ids:
            await self.put(f"/v1/profiles/{profile_id}",
                           json={"email": f"{profile_id}@example.com"})
        if profile_ids:
            lines = "".join(f'{{"profile_id": "{p}"}}\n' for p in profile_ids)
            await self.json("POST", f"/v1/audiences/{audience_id}/members", 200, data=lines,
                            headers={"Content-Type": "application/x-ndjson"})


def problem_code(body: Any) -> str:
    return str(body["code"])


def plan_nodes(raw: Any) -> list[dict[str, Any]]:
    """Every node of an `EXPLAIN (FORMAT JSON)` result (as decoded, or its text), the root
    first."""
    found = []
    stack = [(raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.get("Plans", []))
    return found


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def config_env() -> dict[str, str]:
    """Environment for the config (override in a test module to change limits)."""
    return {"CAMPAIGND_AUTH_WEBHOOK_SECRETS": f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}"}


@pytest.fixture
async def api(
    pool: Pool, database_url: str, clock: FakeClock, config_env: dict[str, str]
) -> AsyncIterator[Api]:
    cfg = config_module.load(None, config_env)
    ctx = AppContext(config=cfg, pool=pool, clock=clock, metrics=Metrics())
    admin = await tokens.create(pool, "test-admin", TokenScope.ADMIN)
    trigger = await tokens.create(pool, "test-trigger", TokenScope.TRIGGER)
    async with TestClient(TestServer(build_app(ctx))) as client:
        api = Api(client, ctx, clock, admin, trigger, config_env)
        api.database_url = database_url
        yield api

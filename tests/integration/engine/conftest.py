"""Engine fixtures: a gateway stand-in that records arrivals, campaigns and runs made in SQL,
and an engine (the real stage) on the test's database."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from daemon.api.context import AppContext
from daemon.engine.stage import Engine
from daemon.infra.clock import SystemClock
from daemon.infra.config import Config
from daemon.infra.metrics import Metrics
from daemon.providers.registry import ProviderRegistry
from daemon.store import Pool


@dataclass
class Arrival:
    at: float  # time.monotonic() when the request arrived
    wall: datetime  # the same instant on the wall clock
    key: str
    body: dict[str, Any]


@dataclass
class Gateway:
    """Records every request; `respond(body, n)` decides the answer (n: its arrival index)."""

    respond: Callable[[dict[str, Any], int], Awaitable[web.Response] | web.Response] | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/send"))

    async def handle(self, request: web.Request) -> web.Response:
        at = time.monotonic()
        wall = datetime.now(UTC)
        body = await request.json()
        index = len(self.arrivals)
        self.arrivals.append(Arrival(at, wall, request.headers["Idempotency-Key"], body))
        if self.respond is None:
            return web.json_response({"id": f"gw-{index}"})
        answer = self.respond(body, index)
        if isinstance(answer, web.Response):
            return answer
        return await answer

    def keys(self) -> list[str]:
        return [arrival.key for arrival in self.arrivals]

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.arrivals) < count:
                await asyncio.sleep(0.01)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    state = Gateway()
    app = web.Application()
    app.router.add_post("/send", state.handle)
    state.server = TestServer(app, host="127.0.0.1", port=0)
    await state.server.start_server()
    yield state
    await state.server.close()


def engine_config(gateway: Gateway | None, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "engine": {"lease_ttl": 3, "checkpoint_interval": 0.2},
        "delivery": {"max_attempts": 3, "backoff_base": 0.05, "backoff_max": 0.2},
    }
    if gateway is not None:
        data["providers"] = {"hook": {"kind": "webhook", "url": gateway.url, "timeout": 5,
                                      "concurrency": 64}}
        data["channels"] = {"email": "hook", "sms": "hook", "push": "hook"}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Config.model_validate(data)


@dataclass
class EngineHandle:
    engine: Engine
    registry: ProviderRegistry
    ctx: AppContext

    async def stop(self, grace: float = 5.0) -> None:
        await self.engine.stop(grace, asyncio.Event())
        await self.registry.close()


EngineFactory = Callable[..., Awaitable[EngineHandle]]


@pytest.fixture
async def start_engine(pool: Pool, tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """Start engines on the test database (several for scale-out tests); stopped at the end.
    Each has its own state dir unless `state_dir` is given (a restart of the same daemon)."""
    handles: list[EngineHandle] = []

    async def factory(config: Config, *, holder: str | None = None,
                      on_pool: Pool | None = None, state_dir: Path | None = None
                      ) -> EngineHandle:
        folder = state_dir or tmp_path / f"engine{len(handles)}"
        config = config.model_copy(update={"state_dir": folder})
        ctx = AppContext(config=config, pool=on_pool or pool, clock=SystemClock(),
                         metrics=Metrics())
        registry = ProviderRegistry(config)
        await registry.start()
        engine = Engine(ctx, providers=registry, holder=holder)
        await engine.start()
        handle = EngineHandle(engine, registry, ctx)
        handles.append(handle)
        return handle

    yield factory
    for handle in handles:
        async with asyncio.timeout(30):
            if handle.engine._main is not None and not handle.engine._main.done():
                await handle.engine.stop(5.0, asyncio.Event())
            elif handle.engine._lock_file is not None:  # crashed on purpose
                handle.engine._lock_file.close()
            await handle.registry.close()


# -- data made in SQL (what the API would write) ---------------------------------------------

SMS = {"body": "Hi {{ profile.attributes.name | default('you') }} {{ context.promo }}"}


async def make_campaign(
    pool: Pool, campaign_id: str = "c1", *, channel: str = "sms", rate: int | None = None,
    start_at: datetime | None = None, end_at: datetime | None = None,
    content: dict[str, Any] | None = None, status: str = "live",
) -> str:
    await pool.execute(
        """
        INSERT INTO campaigns (id, name, channel, content, rate_per_second, start_at, end_at,
                               status, activated_at)
        VALUES ($1, $1, $2, $3, $4, $5, $6, $7, now())
        """,
        campaign_id, channel, content or SMS, rate, start_at, end_at, status,
    )
    return campaign_id


async def add_profiles(pool: Pool, count: int, *, prefix: str = "p", audience: str | None = None,
                       start: int = 0) -> None:
    """`count` profiles with phone and email, optionally members of `audience` in order."""
    await pool.execute(
        """
        INSERT INTO profiles (id, email, phone, attributes)
        SELECT $1 || n, $1 || n || '@example.com', '+336' || lpad(n::text, 8, '0'),
               jsonb_build_object('name', 'N' || n)
        FROM generate_series($2::int, $2::int + $3::int - 1) AS n
        """,
        prefix, start, count,
    )
    if audience is not None:
        await pool.execute(
            "INSERT INTO audiences (id) VALUES ($1) ON CONFLICT DO NOTHING", audience)
        await pool.execute(
            """
            INSERT INTO audience_members (audience_id, profile_id)
            SELECT $1, $2 || n FROM generate_series($3::int, $3::int + $4::int - 1) AS n
            ORDER BY n
            """,
            audience, prefix, start, count,
        )


async def trigger(
    pool: Pool, campaign_id: str, *, audience: str | None = None,
    recipients: list[dict[str, Any]] | None = None, scheduled_for: datetime | None = None,
    context: dict[str, Any] | None = None, rate: int | None = None,
) -> str:
    """A run as the API creates it (and its NOTIFY)."""
    run_id = "run_" + uuid.uuid4().hex[:12]
    async with pool.acquire() as conn, conn.transaction():
        if rate is None:
            rate = await conn.fetchval(
                "SELECT rate_per_second FROM campaigns WHERE id = $1", campaign_id)
        when = scheduled_for or await conn.fetchval("SELECT now()")
        await conn.execute(
            """
            INSERT INTO runs (id, campaign_id, audience_id, inline_count, context,
                              scheduled_for, rate_per_second)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            """,
            run_id, campaign_id, audience, len(recipients or []), context or {"promo": "X1"},
            when, rate,
        )
        for position, recipient in enumerate(recipients or []):
            data = {k: v for k, v in recipient.items() if k != "profile_id"}
            await conn.execute(
                "INSERT INTO run_inline_recipients (run_id, position, profile_id, data) "
                "VALUES ($1, $2, $3, $4)",
                run_id, position, recipient["profile_id"], data,
            )
        await conn.execute("SELECT pg_notify('campaignd_runs', $1)", run_id)
    return run_id


async def run_row(pool: Pool, run_id: str) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    assert row is not None
    return dict(row)


async def wait_run_status(pool: Pool, run_id: str, *statuses: str,
                          timeout: float = 30.0) -> dict[str, Any]:
    statuses = statuses or ("completed", "cancelled", "failed")
    async with asyncio.timeout(timeout):
        while True:
            row = await run_row(pool, run_id)
            if row["status"] in statuses:
                return row
            await asyncio.sleep(0.02)


def assert_counts_add_up(row: dict[str, Any]) -> None:
    excluded = sum(row[k] for k in row if k.startswith("excluded_"))
    assert row["targeted"] == row["sent"] + row["failed"] + row["pending"] + excluded


async def recipient_rows(pool: Pool, run_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT * FROM run_recipients WHERE run_id = $1 ORDER BY position", run_id)
    return [dict(row) for row in rows]


def future(seconds: float, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) + timedelta(seconds=seconds)


def dumps(value: Any) -> str:
    return json.dumps(value)

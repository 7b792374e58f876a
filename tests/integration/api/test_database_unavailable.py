"""While the database is gone the API answers 503 problem+json `database_unavailable` (and
logs `request.database_unavailable`), never 500; once it is back, 200 again.

On a private cluster the test stops (never the shared server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from daemon.api.app import build_app
from daemon.api.context import AppContext
from daemon.infra import config as config_module
from daemon.infra import migrate
from daemon.infra.clock import FakeClock
from daemon.infra.database import create_pool
from daemon.infra.metrics import Metrics
from daemon.models import TokenScope
from daemon.store import tokens
from tests.acceptance.faults.cluster import PrivateCluster, available
from tests.integration.api.conftest import START

pytestmark = pytest.mark.skipif(not available(), reason="no PostgreSQL binaries for a cluster")


@pytest.fixture
async def cluster() -> AsyncIterator[PrivateCluster]:
    made = PrivateCluster()
    await made.start()
    try:
        yield made
    finally:
        await made.destroy()


async def test_a_lost_database_is_a_503_database_unavailable_not_a_500(
    cluster: PrivateCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = await create_pool(cluster.url, max_size=4)
    try:
        await migrate.apply(pool)
        admin = await tokens.create(pool, "admin", TokenScope.ADMIN)
        trigger = await tokens.create(pool, "trigger", TokenScope.TRIGGER)
        ctx = AppContext(config=config_module.load(None, {}), pool=pool,
                         clock=FakeClock(START), metrics=Metrics())
        async with TestClient(TestServer(build_app(ctx))) as client:
            cached = {"Authorization": f"Bearer {admin}"}  # looked up now: then cached
            async with client.get("/v1/campaigns", headers=cached) as response:
                assert response.status == 200
            for mode in ("fast", "immediate"):
                await cluster.stop(mode)
                # A cached token reaches the handler's query; an uncached one the lookup.
                for headers in (cached, {"Authorization": f"Bearer {trigger}"}):
                    for path in ("/v1/campaigns", "/v1/runs/run_none"):
                        async with client.get(path, headers=headers) as response:
                            body = await response.json(content_type=None)
                            assert response.status == 503, (mode, path, body)
                            assert response.content_type == "application/problem+json"
                            assert body["code"] == "database_unavailable"
                async with client.get("/readyz") as response:
                    assert response.status == 503
                await cluster.start()
                async with client.get("/readyz") as response:
                    assert response.status == 200
                async with client.get("/v1/campaigns", headers=cached) as response:
                    assert response.status == 200
    finally:
        await pool.close()
    logged = capsys.readouterr()
    assert "request.database_unavailable" in logged.out + logged.err
    assert "request.failed" not in logged.out + logged.err

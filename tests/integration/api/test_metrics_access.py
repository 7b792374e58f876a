"""/metrics names campaigns in its labels: an admin token reads it, unless
`server.public_metrics` is true."""

from __future__ import annotations

from tests.integration.api.conftest import Api


async def test_metrics_need_an_admin_token(api: Api) -> None:
    await api.live_campaign(id="secret-launch")
    assert (await api.json("GET", "/metrics", 401, token=None))["code"] == "unauthorized"
    await api.json("GET", "/metrics", 401, token="cmpd_unknown")
    assert (await api.json("GET", "/metrics", 403, token="trigger"))["code"] == "forbidden"
    response = await api.get("/metrics")
    assert response.status == 200
    assert "campaignd_http_requests_total" in await response.text()


async def test_public_metrics_need_no_token(api: Api) -> None:
    api.reconfigure(CAMPAIGND_SERVER_PUBLIC_METRICS="true")
    response = await api.get("/metrics", token=None)
    assert response.status == 200
    assert "campaignd_http_requests_total" in await response.text()

"""Send windows from outside (SPEC §9.2): the daemon as a subprocess, the downstream system
in another process. A window opening a few seconds ahead and closing 10 s later: no arrival
before the opening nor after the close (beyond a call in flight), and the plan excludes at
once what does not fit in rate × open seconds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.acceptance.conftest import DaemonFactory
from tests.acceptance.test_engine_crash_safety import CONTENT, _balanced
from tests.acceptance.test_live_control import RemoteGateway, _config, gateway  # noqa: F401


def _clock(at: datetime) -> str:
    return at.strftime("%H:%M:%S")


async def test_no_arrival_outside_a_ten_second_window(
    daemon_factory: DaemonFactory, gateway: RemoteGateway  # noqa: F811
) -> None:
    now = datetime.now(UTC)
    if now.hour == 23 and now.minute == 59:  # keep the window inside one day
        await asyncio.sleep(61 - now.second)
    daemon = daemon_factory(_config(gateway))
    await daemon.start()
    count, rate = 1000, 20
    lines = "".join(f'{{"id":"p{n}","email":"p{n}@example.com"}}\n' for n in range(count))
    async with daemon.client() as http:
        async with http.put("/v1/audiences/all", json={"name": "all"}) as response:
            assert response.status in (200, 201)
        async with http.post("/v1/profiles/import", params={"audience": "all"}, data=lines,
                             headers={"Content-Type": "application/x-ndjson"}) as response:
            assert response.status in (200, 201, 202), await response.text()
        opening = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
        closing = opening + timedelta(seconds=10)
        campaign = {"id": "c1", "name": "c1", "channel": "email", "audience": "all",
                    "content": CONTENT, "throttle": {"rate_per_second": rate},
                    "schedule": {"windows": {"timezone": "UTC", "from": _clock(opening),
                                             "to": _clock(closing)}}}
        async with http.post("/v1/campaigns", json=campaign) as response:
            assert response.status == 201, await response.text()
        async with http.post("/v1/campaigns/c1/activate") as response:
            assert response.status == 200, await response.text()
        async with http.post("/v1/campaigns/c1/triggers", json={"context": {"promo": "X"}}
                             ) as response:
            assert response.status == 202, await response.text()
            accepted: dict[str, Any] = await response.json()
        assert accepted["scheduled_for"] == opening.strftime("%Y-%m-%dT%H:%M:%SZ")
        run_id = accepted["run_id"]
        wall_minus_mono = time.time() - time.monotonic()
        await asyncio.sleep((closing - datetime.now(UTC)).total_seconds() + 2.0)
        async with http.get(f"/v1/runs/{run_id}") as response:
            report: dict[str, Any] = await response.json()
        # A one-shot campaign completes with its run: when every reachable recipient was
        # sent in the window the run is over and a stop has nothing left to stop (409).
        async with http.post("/v1/campaigns/c1/stop") as response:
            if report["status"] == "completed":
                assert response.status == 409, await response.text()
                assert (await response.json())["code"] == "campaign_not_live"
            else:
                assert response.status == 200, await response.text()
    walls = sorted(datetime.fromtimestamp(t + wall_minus_mono, UTC)
                   for t in await gateway.arrivals())
    assert walls, "nothing was sent in the window"
    early = (opening - walls[0]).total_seconds()
    late = (walls[-1] - closing).total_seconds()
    print(f"\n{len(walls)} calls; first {-early * 1000:.0f} ms after the opening, "
          f"last {-late * 1000:.0f} ms before the close")
    # The clocks of this process and of the gateway are the same machine's: a few ms of
    # measurement slack, and a call admitted just before the close may arrive after it.
    assert early <= 0.005
    assert late <= 0.2
    # The plan counted 10 open seconds at 20/s: 200 reachable, the rest excluded at start.
    counts = report["counts"]
    assert counts["excluded"]["time_cap"] == count - rate * 10
    assert counts["sent"] == len(walls) <= rate * 10
    assert len(walls) >= rate * 10 * 0.9
    assert _balanced(report)
    assert report["send_window"]["open"] is False

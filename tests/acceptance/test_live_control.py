"""Live control from outside (SPEC §9.1): the daemon as a subprocess, the downstream system
in another process timestamping arrivals. No call after a pause (from 1 s after it), the
new rate holding at the gateway within 1 s, a paused campaign staying paused across a
restart and a resumed one sending, the counts adding up at every read."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.acceptance.conftest import DaemonFactory, DaemonProcess
from tests.acceptance.test_engine_crash_safety import _balanced, _finished, _launch
from tests.unit.engine.rates import max_in_window


class RemoteGateway:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}/send"
        self._base = f"http://127.0.0.1:{port}"

    async def arrivals(self) -> list[float]:
        """Arrival times (CLOCK_MONOTONIC: comparable with this process's time.monotonic)."""
        async with aiohttp.ClientSession() as session, \
                session.get(self._base + "/arrivals") as response:
            return [float(t) for t, _ in json.loads(await response.text())]

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while len(await self.arrivals()) < count:
                await asyncio.sleep(0.05)


@pytest.fixture
async def gateway() -> AsyncIterator[RemoteGateway]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.acceptance.faults.gateway", stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    port = int((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
    yield RemoteGateway(process, port)
    process.terminate()
    await process.wait()


def _config(gateway: RemoteGateway) -> str:
    return (
        '[engine]\nlease_ttl = "15s"\ncheckpoint_interval = "250ms"\n'
        f'[providers.gw]\nkind = "webhook"\nurl = "{gateway.url}"\nconcurrency = 64\n'
        '[channels]\nemail = "gw"\n'
    )


async def _post(http: aiohttp.ClientSession, path: str, **kwargs: Any) -> dict[str, Any]:
    async with http.request(kwargs.pop("method", "POST"), path, **kwargs) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


async def _report(daemon: DaemonProcess, run_id: str) -> dict[str, Any]:
    async with daemon.client() as http, http.get(f"/v1/runs/{run_id}") as response:
        report: dict[str, Any] = await response.json()
    assert _balanced(report), report
    return report


async def test_no_call_after_a_pause_and_the_run_goes_on_after_resume(
    daemon_factory: DaemonFactory, gateway: RemoteGateway
) -> None:
    count = 300
    daemon = daemon_factory(_config(gateway))
    await daemon.start()
    async with daemon.client() as http:
        run_id = await _launch(http, count, rate=50)
        await gateway.wait_for(50)
        paused = await _post(http, "/v1/campaigns/c1/pause")
        paused_at = time.monotonic()
    assert paused["status"] == "paused"
    await asyncio.sleep(2.5)
    arrivals = await gateway.arrivals()
    assert [t for t in arrivals if t > paused_at + 1.0] == []
    report = await _report(daemon, run_id)
    assert report["status"] == "paused"
    assert sum(report["counts"]["excluded"].values()) == 0
    assert report["counts"]["pending"] > 0
    async with daemon.client() as http:
        await _post(http, "/v1/campaigns/c1/resume")
    final = await _finished(daemon, run_id)
    assert final["counts"]["sent"] == count and final["end_reason"] == "delivered"
    assert len(await gateway.arrivals()) == count


async def test_a_rate_change_holds_at_the_gateway_within_a_second(
    daemon_factory: DaemonFactory, gateway: RemoteGateway
) -> None:
    daemon = daemon_factory(_config(gateway))
    await daemon.start()
    async with daemon.client() as http:
        run_id = await _launch(http, 3000, rate=100)
        await gateway.wait_for(200)
        await _post(http, "/v1/campaigns/c1", method="PATCH",
                    json={"throttle": {"rate_per_second": 20}})
        lowered_at = time.monotonic()
        await asyncio.sleep(4.0)
        await _post(http, "/v1/campaigns/c1", method="PATCH",
                    json={"throttle": {"rate_per_second": 200}})
        raised_at = time.monotonic()
        await asyncio.sleep(4.0)
        await _post(http, "/v1/campaigns/c1/stop")
    arrivals = sorted(await gateway.arrivals())
    before = [t for t in arrivals if t < lowered_at]
    low = [t for t in arrivals if lowered_at + 1.0 <= t < raised_at]
    high = [t for t in arrivals if t >= raised_at]
    print(f"\nat 100/s: busiest 1 s {max_in_window(before, 1.0)}; after the decrease to 20/s: "
          f"{max_in_window(low, 1.0)} ({len(low)} calls over {raised_at - lowered_at - 1:.1f} s);"
          f" after the increase to 200/s: {max_in_window(high, 1.0)}")
    assert max_in_window(before, 1.0) <= 100 + 1
    assert max_in_window(low, 1.0) <= 20 + 1  # the new rate holds from 1 s after the change
    assert len(low) >= 20  # and it is still sending
    assert max_in_window(high, 1.0) <= 200 + 1  # no burst above the raised rate
    assert max_in_window(high, 0.1) <= 200 * 0.15 + 1  # nor a bunch in a 100 ms
    assert len(high) >= 300
    # Across the changes, every 1 s window holds at most the higher of the two rates in it.
    assert max_in_window([t for t in arrivals if t < raised_at], 1.0) <= 100 + 1
    report = await _report(daemon, run_id)
    assert report["rate_per_second"] == 200
    replans = daemon.events("run.replanned")
    assert len(replans) == 2 and {r["rate_per_second"] for r in replans} == {20, 200}


@pytest.mark.parametrize("stop", ["sigterm", "kill -9"])
async def test_a_paused_campaign_stays_paused_across_a_restart(
    daemon_factory: DaemonFactory, gateway: RemoteGateway, stop: str
) -> None:
    count = 200
    daemon = daemon_factory(_config(gateway))
    await daemon.start()
    async with daemon.client() as http:
        run_id = await _launch(http, count, rate=40)
        await gateway.wait_for(20)
        await _post(http, "/v1/campaigns/c1/pause")
    await asyncio.sleep(1.5)
    if stop == "sigterm":
        assert await daemon.terminate() == 0
    else:
        await daemon.kill()
    sent = len(await gateway.arrivals())
    await daemon.start()
    await asyncio.sleep(3.0)
    assert len(await gateway.arrivals()) == sent  # paused after the restart too
    assert (await _report(daemon, run_id))["status"] == "paused"
    async with daemon.client() as http:
        await _post(http, "/v1/campaigns/c1/resume")
    final = await _finished(daemon, run_id)
    assert final["counts"]["sent"] == count
    if stop == "sigterm":
        assert len(await gateway.arrivals()) == count  # a graceful stop: no one twice
    else:  # nothing was in flight while paused: no one twice either
        assert len(await gateway.arrivals()) == count


async def test_a_pause_sent_to_another_daemon_reaches_the_lease_holder(
    daemon_factory: DaemonFactory, gateway: RemoteGateway
) -> None:
    first = daemon_factory(_config(gateway))
    second = daemon_factory(_config(gateway))
    await first.start()
    await second.start()
    async with first.client() as http:
        run_id = await _launch(http, 400, rate=50)
    await gateway.wait_for(30)
    holder, other = (first, second) if first.events("lease.acquired") else (second, first)
    assert not other.events("lease.acquired")
    async with other.client(first.admin_token) as http:
        await _post(http, "/v1/campaigns/c1/pause")
        paused_at = time.monotonic()
    await asyncio.sleep(2.0)
    assert [t for t in await gateway.arrivals() if t > paused_at + 1.0] == []
    async with other.client(first.admin_token) as http:
        await _post(http, "/v1/campaigns/c1", method="PATCH",
                    json={"throttle": {"rate_per_second": 100}})
        await _post(http, "/v1/campaigns/c1/resume")
    report = await _finished(other, run_id, token=first.admin_token)
    assert report["counts"]["sent"] == 400 and report["rate_per_second"] == 100
    assert holder.events("campaign.paused_here") and holder.events("run.replanned")
    assert not other.events("campaign.paused_here")

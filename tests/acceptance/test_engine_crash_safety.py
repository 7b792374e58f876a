"""The daemon as a subprocess, mid-run: SIGTERM then restart (each recipient exactly once),
kill -9 then restart (none lost, duplicates within the claim window), and two daemons on
one database whose lease holder is killed (the other takes over after `lease_ttl`).

Checked where it matters: at the gateway, by idempotency key."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.acceptance.conftest import DaemonFactory, DaemonProcess

CONTENT = {"from": "shop@example.com", "subject": "Hi {{ profile.id }}",
           "text": "Code {{ context.promo }}"}


class Gateway:
    """The provider's side: records (arrival time, idempotency key) of every POST."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self.url = ""
        self.latency = 0.0  # seconds before answering (calls in flight at a crash)

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrivals.append((time.monotonic(), request.headers["Idempotency-Key"]))
        if self.latency:
            await asyncio.sleep(self.latency)
        return web.json_response({})

    def keys(self) -> Counter[str]:
        return Counter(key for _, key in self.arrivals)

    async def wait_for(self, count: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.arrivals) < count:
                await asyncio.sleep(0.01)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    state = Gateway()
    app = web.Application()
    app.router.add_post("/send", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/send"
    yield state
    await runner.cleanup()


def _config(gateway: Gateway, lease_ttl: str = "15s") -> str:
    return (
        f'[engine]\nlease_ttl = "{lease_ttl}"\ncheckpoint_interval = "250ms"\n'
        f'[providers.gw]\nkind = "webhook"\nurl = "{gateway.url}"\nconcurrency = 16\n'
        '[channels]\nemail = "gw"\n'
    )


async def _launch(http: aiohttp.ClientSession, count: int, rate: int) -> str:
    """`count` profiles in an audience, a throttled email campaign on it, triggered."""
    lines = "".join(f'{{"id":"p{n}","email":"p{n}@example.com"}}\n' for n in range(count))
    async with http.put("/v1/audiences/all", json={"name": "all"}) as response:
        assert response.status in (200, 201)
    async with http.post("/v1/profiles/import", params={"audience": "all"}, data=lines,
                         headers={"Content-Type": "application/x-ndjson"}) as response:
        assert response.status in (200, 201, 202), await response.text()
    campaign = {"id": "c1", "name": "c1", "channel": "email", "audience": "all",
                "content": CONTENT, "throttle": {"rate_per_second": rate}}
    async with http.post("/v1/campaigns", json=campaign) as response:
        assert response.status == 201, await response.text()
    async with http.post("/v1/campaigns/c1/activate") as response:
        assert response.status == 200, await response.text()
    async with http.post("/v1/campaigns/c1/triggers", json={"context": {"promo": "X"}}
                         ) as response:
        assert response.status == 202, await response.text()
        run_id: str = (await response.json())["run_id"]
    return run_id


async def _finished(daemon: DaemonProcess, run_id: str, timeout: float = 90.0,
                    token: str | None = None) -> dict[str, Any]:
    async with daemon.client(token) as http, asyncio.timeout(timeout):
        while True:
            async with http.get(f"/v1/runs/{run_id}") as response:
                report: dict[str, Any] = await response.json()
            if report["status"] in ("completed", "cancelled", "failed"):
                return report
            await asyncio.sleep(0.2)


def _balanced(report: dict[str, Any]) -> bool:
    counts = report["counts"]
    return counts["targeted"] == (counts["sent"] + counts["failed"] + counts["pending"]
                                  + sum(counts["excluded"].values()))


async def test_sigterm_mid_run_then_restart_sends_each_recipient_exactly_once(
    daemon_factory: DaemonFactory, gateway: Gateway
) -> None:
    count = 150
    daemon = daemon_factory(_config(gateway))
    await daemon.start()
    async with daemon.client() as http:
        run_id = await _launch(http, count, rate=30)
    await gateway.wait_for(40)
    assert await daemon.terminate() == 0
    sent_before = len(gateway.arrivals)
    assert sent_before < count
    await daemon.start()
    report = await _finished(daemon, run_id)
    assert report["status"] == "completed" and report["end_reason"] == "delivered"
    assert report["counts"]["sent"] == count and _balanced(report)
    keys = gateway.keys()
    assert len(keys) == count and set(keys.values()) == {1}  # no one twice, no one lost
    assert not daemon.events("run.recovered")  # a graceful stop leaves nothing in flight


async def test_kill_9_mid_run_loses_no_one_and_duplicates_stay_within_the_bound(
    daemon_factory: DaemonFactory, gateway: Gateway
) -> None:
    count = 200
    gateway.latency = 0.2  # ~8 calls in flight at 40/s
    daemon = daemon_factory(_config(gateway))
    await daemon.start()
    async with daemon.client() as http:
        run_id = await _launch(http, count, rate=40)
    await gateway.wait_for(60)
    window = daemon.events("worker.started")[0]["duplicate_bound"]
    await daemon.kill()
    killed = len(gateway.arrivals)
    started = time.monotonic()
    await daemon.start()
    await gateway.wait_for(killed + 1)
    resumed_after = time.monotonic() - started
    report = await _finished(daemon, run_id)
    assert report["counts"]["sent"] == count and _balanced(report)
    keys = gateway.keys()
    assert len(keys) == count  # none lost
    duplicates = sum(keys.values()) - count
    print(f"\nkill -9: {duplicates} sent twice (bound {window}); "
          f"resumed {resumed_after:.1f} s after the restart began")
    assert duplicates <= window
    assert resumed_after < 15  # the dead incarnation's lease is freed, not waited out


async def test_two_daemons_the_lease_holder_killed_the_other_takes_over(
    daemon_factory: DaemonFactory, gateway: Gateway
) -> None:
    count = 200
    first = daemon_factory(_config(gateway, lease_ttl="3s"))
    second = daemon_factory(_config(gateway, lease_ttl="3s"))
    await first.start()
    await second.start()
    async with first.client() as http:
        run_id = await _launch(http, count, rate=40)
    await gateway.wait_for(30)
    holder, other = (first, second) if first.events("lease.acquired") else (second, first)
    assert holder.events("lease.acquired") and not other.events("lease.acquired")
    await holder.kill()
    killed_at = time.monotonic()
    killed = len(gateway.arrivals)
    # Only the first daemon wrote the admin token (one per database).
    report = await _finished(other, run_id, token=first.admin_token)
    assert report["counts"]["sent"] == count and _balanced(report)
    keys = gateway.keys()
    assert len(keys) == count
    window = holder.events("worker.started")[0]["duplicate_bound"]
    assert sum(keys.values()) - count <= window
    assert other.events("lease.acquired")
    resumed = gateway.arrivals[killed][0] - killed_at
    assert 0.5 < resumed < 10  # after the 3 s lease expired (minus what had run), not before
    # The rate held across the hand-over: no second of calls above 40.
    times = sorted(t for t, _ in gateway.arrivals)
    assert max(sum(1 for t in times[i:i + 60] if t < start + 1.0)
               for i, start in enumerate(times)) <= 40 + 1
    assert await other.terminate() == 0

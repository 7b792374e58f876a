"""Rate pools in the engine (SPEC §9.3): campaigns on two engines (two holders on one
database) share one pool's rate at the gateway; a pool rate change holds; a stopping engine
gives its share back."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from structlog.testing import capture_logs

from daemon.store import Pool
from daemon.store import pools as pool_store
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    add_profiles,
    assert_counts_add_up,
    engine_config,
    make_campaign,
    run_row,
    trigger,
)
from tests.unit.engine.rates import max_in_window


async def _pooled(pool: Pool, campaign_id: str, pool_name: str, rate: int | None) -> None:
    await make_campaign(pool, campaign_id, rate=rate)
    await pool.execute("UPDATE campaigns SET rate_pool = $2 WHERE id = $1", campaign_id,
                       pool_name)


async def test_two_engines_share_one_pool_at_the_gateway(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await pool_store.put(pool, "lp", 60, datetime.now(UTC))
    await _pooled(pool, "c1", "lp", 50)
    await _pooled(pool, "c2", "lp", 50)
    await add_profiles(pool, 2000, audience="a1")
    config = engine_config(gateway)
    first = await start_engine(config, holder="engine-a")
    await start_engine(config, holder="engine-b")
    run1 = await trigger(pool, "c1", audience="a1")
    run2 = await trigger(pool, "c2", audience="a1")
    await asyncio.sleep(8.0)
    times = [a.at for a in gateway.arrivals]
    holders = {row["holder"] for row in await pool.fetch(
        "SELECT holder FROM engine_leases WHERE campaign_id IN ('c1', 'c2')")}
    settled = [t for t in times if t >= times[0] + 3.0]  # after the shares converged
    achieved = len(settled) / (times[-1] - times[0] - 3.0)
    print(f"\npool 60/s over {sorted(holders)}: busiest 1 s {max_in_window(times, 1.0)}, "
          f"achieved {achieved:.1f}/s after convergence")
    assert max_in_window(times, 1.0) <= 60 + 1  # never above the pool, even converging
    assert achieved >= 0.9 * 60  # and the pool is used
    by_campaign = {"c1": 0, "c2": 0}
    for arrival in gateway.arrivals:
        by_campaign[arrival.body["campaign_id"]] += 1
    assert min(by_campaign.values()) > 0.25 * len(gateway.arrivals)  # both get a share
    shares = await pool_store.shares(pool, "lp")
    assert sum(s.granted + s.released for s in shares) <= 60 + 1e-6
    # Another daemon (simulated here: it publishes a demand and takes its share, as a daemon
    # does) asks for the whole pool: ours give way within a few heartbeats, and what we send
    # plus what it was granted never exceeds the pool.
    joined = time.monotonic()
    granted: list[tuple[float, float]] = []
    while time.monotonic() - joined < 6.0:
        answer = await pool_store.share(pool, "lp", "other-daemon", 60.0, 10.0, {"x": 60.0},
                                        notify=not granted)
        assert answer is not None
        granted.append((time.monotonic(), answer.granted))
        await asyncio.sleep(0.25)
    ours = [a.at for a in gateway.arrivals if joined + 3.0 <= a.at < joined + 6.0]
    theirs = min(g for t, g in granted if t >= joined + 2.0)
    print(f"with another daemon asking 60/s: it got {theirs:.1f}/s; ours busiest 1 s "
          f"{max_in_window(ours, 1.0)}")
    assert theirs >= 15  # it got a real share
    assert max_in_window(ours, 1.0) <= 60 - theirs + 1
    await pool_store.leave(pool, "other-daemon")
    # A pool rate change holds within a second.
    await pool_store.put(pool, "lp", 20, datetime.now(UTC))
    changed = time.monotonic()
    await asyncio.sleep(4.0)
    after = [a.at for a in gateway.arrivals if a.at >= changed + 1.0]
    print(f"after the change to 20/s: busiest 1 s {max_in_window(after, 1.0)}")
    assert max_in_window(after, 1.0) <= 20 + 1
    assert len(after) >= 20
    for run_id in (run1, run2):
        assert_counts_add_up(await run_row(pool, run_id))
    await first.stop()
    left = {s.holder: s for s in await pool_store.shares(pool, "lp")}
    if "engine-a" in left:  # it gave its share back as it stopped
        assert left["engine-a"].granted == 0


async def test_an_unthrottled_pooled_campaign_is_held_to_the_pool(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await pool_store.put(pool, "lp", 30, datetime.now(UTC))
    await _pooled(pool, "c1", "lp", None)
    await add_profiles(pool, 500, audience="a1")
    await start_engine(engine_config(gateway))
    await trigger(pool, "c1", audience="a1")
    await asyncio.sleep(4.0)
    times = [a.at for a in gateway.arrivals]
    assert len(times) > 30
    assert max_in_window(times, 1.0) <= 30 + 1


async def test_a_providers_rate_is_a_pool_across_daemons(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    config = engine_config(gateway, providers={"hook": {"kind": "webhook", "url": gateway.url,
                                                        "timeout": 5, "concurrency": 64,
                                                        "rate_per_second": 40}})
    await make_campaign(pool, "c1", rate=None)  # unthrottled: only the provider's rate
    await add_profiles(pool, 1000, audience="a1")
    await start_engine(config, holder="engine-a")
    provider_pool = await pool_store.get(pool, "provider:hook")
    assert provider_pool is not None and provider_pool.rate_per_second == 40
    await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(40)
    # Another daemon sending through the same provider takes its part of the 40/s.
    joined = time.monotonic()
    theirs = []
    while time.monotonic() - joined < 5.0:
        answer = await pool_store.share(pool, "provider:hook", "other-daemon", 40.0, 10.0,
                                        {"x": 40.0}, notify=not theirs)
        assert answer is not None
        theirs.append((time.monotonic(), answer.granted))
        await asyncio.sleep(0.25)
    ours = [a.at for a in gateway.arrivals if joined + 3.0 <= a.at < joined + 5.0]
    granted = min(g for t, g in theirs if t >= joined + 2.0)
    print(f"\nprovider 40/s: another daemon got {granted:.1f}/s; ours busiest 1 s "
          f"{max_in_window(ours, 1.0)}")
    assert granted >= 15
    assert max_in_window(ours, 1.0) <= 40 - granted + 1
    await pool_store.leave(pool, "other-daemon")


async def test_a_pooled_run_starts_planned_at_the_campaigns_share(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    """SPEC §9.3: a run of a pooled campaign that starts while this daemon holds a share is
    planned (and paced, and reported) at that share, not at its own rate then re-planned."""
    await pool_store.put(pool, "lp", 20, datetime.now(UTC))
    await _pooled(pool, "c1", "lp", 50)
    await add_profiles(pool, 400, audience="a1")
    await start_engine(engine_config(gateway))
    first = await trigger(pool, "c1", audience="a1")
    async with asyncio.timeout(15):  # the first run's share is granted
        while (await run_row(pool, first))["rate_per_second"] != 20:
            await asyncio.sleep(0.05)
    with capture_logs() as logs:
        second = await trigger(pool, "c1", audience="a1")
        async with asyncio.timeout(15):
            while (await run_row(pool, second))["status"] != "running":
                await asyncio.sleep(0.05)
    [started] = [e for e in logs if e["event"] == "run.started" and e["run_id"] == second]
    assert started["rate_per_second"] == 20
    assert not [e for e in logs if e["event"] == "run.replanned" and e["run_id"] == second]
    assert (await run_row(pool, second))["rate_per_second"] == 20


async def test_the_first_pooled_run_on_a_daemon_starts_planned_at_its_share(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    """SPEC §9.3: the daemon holds no share of the pool yet when the campaign's first run
    starts; it asks for one first, and the run is planned at it in its start statement."""
    await pool_store.put(pool, "lp", 20, datetime.now(UTC))
    await _pooled(pool, "c1", "lp", 50)
    await add_profiles(pool, 400, audience="a1")
    await start_engine(engine_config(gateway))
    with capture_logs() as logs:
        first = await trigger(pool, "c1", audience="a1")
        async with asyncio.timeout(15):
            while (await run_row(pool, first))["status"] != "running":
                await asyncio.sleep(0.05)
    [started] = [e for e in logs if e["event"] == "run.started" and e["run_id"] == first]
    assert started["rate_per_second"] == 20
    assert not [e for e in logs if e["event"] == "run.replanned" and e["run_id"] == first]

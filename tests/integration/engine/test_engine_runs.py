"""Several runs of one campaign share its rate fairly; progress lines; a windowed campaign
completes at its end with nothing running; a holder whose lease is taken stops sending."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from structlog.testing import capture_logs

from daemon.engine import control as execution
from daemon.store import Pool
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    add_profiles,
    engine_config,
    future,
    make_campaign,
    trigger,
    wait_run_status,
)
from tests.unit.engine.rates import max_in_window


async def test_runs_of_one_campaign_share_its_rate_fairly(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=20, end_at=future(3600))  # windowed: many triggers
    await add_profiles(pool, 30, prefix="a", audience="first")
    await add_profiles(pool, 30, prefix="b", audience="second")
    await start_engine(engine_config(gateway))
    runs = [await trigger(pool, "c1", audience="first"),
            await trigger(pool, "c1", audience="second")]
    await gateway.wait_for(30)
    halves = Counter(a.key.split(":")[0] for a in gateway.arrivals[:30])
    assert abs(halves[runs[0]] - halves[runs[1]]) <= 4  # round-robin between the runs
    for run_id in runs:
        row = await wait_run_status(pool, run_id, timeout=20)
        assert row["sent"] == 30
    times = [a.at for a in gateway.arrivals]
    assert max_in_window(times, 1.0) <= 20 + 1  # one rate for the campaign, not one per run


async def test_an_active_run_logs_its_progress(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(execution, "PROGRESS_EVERY", 0.3)
    await make_campaign(pool, "c1", rate=10)
    await add_profiles(pool, 15, audience="a1")
    await start_engine(engine_config(gateway))
    with capture_logs() as logs:
        run_id = await trigger(pool, "c1", audience="a1")
        await wait_run_status(pool, run_id, timeout=10)
    progress = [e for e in logs if e["event"] == "run.progress"]
    assert progress and all(e["run_id"] == run_id for e in progress)
    assert {"sent", "failed", "pending", "achieved_rate", "eta_seconds"} <= set(progress[-1])
    assert 0 < progress[-1]["achieved_rate"] <= 20  # over 0.3 s: a few calls either way
    finished = [e for e in logs if e["event"] == "run.finished"]
    assert len(finished) == 1 and finished[0]["sent"] == 15


async def test_a_windowed_campaign_completes_at_its_end(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", end_at=future(1.0))
    await start_engine(engine_config(gateway))
    with capture_logs() as logs:
        async with asyncio.timeout(10):
            while await pool.fetchval("SELECT status FROM campaigns WHERE id = 'c1'") == "live":
                await asyncio.sleep(0.05)
    assert await pool.fetchval("SELECT status FROM campaigns WHERE id = 'c1'") == "completed"
    assert [e["reason"] for e in logs if e["event"] == "campaign.completed"] == ["end_at"]


async def test_a_holder_whose_lease_is_taken_stops_sending(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=20)
    await add_profiles(pool, 200, audience="a1")
    await start_engine(engine_config(gateway, engine={"lease_ttl": 2}))
    with capture_logs() as logs:
        run_id = await trigger(pool, "c1", audience="a1")
        await gateway.wait_for(5)
        # Another instance took the lease over (as if ours had expired).
        await pool.execute("UPDATE engine_leases SET holder = 'thief', "
                           "expires_at = now() + interval '1 hour' WHERE campaign_id = 'c1'")
        async with asyncio.timeout(5):
            while not any(e["event"] == "lease.lost" for e in logs):
                await asyncio.sleep(0.05)
    calls = len(gateway.arrivals)
    await asyncio.sleep(1.0)
    assert len(gateway.arrivals) <= calls + 1  # at most a call already under way
    row = await pool.fetchrow("SELECT status, sent FROM runs WHERE id = $1", run_id)
    assert row is not None and row["status"] == "running"  # the new holder's to finish
    assert row["sent"] == len(gateway.arrivals)  # what was sent is recorded


async def test_an_idle_worker_ends_after_idle_exit_not_at_the_next_tick(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the fault suite: a finished campaign's worker (7 tasks) stayed up to the next
    # control tick (15 s), the idle exit being checked only when the loop woke.
    monkeypatch.setattr(execution, "CONTROL_TICK", 3600.0)
    await make_campaign(pool, "c1", rate=50)
    await add_profiles(pool, 5, audience="a1")
    handle = await start_engine(engine_config(gateway))
    run_id = await trigger(pool, "c1", audience="a1")
    await wait_run_status(pool, run_id, timeout=10)
    async with asyncio.timeout(30):  # IDLE_EXIT is 2 s; the tick, an hour
        while "c1" in handle.engine._workers:
            await asyncio.sleep(0.05)

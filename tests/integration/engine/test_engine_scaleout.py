"""Several engines on one database (leases), a graceful stop mid-run and a restart, and the
takeover of a campaign whose holder died."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.infra.database import create_pool
from daemon.planning import planner
from daemon.store import Pool
from tests.integration.engine.conftest import (
    EngineFactory,
    Gateway,
    add_profiles,
    assert_counts_add_up,
    engine_config,
    make_campaign,
    run_row,
    trigger,
    wait_run_status,
)


@pytest.fixture
async def other_pool(database_url: str) -> AsyncIterator[Pool]:
    pool = await create_pool(database_url, max_size=5)
    yield pool
    await pool.close()


async def test_two_engines_send_each_recipient_once(
    pool: Pool, other_pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    runs = []
    for n in range(4):
        await make_campaign(pool, f"c{n}", rate=50)
        await add_profiles(pool, 40, prefix=f"p{n}-", audience=f"a{n}")
    config = engine_config(gateway)
    await start_engine(config, holder="first")
    await start_engine(config, holder="second", on_pool=other_pool)
    for n in range(4):
        runs.append(await trigger(pool, f"c{n}", audience=f"a{n}"))
    for run_id in runs:
        row = await wait_run_status(pool, run_id)
        assert (row["sent"], row["end_reason"]) == (40, "delivered")
    keys = Counter(gateway.keys())
    assert len(keys) == 160 and set(keys.values()) == {1}


async def test_a_graceful_stop_mid_run_then_a_restart_sends_each_exactly_once(
    pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=20)
    await add_profiles(pool, 60, audience="a1")
    config = engine_config(gateway)
    first = await start_engine(config, holder="first")
    run_id = await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(15)
    await first.stop(grace=5)
    stopped = await run_row(pool, run_id)
    assert stopped["status"] == "running"
    assert_counts_add_up(stopped)
    assert stopped["sent"] == len(gateway.arrivals)  # every call made is recorded
    marks = await pool.fetchval(
        "SELECT count(*) FROM run_claims WHERE run_id = $1", run_id)
    assert marks == 0  # the claims never sent were released
    await start_engine(config, holder="second")
    row = await wait_run_status(pool, run_id, timeout=20)
    assert (row["sent"], row["end_reason"]) == (60, "delivered")
    keys = Counter(gateway.keys())
    assert len(keys) == 60 and set(keys.values()) == {1}


async def test_a_dead_holder_is_taken_over_after_its_lease_expires(
    pool: Pool, other_pool: Pool, gateway: Gateway, start_engine: EngineFactory
) -> None:
    await make_campaign(pool, "c1", rate=20)
    await add_profiles(pool, 80, audience="a1")
    config = engine_config(gateway)  # lease_ttl 3 s
    doomed = await start_engine(config, holder="doomed", on_pool=other_pool)
    run_id = await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(20)
    # A crash: the database connections vanish, the tasks die without cleaning up.
    other_pool.terminate()
    assert doomed.engine._main is not None
    doomed.engine._main.cancel()
    async with asyncio.timeout(10):
        await asyncio.gather(doomed.engine._main, return_exceptions=True)
    crashed_at = asyncio.get_running_loop().time()
    calls_at_crash = len(gateway.arrivals)
    await start_engine(config, holder="survivor")
    row = await wait_run_status(pool, run_id, timeout=30)
    assert (row["sent"], row["end_reason"]) == (80, "delivered")
    assert_counts_add_up(row)
    keys = Counter(gateway.keys())
    assert len(keys) == 80
    duplicates = sum(keys.values()) - 80
    window = planner.pipeline_sizes(20, 64).duplicate_bound
    print(f"\n{duplicates} sent twice after the crash (bound: {window})")
    assert duplicates <= window
    resumed = gateway.arrivals[calls_at_crash].at if len(gateway.arrivals) > calls_at_crash \
        else crashed_at
    assert resumed - crashed_at >= 1.0  # not before the lease expired


async def test_a_restart_on_the_same_state_dir_resumes_without_waiting_for_the_lease(
    pool: Pool, other_pool: Pool, gateway: Gateway, start_engine: EngineFactory,
    tmp_path: Path,
) -> None:
    await make_campaign(pool, "c1", rate=20)
    await add_profiles(pool, 60, audience="a1")
    config = engine_config(gateway, engine={"lease_ttl": 30})
    state = tmp_path / "state"
    doomed = await start_engine(config, on_pool=other_pool, state_dir=state)
    run_id = await trigger(pool, "c1", audience="a1")
    await gateway.wait_for(10)
    other_pool.terminate()  # kill -9: nothing cleaned up, the lease has ~30 s left
    assert doomed.engine._main is not None and doomed.engine._lock_file is not None
    doomed.engine._main.cancel()
    await asyncio.gather(doomed.engine._main, return_exceptions=True)
    doomed.engine._lock_file.close()  # the kernel frees a dead process's lock
    restarted_at = asyncio.get_running_loop().time()
    calls = len(gateway.arrivals)
    await start_engine(config, state_dir=state)
    await gateway.wait_for(calls + 1, timeout=10)
    assert gateway.arrivals[calls].at - restarted_at < 3.0  # not the 30 s lease
    row = await wait_run_status(pool, run_id, timeout=30)
    assert row["sent"] == 60

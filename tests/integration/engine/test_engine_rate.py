"""The campaign's rate, measured where the calls arrive: a gateway in its own process.

Asserted in ratios and window counts, with the tolerances a loaded 2-core box needs:
- where the slots are granted (the pacer): no sliding one-second window above the rate,
  strictly;
- where the calls arrive: the achieved rate within 1.5 % under the configured one (the
  pacer runs 0.5 % under it; a stall of the test box costs the rest) and never over it;
  the lower bound only when the test's event loop was not starved of CPU (1 ms timers
  late by under 5 ms at p99 and 50 ms at most): a box busy with other work cannot keep
  any rate, and that is not the pacer's doing;
  no one-second window above the rate by more than 2 % + 1 (the arrival jitter of a
  loaded box: up to ~15 ms between a slot and its arrival); no micro-burst: no 100 ms
  window above twice its share of the rate (+ the same jitter allowance).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from daemon.engine.pacing import Pacer
from daemon.store import Pool
from tests.integration.engine.conftest import (
    EngineFactory,
    add_profiles,
    engine_config,
    make_campaign,
    trigger,
    wait_run_status,
)
from tests.unit.engine.rates import achieved_rate, max_in_window


class RemoteGateway:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}/send"
        self._base = f"http://127.0.0.1:{port}"

    def held_url(self, count: int, seconds: float) -> str:
        """Where the first `count` calls are stamped `seconds` late, then answered."""
        return f"{self._base}/held/{count}/{seconds}"

    async def arrivals(self) -> list[tuple[float, str]]:
        async with aiohttp.ClientSession() as session, \
                session.get(self._base + "/arrivals") as response:
            return [(float(t), str(k)) for t, k in json.loads(await response.text())]


@pytest.fixture
async def remote_gateway() -> AsyncIterator[RemoteGateway]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.engine.gateway_process",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    port = int((await asyncio.wait_for(process.stdout.readline(), 30)).decode())
    yield RemoteGateway(process, port)
    process.terminate()
    await process.wait()


@pytest.fixture
def daemon_gc() -> object:
    """The daemon's GC setting (`campaignd run` raises the gen-0 threshold)."""
    before = gc.get_threshold()
    gc.set_threshold(100_000, 20, 20)
    yield None
    gc.set_threshold(*before)


async def _measure_lag(lags: list[float]) -> None:
    """How late 1 ms timers fire on this loop (is the process getting the CPU?)."""
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - began - 0.001)


@pytest.mark.usefixtures("daemon_gc")
@pytest.mark.parametrize(("rate", "seconds"), [(1, 6), (40, 5), (500, 4)])
async def test_the_rate_holds_where_the_calls_arrive(
    pool: Pool, remote_gateway: RemoteGateway, start_engine: EngineFactory,
    monkeypatch: pytest.MonkeyPatch, rate: int, seconds: int,
) -> None:
    slots: list[float] = []
    record = Pacer.record

    def recording(pacer: Pacer) -> int:
        number = record(pacer)
        slots.append(asyncio.get_running_loop().time())
        return number

    monkeypatch.setattr(Pacer, "record", recording)
    count = rate * seconds
    await make_campaign(pool, "c1", rate=rate)
    await add_profiles(pool, count, audience="a1")
    config = engine_config(None, providers={"hook": {"kind": "webhook", "url": remote_gateway.url,
                                                      "timeout": 5, "concurrency": 64}},
                           channels={"sms": "hook"})
    await start_engine(config)
    lags: list[float] = []
    ticker = asyncio.create_task(_measure_lag(lags))
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id, timeout=seconds * 2 + 30)
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    assert (row["status"], row["sent"]) == ("completed", count)
    arrivals = await remote_gateway.arrivals()
    times = [t for t, _ in arrivals]
    assert sorted(k for _, k in arrivals) == sorted(f"{run_id}:{n}" for n in range(count))
    ratio = achieved_rate(times) / rate
    print(f"\nrate {rate}/s: achieved/configured {ratio:.4f}, "
          f"max per 1 s {max_in_window(times, 1.0)} (slots {max_in_window(slots, 1.0)}), "
          f"per 100 ms {max_in_window(times, 0.1)}, per 10 ms {max_in_window(times, 0.01)}")
    assert len(slots) == count
    assert max_in_window(slots, 1.0) <= rate
    jitter = rate * 0.02 + 1
    assert ratio <= 1.0
    lags.sort()
    p99, worst = lags[int(len(lags) * 0.99)], lags[-1]
    print(f"loop lag p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    if p99 > 0.005 or worst > 0.05:
        print("the loop was starved of CPU: the achieved rate's lower bound is not checked")
    else:
        assert ratio >= 0.985
    assert max_in_window(times, 1.0) <= rate + jitter
    assert max_in_window(times, 0.1) <= rate * 0.1 * 2 + jitter


async def test_a_call_counts_until_its_answer_so_a_late_gateway_sees_no_window_over_the_rate(
    pool: Pool, remote_gateway: RemoteGateway, start_engine: EngineFactory,
) -> None:
    """The gateway's clock is the one that counts (SPEC §3.3, the rate at the downstream):
    a gateway that is late to stamp some requests (its loop starved, a GC pass) moves their
    arrivals later, next to calls made after them. A call therefore counts in the pacer's
    sliding window until its answer, which comes after any stamp: the first 10 calls at
    20/s stamped 0.3 s late put 26 arrivals in one second when calls counted from their
    request only."""
    rate, count = 20, 60
    await make_campaign(pool, "c1", rate=rate)
    await add_profiles(pool, count, audience="a1")
    config = engine_config(None, providers={"hook": {
        "kind": "webhook", "url": remote_gateway.held_url(10, 0.3), "timeout": 5,
        "concurrency": 64}}, channels={"sms": "hook"})
    await start_engine(config)
    run_id = await trigger(pool, "c1", audience="a1")
    row = await wait_run_status(pool, run_id, timeout=60)
    assert (row["status"], row["sent"]) == ("completed", count)
    times = [t for t, _ in await remote_gateway.arrivals()]
    assert len(times) == count
    assert max_in_window(times, 1.0) <= rate

"""The loop-lag watch: a real stall of the loop shows in the histogram and the log."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from daemon.infra.loop_lag import LoopLag
from daemon.infra.metrics import Metrics


def _count(metrics: Metrics, le: str) -> float:
    for family in metrics.registry.collect():
        if family.name == "campaignd_event_loop_lag_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket") and sample.labels["le"] == le:
                    return sample.value
    raise AssertionError("no loop-lag histogram")


async def test_a_stall_of_the_loop_is_observed_and_logged() -> None:
    metrics = Metrics()
    watch = LoopLag(metrics, interval=0.005, warn=0.05)
    with capture_logs() as logs:
        await watch.start()
        await asyncio.sleep(0.02)  # a few quiet ticks
        time.sleep(0.12)  # noqa: ASYNC251  (the thing measured: a blocking call holds the loop)
        await asyncio.sleep(0.02)
        await watch.stop(1.0, asyncio.Event())
    total = _count(metrics, "+Inf")
    assert total >= 3
    assert total - _count(metrics, "0.1") >= 1  # one tick came ≥ 100 ms late
    stalls = [e for e in logs if e["event"] == "loop.stalled"]
    assert len(stalls) == 1 and stalls[0]["seconds"] >= 0.1
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "loop.lag"]  # awaited

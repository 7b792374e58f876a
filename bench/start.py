"""Bench 5, start precision: 10,000 runs scheduled over 30 s.

10,000 one-shot campaigns, each with its own `start_at` (uniform over a 30 s window in
the near future), each triggered once with one inline recipient before its start, so
10,000 runs wait in the scheduler. Lateness of a run = arrival of its first (and only)
provider call at the gateway - its `scheduled_for`, both on the wall clock (the gateway
stamps with time.time(); the loopback POST adds ~1 ms). Reported: p50/p99/max (goal
p99 < 20 ms), the earliest (negative = early), and runs that never sent.

The set-up (3 API calls a campaign) is timed first on a few campaigns that start an
hour later, so that the window opens once every run is scheduled: set-up load does not
overlap the measurement.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from typing import Any

from bench.api import Api, BenchError
from bench.harness import Harness
from bench.runner import Options, main
from bench.stats import summary_ms

FULL = (10_000, 30.0)      # runs, window seconds
SMOKE = (50, 3.0)
WORKERS = 16
DRAIN_S = 20.0  # after the window: runs not sent by then count as missing
CALIBRATION = 64


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="microseconds")


async def _set_up(api: Api, prefix: str, starts: list[float]) -> dict[str, float]:
    """Create, activate and trigger one campaign per start time; run id -> scheduled_for."""
    scheduled: dict[str, float] = {}
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    for item in enumerate(starts):
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            index, start = queue.get_nowait()
            name = f"{prefix}{index}"
            await api.create_campaign(name, start_at=_iso(start))
            answer = await api.trigger(name, {
                "context": {"promo": "S"},
                "recipients": [{"profile_id": name, "email": f"{name}@example.test",
                                "attributes": {"first_name": "Sam"}}],
            })
            when = datetime.datetime.fromisoformat(answer["scheduled_for"]).timestamp()
            scheduled[answer["run_id"]] = when

    async with asyncio.TaskGroup() as group:
        for n in range(WORKERS):
            group.create_task(worker(), name=f"start.setup{n}")
    return scheduled


async def bench(options: Options) -> dict[str, Any]:
    runs, span = SMOKE if options.smoke else FULL
    async with Harness("start", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        daemon = await harness.start_daemon()
        gateway = harness.gateway
        async with daemon.api(connections=WORKERS) as api:
            await api.require("/v1/campaigns")
            # Calibrate: how long does the set-up of one campaign take?
            probe = min(CALIBRATION, runs)
            began = time.monotonic()
            await _set_up(api, "later", [time.time() + 3600.0] * probe)
            per_campaign = (time.monotonic() - began) / probe
            lead = runs * per_campaign * 1.3 + 2.0
            window_start = time.time() + lead
            rng = random.Random(6)
            starts = sorted(window_start + rng.uniform(0.0, span) for _ in range(runs))
            setup_began = time.time()
            scheduled = await _set_up(api, "s", starts)
            setup_done = time.time()
            try:
                async with harness.profile(daemon, "start"):
                    await gateway.wait_count(
                        runs, within=max(0.0, window_start + span - time.time()) + DRAIN_S,
                        what="start precision",
                    )
            except BenchError as exc:
                if await gateway.count() == 0:  # else the missing runs are reported
                    some_run = await api.run(next(iter(scheduled)))
                    raise BenchError(f"{exc}; a run's report: {some_run}") from None
        arrivals = await gateway.arrivals()

    first: dict[str, float] = {}
    for run_id, wall in zip(arrivals.run, arrivals.wall, strict=True):
        if run_id is not None and run_id not in first:
            first[run_id] = wall
    missing = [run_id for run_id in scheduled if run_id not in first]
    if len(missing) == len(scheduled):
        raise BenchError("no scheduled run reached the gateway")
    lateness = [first[run_id] - when for run_id, when in scheduled.items() if run_id in first]
    future = sum(1 for when in scheduled.values() if when > setup_done)
    stats = summary_ms(lateness)
    result: dict[str, Any] = {
        **harness.describe(),
        "runs": runs,
        "window_s": span,
        "lateness": stats,
        "early_runs": sum(1 for value in lateness if value < 0),
        "missing_runs": len(missing),
        "scheduled_after_setup": future,
        "setup_s": round(setup_done - setup_began, 2),
        "setup_overran_window_s": round(max(0.0, setup_done - window_start), 2),
        "setup_calls_per_s": round(3 * runs / (setup_done - setup_began), 1),
    }
    result["summary"] = [
        f"{runs} runs over {span:g} s: lateness p50 {stats['p50_ms']} ms, "
        f"p99 {stats['p99_ms']} ms, max {stats['max_ms']} ms (goal p99 < 20 ms), "
        f"min {stats['min_ms']} ms",
        f"{len(missing)} runs never sent; set-up {result['setup_s']} s "
        f"({result['setup_calls_per_s']} API calls/s), "
        f"overran the window by {result['setup_overran_window_s']} s",
    ]
    return result


if __name__ == "__main__":
    main("start", bench, __doc__.splitlines()[0])

"""Bench 5, start precision: 10,000 runs scheduled over 30 s.

1,000 windowed campaigns, each with its own `start_at` (uniform over a 30 s window in
the near future), each triggered 10 times (one inline recipient a trigger) before it
starts: 10,000 runs waiting in the scheduler, 1,000 distinct start instants. Lateness
of a run = arrival of its first (and only) provider call at the gateway - its
`scheduled_for`, both on the wall clock (the gateway stamps with time.time(); the
loopback POST adds ~1 ms). Reported: p50/p99/max (goal p99 < 20 ms), the earliest
(negative = early), runs never sent, and how much the set-up overlapped the window.

The set-up (create, activate, 10 triggers a campaign) is timed first on campaigns that
start an hour later; the window opens once the rest should be done (at most 60 s
later). A campaign whose start is less than 2 s away when its turn comes is skipped
(counted in `runs_skipped`), so that a daemon slower than the calibration shortens the
test instead of measuring its own set-up backlog.
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

FULL = (1_000, 10, 30.0)      # campaigns, runs per campaign, window seconds
SMOKE = (20, 3, 3.0)
WORKERS = 16
CALIBRATION = 16              # campaigns set up to time the set-up
MAX_LEAD = 60.0               # the window opens at most this long after the calibration
GUARD = 2.0                   # a campaign is set up only if its start is this far away
DRAIN_S = 20.0                # after the window: runs not sent by then count as missing


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="microseconds")


async def _set_up(
    api: Api, prefix: str, starts: list[float], per_campaign: int, *, guard: float | None
) -> tuple[dict[str, float], int]:
    """Per start time: create and activate a campaign starting then (open an hour), and
    trigger it `per_campaign` times. (run id -> scheduled_for, campaigns skipped)."""
    scheduled: dict[str, float] = {}
    skipped = 0
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    for item in enumerate(starts):
        queue.put_nowait(item)

    async def trigger(name: str, n: int) -> None:
        profile = f"{name}.{n}"
        answer = await api.trigger(name, {
            "context": {"promo": "S"},
            "recipients": [{"profile_id": profile, "email": f"{profile}@example.test",
                            "attributes": {"first_name": "Sam"}}],
        })
        when = datetime.datetime.fromisoformat(answer["scheduled_for"]).timestamp()
        scheduled[answer["run_id"]] = when

    async def worker() -> None:
        nonlocal skipped
        while not queue.empty():
            index, start = queue.get_nowait()
            if guard is not None and start - time.time() < guard:
                skipped += 1
                continue
            name = f"{prefix}{index}"
            await api.create_campaign(name, start_at=_iso(start), end_at=_iso(start + 3600))
            await asyncio.gather(*(trigger(name, n) for n in range(per_campaign)))

    async with asyncio.TaskGroup() as group:
        for n in range(WORKERS):
            group.create_task(worker(), name=f"start.setup{n}")
    return scheduled, skipped


async def bench(options: Options) -> dict[str, Any]:
    campaigns, per_campaign, span = SMOKE if options.smoke else FULL
    runs = campaigns * per_campaign
    async with Harness("start", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        daemon = await harness.start_daemon()
        gateway = harness.gateway
        async with daemon.api(connections=WORKERS) as api:
            await api.require("/v1/campaigns")
            probe = min(CALIBRATION, campaigns)
            began = time.monotonic()
            await _set_up(api, "later", [time.time() + 3600.0] * probe, per_campaign,
                          guard=None)
            per_set_up = (time.monotonic() - began) / probe
            lead = min(MAX_LEAD, campaigns * per_set_up * 1.3 + GUARD + 1.0)
            window_start = time.time() + lead
            rng = random.Random(6)
            starts = sorted(window_start + rng.uniform(0.0, span) for _ in range(campaigns))
            setup_began = time.time()
            scheduled, skipped = await _set_up(api, "s", starts, per_campaign, guard=GUARD)
            setup_done = time.time()
            if not scheduled:
                raise BenchError("the set-up scheduled no run in time")
            try:
                async with harness.profile(daemon, "start"):
                    await gateway.wait_count(
                        len(scheduled),
                        within=max(0.0, window_start + span - time.time()) + DRAIN_S,
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
    lateness = [first[run_id] - when for run_id, when in scheduled.items() if run_id in first]
    stats = summary_ms(lateness)
    result: dict[str, Any] = {
        **harness.describe(),
        "runs_planned": runs,
        "runs": len(scheduled),
        "runs_skipped": skipped * per_campaign,
        "campaigns": campaigns - skipped,
        "runs_per_campaign": per_campaign,
        "window_s": span,
        "lateness": stats,
        "early_runs": sum(1 for value in lateness if value < 0),
        "missing_runs": len(missing),
        "setup_s": round(setup_done - setup_began, 2),
        "setup_overlap_s": round(max(0.0, setup_done - window_start), 2),
        "setup_calls_per_s": round(
            (campaigns - skipped) * (2 + per_campaign) / (setup_done - setup_began), 1),
    }
    result["summary"] = [
        f"{len(scheduled)} runs ({campaigns - skipped} campaigns x {per_campaign}) over "
        f"{span:g} s: lateness p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, "
        f"max {stats['max_ms']} ms (goal p99 < 20 ms), min {stats['min_ms']} ms",
        f"{len(missing)} runs never sent, {result['runs_skipped']} skipped (set-up too slow); "
        f"set-up {result['setup_s']} s ({result['setup_calls_per_s']} API calls/s), "
        f"overlapping the window by {result['setup_overlap_s']} s",
    ]
    return result


if __name__ == "__main__":
    main("start", bench, __doc__.splitlines()[0])

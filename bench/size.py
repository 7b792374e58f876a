"""Bench 6, size: import 1,000,000 profiles, then throttled runs over 100k and 1M.

The import streams NDJSON through `POST /v1/profiles/import?audience=` (goal >= 100,000
profiles/s). Then for a 100,000 and a 1,000,000 audience in turn, on a freshly
restarted daemon (so that its peak RSS, VmHWM, covers that run only): trigger a
campaign throttled at 2,000/s, time from the trigger request to the first message at
the gateway (goal < 5 s: the snapshot of the audience is done in SQL), let it send
for a few seconds while sampling RSS, then cancel. Reported: the daemon's peak RSS
(goal < 200 MB) for each size and their ratio (goal: flat, ~1.0).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.api import Api
from bench.harness import DaemonProcess, Gateway, Harness
from bench.procstat import RssSampler
from bench.runner import Options, main
from bench.stats import ratio

RATE = 2000


@dataclass(frozen=True)
class Plan:
    sizes: dict[str, int]    # label -> audience size, smallest first
    send_seconds: float      # how long each run sends before it is cancelled


FULL = Plan({"100k": 100_000, "1M": 1_000_000}, 8.0)
SMOKE = Plan({"1k": 1_000, "10k": 10_000}, 1.0)
MB = 1024 * 1024


async def _measure(
    daemon: DaemonProcess, gateway: Gateway, campaign: str, send_seconds: float
) -> dict[str, Any]:
    idle = daemon.peak_rss()
    before = await gateway.count()
    async with daemon.api() as api, RssSampler(daemon.pid, interval=0.05) as sampler:
        asked = time.time()
        accepted = await api.trigger(campaign, {"context": {"promo": "X1"}})
        await gateway.wait_count(before + 1, within=120, what=f"campaign {campaign}")
        first = (await gateway.arrivals(since=before)).wall[0]
        await asyncio.sleep(send_seconds)
        peak = daemon.peak_rss()
        report = await _cancel(api, accepted["run_id"])
    return {
        "trigger_to_first_send_s": round(first - asked, 3),
        "idle_rss_mb": None if idle is None else round(idle / MB, 1),
        "peak_rss_mb": None if peak is None else round(peak / MB, 1),
        "sampled_peak_rss_mb": None if sampler.peak is None else round(sampler.peak / MB, 1),
        "sent_before_cancel": report["counts"]["sent"],
        "targeted": report["counts"]["targeted"],
    }


async def _cancel(api: Api, run_id: str) -> dict[str, Any]:
    await api.cancel(run_id)
    return await api.wait_run(run_id, within=60)


async def bench(options: Options) -> dict[str, Any]:
    plan = SMOKE if options.smoke else FULL
    sizes = plan.sizes
    biggest = max(sizes.values())
    async with Harness("size", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        daemon = await harness.start_daemon()
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            imported = await api.import_profiles(biggest, f"size{biggest}")
            for label, count in sizes.items():
                if count != biggest:  # the first `count` profiles of the import
                    await api.add_members(f"size{count}", count)
                await api.create_campaign(f"size-{label}", audience=f"size{count}", rate=RATE)
        import_rss = daemon.peak_rss()
        runs: dict[str, Any] = {}
        for label in sizes:
            await daemon.terminate()
            await daemon.start()
            runs[label] = await _measure(daemon, harness.gateway, f"size-{label}",
                                         plan.send_seconds)

    small, big = (runs[label] for label in sizes)
    result: dict[str, Any] = {
        **harness.describe(),
        "import_profiles": biggest,
        "import_per_s": round(imported["per_s"], 1),
        "import_s": round(imported["seconds"], 2),
        "import_peak_rss_mb": None if import_rss is None else round(import_rss / MB, 1),
        "runs": runs,
        "rss_ratio_big_to_small": ratio(big["peak_rss_mb"], small["peak_rss_mb"]),
        "start_ratio_big_to_small": ratio(big["trigger_to_first_send_s"],
                                          small["trigger_to_first_send_s"]),
    }
    result["summary"] = [
        f"import of {biggest} profiles: {result['import_per_s']} profiles/s "
        f"({result['import_s']} s; goal >= 100,000/s), daemon peak RSS meanwhile "
        f"{result['import_peak_rss_mb']} MB",
    ] + [
        f"{label}: first send {r['trigger_to_first_send_s']} s after the trigger (goal < 5 s), "
        f"peak RSS {r['peak_rss_mb']} MB (idle {r['idle_rss_mb']} MB; goal < 200 MB)"
        for label, r in runs.items()
    ] + [f"peak RSS ratio {result['rss_ratio_big_to_small']} (goal: flat)"]
    return result


if __name__ == "__main__":
    main("size", bench, __doc__.splitlines()[0])

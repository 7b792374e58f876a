"""Bench 3, concurrent campaigns: 4 campaigns throttled at 2,000 msg/s each, at once.

The four are triggered together over one shared stored audience; each one's
achieved/configured ratio and window maxima (as in bench.rate), the total achieved
msgs/s (goal: 8,000, i.e. ratio 1.0 to 4 x 2,000), and the daemon's CPU (share of one
core, s/1000 messages).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.harness import Harness, run_to_end
from bench.runner import Options, main
from bench.stats import achieved_rate, rate_profile, ratio

CAMPAIGNS = 4
RATE = 2000
FULL = 24_000    # per campaign: 12 s at 2,000/s
SMOKE = 1_000


async def bench(options: Options) -> dict[str, Any]:
    count = SMOKE if options.smoke else FULL
    names = [f"c{n}" for n in range(CAMPAIGNS)]
    async with Harness("concurrent", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        daemon = await harness.start_daemon()
        gateway = harness.gateway
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            await api.import_profiles(count, "shared")
            await harness.settle()
            for name in names:
                await api.create_campaign(name, audience="shared", rate=RATE)
            window = harness.cpu_window(daemon)
            async with harness.profile(daemon, "concurrent"):
                window.start()
                reports = await asyncio.gather(*(
                    run_to_end(api, gateway, name, expected=count, rate=RATE) for name in names
                ))
                window.stop()
        arrivals = await gateway.arrivals()

    profiles = {name: rate_profile(arrivals.times_for(campaign=name), RATE) for name in names}
    total_rate = achieved_rate(arrivals.mono)
    cpu = window.per_thousand(len(arrivals))
    result: dict[str, Any] = {
        **harness.describe(),
        "campaigns": profiles,
        "all_finished": all(report["finished"] for report in reports),
        "min_ratio": min(p["ratio"] or 0.0 for p in profiles.values()),
        "total_per_s": round(total_rate or 0.0, 1),
        "total_ratio": ratio(total_rate, RATE * CAMPAIGNS, 4),
        "cpu_s_per_1000": cpu,
        "cpu_window": window.as_dict(),
        "duplicates": arrivals.duplicates(),
    }
    result["summary"] = [
        f"{name}: ratio {p['ratio']}, max 1 s window {p['max_1s_window']}, "
        f"max 100 ms window {p['max_100ms_window']}"
        for name, p in profiles.items()
    ] + [
        f"total {result['total_per_s']} msgs/s of {RATE * CAMPAIGNS} "
        f"(ratio {result['total_ratio']}); daemon CPU "
        f"{result['cpu_window']['daemon_cpu_share']} of a core, "
        f"{cpu['daemon']} s/1000 msgs (+ database {cpu['database']})",
    ]
    return result


if __name__ == "__main__":
    main("concurrent", bench, __doc__.splitlines()[0])

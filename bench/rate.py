"""Bench 1, rate accuracy: campaigns throttled at 1, 165 and 2,000 msg/s.

Each campaign sends its stored audience through the `webhook` provider to the gateway
process, which timestamps every arrival. Per campaign: achieved/configured (goal
>= 0.99; the average between first and last arrival), the largest count in any sliding
1 s window (goal <= rate + 1) and 100 ms window (goal <= 0.15 x rate + 1). The 1/s and
165/s campaigns run together, the 2,000/s one alone, with the daemon's CPU seconds per
1,000 messages (and the database's), set against the baseline client loop paced at
2,000/s (goal <= 2x).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.baseline import like_the_daemon
from bench.harness import ChildProcess, Harness, run_to_end
from bench.runner import Options, main
from bench.stats import loop_lag, rate_profile, ratio

# rate -> recipients (the run lasts about recipients / rate seconds)
FULL = {1: 11, 165: 1650, 2000: 30_000}
SMOKE = {1: 3, 165: 165, 2000: 2000}
BASELINE_SECONDS = {False: 10, True: 1}


async def bench(options: Options) -> dict[str, Any]:
    sizes = SMOKE if options.smoke else FULL
    async with Harness("rate", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        daemon = await harness.start_daemon()
        gateway = harness.gateway
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            start = 0
            for rate, count in sizes.items():
                await api.import_profiles(count, f"a{rate}", start=start)
                await api.create_campaign(f"rate{rate}", audience=f"a{rate}", rate=rate)
                start += count
            await harness.settle()
            slow = [rate for rate in sizes if rate != 2000]
            reports = await asyncio.gather(*(
                run_to_end(api, gateway, f"rate{rate}", expected=sizes[rate], rate=rate)
                for rate in slow
            ))
            window = harness.cpu_window(daemon)
            async with harness.profile(daemon, "rate2000"):
                lag_before = await api.loop_lag()
                window.start()
                reports.append(await run_to_end(api, gateway, "rate2000",
                                                expected=sizes[2000], rate=2000))
                window.stop()
                lag = loop_lag(lag_before, await api.loop_lag())
        arrivals = await gateway.arrivals()
        profiles = {
            str(rate): rate_profile(arrivals.times_for(campaign=f"rate{rate}"), rate)
            for rate in sizes
        }
        await gateway.reset()
        baseline_count = 2000 * BASELINE_SECONDS[options.smoke]
        baseline = ChildProcess(
            ["-m", "bench.baseline", "--url", gateway.hook_url, "--count", str(baseline_count),
             "--rate", "2000", "--run-id", "baseline", *like_the_daemon()], "baseline")
        await baseline.start()
        baseline_result = await baseline.output(within=baseline_count / 2000 + 60)
        baseline_arrivals = await gateway.arrivals()
        baseline_result["profile"] = rate_profile(baseline_arrivals.mono, 2000)
        duplicates = arrivals.duplicates()

    cpu = window.per_thousand(profiles["2000"]["messages"])
    baseline_cpu = baseline_result["cpu_s_per_1000"]
    result: dict[str, Any] = {
        **harness.describe(),
        "rates": profiles,
        "all_finished": all(report["finished"] for report in reports),
        "duplicates": duplicates,
        "cpu_s_per_1000_at_2000": cpu,
        "baseline_cpu_s_per_1000_at_2000": baseline_cpu,
        "cpu_ratio_daemon": ratio(cpu["daemon"], baseline_cpu),
        "cpu_ratio_with_database": ratio(cpu["total"], baseline_cpu),
        "cpu_window": window.as_dict(),
        "loop_lag_at_2000": lag,
        "baseline": baseline_result,
    }
    result["summary"] = [
        f"{rate:>5}/s: ratio {p['ratio']} (steady {p['steady_ratio']}), "
        f"max 1 s window {p['max_1s_window']} (goal <= {int(rate) + 1}), "
        f"max 100 ms window {p['max_100ms_window']} (goal <= {0.15 * int(rate) + 1:g}), "
        f"{p['messages']} msgs"
        for rate, p in profiles.items()
    ] + [
        f"CPU s/1000 msgs at 2000/s: daemon {cpu['daemon']}, database {cpu['database']}, "
        f"baseline loop {baseline_cpu} -> ratio {result['cpu_ratio_daemon']} "
        f"({result['cpu_ratio_with_database']} with the database; goal <= 2)",
        f"loop lag at 2000/s (20 ms ticks): {lag}",
    ]
    return result


if __name__ == "__main__":
    main("rate", bench, __doc__.splitlines()[0])

"""Bench 2, throughput ceiling and cost: an unthrottled campaign of 200,000 recipients.

The daemon sends a stored audience through the `webhook` provider (64 connections) as
fast as it can; then, in the same bench run and against the same gateway, the baseline
(bench.baseline: a bare aiohttp client loop, same bodies, same connection limit, no
database) posts up to 50,000 messages. Reported: messages/s of each and their ratio (goal
>= 0.7: the engine, the database and the templates cost at most 30 %), and CPU seconds
per 1,000 messages of the daemon, of the database server, and of the baseline.
The import rate of the audience is reported on the side.
"""

from __future__ import annotations

from typing import Any

from bench.baseline import like_the_daemon
from bench.harness import ChildProcess, Harness, run_to_end
from bench.runner import Options, main
from bench.stats import achieved_rate, ratio

FULL = 200_000
SMOKE = 2_000
# The baseline's rate does not depend on the count: 50,000 posts measure it well enough.
BASELINE_MAX = 50_000


async def bench(options: Options) -> dict[str, Any]:
    count = SMOKE if options.smoke else FULL
    async with Harness("throughput", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        daemon = await harness.start_daemon()
        gateway = harness.gateway
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            imported = await api.import_profiles(count, "everyone")
            await harness.settle()
            await api.create_campaign("flood", audience="everyone")
            window = harness.cpu_window(daemon)
            async with harness.profile(daemon, "throughput"):
                window.start()
                report = await run_to_end(api, gateway, "flood", expected=count, rate=None)
                window.stop()
        arrivals = await gateway.arrivals()
        sent = arrivals.times_for(campaign="flood")
        daemon_rate = achieved_rate(sent)
        duplicates = arrivals.duplicates()
        await gateway.reset()
        baseline_count = min(count, BASELINE_MAX)
        baseline = ChildProcess(
            ["-m", "bench.baseline", "--url", gateway.hook_url, "--count", str(baseline_count),
             *like_the_daemon()],
            "baseline")
        await baseline.start()
        baseline_result = await baseline.output(within=baseline_count / 500 + 60)

    cpu = window.per_thousand(len(sent))
    baseline_rate = baseline_result["per_s"]
    result: dict[str, Any] = {
        **harness.describe(),
        "messages": count,
        "daemon_per_s": round(daemon_rate or 0.0, 1),
        "baseline_per_s": baseline_rate,
        "throughput_ratio": ratio(daemon_rate, baseline_rate),
        "run_wall_s": window.as_dict()["wall_s"],
        "cpu_s_per_1000": cpu,
        "baseline_cpu_s_per_1000": baseline_result["cpu_s_per_1000"],
        "cpu_ratio_daemon": ratio(cpu["daemon"], baseline_result["cpu_s_per_1000"]),
        "cpu_ratio_with_database": ratio(cpu["total"], baseline_result["cpu_s_per_1000"]),
        "cpu_window": window.as_dict(),
        "duplicates": duplicates,
        "import_per_s": round(imported["per_s"], 1),
        "finished": report["finished"],
        "run": report,
        "baseline": baseline_result,
    }
    result["summary"] = [
        f"daemon {result['daemon_per_s']} msgs/s vs baseline {baseline_rate} msgs/s "
        f"-> ratio {result['throughput_ratio']} (goal >= 0.7), {count} messages",
        f"CPU s/1000 msgs: daemon {cpu['daemon']}, database {cpu['database']}, "
        f"baseline {baseline_result['cpu_s_per_1000']} -> ratio {result['cpu_ratio_daemon']} "
        f"({result['cpu_ratio_with_database']} with the database)",
        f"import of {count} profiles: {result['import_per_s']} profiles/s",
    ]
    return result


if __name__ == "__main__":
    main("throughput", bench, __doc__.splitlines()[0])

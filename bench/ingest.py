"""Bench 4, trigger ingestion: one-recipient inline triggers at increasing rates.

A load generator in another process (bench.loadgen) posts triggers at 250, 500, 1,000,
... per second (open loop, 4 s a step) until a step above 1,000/s is not sustained, then runs a
closed-loop step (64 workers) for the raw ceiling. The same load runs first against
a bare aiohttp handler (bench.bare_server: JSON in, 202 out, no database) on the same
machine, the ceiling of the HTTP layer. Reported: sustained triggers/s, p50/p99 at
1,000/s (goal p99 < 50 ms), closed-loop maxima, and daemon/bare ratios. Each trigger
is a real run: the daemon also fans them out to the gateway meanwhile.

Before that, `handler_only`: steps at 250 and 1,000/s and the closed loop against a campaign
that starts in an hour (its runs wait in the scheduler; the campaign is stopped after,
which cancels them), so that the trigger's own cost
(HTTP, validation, the statement, the NOTIFY) shows apart from the engine's. CPU per
accepted trigger, daemon and database, for both phases: the figure to compare across
runs on a busy machine, where latencies move with the neighbours.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from bench.api import BenchError
from bench.harness import ChildProcess, Harness
from bench.procstat import CpuWindow
from bench.runner import Options, main
from bench.stats import ratio

FULL_RATES = [250, 500, 1000, 2000, 4000, 8000]
LATENCY_RATE = 1000  # always measured, sustained or not
SMOKE_RATES = [50, 100]


def _step_at(result: dict[str, Any], rate: float) -> dict[str, Any] | None:
    return next((s for s in result["steps"] if s["offered_per_s"] == rate), None)


def _accepted(result: dict[str, Any]) -> int:
    accepted = sum(s["statuses"].get("202", 0) for s in result["steps"])
    return int(accepted + (result["closed"] or {}).get("statuses", {}).get("202", 0))


def _per_trigger(window: CpuWindow, accepted: int) -> dict[str, float | None]:
    """CPU microseconds per accepted trigger: the daemon, the database."""
    per = window.per_thousand(accepted)
    return {f"{name}_us": None if value is None else round(value * 1000.0)
            for name, value in per.items()}


async def _load(url: str, token: str | None, options: Options,
                only: list[int] | None = None) -> dict[str, Any]:
    rates = only or (SMOKE_RATES if options.smoke else FULL_RATES)
    step, closed = (1.0, 1.0) if options.smoke else (4.0, 4.0)
    latency_rate = SMOKE_RATES[-1] if options.smoke else LATENCY_RATE
    args = ["-m", "bench.loadgen", "--url", url, "--rates", ",".join(map(str, rates)),
            "--step", str(step), "--closed", str(closed), "--at-least", str(latency_rate)]
    if token:
        args += ["--token", token]
    generator = ChildProcess(args, "load generator")
    await generator.start()
    return await generator.output(within=len(rates) * (step + 40) + closed + 60)


async def bench(options: Options) -> dict[str, Any]:
    rates = SMOKE_RATES if options.smoke else FULL_RATES
    latency_rate = SMOKE_RATES[-1] if options.smoke else LATENCY_RATE
    async with Harness("ingest", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        daemon = await harness.start_daemon()
        now = datetime.datetime.now(datetime.UTC)
        end_at = now + datetime.timedelta(hours=1)
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            await api.create_campaign("ingest", end_at=end_at.isoformat())
            await api.create_campaign("ingest-later", start_at=end_at.isoformat(),
                                      end_at=(end_at + datetime.timedelta(hours=1)).isoformat())
            bare = ChildProcess(["-m", "bench.bare_server"], "bare server")
            hello = await bare.start()
            try:
                bare_url = f"http://127.0.0.1:{hello['port']}/v1/campaigns/bare/triggers"
                ceiling = await _load(bare_url, None, options)
            finally:
                await bare.stop()
            handler_window = harness.cpu_window(daemon)
            async with harness.profile(daemon, "ingest-handler"):
                handler_window.start()
                handler = await _load(f"{daemon.url}/v1/campaigns/ingest-later/triggers",
                                      daemon.token, options, [rates[0], latency_rate])
                handler_window.stop()
            # Its runs would wait in the scheduler's index through the next phase: cancelled.
            await api.request("POST", "/v1/campaigns/ingest-later/stop")
            window = harness.cpu_window(daemon)
            async with harness.profile(daemon, "ingest"):
                window.start()
                measured = await _load(f"{daemon.url}/v1/campaigns/ingest/triggers",
                                       daemon.token, options)
                window.stop()
        accepted = _accepted(measured)
        if accepted == 0:
            raise BenchError(f"the daemon accepted no trigger: {measured['steps'][0]}")
        try:
            await harness.gateway.wait_count(1, within=20, what="ingest")
        except BenchError:
            if not os.environ.get("BENCH_ALLOW_NO_SEND"):
                raise
        sent = await harness.gateway.count()

    rate = latency_rate
    handler_at_rate, handler_closed = _step_at(handler, rate), handler["closed"] or {}
    at_rate, bare_at_rate = _step_at(measured, rate), _step_at(ceiling, rate)
    closed, bare_closed = measured["closed"] or {}, ceiling["closed"] or {}
    result: dict[str, Any] = {
        **harness.describe(),
        "sustained_per_s": measured["sustained_per_s"],
        "bare_sustained_per_s": ceiling["sustained_per_s"],
        "sustained_ratio": ratio(measured["sustained_per_s"], ceiling["sustained_per_s"]),
        "latency_rate_per_s": rate,
        "p50_ms": at_rate and at_rate["p50_ms"],
        "p99_ms": at_rate and at_rate["p99_ms"],
        "bare_p50_ms": bare_at_rate and bare_at_rate["p50_ms"],
        "bare_p99_ms": bare_at_rate and bare_at_rate["p99_ms"],
        "closed_per_s": closed.get("achieved_per_s"),
        "bare_closed_per_s": bare_closed.get("achieved_per_s"),
        "closed_ratio": ratio(closed.get("achieved_per_s"), bare_closed.get("achieved_per_s")),
        "triggers_accepted": accepted,
        "messages_sent_meanwhile": sent,
        "cpu": window.as_dict(),
        "cpu_per_trigger": _per_trigger(window, accepted),
        "handler_only": {
            "p50_ms": handler_at_rate and handler_at_rate["p50_ms"],
            "p99_ms": handler_at_rate and handler_at_rate["p99_ms"],
            "sustained": bool(handler_at_rate and handler_at_rate["sustained"]),
            "closed_per_s": handler_closed.get("achieved_per_s"),
            "cpu": handler_window.as_dict(),
            "cpu_per_trigger": _per_trigger(handler_window, _accepted(handler)),
            "load": handler,
        },
        "daemon": measured,
        "bare": ceiling,
    }
    result["summary"] = [
        f"sustained {result['sustained_per_s']} triggers/s "
        f"(bare handler {result['bare_sustained_per_s']}/s, ratio {result['sustained_ratio']})",
        f"at {rate}/s: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
        f"(bare: {result['bare_p50_ms']} / {result['bare_p99_ms']} ms; goal p99 < 50 ms)",
        f"closed loop (64 workers): {result['closed_per_s']}/s vs bare "
        f"{result['bare_closed_per_s']}/s (ratio {result['closed_ratio']})",
        f"{accepted} triggers accepted, {sent} messages sent meanwhile; CPU per trigger "
        f"(engine included): {result['cpu_per_trigger']}",
        f"handler only (runs an hour ahead): at {rate}/s p50 "
        f"{result['handler_only']['p50_ms']} ms, p99 {result['handler_only']['p99_ms']} ms, "
        f"closed loop {result['handler_only']['closed_per_s']}/s, CPU per trigger "
        f"{result['handler_only']['cpu_per_trigger']}",
    ]
    return result


if __name__ == "__main__":
    main("ingest", bench, __doc__.splitlines()[0])

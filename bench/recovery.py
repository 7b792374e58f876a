"""Bench 7, recovery: `kill -9` mid-run, restart, resume.

A campaign throttled at 2,000/s sends 20,000 recipients; once 8,000 have reached the
gateway the daemon gets SIGKILL and is started again on the same database. Reported:
restart to ready (/readyz answers 200), ready to the first message of the resumed run
at the gateway (goal < 2 s; a run lease left by the dead process may have to expire
first: `engine.lease_ttl`), the duplicates the gateway saw (the same idempotency key
twice; bound: the provider's in-flight calls at the crash, `concurrency` = 64), and
whether every recipient was reached (none lost).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.api import BenchError
from bench.harness import FIRST_SEND_TIMEOUT, Harness, check_sent
from bench.runner import Options, main

RATE = 2000
CONCURRENCY = 64
FULL = (20_000, 8_000)    # recipients, sent before the kill
SMOKE = (3_000, 1_000)
RESUME_TIMEOUT = 90.0


async def bench(options: Options) -> dict[str, Any]:
    count, kill_after = SMOKE if options.smoke else FULL
    async with Harness("recovery", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        # Smoke mode only checks that the bench works: a short lease spares it the wait.
        extra = '[engine]\nlease_ttl = "2s"\n' if options.smoke else ""
        daemon = await harness.start_daemon(extra, concurrency=CONCURRENCY)
        gateway = harness.gateway
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            await api.import_profiles(count, "crowd")
            await harness.settle()
            await api.create_campaign("crash", audience="crowd", rate=RATE)
            accepted = await api.trigger("crash", {"context": {"promo": "X1"}})
            await gateway.wait_count(1, within=FIRST_SEND_TIMEOUT, what="recovery")
            await gateway.wait_count(kill_after, within=kill_after / RATE + 30,
                                     what="recovery (before the kill)")
        killed_at = time.time()
        await daemon.kill()
        await asyncio.sleep(0.2)  # answers in flight land; nothing new can start
        before = await gateway.count()
        spawn_to_ready = await daemon.start()
        ready_at = daemon.ready_at
        resumed_at = await _first_arrival_after(harness, before, ready_at)
        async with daemon.api() as api:
            report = await api.wait_run(accepted["run_id"], within=count / RATE + 60)
        arrivals = await gateway.arrivals()
        started = [e for e in daemon.events("worker.started") if e.get("campaign_id") == "crash"]

    check_sent(report, count)
    keys = [key for key in arrivals.key if key is not None]
    distinct = len(set(keys))
    result: dict[str, Any] = {
        **harness.describe(),
        "recipients": count,
        "sent_before_kill": before,
        "restart_to_ready_s": round(spawn_to_ready, 3),
        "ready_to_first_send_s": round(resumed_at - ready_at, 3),
        "kill_to_first_send_s": round(resumed_at - killed_at, 3),
        "duplicates": len(keys) - distinct,
        # SPEC §3.4's bound: the calls in flight (the provider's concurrency).
        "duplicate_bound_calls_in_flight": CONCURRENCY,
        # The engine's own bound (docs/engine.md, "Guarantees"): the calls in flight plus
        # the outcomes sent but not yet recorded, from its `worker.started` line.
        "duplicate_bound": started[0].get("duplicate_bound") if started else None,
        "claim_window": started[0].get("window") if started else None,
        "lost": count - distinct,
        "run_counts": report["counts"],
    }
    result["summary"] = [
        f"killed after {before} of {count} messages; ready {result['restart_to_ready_s']} s "
        f"after restart, first send {result['ready_to_first_send_s']} s after ready "
        f"(goal < 2 s), {result['kill_to_first_send_s']} s after the kill",
        f"duplicates {result['duplicates']} (SPEC bound: {CONCURRENCY} calls in flight; "
        f"the engine's stated bound: {result['duplicate_bound']}), lost {result['lost']}",
    ]
    return result


async def _first_arrival_after(harness: Harness, since: int, ready_at: float) -> float:
    """Wall time of the first message after `ready_at` (BenchError after RESUME_TIMEOUT)."""
    deadline = time.monotonic() + RESUME_TIMEOUT
    while time.monotonic() < deadline:
        walls = [w for w in (await harness.gateway.arrivals(since=since)).wall if w >= ready_at]
        if walls:
            return walls[0]
        await asyncio.sleep(0.02)
    raise BenchError(f"the restarted daemon sent nothing in {RESUME_TIMEOUT:.0f} s")


if __name__ == "__main__":
    main("recovery", bench, __doc__.splitlines()[0])

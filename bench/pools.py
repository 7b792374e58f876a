"""Bench 9, rate pools: two daemons, three campaigns in one pool, one gateway process.

Scenarios, in one database with the two daemons (SPEC §9.3, issue 13):
- `steady_1000` and `steady_100`: three campaigns in a pool of 1,000/s (then 100/s),
  triggered together; the pool's total in every sliding 1 s window at the gateway (goal
  <= rate + 1) and achieved/configured (goal >= 0.97).
- `rate_change`: a pool of 1,000/s changed to 300/s mid-run, then back to 1,000/s: how long
  after each PUT the gateway's trailing 1 s total settles (under 301, then >= 0.97 x 1,000).
- `two_daemons_4x2000`: the "4 campaigns x 2,000/s" bench of bench.concurrent, no pool,
  with the two daemons sharing the campaigns (leases): the total reached.
- `kill_holder`: a pool of 1,000/s; the daemon holding most of its campaigns is killed
  (SIGKILL); how long until the pool no longer lists its share (`share_freed_s`, polled:
  SPEC §9.3's "within `engine.lease_ttl`", 5 s here), until the first second that starts
  after the kill holds >= 0.97 x 1,000 (`rate_back_s`: the dead holder's leases taken
  over and its runs going again), until the trailing 1 s total is back to that level
  (`settle_s`, counted from 0.5 s after the kill), and the busiest 1 s window meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from bench.api import Api
from bench.harness import DaemonProcess, Gateway, Harness, run_to_end
from bench.runner import Options, main
from bench.stats import achieved_rate, max_in_window, rate_profile, ratio

LEASE_TTL = 5.0
CONFIG = f'[engine]\nlease_ttl = "{LEASE_TTL:g}s"\n'
CAMPAIGNS = 3


def trailing_counts(times: list[float]) -> list[tuple[float, int]]:
    """For each arrival t (sorted): the arrivals in (t - 1 s, t]."""
    result: list[tuple[float, int]] = []
    start = 0
    for end, moment in enumerate(times):
        while times[start] <= moment - 1.0:
            start += 1
        result.append((moment, end - start + 1))
    return result


def settle_below(times: list[float], since: float, limit: float) -> float | None:
    """Seconds after `since` until the first arrival whose trailing 1 s holds at most
    `limit` (the busiest window after that is reported beside it)."""
    for moment, count in trailing_counts(times):
        if moment >= since and count <= limit:
            return round(moment - since, 3)
    return None


def settle_above(times: list[float], since: float, level: float) -> float | None:
    """Seconds after `since` until the trailing 1 s total first reached `level`."""
    for moment, count in trailing_counts(times):
        if moment >= since and count >= level:
            return round(moment - since, 3)
    return None


def rate_back(times: list[float], since: float, level: float) -> float | None:
    """Seconds after `since` until the first 1 s window that starts after it (at an
    arrival) and holds at least `level`: when the rate came back, not when a trailing
    window had filled up again."""
    end = 0
    for begin, moment in enumerate(times):
        if moment < since:
            continue
        end = max(end, begin)
        while end < len(times) and times[end] < moment + 1.0:
            end += 1
        if end - begin >= level:
            return round(moment - since, 3)
    return None


async def share_freed(api: Api, pool: str, pid: int, since: float) -> float:
    """Seconds after `since` until the pool no longer lists daemon `pid`'s share (its row
    expired: what the others may take), polled every 20 ms."""
    while True:
        view = await api.request("GET", f"/v1/rate-pools/{pool}")
        if all(pid_of(share["holder"]) != pid for share in view["shares"]):
            return round(time.monotonic() - since, 3)
        await asyncio.sleep(0.02)


def pid_of(holder: str) -> int:
    """The process id in a daemon's holder name (its second-to-last `:` field)."""
    return int(holder.split(":")[-2])


def holders(pool: dict[str, Any]) -> dict[str, list[str]]:
    """The pool's holders (daemon instance names) -> the campaigns each executes."""
    return {share["holder"]: sorted(share.get("campaigns", {})) for share in pool["shares"]}


async def make_pool(api: Api, name: str, rate: int) -> None:
    await api.request("PUT", f"/v1/rate-pools/{name}", json={"rate_per_second": rate},
                      expect=(200, 201))


async def pooled_campaigns(api: Api, pool: str, audience: str) -> list[str]:
    names = [f"{pool}-c{n}" for n in range(CAMPAIGNS)]
    for name in names:
        await api.create_campaign(name, audience=audience, rate=2000, pool=pool)
    return names


async def steady(api: Api, gateway: Gateway, pool: str, rate: int, each: int) -> dict[str, Any]:
    await make_pool(api, pool, rate)
    names = await pooled_campaigns(api, pool, f"a{each}")
    before = await gateway.count()
    reports = await asyncio.gather(*(
        run_to_end(api, gateway, name, expected=each, rate=rate / CAMPAIGNS) for name in names))
    arrivals = await gateway.arrivals(since=before)
    profile = rate_profile(arrivals.mono, rate)
    return {"pool_per_s": rate, "messages": len(arrivals), **profile,
            "all_finished": all(r["finished"] for r in reports),
            "duplicates": arrivals.duplicates()}


async def sending_pool(api: Api, gateway: Gateway, pool: str, rate: int, each: int,
                       phase: float) -> tuple[int, list[str]]:
    """A pool of `rate` with its campaigns triggered and sending for `phase` seconds: the
    gateway's count before them, and their run ids."""
    await make_pool(api, pool, rate)
    names = await pooled_campaigns(api, pool, f"a{each}")
    before = await gateway.count()
    accepted = await asyncio.gather(*(
        api.trigger(name, {"context": {"promo": "X1"}}) for name in names))
    await gateway.wait_count(before + 1, within=20.0, what=pool)
    await asyncio.sleep(phase)
    return before, [answer["run_id"] for answer in accepted]


async def cancel_all(api: Api, run_ids: list[str]) -> None:
    for run_id in run_ids:
        await api.cancel(run_id)
    for run_id in run_ids:
        await api.wait_run(run_id, within=60.0)


async def rate_change(api: Api, gateway: Gateway, each: int, phase: float) -> dict[str, Any]:
    high, low = 1000, 300
    before, run_ids = await sending_pool(api, gateway, "change", high, each, phase)
    lowered = time.monotonic()
    await make_pool(api, "change", low)
    await asyncio.sleep(phase)
    raised = time.monotonic()
    await make_pool(api, "change", high)
    await asyncio.sleep(phase)
    await cancel_all(api, run_ids)
    times = sorted((await gateway.arrivals(since=before)).mono)
    settle = settle_below(times, lowered, low + 1)
    return {
        "from_per_s": high, "to_per_s": low,
        "settle_down_s": settle,
        "settle_up_s": settle_above(times, raised, 0.97 * high),
        "max_1s_before_change": max_in_window([t for t in times if t < lowered], 1.0),
        "max_1s_while_low": max_in_window(
            [t for t in times if lowered + (settle or 1.0) <= t < raised], 1.0),
        "max_1s_after_raise": max_in_window([t for t in times if t >= raised], 1.0),
    }


async def kill_holder(harness: Harness, daemons: list[DaemonProcess], each: int,
                      phase: float) -> dict[str, Any]:
    rate = 1000
    gateway = harness.gateway
    async with daemons[0].api() as api:
        before, run_ids = await sending_pool(api, gateway, "kill", rate, each, phase)
        held = holders(await api.request("GET", "/v1/rate-pools/kill"))
    by_pid = {pid_of(holder): found for holder, found in held.items()}
    victim = max(daemons, key=lambda d: len(by_pid.get(d.pid, [])))
    survivor = next(d for d in daemons if d is not victim)
    # Only the first daemon wrote an admin token (on the empty database); it is valid on both.
    async with Api(survivor.url, daemons[0].token) as api:
        killed = time.monotonic()
        await victim.kill()
        freed = await asyncio.wait_for(share_freed(api, "kill", victim.pid, killed),
                                       LEASE_TTL * 3)
        await asyncio.sleep(max(0.0, LEASE_TTL + phase - (time.monotonic() - killed)))
        await cancel_all(api, run_ids)
    times = sorted((await gateway.arrivals(since=before)).mono)
    return {
        "pool_per_s": rate, "lease_ttl_s": LEASE_TTL,
        "campaigns_per_daemon_before_kill": sorted(len(c) for c in by_pid.values()),
        "killed_campaigns": len(by_pid.get(victim.pid, [])),
        "settle_s": settle_above(times, killed + 0.5, 0.97 * rate),
        "share_freed_s": freed,
        "rate_back_s": rate_back(times, killed, 0.97 * rate),
        "max_1s_window": max_in_window(times, 1.0),
        "max_1s_before_kill": max_in_window([t for t in times if t < killed], 1.0),
    }


async def lease_holders(harness: Harness) -> dict[str, list[str]]:
    """Who holds which campaign now (engine_leases), read from the database."""
    assert harness.database is not None
    connection = await asyncpg.connect(harness.database.url, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT holder, array_agg(campaign_id ORDER BY campaign_id) AS held "
            "FROM engine_leases WHERE expires_at > now() GROUP BY holder")
    finally:
        await connection.close()
    return {row["holder"]: list(row["held"]) for row in rows}


async def two_daemons(harness: Harness, api: Api, daemons: list[DaemonProcess], each: int
                      ) -> dict[str, Any]:
    rate, count = 2000, 4
    gateway = harness.gateway
    names = [f"x{n}" for n in range(count)]
    for name in names:
        await api.create_campaign(name, audience=f"a{each}", rate=rate)
    before = await gateway.count()
    windows = [harness.cpu_window(daemon) for daemon in daemons]
    for window in windows:
        window.start()
    running = asyncio.gather(*(
        run_to_end(api, gateway, name, expected=each, rate=rate) for name in names))
    await asyncio.sleep(2.0)
    held = await lease_holders(harness)
    reports = await running
    for window in windows:
        window.stop()
    arrivals = await gateway.arrivals(since=before)
    total = achieved_rate(arrivals.mono)
    return {
        "campaigns": count, "per_campaign_per_s": rate,
        "total_per_s": round(total or 0.0, 1), "total_ratio": ratio(total, rate * count, 4),
        "min_campaign_ratio": min(
            rate_profile(arrivals.times_for(campaign=name), rate)["ratio"] or 0.0
            for name in names),
        "campaigns_per_daemon": sorted(
            len(set(found) & set(names)) for found in held.values()),
        "daemon_cpu_share": [w.as_dict()["daemon_cpu_share"] for w in windows],
        "database_cpu_s": windows[0].as_dict()["database_cpu_s"],
        "machine_busy_cores": windows[0].as_dict()["machine_busy_cores"],
        "all_finished": all(r["finished"] for r in reports),
    }


async def bench(options: Options) -> dict[str, Any]:
    smoke = options.smoke
    sizes = {"steady_1000": 200 if smoke else 8_000, "steady_100": 30 if smoke else 500,
             "long": 2_000 if smoke else 20_000, "x": 500 if smoke else 12_000}
    phase = 1.5 if smoke else 5.0
    async with Harness("pools", smoke=smoke, database_url=options.database_url) as harness:
        daemons = [await harness.start_daemon(CONFIG), await harness.start_daemon(CONFIG)]
        gateway = harness.gateway
        async with daemons[0].api() as api:
            await api.require("/v1/campaigns")
            for size in sorted(set(sizes.values())):
                await api.import_profiles(size, f"a{size}")
            await harness.settle()
            result: dict[str, Any] = {**harness.describe(), "daemons": 2}
            result["steady_1000"] = await steady(api, gateway, "p1000", 1000,
                                                 sizes["steady_1000"])
            result["steady_100"] = await steady(api, gateway, "p100", 100, sizes["steady_100"])
            result["rate_change"] = await rate_change(api, gateway, sizes["long"], phase)
            result["two_daemons_4x2000"] = await two_daemons(harness, api, daemons, sizes["x"])
        result["kill_holder"] = await kill_holder(harness, daemons, sizes["long"], phase)
    s1, s100 = result["steady_1000"], result["steady_100"]
    change, kill, x = result["rate_change"], result["kill_holder"], result["two_daemons_4x2000"]
    result["summary"] = [
        f"pool 1000/s: busiest 1 s {s1['max_1s_window']}, ratio {s1['ratio']}",
        f"pool 100/s: busiest 1 s {s100['max_1s_window']}, ratio {s100['ratio']}",
        f"1000 -> 300/s settled in {change['settle_down_s']} s, back to 1000/s in "
        f"{change['settle_up_s']} s",
        f"kill -9 of a holder: its share free after {kill['share_freed_s']} s, a second at "
        f">= 0.97 x 1000/s from {kill['rate_back_s']} s after the kill (trailing window "
        f"back {kill['settle_s']} s after kill + 0.5 s; lease_ttl {LEASE_TTL:g} s), "
        f"busiest 1 s {kill['max_1s_window']}",
        f"4 x 2000/s on 2 daemons: {x['total_per_s']} msgs/s (ratio {x['total_ratio']})",
    ]
    return result


if __name__ == "__main__":
    main("pools", bench, __doc__.splitlines()[0])

"""What the notification triggers cost a run's state change (docs/notifications.md).

`python -m bench.notifications [--database-url URL] [--runs N]` makes a scratch database,
starts N runs (scheduled -> running, 100 a statement) and writes 2000 count updates, three
times: with the outbox trigger disabled, with notifications off (the settings row says so),
and with them on; prints JSON (µs per run started, µs per count update, events written).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from daemon.infra import migrate
from daemon.infra.database import create_pool

MODES = ("trigger_disabled", "settings_off", "settings_on")


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def measure(pool: Any, mode: str, runs: int) -> dict[str, float]:
    await pool.execute("DELETE FROM runs")
    await pool.execute("DELETE FROM notifications")
    await pool.execute("INSERT INTO runs (id, campaign_id, scheduled_for) "
                       "SELECT 'r' || n, 'c1', now() FROM generate_series(1, $1) n", runs)
    await pool.execute("VACUUM ANALYZE runs")
    toggle = "DISABLE" if mode == "trigger_disabled" else "ENABLE"
    await pool.execute(f"ALTER TABLE runs {toggle} TRIGGER runs_notify")
    await pool.execute(
        "INSERT INTO notification_settings (enabled, events, updated_at) VALUES ($1, $2, now()) "
        "ON CONFLICT (singleton) DO UPDATE SET enabled = excluded.enabled, "
        "events = excluded.events", mode == "settings_on", ["run.started"])
    began = time.perf_counter()
    for first in range(1, runs + 1, 100):
        await pool.execute("UPDATE runs SET status = 'running', started_at = now() "
                           "WHERE id = ANY($1::text[])",
                           [f"r{n}" for n in range(first, min(first + 100, runs + 1))])
    started = time.perf_counter() - began
    began = time.perf_counter()
    for n in range(2000):
        await pool.execute("UPDATE runs SET sent = sent + 1, targeted = targeted + 1 "
                           "WHERE id = $1", f"r{n % runs + 1}")
    counted = time.perf_counter() - began
    return {"start_us_per_run": round(started / runs * 1e6, 1),
            "count_update_us": round(counted / 2000 * 1e6, 1),
            "events": await pool.fetchval("SELECT count(*) FROM notifications")}


async def main(url: str, runs: int) -> None:
    name = "campaignd_bench_notify_" + uuid.uuid4().hex[:8]
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pool = await create_pool(with_database(url, name), max_size=2)
        try:
            await migrate.apply(pool)
            await pool.execute("INSERT INTO campaigns (id, name, channel, content, status) "
                               "VALUES ('c1', 'c1', 'sms', '{}', 'live')")
            results = {mode: await measure(pool, mode, runs) for mode in MODES}
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    print(json.dumps({"bench": "notifications", "runs": runs, **results}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--runs", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.database_url, args.runs))

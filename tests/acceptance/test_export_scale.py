"""A run of a million recipients, exported from the real daemon and rerun (SPEC §9.4).

The export streams in flat memory: every recipient, in position order, while the daemon's
peak RSS grows by far less than a million rows in Python objects would need. The rerun of
half of them is one statement. Prints the figures (recorded in docs/rerun-export.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from daemon.store import Pool
from tests.acceptance.conftest import DaemonFactory

SIZE = 1_000_000
# A million recipient rows as asyncpg records and dicts take well over a gigabyte; streamed,
# the daemon holds one batch of 1,000. The bound leaves room for allocator noise.
MAX_RSS_GROWTH_BYTES = 100 * 1024 * 1024
CAMPAIGN = {"id": "big", "name": "Big", "channel": "email",
            "content": {"from": "shop@example.com", "subject": "Hi", "text": "Hello"}}


def _peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def _finished_run(pool: Pool) -> None:
    """`run_big`, completed: every other recipient sent, the rest excluded by the time cap."""
    await pool.execute(
        """INSERT INTO runs (id, campaign_id, status, inline_count, scheduled_for, started_at,
                             finished_at, end_reason, targeted, sent, excluded_time_cap)
           VALUES ('run_big', 'big', 'completed', 0, now(), now(), now(), 'time_cap',
                   $1::bigint, $1::bigint / 2, $1::bigint / 2)""", SIZE)
    await pool.execute(
        """INSERT INTO run_recipients (run_id, position, profile_id, email, status, reason,
                                       attempts, updated_at)
           SELECT 'run_big', n, 'user' || n, 'user' || n || '@example.com',
                  CASE WHEN n % 2 = 0 THEN 'sent' ELSE 'excluded' END,
                  CASE WHEN n % 2 = 1 THEN 'time_cap' END, 1 - n % 2, now()
           FROM generate_series(0, $1 - 1) AS n""", SIZE)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_million_recipient_export_streams_in_flat_memory_and_reruns_in_sql(
    daemon_factory: DaemonFactory, pool: Pool,
) -> None:
    daemon = daemon_factory()
    await daemon.start()
    assert daemon.process is not None
    pid = daemon.process.pid
    mib = 1024 * 1024
    async with daemon.client() as http:
        async with http.post("/v1/campaigns", json=CAMPAIGN) as response:
            assert response.status == 201, await response.text()
        async with http.post("/v1/campaigns/big/activate") as response:
            assert response.status == 200, await response.text()
        await _finished_run(pool)
        baseline = _peak_rss(pid)

        started = time.monotonic()
        count, expected = 0, 0
        async with http.get("/v1/runs/run_big/recipients",
                            headers={"Accept": "application/x-ndjson"}) as response:
            assert response.status == 200
            async for line in response.content:
                assert json.loads(line)["position"] == expected
                expected += 1
                count += 1
        ndjson_seconds = time.monotonic() - started
        started = time.monotonic()
        records = 0
        async with http.get("/v1/runs/run_big/recipients?reason=time_cap",
                            headers={"Accept": "text/csv"}) as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(1 << 16):
                records += chunk.count(b"\n")
        csv_seconds = time.monotonic() - started
        peak = _peak_rss(pid)

        # Paused: the rerun waits instead of being started while the test measures.
        async with http.post("/v1/campaigns/big/pause") as response:
            assert response.status == 200, await response.text()
        started = time.monotonic()
        async with http.post("/v1/runs/run_big/rerun", json={"only": ["time_cap"]}) as response:
            rerun = await response.json()
            assert response.status == 202, rerun
        rerun_seconds = time.monotonic() - started
    print(f"\nexport of {SIZE:,} recipients: NDJSON {ndjson_seconds:.1f} s "
          f"({SIZE / ndjson_seconds:,.0f}/s, read and parsed by the test), CSV of the "
          f"{SIZE // 2:,} time_cap {csv_seconds:.1f} s; daemon peak RSS {peak / mib:.0f} MiB "
          f"(before: {baseline / mib:.0f} MiB); rerun of {SIZE // 2:,}: {rerun_seconds:.2f} s")
    assert count == SIZE
    assert records == SIZE // 2 + 1  # the header line
    assert peak - baseline < MAX_RSS_GROWTH_BYTES
    assert rerun["recipients"] == SIZE // 2
    assert await pool.fetchval("SELECT count(*) FROM run_inline_recipients WHERE run_id = $1",
                               rerun["run_id"]) == SIZE // 2
    assert await daemon.terminate() == 0

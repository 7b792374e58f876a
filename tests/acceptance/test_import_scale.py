"""A million-line import into the real daemon: streamed (flat memory), every line kept.

Prints the daemon's peak RSS and the import time (recorded in docs/api.md); asserts
only what the design promises: the body is never held whole, so the daemon's peak
RSS grows by far less than the body's size in Python objects would need.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import DaemonFactory

LINES = 1_000_000
BATCH = 10_000
# Held whole, a million parsed profiles take well over a gigabyte of Python objects; streamed,
# the daemon needs one chunk and one COPY buffer. The bound leaves room for allocator noise.
MAX_RSS_GROWTH_BYTES = 150 * 1024 * 1024


def _peak_rss(pid: int) -> int:
    """VmHWM (peak resident set) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def _csv_body() -> AsyncIterator[bytes]:
    yield b"id,email,phone,plan,city\n"
    for start in range(0, LINES, BATCH):
        yield "".join(
            f"user{i},user{i}@example.com,+3361{i:08d},pro,Lyon\n"
            for i in range(start, start + BATCH)
        ).encode()


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_million_line_import_streams_in_flat_memory(
    daemon_factory: DaemonFactory,
) -> None:
    daemon = daemon_factory()
    await daemon.start()
    assert daemon.process is not None
    pid = daemon.process.pid
    async with daemon.client() as http:
        async with http.put("/v1/audiences/everyone", json={"name": "Everyone"}) as response:
            assert response.status == 201
        baseline = _peak_rss(pid)
        started = time.monotonic()
        async with http.post("/v1/profiles/import?audience=everyone", data=_csv_body(),
                             headers={"Content-Type": "text/csv"}) as response:
            result = await response.json()
            assert response.status == 200, result
        elapsed = time.monotonic() - started
        peak = _peak_rss(pid)
        async with http.get("/v1/audiences/everyone") as response:
            size = (await response.json())["size"]
    mib = 1024 * 1024
    print(f"\nimport of {LINES} lines: {elapsed:.1f} s ({LINES / elapsed:,.0f} lines/s); "
          f"daemon peak RSS {peak / mib:.0f} MiB (before: {baseline / mib:.0f} MiB)")
    assert result["imported"] == LINES
    assert result["created"] == LINES
    assert result["rejected"] == 0
    assert result["added_to_audience"] == LINES
    assert size == LINES
    assert peak - baseline < MAX_RSS_GROWTH_BYTES
    assert await daemon.terminate() == 0

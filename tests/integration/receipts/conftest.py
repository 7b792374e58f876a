"""A run with pending recipients on a fresh database, and a started receipt writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from daemon.infra.clock import FakeClock
from daemon.infra.metrics import Metrics
from daemon.receipts.writer import ReceiptWriter
from daemon.store import Pool
from tests.integration.receipts.rows import START


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def writer(pool: Pool, clock: FakeClock) -> AsyncIterator[ReceiptWriter]:
    # A long cadence: the tests call reconcile() themselves.
    writer = ReceiptWriter(pool, clock, Metrics(), reconcile_interval=3600)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.stop(5.0, asyncio.Event())

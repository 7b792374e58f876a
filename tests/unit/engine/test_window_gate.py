"""The send-window gate on a fake clock: open until the close, then a wait for the next
opening, with the two log events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog
from structlog.testing import capture_logs

from daemon.engine.window_gate import WindowGate
from daemon.infra.clock import FakeClock
from daemon.planning.windows import Window

MORNINGS = Window.parse("Europe/Paris", ["mon", "tue", "wed", "thu", "fri"], "08:00", "12:00")
MONDAY_0959_PARIS = datetime(2026, 3, 2, 8, 59, tzinfo=UTC)


def gate(clock: FakeClock) -> WindowGate:
    return WindowGate([MORNINGS], clock, structlog.get_logger().bind(run_id="r"))


async def test_open_until_the_close_then_closed() -> None:
    clock = FakeClock(MONDAY_0959_PARIS)
    g = gate(clock)
    assert g.open_now()
    clock.advance(2 * 3600 + 60 - 0.001)  # 11:59:59.999 in Paris
    assert g.open_now()
    clock.advance(0.001)  # noon: closed
    assert not g.open_now()


async def test_the_wait_ends_at_the_next_opening_and_logs_both_ends() -> None:
    clock = FakeClock(datetime(2026, 3, 2, 11, 30, tzinfo=UTC))  # Monday 12:30 in Paris
    g = gate(clock)
    with capture_logs() as logs:
        await asyncio.wait_for(g.wait_open(), 1.0)
    assert clock.now() == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)  # Tuesday 08:00 in Paris
    assert [entry["event"] for entry in logs] == ["run.window_closed", "run.window_opened"]
    assert logs[0]["next_opening"] == "2026-03-03T07:00:00+00:00"
    assert logs[1]["closes_at"] == "2026-03-03T11:00:00+00:00"
    assert g.open_now()


async def test_open_at_once_logs_nothing() -> None:
    g = gate(FakeClock(MONDAY_0959_PARIS))
    with capture_logs() as logs:
        await g.wait_open()
    assert logs == []

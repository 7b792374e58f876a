"""The outcome recorder: batches by size and by time (on the fake clock), retries a failed
write with the batch kept, writes everything before it stops."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from daemon.engine import recording as report
from daemon.engine.recording import Flushed, Recorder
from daemon.infra.clock import FakeClock
from daemon.store.recipients import OutcomeRow

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def settle() -> None:
    """Let the recorder's task and its waiters run (no real time passes)."""
    for _ in range(50):
        await asyncio.sleep(0)


def _outcome(position: int) -> OutcomeRow:
    return OutcomeRow("run", position, "sent", None, None, 1, None, None, NOW)


class FakeWrites:
    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.failures = failures
        self.error = error or asyncpg.exceptions.ConnectionDoesNotExistError("gone")

    async def __call__(self, _pool: Any, batch: list[OutcomeRow]) -> Flushed:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.batches.append([o.position for o in batch])
        return Flushed(batch, [("run", "sent", None) for _ in batch])


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> FakeWrites:
    fake = FakeWrites()
    monkeypatch.setattr(report, "write_batch", fake)
    return fake


async def test_outcomes_are_written_in_batches_and_the_last_ones_on_stop(
    writes: FakeWrites,
) -> None:
    flushed: list[Flushed] = []
    recorder = Recorder(None, FakeClock(NOW), interval=3600, batch_size=3,  # type: ignore[arg-type]
                        on_flushed=flushed.append, campaign_id="c")
    task = asyncio.create_task(recorder.run())
    for n in range(7):
        recorder.add(_outcome(n))
    await settle()
    assert writes.batches == [[0, 1, 2], [3, 4, 5], [6]]  # all of it, in batches
    recorder.add(_outcome(7))
    recorder.stop()
    await task
    assert writes.batches[-1] == [7]
    assert sum(len(f.outcomes) for f in flushed) == 8


async def test_a_partial_batch_waits_for_the_checkpoint_interval(writes: FakeWrites) -> None:
    clock = FakeClock(NOW)
    recorder = Recorder(None, clock, interval=1.0, batch_size=100,  # type: ignore[arg-type]
                        on_flushed=lambda _: None, campaign_id="c")
    task = asyncio.create_task(recorder.run())
    recorder.add(_outcome(1))
    await settle()
    # The fake clock's sleep returns at once (advancing time by the interval): written.
    assert writes.batches == [[1]]
    assert clock.monotonic() >= 1001.0
    recorder.stop()
    await task


async def test_what_comes_during_a_write_waits_for_a_full_batch_or_the_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a small statement at once after each write (at 2,000/s that was ~22 rows and a
    commit every ~11 ms): what came meanwhile is written with its own full batch, or at
    the interval."""
    clock = FakeClock(NOW)
    release = asyncio.Event()
    calls: list[tuple[list[int], float]] = []

    async def slow_write(_pool: Any, batch: list[OutcomeRow]) -> Flushed:
        calls.append(([o.position for o in batch], clock.monotonic()))
        if len(calls) == 1:
            await release.wait()
        return Flushed(batch, [("run", "sent", None) for _ in batch])

    monkeypatch.setattr(report, "write_batch", slow_write)
    recorder = Recorder(None, clock, interval=1.0, batch_size=3,  # type: ignore[arg-type]
                        on_flushed=lambda _: None, campaign_id="c")
    task = asyncio.create_task(recorder.run())
    for n in range(3):
        recorder.add(_outcome(n))
    await settle()
    for n in range(3, 5):  # arrive while the first batch is being written
        recorder.add(_outcome(n))
    written_at = clock.monotonic()
    release.set()
    await settle()
    assert [batch for batch, _ in calls] == [[0, 1, 2], [3, 4]]
    assert calls[1][1] >= written_at + 1.0  # after the interval, not at once
    for n in range(5, 11):  # two full batches: written at once, back to back
        recorder.add(_outcome(n))
    before = clock.monotonic()
    await settle()
    assert [batch for batch, _ in calls[2:]] == [[5, 6, 7], [8, 9, 10]]
    assert all(at == before for _, at in calls[2:])
    recorder.stop()
    await task


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.ConnectionDoesNotExistError("gone"),
    # What a connection left mid-operation by a PostgreSQL restart raised in the soak (it
    # killed the engine: the error is asyncpg's, but not an InterfaceError).
    asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"),
])
async def test_a_failed_write_is_retried_and_nothing_is_dropped(
    monkeypatch: pytest.MonkeyPatch, error: Exception,
) -> None:
    fake = FakeWrites(failures=3, error=error)
    monkeypatch.setattr(report, "write_batch", fake)
    recorder = Recorder(None, FakeClock(NOW), interval=0.5, batch_size=2,  # type: ignore[arg-type]
                        on_flushed=lambda _: None, campaign_id="c")
    task = asyncio.create_task(recorder.run())
    for n in range(5):
        recorder.add(_outcome(n))
    await recorder.flush_now()
    assert fake.batches == [[0, 1], [2, 3], [4]]
    recorder.stop()
    await task


async def test_flush_now_returns_once_everything_is_written(writes: FakeWrites) -> None:
    recorder = Recorder(None, FakeClock(NOW), interval=3600, batch_size=50,  # type: ignore[arg-type]
                        on_flushed=lambda _: None, campaign_id="c")
    task = asyncio.create_task(recorder.run())
    recorder.add(_outcome(1))
    recorder.add(_outcome(2))
    await recorder.flush_now()
    assert writes.batches == [[1, 2]]
    recorder.stop()
    await task


async def test_calls_wait_while_too_many_outcomes_are_unwritten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeWrites(failures=2)  # the database is away for a moment
    monkeypatch.setattr(report, "write_batch", fake)
    recorder = Recorder(None, FakeClock(NOW), interval=3600, batch_size=2,  # type: ignore[arg-type]
                        on_flushed=lambda _: None, campaign_id="c")
    recorder.add(_outcome(1))
    recorder.add(_outcome(2))
    waiter = asyncio.create_task(recorder.room(2))
    await asyncio.sleep(0)
    assert not waiter.done()  # two unwritten: no room for another call
    task = asyncio.create_task(recorder.run())
    await asyncio.wait_for(waiter, 5)  # room again once they are written
    assert fake.batches == [[1, 2]]
    recorder.stop()
    await task

"""How due runs are grouped into start statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from daemon.engine.starting import BATCH_RECIPIENTS, BATCH_RUNS, _batches
from daemon.models import RunStatus
from daemon.store.engine import RunRow

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
AHEAD = AT - timedelta(seconds=5)  # a worker preparing runs before their start


def _run(n: int, *, at: datetime = AT, rate: int | None = None, inline: int = 1,
         audience: str | None = None) -> RunRow:
    return RunRow(id=f"r{n}", status=RunStatus.SCHEDULED, scheduled_for=at, started_at=None,
                  deadline=None, deadline_reason=None, rate_per_second=rate, context={},
                  cancel_requested=False, audience_id=audience,
                  inline_count=0 if audience else inline, campaign_id="c1")


def _ids(batches: list[list[RunRow]]) -> list[list[str]]:
    return [[run.id for run in batch] for batch in batches]


def test_runs_with_one_plan_share_a_statement_and_a_stored_audience_starts_alone() -> None:
    later = AT + timedelta(seconds=1)
    rows = [_run(0), _run(1, audience="a1"), _run(2), _run(3, at=later), _run(4, rate=5),
            _run(5, at=later)]
    assert _ids(_batches(rows, AHEAD)) == [["r0", "r2"], ["r1"], ["r3", "r5"], ["r4"]]


def test_a_batch_is_bounded_by_runs_and_by_recipients() -> None:
    many = [_run(n) for n in range(BATCH_RUNS + 1)]
    assert [len(batch) for batch in _batches(many, AHEAD)] == [BATCH_RUNS, 1]
    big = [_run(0, inline=BATCH_RECIPIENTS - 1), _run(1, inline=2), _run(2, inline=1)]
    assert _ids(_batches(big, AHEAD)) == [["r0"], ["r1", "r2"]]


def test_overdue_runs_scheduled_at_different_moments_share_a_statement() -> None:
    # A burst of triggers: each run scheduled at its own microsecond, all due already.
    # They all start at the moment of the start, so with one plan (was: a statement each).
    rows = [_run(n, at=AT + timedelta(microseconds=137 * n)) for n in range(50)]
    rows += [_run(50, at=AT + timedelta(seconds=3)), _run(51, at=AT - timedelta(hours=1)),
             _run(52, at=AT, rate=5)]
    now = AT + timedelta(seconds=1)
    assert _ids(_batches(rows, now)) == [[f"r{n}" for n in range(50)] + ["r51"], ["r50"],
                                         ["r52"]]

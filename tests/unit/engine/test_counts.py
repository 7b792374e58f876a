"""The counts invariant: whatever order outcomes come in (repeated, late, retried), the count
deltas of the applied transitions keep targeted = sent + failed + pending + Σ excluded."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.engine.recording import count_deltas
from daemon.store.recipients import EXCLUSION_ORDER

OUTCOMES = st.sampled_from(
    [("sent", None), ("failed", "rejected"), ("failed", "render_error"), ("pending", None)]
    + [("excluded", reason) for reason in EXCLUSION_ORDER]
)


@given(
    targeted=st.integers(min_value=0, max_value=40),
    events=st.lists(st.tuples(st.integers(min_value=0, max_value=39), OUTCOMES), max_size=200),
    batch=st.integers(min_value=1, max_value=30),
)
@settings(max_examples=300, deadline=None)
def test_any_interleaving_of_outcomes_keeps_the_counts_balanced(
    targeted: int, events: list[tuple[int, tuple[str, str | None]]], batch: int
) -> None:
    statuses = ["pending"] * targeted  # what the rows say (the write only changes pending rows)
    counts = {"sent": 0, "failed": 0, "pending": targeted,
              **{f"excluded_{r}": 0 for r in EXCLUSION_ORDER}}
    for start in range(0, len(events), batch):
        applied = []
        for position, (status, reason) in events[start:start + batch]:
            if position < targeted and statuses[position] == "pending":
                statuses[position] = status
                applied.append(("run", status, reason))
        for delta in count_deltas(applied).values():
            counts["sent"] += delta.sent
            counts["failed"] += delta.failed
            counts["pending"] -= delta.done
            for reason, n in zip(EXCLUSION_ORDER, delta.excluded, strict=True):
                counts[f"excluded_{reason}"] += n
        assert targeted == sum(counts.values())  # sent + failed + pending + Σ excluded
        assert counts["pending"] == statuses.count("pending")
        assert counts["sent"] == statuses.count("sent")


def test_deltas_are_per_run_and_a_retry_changes_nothing() -> None:
    deltas = count_deltas([("a", "sent", None), ("a", "pending", None),
                           ("b", "excluded", "time_cap"), ("b", "failed", "rejected")])
    assert deltas["a"].as_row() == (1, 0, 1, 0, 0, 0, 0, 0, 0)
    assert deltas["b"].as_row() == (0, 1, 2, 1, 0, 0, 0, 0, 0)

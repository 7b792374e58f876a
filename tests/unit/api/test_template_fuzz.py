"""Fuzzing templates: a create answers 201 or 422 only, and a render stays in its budget."""

from __future__ import annotations

import tracemalloc

from hypothesis import HealthCheck, given, settings

from daemon.api.campaign_rules import compile_content
from daemon.errors import Problem
from daemon.models import Channel
from daemon.templates import MAX_RENDERED_CHARS, CompiledContent, RenderError, limits
from tests.hostile_templates import TEMPLATES

VARIABLES = {
    "profile": {"id": "p1", "attributes": {}}, "context": {"a": "x"},
    "campaign": {"id": "c1"}, "run": {"id": "run_1"}, "unsubscribe_url": None,
}
# Far above what the budget lets a render build (2,000,000 characters, a few times over
# for the lists and the escaping), far below what an unbounded one reaches.
PEAK_BYTES = 96 << 20


def compiled(source: str) -> CompiledContent | None:
    """What a create does with `source`: the content, or None for a 422 (anything else
    raised would be a 500)."""
    try:
        return compile_content(Channel.SMS, {"body": source})
    except Problem as problem:
        assert problem.status == 422
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEMPLATES)
def test_a_create_answers_201_or_422_and_a_render_stays_in_its_budget(source: str) -> None:
    content = compiled(source)
    if content is None:
        return
    budget = limits.Budget()
    tracemalloc.start()
    try:
        try:
            rendered = content.render(VARIABLES, budget)
        except RenderError:
            rendered = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, (source, peak)
    # What was spent is what was done: a spend that does not fit raises before its work.
    assert 0 <= budget.steps <= limits.MAX_STEPS and 0 <= budget.chars <= limits.MAX_CHARS
    if rendered is not None:
        assert len(rendered["body"]) <= MAX_RENDERED_CHARS

"""A recipient's message: what its templates see, its idempotency key, its address."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from daemon.engine.delivery import DeliverySettings, RunExecution, build_message, variables
from daemon.models import Channel, RunStatus
from daemon.store.engine import RunRow
from daemon.store.recipients import Claimed
from daemon.templates import CompiledContent

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
SETTINGS = DeliverySettings(max_attempts=5, backoff_base=1.0, backoff_max=60.0,
                            base_url="http://localhost")


def _run(scheduled_for: datetime = T0) -> RunExecution:
    row = RunRow(id="r1", status=RunStatus.RUNNING, scheduled_for=scheduled_for,
                 started_at=None, deadline=None, deadline_reason=None, rate_per_second=None,
                 context={"promo": "X1"}, cancel_requested=False, audience_id=None,
                 inline_count=0, campaign_id="c1")
    return RunExecution(row=row, campaign_variables={"id": "c1", "name": "C", "channel": "sms"})


def _recipient(position: int, context: dict[str, str] | None = None) -> Claimed:
    return Claimed(run_id="r1", position=position, profile_id=f"p{position}", email=None,
                   phone="+33600000000", push_tokens=(), attributes={"first_name": "Ann"},
                   context=context, attempts=0, subscribed=True)


def test_templates_see_the_run_and_the_recipients_context_over_the_runs() -> None:
    run = _run()
    seen = variables(run, _recipient(3, {"promo": "Y2"}), None)
    assert seen["run"] == {"id": "r1", "scheduled_for": "2026-03-01T09:30:00+00:00"}
    assert seen["context"] == {"promo": "Y2"}
    assert variables(run, _recipient(4), None)["context"] == {"promo": "X1"}
    # A run whose row is replaced shows the new row's time.
    run.row = dataclasses.replace(run.row, scheduled_for=datetime(2026, 3, 2, tzinfo=UTC))
    assert variables(run, _recipient(5), None)["run"]["scheduled_for"] == \
        "2026-03-02T00:00:00+00:00"


def test_what_a_template_changes_stays_in_its_own_message() -> None:
    run = _run()
    content = CompiledContent.compile(Channel.SMS, {
        "body": "{{ context.update({'promo': 'hacked'}) or '' }}"
                "{{ run.update({'id': 'x'}) or '' }}{{ campaign.update({'id': 'y'}) or '' }}"
                "{{ context.promo }} {{ run.id }} {{ campaign.id }}"})
    first = build_message(run, _recipient(1), content, Channel.SMS, SETTINGS, None)
    second = build_message(run, _recipient(2), content, Channel.SMS, SETTINGS, None)
    assert first.content == {"body": "hacked x y"}
    assert first.campaign_id == second.campaign_id == "c1"
    assert run.campaign_variables["id"] == "c1"
    assert variables(run, _recipient(3), None)["context"] == {"promo": "X1"}
    assert variables(run, _recipient(3), None)["run"]["id"] == "r1"
    assert second.idempotency_key == "r1:2" and second.to.phone == "+33600000000"

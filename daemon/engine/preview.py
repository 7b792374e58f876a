"""The trigger preview (`POST /v1/campaigns/{id}/triggers?dry_run=true`): what a run would do.

Computed with the run start's own planner and SQL (the freeze statement's SELECT,
without the INSERT), as if the run started at its `scheduled_for`: nothing is written.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from daemon.errors import CampaigndError
from daemon.models import ExclusionReason
from daemon.planning import planner, windows
from daemon.store import engine as engine_store
from daemon.store import snapshot

if TYPE_CHECKING:
    from daemon.api.context import AppContext


class CampaignNotFound(CampaigndError):
    """No campaign has this id."""


async def preview_trigger(
    ctx: AppContext,
    campaign_id: str,
    *,
    audience_id: str | None,
    recipients: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """The run a trigger would create now: counts by reason, deadline, expected duration.

    `recipients`: inline recipients (`{"profile_id", ...fields}`), or `audience_id`: the
    stored audience (an unknown audience targets no one). Times are aware datetimes (UTC);
    `expected_duration_seconds` and `expected_end` are None for an unthrottled run
    (its pace is the provider's).
    """
    campaign = await engine_store.load_campaign(ctx.pool, campaign_id)
    if campaign is None:
        raise CampaignNotFound(f"no campaign {campaign_id!r}")
    now = ctx.clock.now()
    scheduled_for = max(now, campaign.start_at) if campaign.start_at else now
    open_windows = windows.from_stored(campaign.windows)
    if open_windows:
        scheduled_for = windows.next_opening(open_windows, scheduled_for) or scheduled_for
    rate = campaign.rate_per_second
    plan = planner.plan_run(scheduled_for=scheduled_for, now=scheduled_for, rate=rate,
                            time_cap=ctx.config.limits.time_cap, end_at=campaign.end_at,
                            windows=open_windows)
    counts = await snapshot.preview(
        ctx.pool, campaign.channel,
        audience_id=audience_id if recipients is None else None,
        recipients=recipients if recipients is not None else None,
        capacity=plan.capacity, cap_reason=plan.deadline_reason,
    ) if (audience_id is not None or recipients is not None) else _nobody()
    duration = planner.eta_seconds(counts.pending, rate) if rate else None
    if duration is not None and plan.deadline is not None:
        duration = min(duration, (plan.deadline - plan.started_at).total_seconds())
    expected_end: datetime | None = None
    if duration is not None:
        expected_end = plan.started_at + timedelta(seconds=duration)
    return {
        "targeted": counts.targeted,
        "eligible": counts.eligible,
        "excluded": counts.excluded,
        "rate_per_second": rate,
        "scheduled_for": scheduled_for,
        "deadline": plan.deadline,
        "deadline_reason": plan.deadline_reason.value if plan.deadline_reason else None,
        "expected_duration_seconds": round(duration, 3) if duration is not None else None,
        "expected_end": expected_end,
        "capacity": plan.capacity,
        "open_intervals": _intervals(open_windows, plan) if open_windows else None,
    }


def _intervals(open_windows: tuple[windows.Window, ...], plan: planner.Plan
               ) -> list[dict[str, datetime]]:
    """The open time the plan counts (until the deadline; a week ahead without one)."""
    until = plan.deadline or plan.started_at + timedelta(days=7)
    found = windows.open_intervals(open_windows, plan.started_at, until)
    return [{"from": a, "to": b} for a, b in found[:MAX_INTERVALS]]


# Intervals listed by a preview, at most (a 12-hour plan has one or two).
MAX_INTERVALS = 100


def _nobody() -> snapshot.SnapshotCounts:
    return snapshot.SnapshotCounts(0, 0, {reason.value: 0 for reason in ExclusionReason})

"""Live control (SPEC §9.1): `POST /v1/campaigns/{id}/pause`, `/resume`, and the PATCH of a
live or paused campaign (`throttle.rate_per_second` and `name` only).

Each is one transaction holding the campaign's row: concurrent requests apply one after
the other, and the last one's state is the campaign's. The lease holder applies it within
a read of the NOTIFY (`engine/steering.py`). `?dry_run=true` on resume and on the PATCH
answers, per running run, what the re-plan would do (the capacity, the recipients put
back and excluded, the counts before and after), computed by the same statement as the
real re-plan, in a transaction that is rolled back.

Refusals: unknown campaign 404; a draft, stopped or completed one 409 `campaign_not_live`;
any other field on a live or paused PATCH 409 `campaign_not_editable` (each named in
`errors[].loc`); a rate outside 1..`limits.max_rate_per_second` 422 naming
`throttle.rate_per_second`; a rate for an unthrottled campaign 409 `campaign_not_editable`
(its runs have no 12-hour plan to keep).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import Field, RootModel

from daemon.api import campaign_rules
from daemon.api.auth import requires
from daemon.api.context import AppContext, context
from daemon.api.fields import QueryModel, ResponseModel
from daemon.api.operations import Operation, Reply, json_answer, register
from daemon.api.problems import problem
from daemon.api.schemas import Campaign, CampaignPatch, Counts
from daemon.api.validation import parse, parse_query
from daemon.api.views import campaign_view, counts_view
from daemon.errors import FieldError
from daemon.infra.logs import get_logger
from daemon.models import CampaignStatus, TokenScope
from daemon.planning import planner, windows
from daemon.store import Connection, campaigns
from daemon.store import control as control_store
from daemon.store.campaigns import CampaignRecord

log = get_logger(__name__)

_NOT_FOUND = "no campaign with this id"
LIVE_FIELDS = {"name", "throttle"}
LIVE_THROTTLE_FIELDS = {"rate_per_second"}
_CONTROLLED = (CampaignStatus.LIVE, CampaignStatus.PAUSED)


class ControlQuery(QueryModel):
    dry_run: bool = Field(default=False, description="Answer what the re-plan would do; "
                                                     "change nothing.")


class RunReplan(ResponseModel):
    run_id: str
    capacity: int = Field(description="floor(rate × seconds left before the deadline).")
    reinstated: int = Field(description="Excluded by an earlier plan, pending again.")
    excluded: int = Field(description="Pending, excluded now (the deadline's reason).")
    before: Counts
    after: Counts


class ControlPreview(ResponseModel):
    campaign: Campaign
    replans: list[RunReplan]


class ControlAnswer(RootModel[Campaign | ControlPreview]):
    """The campaign; with `dry_run=true`, the preview of the change."""


class Rollback(Exception):
    """Leaves a dry run's transaction without a trace."""


def _campaign_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not campaign_rules.valid_id(value):
        raise problem(404, detail=_NOT_FOUND)
    return value


async def _locked(conn: Connection, campaign_id: str) -> CampaignRecord:
    record = await campaigns.get(conn, campaign_id, for_update=True)
    if record is None:
        raise problem(404, detail=_NOT_FOUND)
    if record.status not in _CONTROLLED:
        raise problem(409, "campaign_not_live",
                      f"the campaign is {record.status.value}: only a live or paused one "
                      "can be paused, resumed or re-rated")
    return record


async def _replans(conn: Connection, record: CampaignRecord, now: datetime
                   ) -> list[dict[str, Any]]:
    """What re-planning the campaign's running runs at its (new) rate would do now."""
    rate = record.spec.rate_per_second
    if rate is None:
        return []
    chosen = windows.from_stored(record.spec.windows)
    out = []
    for row in await control_store.running_runs(conn, record.id):
        if row.deadline is None or row.deadline_reason is None:
            continue
        capacity = planner.replan_capacity(rate, now, row.deadline, chosen)
        result = await control_store.replan(conn, row.id, capacity=capacity,
                                            reason=row.deadline_reason, rate=rate, now=now,
                                            apply=False)
        if result is not None:
            out.append({"run_id": result.run_id, "capacity": capacity,
                        "reinstated": result.reinstated, "excluded": result.excluded,
                        "before": counts_view(result.before), "after": counts_view(result.after)})
    return out


@requires(TokenScope.ADMIN)
async def pause(request: web.Request) -> web.Response:
    ctx = context(request)
    async with ctx.pool.acquire() as conn, conn.transaction():
        record = await _locked(conn, _campaign_id(request))
        if record.status is CampaignStatus.LIVE:
            record = await control_store.pause(conn, record.id, ctx.clock.now())
            log.info("campaign.paused", campaign_id=record.id)
    return json_answer(campaign_view(record))


@requires(TokenScope.ADMIN)
async def resume(request: web.Request) -> web.Response:
    ctx = context(request)
    query = parse_query(ControlQuery, request)
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn:
        if query.dry_run:
            return await _dry(conn, _campaign_id(request), now, None)
        async with conn.transaction():
            record = await _locked(conn, _campaign_id(request))
            if record.status is CampaignStatus.PAUSED:
                record = await control_store.resume(conn, record.id, now)
                log.info("campaign.resumed", campaign_id=record.id)
    return json_answer(campaign_view(record))


async def _dry(conn: Connection, campaign_id: str, now: datetime,
               change: tuple[int | None, str | None] | None) -> web.Response:
    """The campaign as it would be (resumed, or with `change` = (rate, name)) and the re-plan
    of its running runs, from a transaction rolled back."""
    answer: dict[str, Any] = {}
    try:
        async with conn.transaction():
            record = await _locked(conn, campaign_id)
            if change is not None:
                record = await control_store.set_live_fields(
                    conn, record.id, rate=change[0], name=change[1], now=now)
            elif record.status is CampaignStatus.PAUSED:
                record = await control_store.resume(conn, record.id, now)
            answer = {"campaign": campaign_view(record),
                      "replans": await _replans(conn, record, now)}
            raise Rollback
    except Rollback:
        pass
    return json_answer(answer)


def _live_changes(data: Any) -> list[FieldError]:
    """The fields of a PATCH that a live or paused campaign does not take."""
    if not isinstance(data, dict):
        return []
    refused = [FieldError(key, "not editable while the campaign is live or paused "
                          "(only name and throttle.rate_per_second)")
               for key in sorted(data) if key not in LIVE_FIELDS]
    throttle = data.get("throttle")
    if isinstance(throttle, dict):
        refused += [FieldError(f"throttle.{key}", "not editable while the campaign is live "
                               "or paused") for key in sorted(throttle)
                    if key not in LIVE_THROTTLE_FIELDS]
    elif "throttle" in data:
        refused.append(FieldError("throttle", "give {\"rate_per_second\": N} on a live "
                                  "campaign"))
    return refused


async def patch_live(ctx: AppContext, request: web.Request, record: CampaignRecord,
                     data: Any) -> web.Response:
    """The PATCH of a live or paused campaign (its row is not locked yet)."""
    refused = _live_changes(data)
    if refused:
        raise problem(409, "campaign_not_editable",
                      "a live or paused campaign takes only name and "
                      "throttle.rate_per_second", refused)
    body = parse(CampaignPatch, data, context=campaign_rules.limits(ctx), checked=True)
    rate = body.throttle.rate_per_second if body.throttle is not None else None
    if body.throttle is not None and rate is None:
        raise problem(422, "validation_error", "throttle.rate_per_second: give a rate",
                      [FieldError("throttle.rate_per_second", "a live campaign's rate is "
                                  "an integer from 1 to limits.max_rate_per_second")])
    if rate is not None and record.spec.rate_per_second is None:
        raise problem(409, "campaign_not_editable",
                      "an unthrottled campaign cannot be given a rate while live",
                      [FieldError("throttle.rate_per_second", "the campaign is unthrottled")])
    query = parse_query(ControlQuery, request)
    now = ctx.clock.now()
    async with ctx.pool.acquire() as conn:
        if query.dry_run:
            return await _dry(conn, record.id, now, (rate, body.name))
        async with conn.transaction():
            locked = await _locked(conn, record.id)
            updated = await control_store.set_live_fields(conn, locked.id, rate=rate,
                                                          name=body.name, now=now)
    log.info("campaign.updated", campaign_id=updated.id, rate_per_second=rate,
             status=updated.status.value)
    return json_answer(campaign_view(updated))


def _operations() -> list[Operation]:
    campaign = Reply("The campaign.", Campaign)
    path = "/v1/campaigns/{id}"
    return [
        Operation("POST", path + "/pause", pause, "pauseCampaign",
                  "Pause a live campaign (live → paused; nothing is excluded)", "campaigns",
                  {200: campaign}, (404, 409)),
        Operation("POST", path + "/resume", resume, "resumeCampaign",
                  "Resume a paused campaign (paused → live; its running runs re-planned)",
                  "campaigns",
                  {200: Reply("The campaign; with `dry_run=true`, the campaign as it would "
                              "be and the re-plan of each running run.", ControlAnswer)},
                  (404, 409, 422), query=ControlQuery),
    ]


OPERATIONS = _operations()


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

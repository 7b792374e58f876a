"""`/v1/campaigns`: create, list, read, edit and delete drafts, activate, stop (pause,
resume and the PATCH of a live or paused campaign: `control.py`).

Lifecycle refusals (all problem+json):
- PATCH/DELETE of a campaign that is not a draft (a live or paused one takes a PATCH of
  its name and rate only): 409 `campaign_not_editable`;
  so is activating a completed or stopped one. Activating a live one is a no-op (200).
- Activate with `end_at` not in the future: 409 `campaign_ended`; with no
  provider able to serve the channel: 409 `no_provider`; with content that no
  longer compiles: 422 `validation_error` on `content.<field>`.
- Stop of a draft or completed campaign: 409 `campaign_not_live`; of a stopped one: 200;
  of a paused one as of a live one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.api import campaign_rules, control
from daemon.api.auth import requires
from daemon.api.context import context
from daemon.api.operations import Operation, Reply, json_answer, register
from daemon.api.problems import problem
from daemon.api.schemas import (
    Campaign,
    CampaignCreate,
    CampaignListQuery,
    CampaignPage,
    CampaignPatch,
)
from daemon.api.validation import (
    encode_cursor,
    parse,
    parse_query,
    read_body,
    time_cursor,
)
from daemon.api.views import campaign_view, iso
from daemon.ids import new_campaign_id
from daemon.infra.logs import get_logger
from daemon.models import CampaignStatus, TokenScope
from daemon.store import campaigns, runs
from daemon.store.campaigns import CampaignRecord

log = get_logger(__name__)

_NOT_FOUND = "no campaign with this id"


def campaign_id(request: web.Request) -> str:
    """The `{id}` of the path; a malformed one names no campaign (404)."""
    value = request.match_info["id"]
    if not campaign_rules.valid_id(value):
        raise problem(404, detail=_NOT_FOUND)
    return value


async def _body(request: web.Request) -> Any:
    return await read_body(request, context(request).config.server.max_body_bytes)


def _location(record: CampaignRecord) -> dict[str, str]:
    return {"Location": f"/v1/campaigns/{record.id}"}


@requires(TokenScope.ADMIN)
async def create(request: web.Request) -> web.Response:
    ctx = context(request)
    data = await _body(request)
    body = parse(CampaignCreate, data, context=campaign_rules.limits(ctx), checked=True)
    now = ctx.clock.now()
    spec = campaign_rules.spec_from(body, body.id or new_campaign_id(now))
    await campaign_rules.check_pool(ctx.pool, spec)
    try:
        record = await campaigns.insert(ctx.pool, spec, now)
    except campaigns.CampaignExists:
        raise problem(409, "already_exists", f"a campaign with id {spec.id!r} exists") from None
    log.info("campaign.created", campaign_id=record.id, channel=spec.channel.value)
    return json_answer(campaign_view(record), 201, _location(record))


@requires(TokenScope.ADMIN)
async def list_campaigns(request: web.Request) -> web.Response:
    ctx = context(request)
    query = parse_query(CampaignListQuery, request)
    after = time_cursor(query.cursor) if query.cursor else None
    records = await campaigns.list_page(ctx.pool, query.status, after, query.limit + 1)
    page = records[: query.limit]
    next_cursor = None
    if len(records) > query.limit:
        last = page[-1]
        next_cursor = encode_cursor([iso(last.created_at), last.id])
    return json_answer({"items": [campaign_view(r) for r in page], "next_cursor": next_cursor})


@requires(TokenScope.ADMIN)
async def read(request: web.Request) -> web.Response:
    record = await campaigns.get(context(request).pool, campaign_id(request))
    if record is None:
        raise problem(404, detail=_NOT_FOUND)
    return json_answer(campaign_view(record))


@requires(TokenScope.ADMIN)
async def patch(request: web.Request) -> web.Response:
    ctx = context(request)
    identifier = campaign_id(request)
    data = await _body(request)
    current = await campaigns.get(ctx.pool, identifier)
    if current is not None and current.status in (CampaignStatus.LIVE, CampaignStatus.PAUSED):
        return await control.patch_live(ctx, request, current, data)
    parse(CampaignPatch, data, context=campaign_rules.limits(ctx), checked=True)
    dry_run = parse_query(control.ControlQuery, request).dry_run
    async with ctx.pool.acquire() as conn:
        try:
            async with conn.transaction():
                record = await campaigns.get(conn, identifier, for_update=True)
                if record is None:
                    raise problem(404, detail=_NOT_FOUND)
                _require_draft(record, "edited")
                merged = campaign_rules.merge_patch(record, data)
                body = parse(CampaignCreate, merged, context=campaign_rules.limits(ctx),
                             checked=True)
                spec = campaign_rules.spec_from(body, record.id)
                await campaign_rules.check_pool(conn, spec)
                updated = await campaigns.update_draft(conn, spec, ctx.clock.now())
                if dry_run:  # the draft as it would be: nothing written
                    raise control.Rollback
        except control.Rollback:
            return json_answer(campaign_view(updated))
    log.info("campaign.updated", campaign_id=record.id)
    return json_answer(campaign_view(updated))


def _require_draft(record: CampaignRecord, verb: str) -> None:
    if record.status is not CampaignStatus.DRAFT:
        raise problem(
            409, "campaign_not_editable",
            f"the campaign is {record.status.value}: only a draft can be {verb}",
        )


@requires(TokenScope.ADMIN)
async def delete(request: web.Request) -> web.Response:
    status = await campaigns.delete_draft(context(request).pool, campaign_id(request))
    if status is None:
        raise problem(404, detail=_NOT_FOUND)
    if status is not CampaignStatus.DRAFT:
        raise problem(
            409, "campaign_not_editable", f"the campaign is {status.value}: only a draft is deleted"
        )
    log.info("campaign.deleted", campaign_id=request.match_info["id"])
    return web.Response(status=204)


@requires(TokenScope.ADMIN)
async def activate(request: web.Request) -> web.Response:
    ctx = context(request)
    async with ctx.pool.acquire() as conn, conn.transaction():
        record = await campaigns.get(conn, campaign_id(request), for_update=True)
        if record is None:
            raise problem(404, detail=_NOT_FOUND)
        if record.status is CampaignStatus.LIVE:
            return json_answer(campaign_view(record))
        if record.status is not CampaignStatus.DRAFT:
            raise problem(409, "campaign_not_editable",
                          f"the campaign is {record.status.value}: only a draft can be activated")
        now = ctx.clock.now()
        campaign_rules.check_activation(ctx, record, now)
        await campaign_rules.check_pool(conn, record.spec, activating=True)
        record = await campaigns.set_status(conn, record.id, CampaignStatus.LIVE, now)
    log.info("campaign.activated", campaign_id=record.id)
    return json_answer(campaign_view(record))


@requires(TokenScope.ADMIN)
async def stop(request: web.Request) -> web.Response:
    ctx = context(request)
    async with ctx.pool.acquire() as conn, conn.transaction():
        record = await campaigns.get(conn, campaign_id(request), for_update=True)
        if record is None:
            raise problem(404, detail=_NOT_FOUND)
        if record.status is CampaignStatus.STOPPED:
            return json_answer(campaign_view(record))
        if record.status not in (CampaignStatus.LIVE, CampaignStatus.PAUSED):
            raise problem(409, "campaign_not_live",
                          f"the campaign is {record.status.value}: only a live or paused one "
                          "can be stopped")
        now = ctx.clock.now()
        record = await campaigns.set_status(conn, record.id, CampaignStatus.STOPPED, now)
        cancelled = await runs.cancel_campaign_runs(conn, record.id, now)
    log.info("campaign.stopped", campaign_id=record.id, runs_cancelled=cancelled)
    return json_answer(campaign_view(record))


def _operations() -> list[Operation]:
    campaign = Reply("The campaign.", Campaign)
    path = "/v1/campaigns/{id}"
    return [
        Operation("POST", "/v1/campaigns", create, "createCampaign", "Create a campaign (draft)",
                  "campaigns", {201: Reply("Created.", Campaign, ("Location",), links=(
                      ("getCampaign", "$response.body#/id"),
                      ("updateCampaign", "$response.body#/id"),
                      ("activateCampaign", "$response.body#/id"),
                      ("triggerCampaign", "$response.body#/id"),
                      ("stopCampaign", "$response.body#/id"),
                      ("getCampaignReport", "$response.body#/id"),
                  ))},
                  (400, 409, 413, 415, 422), body=CampaignCreate),
        Operation("GET", "/v1/campaigns", list_campaigns, "listCampaigns", "List campaigns",
                  "campaigns", {200: Reply("A page of campaigns.", CampaignPage)}, (422,),
                  query=CampaignListQuery),
        Operation("GET", path, read, "getCampaign", "Read a campaign", "campaigns",
                  {200: campaign}, (404,)),
        Operation("PATCH", path, patch, "updateCampaign",
                  "Edit a draft; on a live or paused campaign, its name and rate only",
                  "campaigns",
                  {200: Reply("The campaign; with `dry_run=true` on a live or paused one, the "
                              "campaign as it would be and the re-plan of each running run.",
                              control.ControlAnswer)},
                  (400, 404, 409, 413, 415, 422), body=CampaignPatch,
                  query=control.ControlQuery),
        Operation("DELETE", path, delete, "deleteCampaign", "Delete a draft campaign",
                  "campaigns", {204: Reply("Deleted.")}, (404, 409)),
        Operation("POST", path + "/activate", activate, "activateCampaign",
                  "Activate a draft (draft → live)", "campaigns", {200: campaign},
                  (404, 409, 422)),
        Operation("POST", path + "/stop", stop, "stopCampaign",
                  "Stop a live campaign and cancel its scheduled and running runs", "campaigns",
                  {200: campaign}, (404, 409)),
    ]


OPERATIONS = _operations()


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)


"""Runs: the report (`/v1/runs/{id}`), cancel, recipient outcomes; a campaign's runs and report.

Cancel: a scheduled run is cancelled at once (200, its report); a running one is
asked to stop (202: the engine stops it within a second and excludes the
unreached as `cancelled`); a cancelled one answers 200 again (idempotent); a
completed or failed one 409 `run_finished`.
"""

from __future__ import annotations

import re

from aiohttp import web

from daemon.api import export
from daemon.api.auth import requires
from daemon.api.campaigns import campaign_id
from daemon.api.context import context
from daemon.api.operations import Operation, Reply, json_answer, register
from daemon.api.problems import problem
from daemon.api.schemas import (
    CampaignReport,
    PageQuery,
    RecipientPage,
    RecipientQuery,
    RunPage,
    RunReport,
)
from daemon.api.validation import encode_cursor, parse_query, position_cursor, time_cursor
from daemon.api.views import counts_view, iso, recipient_view, run_view
from daemon.infra.logs import get_logger
from daemon.models import RunStatus, TokenScope
from daemon.store import campaigns, runs

log = get_logger(__name__)

_RUN_ID = re.compile(r"^run_[0-9A-Za-z]{1,64}$")
REPORT_RUNS = 100


def run_id_of(request: web.Request) -> str:
    value = request.match_info["id"]
    if not _RUN_ID.match(value):
        raise problem(404, detail="no run with this id")
    return value


@requires(TokenScope.TRIGGER)
async def read(request: web.Request) -> web.Response:
    ctx = context(request)
    row = await runs.report(ctx.pool, run_id_of(request))
    if row is None:
        raise problem(404, detail="no run with this id")
    return json_answer(run_view(row, now=ctx.clock.now()))


@requires(TokenScope.ADMIN)
async def cancel(request: web.Request) -> web.Response:
    ctx = context(request)
    run_id = run_id_of(request)
    cancelled = await runs.cancel(ctx.pool, run_id, ctx.clock.now())
    row = await runs.report(ctx.pool, run_id)
    if row is None:
        raise problem(404, detail="no run with this id")
    status = RunStatus(row["status"])
    if cancelled:
        log.info("run.cancel_requested", run_id=run_id, campaign_id=row["campaign_id"],
                 status=status.value)
    elif status in (RunStatus.COMPLETED, RunStatus.FAILED):
        raise problem(409, "run_finished", f"the run is {status.value} already")
    return json_answer(run_view(row, now=ctx.clock.now()),
                       202 if status is RunStatus.RUNNING else 200)


@requires(TokenScope.TRIGGER)
async def recipients(request: web.Request) -> web.StreamResponse:
    ctx = context(request)
    run_id = run_id_of(request)
    query = parse_query(RecipientQuery, request)
    if await runs.report(ctx.pool, run_id) is None:
        raise problem(404, detail="no run with this id")
    status = query.status.value if query.status else None
    media = export.negotiated(request)
    if media is not None:  # SPEC §9.4: every matching recipient, streamed
        return await export.stream(request, media, run_id, status, query.reason,
                                   position_cursor(query.cursor), query.delivery)
    rows = await runs.recipients(
        ctx.pool, run_id, status, query.reason, position_cursor(query.cursor), query.limit + 1,
        query.delivery,
    )
    page = rows[: query.limit]
    more = len(rows) > query.limit
    return json_answer({
        "items": [recipient_view(row) for row in page],
        "next_cursor": encode_cursor(page[-1]["position"]) if more else None,
    })


async def _runs_page(
    request: web.Request, identifier: str, cursor: str | None, limit: int
) -> tuple[list[dict[str, object]], str | None]:
    before = time_cursor(cursor) if cursor else None
    rows = await runs.campaign_runs(context(request).pool, identifier, before, limit + 1)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor([iso(page[-1]["created_at"]), page[-1]["id"]])
    return [run_view(row) for row in page], next_cursor


@requires(TokenScope.ADMIN)
async def campaign_runs(request: web.Request) -> web.Response:
    identifier = campaign_id(request)
    query = parse_query(PageQuery, request)
    if await campaigns.get(context(request).pool, identifier) is None:
        raise problem(404, detail="no campaign with this id")
    items, next_cursor = await _runs_page(request, identifier, query.cursor, query.limit)
    return json_answer({"items": items, "next_cursor": next_cursor})


@requires(TokenScope.ADMIN)
async def campaign_report(request: web.Request) -> web.Response:
    ctx = context(request)
    identifier = campaign_id(request)
    record = await campaigns.get(ctx.pool, identifier)
    if record is None:
        raise problem(404, detail="no campaign with this id")
    totals = await runs.campaign_totals(ctx.pool, identifier)
    items, next_cursor = await _runs_page(request, identifier, None, REPORT_RUNS)
    return json_answer({
        "campaign_id": identifier,
        "status": record.status.value,
        "totals": {"runs": totals["runs"], **counts_view(totals)},
        "runs": items,
        "runs_next_cursor": next_cursor,
    })


def _operations() -> list[Operation]:
    run = "/v1/runs/{id}"
    report = Reply("The run report.", RunReport)
    return [
        Operation("GET", run, read, "getRun", "Read a run report", "runs", {200: report},
                  (404,)),
        Operation("POST", run + "/cancel", cancel, "cancelRun", "Cancel a run", "runs",
                  {200: Reply("Cancelled (it was scheduled, or cancelled already).", RunReport),
                   202: Reply("Running: asked to stop; the engine stops it within a second.",
                              RunReport)},
                  (404, 409)),
        Operation("GET", run + "/recipients", recipients, "listRunRecipients",
                  "Recipient outcomes, in send order", "runs",
                  {200: Reply("A page of recipients; with `Accept: text/csv` or "
                              "`application/x-ndjson`, every matching recipient from the "
                              "cursor on, streamed (`limit` does not apply).", RecipientPage,
                              media=export.STREAM_TYPES)}, (404, 422),
                  query=RecipientQuery),
        Operation("GET", "/v1/campaigns/{id}/runs", campaign_runs, "listCampaignRuns",
                  "A campaign's runs, newest first", "runs",
                  {200: Reply("A page of run reports.", RunPage)}, (404, 422), query=PageQuery),
        Operation("GET", "/v1/campaigns/{id}/report", campaign_report, "getCampaignReport",
                  "Totals over all of a campaign's runs, and its latest runs", "runs",
                  {200: Reply("The campaign report.", CampaignReport)}, (404,)),
    ]


OPERATIONS = _operations()


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

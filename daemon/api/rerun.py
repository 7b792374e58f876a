"""`POST /v1/runs/{id}/rerun` (SPEC §9.4): a new run of a finished run's excluded or failed
recipients, with their frozen data and the source's trigger context.

One statement makes it (`store.rerun`); only when it made nothing does the handler look at
why: a replayed idempotency key (the same run, or 422 for another request), the source
still running (409 `run_not_finished`), the campaign (409), or nothing to rerun (409).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import Field

from daemon.api.auth import requires
from daemon.api.bodies import JSON_TYPES, read_limited, require_content_type
from daemon.api.context import AppContext, context
from daemon.api.fields import RequestModel, ResponseModel
from daemon.api.operations import HeaderParam, Operation, Reply, json_answer, register
from daemon.api.problems import problem
from daemon.api.runs import run_id_of
from daemon.api.schemas import RunLinks, TriggerQuery
from daemon.api.triggers import IDEMPOTENCY_HEADER, idempotency_key
from daemon.api.validation import decode_storable, parse, parse_query
from daemon.api.views import iso
from daemon.errors import Problem
from daemon.ids import new_run_id
from daemon.infra.logs import get_logger
from daemon.models import TokenScope
from daemon.planning import windows
from daemon.store import Record
from daemon.store import rerun as store
from daemon.store import triggers as trigger_store

log = get_logger(__name__)

MAX_BODY_BYTES = 4096
RerunValue = Literal["time_cap", "campaign_end", "cancelled", "failed"]


class RerunBody(RequestModel):
    only: Annotated[list[RerunValue], Field(min_length=1, max_length=4)] = Field(
        description="Exclusion reasons to rerun (`time_cap`, `campaign_end`, `cancelled`), "
                    "and/or `failed` (every failed recipient).")


class RerunAccepted(ResponseModel):
    run_id: str
    campaign_id: str
    rerun_of: str
    status: str
    scheduled_for: datetime
    recipients: int = Field(description="Recipients copied from the source run.")
    links: RunLinks


class RerunPreview(ResponseModel):
    """`dry_run=true`: what a rerun would take; nothing is created."""

    rerun_of: str
    campaign_id: str
    recipients: int
    by_reason: dict[str, int] = Field(description="Selected recipients by value of `only`.")


def _request_hash(source_id: str, selection: store.Selection) -> str:
    canonical = json.dumps({"rerun_of": source_id, "only": selection.reasons,
                            "failed": selection.failed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _body(request: web.Request) -> RerunBody:
    raw = b""
    if request.body_exists:
        require_content_type(request, JSON_TYPES)
        raw = await read_limited(request, MAX_BODY_BYTES)
    return parse(RerunBody, decode_storable(raw) if raw.strip() else {}, checked=True)


def _refusal(source: store.Source, now: datetime) -> Problem | None:
    """Why the source cannot be rerun now, or None."""
    if source.status not in store.FINISHED:
        return problem(409, "run_not_finished", f"the run is {source.status}; rerun it once "
                       "it has finished")
    if source.campaign_status not in ("live", "paused", "completed"):
        return problem(409, "campaign_not_live", f"the campaign is {source.campaign_status}")
    if source.end_at is not None and now >= source.end_at:
        return problem(409, "campaign_ended", f"the campaign ended at {iso(source.end_at)}")
    if source.selected == 0:
        return problem(409, "nothing_to_rerun", "no recipient of the run has these outcomes")
    return None


def _accepted(run_id: str, source: store.Source, status: str, scheduled_for: datetime,
              recipients: int) -> dict[str, Any]:
    return {"run_id": run_id, "campaign_id": source.campaign_id, "rerun_of": source.run_id,
            "status": status, "scheduled_for": iso(scheduled_for), "recipients": recipients,
            "links": {"run": f"/v1/runs/{run_id}"}}


def _replay(existing: Record, source: store.Source, request_hash: str) -> dict[str, Any]:
    if existing["request_hash"] != request_hash:
        raise problem(422, "idempotency_key_reused",
                      "this idempotency key was used with a different request")
    return _accepted(existing["run_id"], source, existing["run_status"],
                     existing["scheduled_for"], existing["inline_count"])


async def _defer(ctx: AppContext, source: store.Source, run_id: str, scheduled_for: datetime
                 ) -> datetime:
    """With send windows closed now, the run waits for the next opening (as a trigger)."""
    if not source.windows:
        return scheduled_for
    opening = windows.next_opening(windows.from_stored(source.windows), scheduled_for)
    if opening is None or opening <= scheduled_for:
        return scheduled_for
    return await trigger_store.defer_run(ctx.pool, run_id, opening) or scheduled_for


async def _create(ctx: AppContext, source_id: str, selection: store.Selection,
                  key: str | None) -> tuple[dict[str, Any], bool]:
    now = ctx.clock.now()
    request_hash = _request_hash(source_id, selection)
    made = await store.create_rerun(ctx.pool, source_id, selection, run_id=new_run_id(now),
                                    idempotency_key=key, request_hash=request_hash, now=now)
    if made is None:
        raise problem(404, detail="no run with this id")
    source = made.source
    if made.run_id is not None and made.scheduled_for is not None:
        scheduled_for = await _defer(ctx, source, made.run_id, made.scheduled_for)
        return _accepted(made.run_id, source, "scheduled", scheduled_for, source.selected), True
    existing = await store.keyed_run(ctx.pool, source.campaign_id, key) if key else None
    if existing is not None:
        return _replay(existing, source, request_hash), False
    refusal = _refusal(source, now)
    if refusal is not None:
        raise refusal
    raise problem(409, "conflict", "the rerun could not be made; retry")  # pragma: no cover


async def _preview(ctx: AppContext, source_id: str, selection: store.Selection
                   ) -> dict[str, Any]:
    found = await store.preview(ctx.pool, source_id, selection)
    if found is None:
        raise problem(404, detail="no run with this id")
    source, by_reason = found
    refusal = _refusal(source, ctx.clock.now())
    if refusal is not None and refusal.code != "nothing_to_rerun":
        raise refusal
    counts = {value: 0 for value in [*selection.reasons, *(["failed"] * selection.failed)]}
    counts.update(by_reason)
    return {"rerun_of": source.run_id, "campaign_id": source.campaign_id,
            "recipients": source.selected, "by_reason": counts}


@requires(TokenScope.ADMIN)
async def rerun(request: web.Request) -> web.Response:
    """Create the rerun (202), or count it with `?dry_run=true` (200)."""
    ctx = context(request)
    source_id = run_id_of(request)
    query = parse_query(TriggerQuery, request)
    key = idempotency_key(request)
    body = await _body(request)
    selection = store.Selection.of(list(body.only))
    if query.dry_run:
        return json_answer(await _preview(ctx, source_id, selection))
    try:
        answer, created = await _create(ctx, source_id, selection, key)
    except Problem as exc:
        log.info("rerun.rejected", source_run_id=source_id, code=exc.code, status=exc.status)
        raise
    log.info("rerun.accepted", source_run_id=source_id, run_id=answer["run_id"],
             campaign_id=answer["campaign_id"], only=list(body.only),
             recipients=answer["recipients"], replay=not created)
    return json_answer(answer, 202, headers={"Location": answer["links"]["run"]})


OPERATIONS = [
    Operation(
        "POST", "/v1/runs/{id}/rerun", rerun, "rerunRun",
        "Rerun a finished run's excluded or failed recipients", "runs",
        {202: Reply("The rerun was created (or, for a repeated idempotency key, found).",
                    RerunAccepted, ("Location",),
                    links=(("getRun", "$response.body#/run_id"),)),
         200: Reply("`dry_run=true`: what would be rerun; nothing was created.",
                    RerunPreview)},
        (404, 409, 413, 415, 422), body=RerunBody, query=TriggerQuery,
        headers=(HeaderParam(IDEMPOTENCY_HEADER, "Same key and request: the same rerun; "
                             "same key, another request: 422 `idempotency_key_reused`."),),
        description="A new run of exactly the source's recipients with these outcomes, in "
        "the source's order, with their frozen data and the source's trigger context; stored "
        "opt-outs are checked again when it starts. The source must have finished (409 "
        "`run_not_finished`); the campaign must be live, paused or completed (409 "
        "`campaign_not_live`, or `campaign_ended` past its end); 409 `nothing_to_rerun` when "
        "no recipient matches.",
    ),
]


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

"""`POST /v1/campaigns/{id}/triggers`: the trigger, the hot path.

Validation in Python, then one SQL statement (one round trip, see `store.triggers`)
that checks the campaign, creates the run with its inline recipients and notifies
the engine. Only when it created nothing does the handler look at why: a replay
of an idempotency key (the same run, or 422 for another body), a webhook-id another
campaign took (422: a signed request is good for one campaign, see
docs/security.md), the campaign's state (409), or its audience (422).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from daemon.api import campaign_rules, signatures
from daemon.api.auth import authenticate, check_scope
from daemon.api.bodies import JSON_TYPES, read_limited, require_content_type
from daemon.api.context import AppContext, context
from daemon.api.fields import MAX_OBJECT_BYTES
from daemon.api.operations import HeaderParam, Operation, Reply, register
from daemon.api.problems import problem
from daemon.api.schemas import (
    MAX_INLINE_RECIPIENTS,
    InlineRecipient,
    TriggerAccepted,
    TriggerBody,
    TriggerPreview,
    TriggerQuery,
)
from daemon.api.validation import decode_storable, invalid, parse, parse_query
from daemon.api.views import iso
from daemon.engine import preview
from daemon.errors import FieldError, Problem
from daemon.ids import new_run_id
from daemon.infra.logs import get_logger
from daemon.models import CampaignStatus, TokenScope
from daemon.planning import windows
from daemon.store import Record
from daemon.store import triggers as store
from daemon.store.triggers import NewRun, TriggerTarget

log = get_logger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")


# Bodies larger than this are decoded, validated, hashed and encoded in a worker thread: a
# trigger of 10,000 inline recipients is 100-250 ms of CPU, which would stall the loop
# (every other request, the engine's pacing). The thread works in steps of STEP recipients
# and hands the GIL over between them (`_hand_over_gil`): left to the interpreter's 5 ms
# switch interval, the loop would wait for the GIL at each of its turns, and a small
# request needing a dozen turns would wait as long as the big one.
OFF_LOOP_BYTES = MAX_OBJECT_BYTES
STEP = 250
_RECIPIENTS = TypeAdapter(list[InlineRecipient])


def _hand_over_gil() -> None:
    """Off the loop only: release the GIL long enough for the loop's thread, woken by the
    release, to take it (`time.sleep(0)` or `os.sched_yield()` re-take it first, or give the
    core to other processes). Not a wait for anything: ~0.1 ms per step, ~4 ms per 10,000
    recipients."""
    time.sleep(0.0001)


@dataclass(frozen=True, slots=True)
class TriggerRequest:
    campaign_id: str
    body: TriggerBody
    recipients: list[dict[str, Any]] | None  # normalised: profile_id + the fields given
    rows: store.InlineRows | None  # the same, encoded for the store
    idempotency_key: str | None
    request_hash: str
    signed_until: datetime | None = None  # signed: the webhook-id's claim lasts till then


def _recipient(item: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"profile_id": item.profile_id}
    for name in ("email", "phone"):
        value = getattr(item, name)
        if value is not None:
            data[name] = value
    if item.push_tokens is not None:
        data["push_tokens"] = list(item.push_tokens)
    elif item.push_token is not None:
        data["push_tokens"] = [item.push_token]
    for name in ("attributes", "context"):
        value = getattr(item, name)
        if value is not None:
            data[name] = value
    return data


async def _authenticate(request: web.Request, raw: bytes | None
                        ) -> signatures.SignedTrigger | None:
    """Bearer (trigger scope) or Standard Webhooks; returns the signed request's webhook-id
    and timestamp when signed."""
    if "Authorization" in request.headers or not signatures.is_signed(request.headers):
        check_scope(await authenticate(request), TokenScope.TRIGGER)
        return None
    ctx = context(request)
    keys = signatures.trigger_keys(ctx.config.auth.webhook_secrets)
    now = ctx.clock.now()
    signed = signatures.verify_trigger(keys, request.headers, raw or b"", now)
    campaign_id = request.match_info["id"]
    if not signed.allows(campaign_id):
        # Taken all the same: replayed at a campaign the secret may trigger, it is refused.
        await store.remember_webhook_id(ctx.pool, signed.webhook_id, campaign_id, now,
                                        signed.taken_until)
        raise problem(403, "campaign_not_allowed",
                      "the secret that signed this request may not trigger this campaign")
    return signed


def _reused_webhook_id() -> Problem:
    return problem(422, "idempotency_key_reused",
                   "this webhook-id was already used with a different request")


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _KEY.match(key):
        raise invalid([FieldError(f"header.{IDEMPOTENCY_HEADER}",
                                  "must be 1 to 255 printable ASCII characters")])
    return key


async def _read(request: web.Request) -> TriggerRequest:
    ctx = context(request)
    campaign_id = request.match_info["id"]
    if not campaign_rules.valid_id(campaign_id):
        raise problem(404, detail="no campaign with this id")
    signed = "Authorization" not in request.headers and signatures.is_signed(request.headers)
    if not signed:  # a bearer token is checked before the body is read
        await _authenticate(request, None)
    raw = b""
    if request.body_exists:
        require_content_type(request, JSON_TYPES)
        raw = await read_limited(request, ctx.config.server.max_trigger_bytes)
    verified = await _authenticate(request, raw) if signed else None
    key = verified.webhook_id if verified else idempotency_key(request)
    limits = campaign_rules.limits(ctx)
    if len(raw) > OFF_LOOP_BYTES:
        trigger = await asyncio.to_thread(_validated, campaign_id, key, raw, limits)
    else:
        trigger = _validated(campaign_id, key, raw, limits)
    if verified is None:
        return trigger
    return dataclasses.replace(trigger, signed_until=verified.taken_until)


def _validated(campaign_id: str, key: str | None, raw: bytes, limits: dict[str, Any]
               ) -> TriggerRequest:
    """The trigger in `raw`, validated (CPU only: safe to run in a thread)."""
    data = decode_storable(raw) if raw.strip() else {}
    off_loop = len(raw) > OFF_LOOP_BYTES  # in a thread (`_read`): steps and GIL handovers
    context = {**limits, "small_body": len(raw) <= MAX_OBJECT_BYTES}
    body = (_stepwise_body(data, context) if off_loop
            else parse(TriggerBody, data, context=context, checked=True))
    recipients: list[dict[str, Any]] | None = None
    rows: store.InlineRows | None = None
    if body.recipients is not None:
        recipients, rows = [], store.InlineRows([], [])
        for start in range(0, len(body.recipients), STEP):
            step = [_recipient(r) for r in body.recipients[start:start + STEP]]
            recipients += step
            store.inline_rows(step, into=rows)
            if off_loop:
                _hand_over_gil()
    return TriggerRequest(
        campaign_id=campaign_id,
        body=body,
        recipients=recipients,
        rows=rows,
        idempotency_key=key,
        request_hash=request_hash(data, stepwise=off_loop),
    )


def _stepwise_body(data: Any, context: dict[str, Any]) -> TriggerBody:
    """`parse(TriggerBody, data)` for a large body, its recipients STEP at a time with the GIL
    handed over between steps. Any invalid recipient, or a count over the limit, and the
    body is parsed whole instead: the same errors, in the same order."""
    recipients = data.get("recipients") if type(data) is dict else None
    if type(recipients) is not list or not STEP < len(recipients) <= min(
            context["max_inline_recipients"], MAX_INLINE_RECIPIENTS):
        return parse(TriggerBody, data, context=context, checked=True)
    items: list[InlineRecipient] = []
    for start in range(0, len(recipients), STEP):
        try:
            items += _RECIPIENTS.validate_python(recipients[start:start + STEP], context=context)
        except (ValidationError, RecursionError):
            return parse(TriggerBody, data, context=context, checked=True)
        _hand_over_gil()
    # The rest of the body, with its first recipient standing for all (checks across fields
    # see a recipient list as they would the whole one).
    head = parse(TriggerBody, {**data, "recipients": recipients[:1]}, context=context,
                 checked=True)
    return head.model_copy(update={"recipients": items})


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_hash(data: Any, *, stepwise: bool = False) -> str:
    """sha256 of the body as canonical JSON (sorted keys, no spaces). `stepwise` writes the
    top object key by key and its lists item by item: the same bytes, in steps short enough
    for a thread to hand the GIL back to the loop between them."""
    digest = hashlib.sha256()
    if not stepwise or type(data) is not dict:
        digest.update(_canonical(data).encode())
        return digest.hexdigest()
    digest.update(b"{")
    for n, name in enumerate(sorted(data)):
        value = data[name]
        digest.update(b"," if n else b"")
        digest.update(_canonical(name).encode() + b":")
        if type(value) is list:
            digest.update(b"[")
            for i, item in enumerate(value):
                digest.update((b"," if i else b"") + _canonical(item).encode())
                if i % STEP == STEP - 1:
                    _hand_over_gil()
            digest.update(b"]")
        else:
            digest.update(_canonical(value).encode())
    digest.update(b"}")
    return digest.hexdigest()


def _refusal(target: TriggerTarget, now: datetime) -> Problem | None:
    """Why the campaign cannot take a trigger now (SPEC §3.1), or None."""
    status = target.status
    if status in (CampaignStatus.DRAFT, CampaignStatus.STOPPED):
        return problem(409, "campaign_not_live", f"the campaign is {status.value}")
    if target.end_at is not None and now >= target.end_at:
        return problem(409, "campaign_ended", f"the campaign ended at {iso(target.end_at)}")
    if target.end_at is None and (target.one_shot_taken or status is CampaignStatus.COMPLETED):
        return problem(409, "campaign_already_triggered",
                       "a one-shot campaign (no end_at) takes a single trigger")
    if status not in (CampaignStatus.LIVE, CampaignStatus.PAUSED):  # paused: the run waits
        return problem(409, "campaign_not_live", f"the campaign is {status.value}")
    return None


def _audience(trigger: TriggerRequest, target: TriggerTarget) -> str | None:
    """The stored audience the run reads (None: inline recipients); 422 when there is none."""
    if trigger.recipients is not None:
        return None
    if target.run_audience is None:
        raise invalid([FieldError("audience", "the campaign has no audience: "
                                  "give audience or recipients")])
    if not target.audience_exists:
        raise invalid([FieldError("audience", f"no audience with id {target.run_audience!r}")])
    return target.run_audience


def _accepted(run_id: str, status: str, scheduled_for: datetime, campaign_id: str
              ) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "campaign_id": campaign_id,
        "status": status,
        "scheduled_for": iso(scheduled_for),
        "links": {"run": f"/v1/runs/{run_id}"},
    }


def _replay(existing: Record, trigger: TriggerRequest) -> dict[str, Any]:
    if existing["request_hash"] != trigger.request_hash:
        raise problem(422, "idempotency_key_reused",
                      "this idempotency key was used with a different body")
    return _accepted(existing["run_id"], existing["run_status"], existing["scheduled_for"],
                     trigger.campaign_id)


async def _create(ctx: AppContext, trigger: TriggerRequest) -> tuple[dict[str, Any], bool]:
    """The run for the trigger (created, or the one its key made): (answer, created)."""
    now = ctx.clock.now()
    key = trigger.idempotency_key
    run = NewRun(
        id=new_run_id(now), campaign_id=trigger.campaign_id, audience=trigger.body.audience,
        recipients=trigger.rows, context=trigger.body.context or {}, idempotency_key=key,
        request_hash=trigger.request_hash, now=now, signed_until=trigger.signed_until,
    )
    created = await store.create_run(ctx.pool, run)
    if created is None:
        raise problem(404, detail="no campaign with this id")
    if created.run_id is not None and created.scheduled_for is not None:
        scheduled_for = created.scheduled_for
        if created.target.windows:
            # SPEC §9.2: a run triggered while its windows are closed waits for the next
            # opening (the engine checks again when it starts the run).
            opening = windows.next_opening(windows.from_stored(created.target.windows),
                                           scheduled_for)
            if opening is not None and opening > scheduled_for:
                scheduled_for = await store.defer_run(ctx.pool, created.run_id,
                                                      opening) or scheduled_for
        return _accepted(created.run_id, "scheduled", scheduled_for,
                         trigger.campaign_id), True
    # Nothing was made. A key already used answers with its run, whatever the campaign's
    # state now (a replay, or a concurrent duplicate that won); else the campaign says why.
    # A webhook-id another campaign took is a replay of a request signed for that campaign:
    # refused like a key reused with another body.
    if trigger.signed_until is not None and key is not None:
        owner = await store.webhook_id_owner(ctx.pool, key)
        if owner is not None and owner != trigger.campaign_id:
            raise _reused_webhook_id()
    existing = await store.keyed_run(ctx.pool, trigger.campaign_id, key) if key else None
    if existing is not None:
        return _replay(existing, trigger), False
    target = created.target
    refusal = _refusal(target, now)
    if refusal is not None:
        raise refusal
    _audience(trigger, target)
    # The campaign took the trigger, but `runs_one_shot` held its single run (a concurrent
    # trigger of a one-shot campaign won).
    raise problem(409, "campaign_already_triggered",
                  "a one-shot campaign (no end_at) takes a single trigger")


async def _preview(ctx: AppContext, trigger: TriggerRequest) -> dict[str, Any]:
    """Validate like a real trigger (creating nothing), then preview. A signed dry run takes
    its webhook-id all the same: replayed without `dry_run` at another campaign, it is
    refused."""
    now = ctx.clock.now()
    key = trigger.idempotency_key
    if trigger.signed_until is not None and key is not None:
        owner = await store.remember_webhook_id(ctx.pool, key, trigger.campaign_id, now,
                                                trigger.signed_until)
        if owner is not None and owner != trigger.campaign_id:
            raise _reused_webhook_id()
    target = await store.target(ctx.pool, trigger.campaign_id, trigger.body.audience,
                                trigger.recipients is not None)
    if target is None:
        raise problem(404, detail="no campaign with this id")
    refusal = _refusal(target, now)
    if refusal is not None:
        raise refusal
    audience = _audience(trigger, target)
    try:
        result = await preview.preview_trigger(
            ctx, trigger.campaign_id, audience_id=audience, recipients=trigger.recipients
        )
    except preview.CampaignNotFound:
        raise problem(404, detail="no campaign with this id") from None
    answer: dict[str, Any] = _jsonable(result)
    return answer


def _jsonable(value: Any) -> Any:
    """Datetimes as RFC 3339 strings, inside lists and objects too."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


async def trigger(request: web.Request) -> web.Response:
    """Create a run of the campaign (202), or preview it with `?dry_run=true` (200)."""
    ctx = context(request)
    campaign_id = request.match_info.get("id", "")
    try:
        query = parse_query(TriggerQuery, request)
        trigger_request = await _read(request)
        if query.dry_run:
            preview = await _preview(ctx, trigger_request)
            ctx.metrics.trigger_requests.labels("200").inc()
            return web.json_response(preview)
        answer, created = await _create(ctx, trigger_request)
    except Problem as exc:
        ctx.metrics.trigger_requests.labels(str(exc.status)).inc()
        log.info("trigger.rejected", campaign_id=campaign_id, code=exc.code, status=exc.status)
        raise
    ctx.metrics.trigger_requests.labels("202").inc()
    log.info("trigger.accepted", campaign_id=campaign_id, run_id=answer["run_id"],
             scheduled_for=answer["scheduled_for"], replay=not created,
             recipients=len(trigger_request.recipients or ()))
    return web.json_response(answer, status=202, headers={"Location": answer["links"]["run"]})


OPERATIONS = [
    Operation(
        "POST", "/v1/campaigns/{id}/triggers", trigger, "triggerCampaign", "Trigger a campaign",
        "triggers",
        {202: Reply("The run was created (or, for a repeated idempotency key, found).",
                    TriggerAccepted, ("Location",), links=(
                        ("getRun", "$response.body#/run_id"),
                        ("cancelRun", "$response.body#/run_id"),
                        ("listRunRecipients", "$response.body#/run_id"),
                    )),
         200: Reply("`dry_run=true`: what the run would do; nothing was created.",
                    TriggerPreview)},
        (400, 404, 409, 413, 415, 422), body=TriggerBody, body_required=False,
        query=TriggerQuery, token_scope=TokenScope.TRIGGER, signed=True,
        headers=(HeaderParam(IDEMPOTENCY_HEADER, "Same key and body: the same run; same key, "
                             "another body: 422 `idempotency_key_reused`."),),
        description="Bearer token (scope `trigger` or `admin`) or a Standard Webhooks "
        "signature; the `webhook-id` of a signed request is its idempotency key.",
    ),
]


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

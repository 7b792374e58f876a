"""`POST /v1/receipts/twilio/{provider}` and `/v1/receipts/webhook/{provider}` (SPEC §9.5).

No bearer token: each request is signed with its provider's secret.
- Twilio's StatusCallback: a form, signed `X-Twilio-Signature` over the URL as Twilio
  requested it (`server.public_url` + the path and query string) and the sorted form
  parameters, with the provider's auth token; wrong or missing: 403. The callback URL
  the daemon sends carries our key of the recipient (`?m=<run_id>:<position>`, covered by
  the signature), so a status that comes before the send's outcome is written is known.
- A webhook gateway (or an email service, for an `smtp` provider with `receipt_secret`):
  one JSON object or an NDJSON batch of `{"id", "status", "reason"?, "at"?}`, signed per
  Standard Webhooks with the provider's secret (5-minute tolerance; a `webhook-id` taken
  before is a replay and does nothing); wrong or missing: 401.

Nothing is written for a refused request. A provider that is not configured, or of
another kind than the path says: 404. Receipts none of which names a message of this
provider: 404 `unknown_message` (counted, and kept a while in case the send's outcome is
still being written). Otherwise 200 with what became of the receipts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, ValidationError

from daemon.api import signatures
from daemon.api.bodies import read_limited, require_content_type
from daemon.api.context import AppContext, context
from daemon.api.fields import ResponseModel
from daemon.api.operations import Operation, Reply, json_answer, register
from daemon.api.problems import problem
from daemon.api.validation import decode_json, field_errors, invalid
from daemon.errors import FieldError, Problem
from daemon.infra.config import Config
from daemon.infra.logs import get_logger
from daemon.providers.settings import (
    ProviderSettings,
    SmtpProviderSettings,
    TwilioProviderSettings,
    WebhookProviderSettings,
)
from daemon.receipts import twilio_signature
from daemon.receipts.model import TWILIO_STATUSES, DeliveryStatus, Receipt, Result, recipient_key
from daemon.receipts.writer import SERVICE_NAME, ReceiptWriter, WriterStopped

log = get_logger(__name__)

TWILIO_PATH = "/v1/receipts/twilio/{provider}"
WEBHOOK_PATH = "/v1/receipts/webhook/{provider}"
KEY_PARAMETER = "m"  # our recipient key in Twilio's callback URL
FORM_TYPES = frozenset({"application/x-www-form-urlencoded"})
RECEIPT_TYPES = frozenset({"application/json", "application/x-ndjson"})
MAX_BATCH = 10_000
MAX_REASON = 1000


class WebhookReceipt(BaseModel):
    """One receipt from a gateway; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[StrictStr, Field(min_length=1, max_length=998)]
    status: Literal["queued", "sent", "delivered", "bounced", "failed"]
    reason: Annotated[StrictStr, Field(max_length=MAX_REASON)] | None = None
    at: AwareDatetime | None = None


class ReceiptSummary(ResponseModel):
    received: int
    applied: int = Field(description="Receipts that changed their recipient's delivery.")
    unchanged: int = Field(description="Known, nothing new (a repeat, or an older status).")
    pending: int = Field(description="Their send's outcome is not written yet: kept, applied "
                                     "once it is.")
    unknown: int = Field(description="Name no message of this provider (kept a while).")
    replayed: bool = Field(description="The webhook-id was taken before: nothing done again.")


def _config(ctx: AppContext) -> Config:
    """The current config: the provider registry's follows reloads (SIGHUP)."""
    registry = ctx.services.get("providers")
    config: Config = registry.config if registry is not None else ctx.config
    return config


def _provider_settings(ctx: AppContext, name: str) -> ProviderSettings | None:
    settings: ProviderSettings | None = _config(ctx).provider_settings().get(name)
    return settings


def _writer(ctx: AppContext) -> ReceiptWriter:
    writer: ReceiptWriter | None = ctx.services.get(SERVICE_NAME)
    if writer is None:
        raise problem(503, "receipts_unavailable", "receipts are not taken by this daemon")
    return writer


def _count(ctx: AppContext, provider: str, result: str) -> None:
    ctx.metrics.receipts.labels(provider, result).inc()


def _refuse(ctx: AppContext, provider: str, status: int, reason: str) -> Problem:
    _count(ctx, provider, "rejected")
    log.warning("receipt.rejected", provider=provider, reason=reason)
    return problem(status, "invalid_signature", reason)


def _malformed(ctx: AppContext, provider: str, error: Problem) -> Problem:
    _count(ctx, provider, "malformed")
    return error


async def _submit(ctx: AppContext, receipts: Sequence[Receipt],
                  webhook_id: tuple[str, str] | None, provider: str) -> web.Response:
    try:
        outcome = await _writer(ctx).submit(receipts, webhook_id)
    except WriterStopped:
        raise problem(503, "shutting_down", "the daemon is shutting down; retry shortly"
                      ) from None
    tally = Counter(result.value for result in outcome.results)
    if not outcome.replayed and tally[Result.UNKNOWN.value] == len(receipts):
        raise problem(404, "unknown_message",
                      f"no message of provider {provider} has this id"
                      if len(receipts) == 1 else
                      f"no message of provider {provider} has any of these ids")
    return json_answer({
        "received": len(receipts),
        **{result.value: tally[result.value] for result in Result},
        "replayed": outcome.replayed,
    })


# -- Twilio ---------------------------------------------------------------------------------------


async def twilio(request: web.Request) -> web.Response:
    """Twilio's StatusCallback for one message."""
    ctx = context(request)
    name = request.match_info["provider"]
    settings = _provider_settings(ctx, name)
    if not isinstance(settings, TwilioProviderSettings):
        raise problem(404, "unknown_provider", "no twilio provider of this name")
    require_content_type(request, FORM_TYPES)
    raw = await read_limited(request, ctx.config.server.max_body_bytes)
    try:
        params = parse_qsl(raw.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise _malformed(ctx, name, problem(400, "malformed_form", "the form is not UTF-8")
                         ) from None
    base_url = _config(ctx).server.base_url
    url = base_url.rstrip("/") + request.raw_path
    given = request.headers.get(twilio_signature.HEADER, "")
    token = settings.auth_token.get_secret_value()
    if not given:
        raise _refuse(ctx, name, 403, f"{twilio_signature.HEADER} is missing")
    if not twilio_signature.valid(token, url, params, given):
        raise _refuse(ctx, name, 403, f"{twilio_signature.HEADER} does not sign this request "
                                      f"at {base_url} with the auth token")
    form = dict(params)
    errors = [FieldError(f"form.{field}", "this field is required")
              for field in ("MessageSid", "MessageStatus") if not form.get(field)]
    status = TWILIO_STATUSES.get(form.get("MessageStatus", ""))
    if not errors and status is None:
        errors.append(FieldError("form.MessageStatus", "not a Twilio message status: one of "
                                 + ", ".join(sorted(TWILIO_STATUSES))))
    if errors:
        raise _malformed(ctx, name, invalid(errors))
    assert status is not None
    code = form.get("ErrorCode") or None
    receipt = Receipt(
        provider=name, message_id=form["MessageSid"][:998], status=status,
        reason=f"twilio_{code}"[:MAX_REASON] if code else None,
        key=recipient_key(request.query.get(KEY_PARAMETER, "")),
    )
    return await _submit(ctx, [receipt], None, name)


# -- Standard Webhooks ----------------------------------------------------------------------------


def _webhook_secret(settings: ProviderSettings | None) -> tuple[bool, Any]:
    """(whether the provider takes webhook receipts, its secret or None)."""
    if isinstance(settings, WebhookProviderSettings):
        return True, settings.secret
    if isinstance(settings, SmtpProviderSettings):
        return True, settings.receipt_secret
    return False, None


def _items(raw: bytes, media_type: str) -> list[tuple[str, Any]]:
    """(location, decoded JSON) per receipt of the body."""
    if media_type == "application/json":
        return [("body", decode_json(raw))]
    items = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            try:
                items.append((f"line {number}", decode_json(line)))
            except Problem as exc:
                raise problem(400, "malformed_json", f"line {number}: {exc.detail}") from None
        if len(items) > MAX_BATCH:
            raise invalid([FieldError("body", f"at most {MAX_BATCH} receipts per request")])
    if not items:
        raise invalid([FieldError("body", "no receipt in the body")])
    return items


def _parse(items: list[tuple[str, Any]], provider: str, smtp: bool) -> list[Receipt]:
    receipts: list[Receipt] = []
    errors: list[FieldError] = []
    for loc, item in items:
        try:
            parsed = WebhookReceipt.model_validate(item)
        except ValidationError as exc:
            errors.extend(field_errors(exc, loc))
            continue
        message_id = parsed.id
        if smtp and "@" in message_id and not message_id.startswith("<"):
            message_id = f"<{message_id}>"  # Message-IDs are recorded with their brackets
        receipts.append(Receipt(
            provider=provider, message_id=message_id, status=DeliveryStatus(parsed.status),
            reason=parsed.reason, occurred_at=parsed.at, key=recipient_key(message_id)))
    if errors:
        raise invalid(errors)
    return receipts


async def webhook(request: web.Request) -> web.Response:
    """Receipts from a gateway, signed per Standard Webhooks."""
    ctx = context(request)
    name = request.match_info["provider"]
    settings = _provider_settings(ctx, name)
    takes_receipts, secret = _webhook_secret(settings)
    if not takes_receipts:
        raise problem(404, "unknown_provider", "no webhook or smtp provider of this name")
    media_type = require_content_type(request, RECEIPT_TYPES)
    raw = await read_limited(request, ctx.config.server.max_trigger_bytes)
    if secret is None:
        raise _refuse(ctx, name, 401, "the provider has no secret to verify receipts with")
    keys = signatures.signing_keys([secret])
    try:
        webhook_id = signatures.verify(keys, request.headers, raw, ctx.clock.now())
    except Problem as exc:
        raise _refuse(ctx, name, 401, exc.detail or "invalid signature") from None
    try:
        receipts = _parse(_items(raw, media_type), name, isinstance(settings,
                                                                      SmtpProviderSettings))
    except Problem as exc:
        raise _malformed(ctx, name, exc) from None
    return await _submit(ctx, receipts, (name, webhook_id), name)


def _operations() -> list[Operation]:
    summary = Reply("What became of the receipts.", ReceiptSummary)
    return [
        Operation("POST", TWILIO_PATH, twilio, "twilioReceipt",
                  "A Twilio message status callback", "receipts", {200: summary},
                  (403, 404, 413, 415, 422), public=True,
                  stream_types={"application/x-www-form-urlencoded":
                                "Twilio's form (MessageSid, MessageStatus, ErrorCode, ...), "
                                "signed with X-Twilio-Signature."}),
        Operation("POST", WEBHOOK_PATH, webhook, "webhookReceipts",
                  "Delivery receipts from a gateway (one JSON object or NDJSON)", "receipts",
                  {200: summary}, (401, 404, 413, 415, 422), public=True,
                  stream_types={
                      "application/json": 'One receipt: {"id", "status", "reason", "at"}.',
                      "application/x-ndjson": "One receipt per line.",
                  }),
    ]


OPERATIONS = _operations()


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

"""What makes a campaign valid: content per channel that compiles, limits, activation rules."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from daemon.api.context import AppContext
from daemon.api.problems import problem
from daemon.api.schemas import CONTENT_MODELS, CampaignCreate
from daemon.api.validation import invalid, parse
from daemon.api.views import iso
from daemon.errors import FieldError
from daemon.models import ID_PATTERN, CampaignId, Channel
from daemon.store import Executor, pools
from daemon.store.campaigns import CampaignRecord, CampaignSpec
from daemon.templates import CompiledContent, TemplateProblem

_ID = re.compile(ID_PATTERN)


def valid_id(value: str) -> bool:
    return _ID.match(value) is not None


def limits(ctx: AppContext) -> dict[str, Any]:
    """The validation context: limits that depend on the configuration."""
    return {
        "max_rate_per_second": ctx.config.limits.max_rate_per_second,
        "max_inline_recipients": ctx.config.limits.max_inline_recipients,
    }


def compile_content(channel: Channel, content: dict[str, Any]) -> CompiledContent:
    """The content's templates compiled, or a 422 naming `content.<field>` and the line."""
    try:
        return CompiledContent.compile(channel, content)
    except TemplateProblem as exc:
        where = f"line {exc.line}: " if exc.line is not None else ""
        raise invalid([FieldError(f"content.{exc.field}", where + exc.message)]) from None


def checked_content(channel: Channel, content: dict[str, Any]) -> dict[str, Any]:
    """`content` validated for `channel` and compiled; returned as stored (no nulls)."""
    model = parse(CONTENT_MODELS[channel], content, prefix="content", checked=True)
    normalised = model.model_dump(by_alias=True, exclude_none=True)
    compile_content(channel, normalised)
    return normalised


def spec_from(body: CampaignCreate, campaign_id: str) -> CampaignSpec:
    schedule, throttle = body.schedule, body.throttle
    return CampaignSpec(
        id=CampaignId(campaign_id),
        name=body.name,
        channel=body.channel,
        content=checked_content(body.channel, body.content),
        audience_id=body.audience,
        start_at=schedule.start_at if schedule else None,
        end_at=schedule.end_at if schedule else None,
        windows=schedule.stored_windows() if schedule else None,
        rate_per_second=throttle.rate_per_second if throttle else None,
        rate_pool=throttle.pool if throttle else None,
    )


def merge_patch(record: CampaignRecord, patch: dict[str, Any]) -> dict[str, Any]:
    """The campaign as a create body, with the patch applied: top-level fields replace,
    `schedule` and `throttle` keys replace one by one (null clears the whole object)."""
    spec = record.spec
    merged: dict[str, Any] = {
        "name": spec.name,
        "channel": spec.channel.value,
        "content": spec.content,
        "audience": spec.audience_id,
        "schedule": {"start_at": iso(spec.start_at), "end_at": iso(spec.end_at),
                     "windows": spec.windows},
        "throttle": {"rate_per_second": spec.rate_per_second, "pool": spec.rate_pool},
    }
    for key, value in patch.items():
        if key in ("schedule", "throttle") and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


async def check_pool(db: Executor, spec: CampaignSpec, *, activating: bool = False) -> None:
    """The campaign's rate pool exists (held until the transaction ends when `db` is one):
    422 naming `throttle.pool` on a create or edit, 409 `no_pool` at activation."""
    if spec.rate_pool is None or await pools.hold(db, spec.rate_pool):
        return
    message = f"no rate pool named {spec.rate_pool!r} (PUT /v1/rate-pools/{spec.rate_pool})"
    if activating:
        raise problem(409, "no_pool", message)
    raise invalid([FieldError("throttle.pool", message)])


def check_activation(ctx: AppContext, record: CampaignRecord, now: datetime) -> None:
    """Refuse activating a campaign whose window closed, whose channel has no provider,
    or whose content no longer compiles."""
    spec = record.spec
    if spec.end_at is not None and spec.end_at <= now:
        raise problem(409, "campaign_ended",
                      f"end_at ({iso(spec.end_at)}) is not in the future: nothing could be sent")
    provider_name = ctx.config.channels.provider_for(spec.channel)
    settings = ctx.config.provider_settings().get(provider_name)
    if settings is None or spec.channel not in settings.channels:
        raise problem(409, "no_provider",
                      f"no configured provider delivers {spec.channel.value} "
                      f"(channels.{spec.channel.value} = {provider_name!r})")
    compile_content(spec.channel, spec.content)

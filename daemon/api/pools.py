"""`/v1/rate-pools/{name}` (SPEC §9.3): create or change a pool's rate, read it with its
members and current shares, delete it while no live campaign names it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, ValidationInfo, field_validator

from daemon.api import campaign_rules
from daemon.api.auth import requires
from daemon.api.context import context
from daemon.api.fields import RequestModel, ResponseModel
from daemon.api.operations import Operation, Reply, json_answer, register
from daemon.api.problems import problem
from daemon.api.validation import parse, read_body
from daemon.api.views import iso
from daemon.infra.logs import get_logger
from daemon.models import TokenScope
from daemon.store import pools

log = get_logger(__name__)

_NOT_FOUND = "no rate pool with this name"


class PoolBody(RequestModel):
    rate_per_second: Annotated[int, Field(ge=1)] = Field(
        description="Calls per second for all the pool's campaigns together, on all daemons "
                    "(1 to `limits.max_rate_per_second`).")

    @field_validator("rate_per_second")
    @classmethod
    def _within_limit(cls, value: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_rate_per_second")
        if limit is not None and value > limit:
            raise ValueError(f"must be at most {limit} (limits.max_rate_per_second)")
        return value


class PoolHolder(ResponseModel):
    holder: str = Field(description="The daemon instance (its holder name).")
    demand: float = Field(description="Calls/s its pooled campaigns could use now.")
    share: float = Field(description="Calls/s it may spend now.")
    released: float = Field(description="Calls/s it gave up in the last second (reserved).")
    campaigns: dict[str, float] = Field(description="Its pooled campaigns and their demand.")


class RatePool(ResponseModel):
    name: str
    rate_per_second: int
    members: list[str] = Field(description="Live or paused campaigns naming the pool.")
    shares: list[PoolHolder] = Field(description="The daemons sending for it now.")
    created_at: datetime
    updated_at: datetime


def _name(request: web.Request) -> str:
    value = request.match_info["name"]
    if not campaign_rules.valid_id(value):
        raise problem(404, detail=_NOT_FOUND)
    return value


def _writable(name: str) -> str:
    """`provider:<name>` pools are the providers' own rates, kept by the daemons from their
    configuration: readable, not writable here."""
    if name.startswith(pools.PROVIDER_POOL_PREFIX):
        raise problem(409, "pool_reserved", f"{name!r} is a provider's rate "
                      "(its rate_per_second in the configuration); read it, do not change it")
    return name


async def _view(request: web.Request, name: str) -> dict[str, Any]:
    db = context(request).pool
    pool = await pools.get(db, name)
    if pool is None:
        raise problem(404, detail=_NOT_FOUND)
    return {
        "name": pool.name,
        "rate_per_second": pool.rate_per_second,
        "members": await pools.campaigns_of(db, name),
        "shares": [{"holder": s.holder, "demand": s.demand, "share": s.granted,
                    "released": s.released, "campaigns": pools.members_view(s.members)}
                   for s in await pools.shares(db, name) if s.expires_in > 0],
        "created_at": iso(pool.created_at),
        "updated_at": iso(pool.updated_at),
    }


@requires(TokenScope.ADMIN)
async def put(request: web.Request) -> web.Response:
    ctx = context(request)
    name = _writable(_name(request))
    data = await read_body(request, ctx.config.server.max_body_bytes)
    body = parse(PoolBody, data, checked=True,
                 context={"max_rate_per_second": ctx.config.limits.max_rate_per_second})
    _, created = await pools.put(ctx.pool, name, body.rate_per_second, ctx.clock.now())
    log.info("pool.created" if created else "pool.changed", pool=name,
             rate_per_second=body.rate_per_second)
    headers = {"Location": f"/v1/rate-pools/{name}"} if created else None
    return json_answer(await _view(request, name), 201 if created else 200, headers)


@requires(TokenScope.ADMIN)
async def read(request: web.Request) -> web.Response:
    return json_answer(await _view(request, _name(request)))


@requires(TokenScope.ADMIN)
async def delete(request: web.Request) -> web.Response:
    name = _writable(_name(request))
    result = await pools.delete(context(request).pool, name)
    if result == "missing":
        raise problem(404, detail=_NOT_FOUND)
    if result == "in_use":
        raise problem(409, "pool_in_use", "a live or paused campaign names this pool")
    log.info("pool.deleted", pool=name)
    return web.Response(status=204)


def _operations() -> list[Operation]:
    path = "/v1/rate-pools/{name}"
    return [
        Operation("PUT", path, put, "putRatePool", "Create a rate pool or change its rate",
                  "rate-pools",
                  {200: Reply("Changed (holds within 1 s on every daemon).", RatePool),
                   201: Reply("Created.", RatePool, ("Location",))},
                  (400, 404, 409, 413, 415, 422), body=PoolBody),
        Operation("GET", path, read, "getRatePool",
                  "Read a rate pool with its members and current shares", "rate-pools",
                  {200: Reply("The pool.", RatePool)}, (404,)),
        Operation("DELETE", path, delete, "deleteRatePool",
                  "Delete a rate pool no live campaign names", "rate-pools",
                  {204: Reply("Deleted.")}, (404, 409)),
    ]


OPERATIONS = _operations()


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

"""`/v1/profiles`: upsert, read, erase one profile; the streamed bulk import."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from daemon import imports
from daemon.api import bulk, campaign_rules
from daemon.api.auth import requires
from daemon.api.context import context
from daemon.api.operations import Operation, Reply, json_answer, register
from daemon.api.people_schemas import ImportQuery, ImportResult, Profile, ProfileBody
from daemon.api.problems import problem
from daemon.api.validation import invalid, parse, parse_query, read_body
from daemon.api.views import profile_view
from daemon.errors import FieldError
from daemon.infra.logs import get_logger
from daemon.models import TokenScope
from daemon.store import audiences, profiles
from daemon.store.profiles import ProfileData

log = get_logger(__name__)

def profile_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not campaign_rules.valid_id(value):
        raise problem(404, detail="no profile with this id")
    return value


@requires(TokenScope.ADMIN)
async def put(request: web.Request) -> web.Response:
    ctx = context(request)
    identifier = profile_id(request)
    data = await read_body(request, ctx.config.server.max_body_bytes)
    body = parse(ProfileBody, data, checked=True)
    if body.id is not None and body.id != identifier:
        raise invalid([FieldError("id", "differs from the id in the path")])
    subscriptions = body.subscriptions
    data = ProfileData(
        email=body.email, phone=body.phone, push_tokens=body.push_tokens,
        attributes=body.attributes,
        sub_email=subscriptions.email if subscriptions else None,
        sub_sms=subscriptions.sms if subscriptions else None,
        sub_push=subscriptions.push if subscriptions else None,
    )
    row, created = await profiles.upsert(ctx.pool, identifier, data, ctx.clock.now())
    headers = {"Location": f"/v1/profiles/{identifier}"} if created else None
    return json_answer(profile_view(row), 201 if created else 200, headers)


@requires(TokenScope.ADMIN)
async def read(request: web.Request) -> web.Response:
    row = await profiles.get(context(request).pool, profile_id(request))
    if row is None:
        raise problem(404, detail="no profile with this id")
    return json_answer(profile_view(row))


@requires(TokenScope.ADMIN)
async def delete(request: web.Request) -> web.Response:
    identifier = profile_id(request)
    if not await profiles.delete(context(request).pool, identifier):
        raise problem(404, detail="no profile with this id")
    log.info("profile.erased", profile_id=identifier)
    return web.Response(status=204)


@requires(TokenScope.ADMIN)
async def import_profiles(request: web.Request) -> web.Response:
    ctx = context(request)
    query = parse_query(ImportQuery, request)
    fmt = bulk.body_format(request)
    tally = imports.Tally()
    added = 0
    with bulk.broken_stream():
        async with ctx.pool.acquire() as conn, conn.transaction():
            if query.audience is not None and not await audiences.hold(conn, query.audience):
                raise problem(404, detail=f"no audience {query.audience!r} (create it first: "
                              "PUT /v1/audiences/{id})")
            await profiles.create_import_table(conn)
            parser = imports.ProfileRows(fmt, tally)
            await profiles.copy_import_rows(conn, imports.rows(bulk.chunks(request), parser))
            try:
                merged = await profiles.merge_import(conn, ctx.clock.now())
            except asyncpg.UniqueViolationError:
                merged = None
            if merged is None or merged.created + merged.updated != merged.profiles:
                raise problem(409, "conflict", "profiles were written or erased during the "
                              "import; run it again")
            if query.audience is not None:
                added = await profiles.add_imported_to_audience(conn, query.audience, merged)
    result = {
        "received": tally.received,
        "imported": tally.received - tally.rejected,
        "created": merged.created,
        "updated": merged.updated,
        "rejected": tally.rejected,
        "errors": bulk.line_errors(tally),
        "audience": query.audience,
        "added_to_audience": added,
    }
    log.info("profiles.imported", **{k: v for k, v in result.items() if k != "errors"})
    return json_answer(result)


def _operations() -> list[Operation]:
    path = "/v1/profiles/{id}"
    profile = Reply("The profile.", Profile)
    return [
        Operation("PUT", path, put, "putProfile", "Create or replace a profile", "profiles",
                  {200: Reply("Replaced.", Profile),
                   201: Reply("Created.", Profile, ("Location",), links=(
                       ("getProfile", "$response.body#/id"),
                       ("deleteProfile", "$response.body#/id"),
                   ))},
                  (400, 404, 413, 415, 422), body=ProfileBody),
        Operation("GET", path, read, "getProfile", "Read a profile", "profiles",
                  {200: profile}, (404,)),
        Operation("DELETE", path, delete, "deleteProfile",
                  "Erase a profile and its audience memberships", "profiles",
                  {204: Reply("Erased.")}, (404,)),
        Operation("POST", "/v1/profiles/import", import_profiles, "importProfiles",
                  "Bulk upsert profiles from streamed NDJSON or CSV", "profiles",
                  {200: Reply("What was imported and the first 100 refused lines.",
                              ImportResult)},
                  (400, 404, 409, 415, 422), query=ImportQuery, stream_types=bulk.STREAM_TYPES,
                  description="NDJSON lines are `ProfileLine` objects. CSV: an `id` column; "
                  "optional `email`, `phone`, `push_token`; every other column becomes a string "
                  "attribute. Fields given replace the stored ones, attributes merge key by "
                  "key, absent fields (and empty CSV cells) are kept; an id on several lines: "
                  "the last wins. A bad line is reported and skipped."),
    ]


OPERATIONS = _operations()


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

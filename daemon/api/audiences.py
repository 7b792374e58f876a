"""`/v1/audiences`: create or rename, read (with size), delete; members added in bulk
(streamed NDJSON/CSV of profile ids, unknown ids reported) and removed one by one."""

from __future__ import annotations

from aiohttp import web

from daemon import imports
from daemon.api import bulk, campaign_rules
from daemon.api.auth import requires
from daemon.api.context import context
from daemon.api.operations import Operation, Reply, json_answer, register
from daemon.api.people_schemas import Audience, AudienceBody, MembersResult
from daemon.api.problems import problem
from daemon.api.validation import parse, read_body
from daemon.api.views import audience_view
from daemon.imports import LineError
from daemon.infra.logs import get_logger
from daemon.models import TokenScope
from daemon.store import audiences

log = get_logger(__name__)

_NOT_FOUND = "no audience with this id"


def _id(request: web.Request, name: str = "id", what: str = _NOT_FOUND) -> str:
    value = request.match_info[name]
    if not campaign_rules.valid_id(value):
        raise problem(404, detail=what)
    return value


@requires(TokenScope.ADMIN)
async def put(request: web.Request) -> web.Response:
    ctx = context(request)
    identifier = _id(request)
    data = await read_body(request, ctx.config.server.max_body_bytes, empty={},
                           allow_empty=True)
    body = parse(AudienceBody, data, checked=True)
    created = await audiences.put(ctx.pool, identifier, body.name, ctx.clock.now())
    row = await audiences.get(ctx.pool, identifier)
    if row is None:  # deleted in between
        raise problem(404, detail=_NOT_FOUND)
    headers = {"Location": f"/v1/audiences/{identifier}"} if created else None
    return json_answer(audience_view(row), 201 if created else 200, headers)


@requires(TokenScope.ADMIN)
async def read(request: web.Request) -> web.Response:
    row = await audiences.get(context(request).pool, _id(request))
    if row is None:
        raise problem(404, detail=_NOT_FOUND)
    return json_answer(audience_view(row))


@requires(TokenScope.ADMIN)
async def delete(request: web.Request) -> web.Response:
    identifier = _id(request)
    if not await audiences.delete(context(request).pool, identifier):
        raise problem(404, detail=_NOT_FOUND)
    log.info("audience.deleted", audience_id=identifier)
    return web.Response(status=204)


@requires(TokenScope.ADMIN)
async def add_members(request: web.Request) -> web.Response:
    ctx = context(request)
    identifier = _id(request)
    fmt = bulk.body_format(request)
    tally = imports.Tally()
    with bulk.broken_stream():
        async with ctx.pool.acquire() as conn, conn.transaction():
            if not await audiences.hold(conn, identifier):
                raise problem(404, detail=_NOT_FOUND)
            await audiences.create_member_table(conn)
            parser = imports.MemberRows(fmt, tally)
            await audiences.copy_member_rows(conn, imports.rows(bulk.chunks(request), parser))
            unknown, first_unknown = await audiences.unknown_members(conn, imports.MAX_REPORTED)
            added = await audiences.add_staged_members(conn, identifier)
    unknown_errors = [
        LineError(row["line"], f"no profile with id {row['profile_id']!r}")
        for row in first_unknown
    ]
    valid = tally.received - tally.rejected
    result = {
        "received": tally.received,
        "added": added,
        "already_members": valid - unknown - added,
        "rejected": tally.rejected + unknown,
        "errors": bulk.line_errors(tally, unknown_errors),
    }
    log.info("audience.members_added", audience_id=identifier, added=added,
             rejected=result["rejected"])
    return json_answer(result)


@requires(TokenScope.ADMIN)
async def remove_member(request: web.Request) -> web.Response:
    identifier = _id(request)
    member = _id(request, "profile_id", "this profile is not a member")
    if not await audiences.remove_member(context(request).pool, identifier, member):
        raise problem(404, detail="this profile is not a member of the audience")
    return web.Response(status=204)


def _operations() -> list[Operation]:
    path = "/v1/audiences/{id}"
    return [
        Operation("PUT", path, put, "putAudience", "Create or rename an audience", "audiences",
                  {200: Reply("Renamed.", Audience),
                   201: Reply("Created.", Audience, ("Location",), links=(
                       ("getAudience", "$response.body#/id"),
                       ("addAudienceMembers", "$response.body#/id"),
                       ("deleteAudience", "$response.body#/id"),
                   ))},
                  (400, 404, 413, 415, 422), body=AudienceBody, body_required=False),
        Operation("GET", path, read, "getAudience", "Read an audience (with its size)",
                  "audiences", {200: Reply("The audience.", Audience)}, (404,)),
        Operation("DELETE", path, delete, "deleteAudience",
                  "Delete an audience (its profiles stay)", "audiences",
                  {204: Reply("Deleted.")}, (404,)),
        Operation("POST", path + "/members", add_members, "addAudienceMembers",
                  "Add members from streamed NDJSON or CSV of profile ids", "audiences",
                  {200: Reply("What was added and the first 100 refused lines.",
                              MembersResult)},
                  (400, 404, 415), stream_types=bulk.STREAM_TYPES,
                  description="NDJSON `{\"profile_id\": ...}` lines (`MemberLine`) or CSV with "
                  "a `profile_id` column. New members go last, in the order given; existing "
                  "members keep their place; unknown ids are reported, not fatal."),
        Operation("DELETE", path + "/members/{profile_id}", remove_member,
                  "removeAudienceMember", "Remove one member", "audiences",
                  {204: Reply("Removed.")}, (404,)),
    ]


OPERATIONS = _operations()


def add_routes(app: web.Application) -> None:
    register(app, OPERATIONS)

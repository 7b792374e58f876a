"""/ui/ routes: sign-in with a token into an HttpOnly cookie, the pages, their JSON, CSV.

Pages are read-only; the only state-changing forms (sign-in, sign-out) rely on the
SameSite=Strict cookie. Every /ui response carries the security headers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from daemon.api import auth, export
from daemon.api.context import context
from daemon.api.views import counts_view, run_view
from daemon.models import TokenScope
from daemon.planning import windows
from daemon.store import campaigns, runs, send_rate
from daemon.ui.chart import curve_view

COOKIE = "campaignd_session"
_HERE = Path(__file__).parent
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self'; frame-ancestors 'none'; form-action 'self'; "
                                "base-uri 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path.startswith("/ui"):
        response.headers.update(SECURITY_HEADERS)


def _page(name: str, status: int = 200, **values: Any) -> web.Response:
    body = _ENV.get_template(name).render(**values)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def _redirect(location: str) -> web.Response:
    # Returned, not raised: the problem middleware would pass a raised 303 on as deprecated.
    return web.Response(status=303, headers={"Location": location})


async def _signed_in(request: web.Request, needed: TokenScope) -> web.Response | None:
    """None when the session cookie holds a live token, else the redirect to sign in; 403
    when its scope may not read this page (the scopes of the API: a trigger token reads
    runs, only an admin token reads campaigns)."""
    token = request.cookies.get(COOKIE)
    scope = await auth.scope_of(request, token) if token else None
    if scope is None:
        return _redirect("/ui/login")
    auth.check_scope(scope, needed)
    return None


async def login_form(request: web.Request) -> web.Response:
    return _page("login.html", error=None)


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    if not token or await auth.scope_of(request, token) is None:
        return _page("login.html", status=401, error="unknown or revoked token")
    response = _redirect("/ui/")
    public = context(request).config.server.public_url or ""
    response.set_cookie(COOKIE, token, path="/ui", httponly=True, samesite="Strict",
                        secure=public.startswith("https://"))
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    response = _redirect("/ui/login")
    response.del_cookie(COOKIE, path="/ui")
    return response


async def campaigns_page(request: web.Request) -> web.StreamResponse:
    if (away := await _signed_in(request, TokenScope.ADMIN)) is not None:
        return away
    pool = context(request).pool
    listed = await campaigns.list_page(pool, None, None, 200)
    ids = [record.id for record in listed]
    # Three statements for the page, whatever the number of campaigns (was 2 a campaign).
    latest, totals = await runs.latest_runs_of(pool, ids, 3), await runs.totals_of(pool, ids)
    items = [{"campaign": record, "totals": counts_view(totals[record.id]),
              "runs": [run_view(row) for row in latest[record.id]]} for record in listed]
    return _page("campaigns.html", items=items)


async def campaign_page(request: web.Request) -> web.StreamResponse:
    if (away := await _signed_in(request, TokenScope.ADMIN)) is not None:
        return away
    pool = context(request).pool
    record = await campaigns.get(pool, request.match_info["id"])
    if record is None:
        raise web.HTTPNotFound()
    latest = await runs.campaign_runs(pool, record.id, None, 50)
    totals = await runs.campaign_totals(pool, record.id)
    return _page("campaign.html", campaign=record, totals=counts_view(totals),
                 runs=[run_view(row) for row in latest])


async def _shades(pool: Any, row: Any, started: datetime, now: datetime
                  ) -> list[tuple[datetime, datetime, str]]:
    """Closed send windows over the run's life, and the campaign's pauses during it."""
    until = (row["finished_at"] or now) + timedelta(minutes=1)
    result: list[tuple[datetime, datetime, str]] = []
    chosen = windows.from_stored(row["send_windows"])
    if chosen:
        cursor = started
        for begin, end in windows.open_intervals(chosen, started, until):
            if begin > cursor:
                result.append((cursor, begin, "closed"))
            cursor = end
        if cursor < until:
            result.append((cursor, until, "closed"))
    for paused_at, resumed_at in await send_rate.pauses(pool, row["campaign_id"], started):
        result.append((max(paused_at, started), min(resumed_at or until, until), "paused"))
    return result


def eta(now: datetime, pending: int, rate: int | None, chosen: Sequence[windows.Window],
        deadline: datetime | None) -> datetime | None:
    """When the pending recipients are sent at `rate`, counting only the send windows'
    open time; never after the deadline (what is left then is excluded). None: no rate."""
    if not rate:
        return None
    need = pending / float(rate)
    if not chosen:
        finish = now + timedelta(seconds=need)
        return min(finish, deadline) if deadline is not None else finish
    horizon = deadline or now + timedelta(days=8)
    for begin, end in windows.open_intervals(chosen, now, horizon):
        span = (end - begin).total_seconds()
        if need <= span:
            return begin + timedelta(seconds=need)
        need -= span
    return deadline


async def _run_data(request: web.Request) -> dict[str, Any]:
    ctx = context(request)
    row = await runs.report(ctx.pool, request.match_info["id"])
    if row is None:
        raise web.HTTPNotFound()
    now = ctx.clock.now()
    view = run_view(row, now=now)
    started = row["started_at"]
    curve = None
    shades: list[tuple[datetime, datetime, str]] = []
    if started is not None:
        until = row["finished_at"] or now
        width = send_rate.bucket_seconds(started, until)
        rows = await send_rate.curve(ctx.pool, row["id"], started, width)
        shades = await _shades(ctx.pool, row, started, now)
        curve = curve_view(rows, started, width, row["rate_per_second"], shades, until)
    counts = view["counts"]
    excluded = sum(counts["excluded"].values())
    view["excluded_total"] = excluded
    view["invariant_holds"] = counts["targeted"] == (
        counts["sent"] + counts["failed"] + counts["pending"] + excluded)
    view["eta"] = None
    if counts["pending"] and view["status"] == "running":
        paused = any(kind == "paused" and end >= now for _, end, kind in shades)
        finish = None if paused else eta(now, counts["pending"], row["rate_per_second"],
                                         windows.from_stored(row["send_windows"]),
                                         row["deadline"])
        view["eta"] = finish.isoformat() if finish is not None else None
    view["curve"] = curve
    return view


async def run_page(request: web.Request) -> web.StreamResponse:
    if (away := await _signed_in(request, TokenScope.TRIGGER)) is not None:
        return away
    return _page("run.html", run=await _run_data(request))


async def run_json(request: web.Request) -> web.StreamResponse:
    if (away := await _signed_in(request, TokenScope.TRIGGER)) is not None:
        return away
    return web.json_response(await _run_data(request))


async def run_csv(request: web.Request) -> web.StreamResponse:
    if (away := await _signed_in(request, TokenScope.TRIGGER)) is not None:
        return away
    run_id = request.match_info["id"]
    if await runs.report(context(request).pool, run_id) is None:
        raise web.HTTPNotFound()
    return await export.stream(request, export.CSV, run_id, None, None, -1)


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_headers)
    app.router.add_get("/ui/login", login_form)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/", campaigns_page)
    app.router.add_get("/ui/campaigns/{id}", campaign_page)
    app.router.add_get("/ui/runs/{id}", run_page)
    app.router.add_get("/ui/runs/{id}/data.json", run_json)
    app.router.add_get("/ui/runs/{id}/recipients.csv", run_csv)
    app.router.add_static("/ui/static", _HERE / "static")

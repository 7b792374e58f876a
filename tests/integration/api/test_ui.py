"""The /ui pages (SPEC §9.6): sign-in cookie, security headers, escaping, the run page and
its JSON, the CSV link, and the send-rate curve's SQL (bucketing, EXPLAIN)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from daemon.store import runs, send_rate
from tests.integration.api.conftest import Api

EVIL = "<script>alert(1)</script>"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _run(api: Api, size: int = 600, spread: float = 1.0, name: str = "Spring sale",
               **fields: object) -> str:
    """A running run of `size` outcomes, one every `spread` seconds from T0; every 7th failed,
    every 11th excluded (reason time_cap), the last tenth pending."""
    await api.live_campaign(name=name, schedule={"end_at": "2026-04-01T00:00:00Z", **fields})
    answer = await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202, json={
        "recipients": [{"profile_id": "p0", "email": "p0@example.com"}]})
    run_id = str(answer["run_id"])
    await api.pool.execute(
        """
        INSERT INTO run_recipients (run_id, position, profile_id, status, reason, updated_at)
        SELECT $1, n, 'p' || n, s, CASE WHEN s = 'excluded' THEN 'time_cap' END,
               CASE WHEN s IN ('sent', 'failed') THEN $3::timestamptz + n * $4 * interval '1 s' END
        FROM generate_series(0, $2::int - 1) AS n,
             LATERAL (SELECT CASE WHEN n >= $2 * 9 / 10 THEN 'pending' WHEN n % 7 = 0 THEN 'failed'
                                  WHEN n % 11 = 0 THEN 'excluded' ELSE 'sent' END AS s) x
        """, run_id, size, T0, spread)
    await api.pool.execute(
        """UPDATE runs SET status = 'running', started_at = $2, rate_per_second = 5,
               targeted = c.t, sent = c.s, failed = c.f, pending = c.p, excluded_time_cap = c.e
           FROM (SELECT count(*) t, count(*) FILTER (WHERE status = 'sent') s,
                        count(*) FILTER (WHERE status = 'failed') f,
                        count(*) FILTER (WHERE status = 'pending') p,
                        count(*) FILTER (WHERE status = 'excluded') e
                 FROM run_recipients WHERE run_id = $1) c WHERE id = $1""", run_id, T0)
    return run_id


async def _sign_in(api: Api, token: str | None = None) -> None:
    response = await api.post("/ui/login", token=None, data={"token": token or api.admin_token},
                              allow_redirects=False)
    assert response.status == 303


async def test_pages_redirect_to_sign_in_without_the_cookie(api: Api) -> None:
    for path in ("/ui/", "/ui/campaigns/x", "/ui/runs/r", "/ui/runs/r/data.json"):
        response = await api.get(path, token=None, allow_redirects=False)
        assert (response.status, response.headers["Location"]) == (303, "/ui/login"), path


async def test_sign_in_sets_an_httponly_strict_cookie_and_refuses_a_bad_token(api: Api) -> None:
    bad = await api.post("/ui/login", token=None, data={"token": "nope"}, allow_redirects=False)
    assert bad.status == 401
    assert "Set-Cookie" not in bad.headers
    response = await api.post("/ui/login", token=None, data={"token": api.admin_token},
                              allow_redirects=False)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie
    api.reconfigure(CAMPAIGND_SERVER_PUBLIC_URL="https://campaigns.example.com")
    secure = await api.post("/ui/login", token=None, data={"token": api.admin_token},
                            allow_redirects=False)
    assert "Secure" in secure.headers["Set-Cookie"]
    page = await api.get("/ui/", token=None)
    assert page.status == 200
    out = await api.post("/ui/logout", token=None, allow_redirects=False)
    assert out.status == 303 and 'campaignd_session=""' in out.headers["Set-Cookie"]


async def test_every_ui_answer_carries_the_security_headers(api: Api) -> None:
    for path in ("/ui/login", "/ui/static/live.js", "/ui/"):
        response = await api.get(path, token=None, allow_redirects=False)
        csp = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    api_answer = await api.get("/healthz", token=None)
    assert "Content-Security-Policy" not in api_answer.headers


async def test_a_hostile_campaign_name_is_escaped_on_every_page(api: Api) -> None:
    run_id = await _run(api, size=20, name=EVIL)
    await _sign_in(api)
    for path in ("/ui/", "/ui/campaigns/spring-sale"):
        text = await (await api.get(path, token=None)).text()
        assert EVIL not in text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
    assert "<script>alert" not in await (await api.get(f"/ui/runs/{run_id}", token=None)).text()


async def test_the_run_page_shows_the_invariant_the_curve_and_the_csv_link(api: Api) -> None:
    run_id = await _run(api)
    await _sign_in(api)
    page = await (await api.get(f"/ui/runs/{run_id}", token=None)).text()
    report = await api.json("GET", f"/v1/runs/{run_id}", 200)
    counts = report["counts"]
    excluded = sum(counts["excluded"].values())
    assert counts["targeted"] == counts["sent"] + counts["failed"] + counts["pending"] + excluded
    assert f'<b id="targeted">{counts["targeted"]}</b>' in page
    assert f'<b id="excluded">{excluded}</b>' in page
    assert '<polyline id="line" points="' in page and f"/ui/runs/{run_id}/recipients.csv" in page
    data = json.loads(await (await api.get(f"/ui/runs/{run_id}/data.json", token=None)).text())
    assert data["counts"] == counts and data["invariant_holds"] is True
    assert sum(y * data["curve"]["bucket_seconds"] for _, y in data["curve"]["points"]) == (
        counts["sent"] + counts["failed"])
    csv = await api.get(f"/ui/runs/{run_id}/recipients.csv", token=None)
    assert csv.headers["Content-Type"].startswith("text/csv")
    assert len((await csv.text()).splitlines()) == 1 + counts["targeted"]


async def test_a_twelve_hour_run_is_at_most_two_thousand_buckets(api: Api) -> None:
    run_id = await _run(api, size=5_000, spread=43_200 / 4_500)
    width = send_rate.bucket_seconds(T0, T0 + timedelta(hours=12))
    rows = await send_rate.curve(api.pool, run_id, T0, width)
    assert width == 22
    assert 1_000 < len(rows) <= send_rate.MAX_POINTS
    assert [row["bucket"] for row in rows] == sorted(row["bucket"] for row in rows)
    outcomes = await api.pool.fetchval("SELECT count(*) FROM run_recipients WHERE run_id = $1 "
                                       "AND status IN ('sent', 'failed')", run_id)
    assert sum(row["sent"] + row["failed"] for row in rows) == outcomes > 4_000


async def test_the_curve_query_reads_the_run_by_index_not_the_other_runs(api: Api) -> None:
    big = await _run(api, size=50_000)  # another run's outcomes: the plan must not scan them
    answer = await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202, json={
        "recipients": [{"profile_id": "p1", "email": "p1@example.com"}]})
    small = str(answer["run_id"])
    assert small != big
    await api.pool.execute(
        """INSERT INTO run_recipients (run_id, position, profile_id, status, updated_at)
           SELECT $1, n, 'q', 'sent', $2::timestamptz + n * interval '1 s'
           FROM generate_series(0, 99) n""", small, T0)
    await api.pool.execute("ANALYZE run_recipients")
    plan = await api.pool.fetchval(f"EXPLAIN (FORMAT JSON) {send_rate.CURVE_SQL}",
                                   small, 1.0, T0)
    text = json.dumps(plan)
    assert "Seq Scan" not in text, text
    assert '"Index Name": "run_recipients_' in text, text
    assert len(await send_rate.curve(api.pool, small, T0, 1)) == 100


async def test_the_curve_shades_the_current_pause_and_closed_send_windows(api: Api) -> None:
    # T0 is a Sunday 12:00 UTC; the window closes at 12:01; outcomes span 100 s.
    window = {"timezone": "UTC", "days": ["sun"], "from": "12:00", "to": "12:01"}
    run_id = await _run(api, size=100, windows=[window])
    await _sign_in(api)
    api.clock.advance(300)
    data = json.loads(await (await api.get(f"/ui/runs/{run_id}/data.json", token=None)).text())
    assert [s["kind"] for s in data["curve"]["shades"]] == ["closed"]
    closed = data["curve"]["shades"][0]
    assert 40 < closed["x"] < 800 - 40 and closed["w"] > 0
    assert (await api.post("/v1/campaigns/spring-sale/pause")).status == 200
    api.clock.advance(60)  # a minute into the pause
    data = json.loads(await (await api.get(f"/ui/runs/{run_id}/data.json", token=None)).text())
    assert [s["kind"] for s in data["curve"]["shades"]] == ["closed", "paused"]
    page = await (await api.get(f"/ui/runs/{run_id}", token=None)).text()
    assert 'class="closed"' in page and 'class="paused"' in page


async def test_the_curve_shades_past_pauses_too(api: Api) -> None:
    run_id = await _run(api, size=100)
    await _sign_in(api)
    api.clock.advance(10)
    assert (await api.post("/v1/campaigns/spring-sale/pause")).status == 200
    api.clock.advance(20)
    assert (await api.post("/v1/campaigns/spring-sale/resume")).status == 200
    api.clock.advance(30)
    assert (await api.post("/v1/campaigns/spring-sale/pause")).status == 200
    api.clock.advance(5)
    data = json.loads(await (await api.get(f"/ui/runs/{run_id}/data.json", token=None)).text())
    paused = [s for s in data["curve"]["shades"] if s["kind"] == "paused"]
    assert len(paused) == 2, data["curve"]["shades"]
    first, second = paused
    assert first["w"] > 0 and second["x"] > first["x"] + first["w"]


async def test_a_trigger_token_reads_runs_but_not_campaigns_as_in_the_api(api: Api) -> None:
    run_id = await _run(api, size=20)
    await _sign_in(api, api.trigger_token)
    for path in (f"/ui/runs/{run_id}", f"/ui/runs/{run_id}/data.json"):
        response = await api.get(path, token=None, allow_redirects=False)
        assert response.status == 200, path
    for path in ("/ui/", "/ui/campaigns/spring-sale"):
        response = await api.get(path, token=None, allow_redirects=False)
        assert response.status == 403, path
    api_read = await api.get("/v1/campaigns/spring-sale/report", token=api.trigger_token)
    assert api_read.status == 403


async def test_the_campaigns_page_reads_every_campaign_in_one_statement_each_as_one_by_one(
    api: Api,
) -> None:
    await _run(api, size=30)
    for _ in range(4):  # more runs than the page shows (3 a campaign)
        await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202, json={
            "recipients": [{"profile_id": "p1", "email": "p1@example.com"}]})
    await api.live_campaign(id="quiet", name="Quiet")  # no run at all
    ids = ["spring-sale", "quiet"]
    latest = await runs.latest_runs_of(api.pool, ids, 3)
    totals = await runs.totals_of(api.pool, ids)
    for campaign_id in ids:
        one = await runs.campaign_runs(api.pool, campaign_id, None, 3)
        assert [dict(r) for r in one] == [
            {k: v for k, v in dict(r).items() if k != "of_campaign"} for r in latest[campaign_id]]
        assert dict(await runs.campaign_totals(api.pool, campaign_id)) == {
            k: v for k, v in dict(totals[campaign_id]).items() if k != "of_campaign"}
    assert len(latest["spring-sale"]) == 3 and latest["quiet"] == []
    assert totals["spring-sale"]["runs"] == 5 and totals["quiet"]["runs"] == 0
    await _sign_in(api)
    page = await api.get("/ui/", token=None)
    assert page.status == 200 and "Quiet" in await page.text()

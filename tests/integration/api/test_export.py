"""`GET /v1/runs/{id}/recipients` streamed as CSV or NDJSON (SPEC §9.4): every matching
recipient in send order, the JSON filters, content types; the JSON page unchanged; the CLI."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import aiohttp
import pytest

from daemon.cli.export import RecordCounter
from tests.integration.api.conftest import Api
from tests.integration.api.test_cli import cli

SIZE = 2_345  # over two batches of the server's cursor


async def _run(api: Api) -> str:
    """A run of SIZE frozen recipients, inserted in reverse order: every 7th failed (an
    error text with a comma, a quote and a newline), every 5th excluded by the time cap."""
    await api.live_campaign(schedule={"end_at": "2026-04-01T00:00:00Z"})
    answer = await api.json("POST", "/v1/campaigns/spring-sale/triggers", 202, json={
        "recipients": [{"profile_id": "p0", "email": "p0@example.com"}]})
    run_id = str(answer["run_id"])
    await api.pool.execute(
        """
        INSERT INTO run_recipients (run_id, position, profile_id, status, reason, error,
                                    attempts, updated_at)
        SELECT $1, n, 'p' || n,
               CASE WHEN n % 7 = 0 THEN 'failed' WHEN n % 5 = 0 THEN 'excluded' ELSE 'sent' END,
               CASE WHEN n % 7 = 0 THEN 'timeout' WHEN n % 5 = 0 THEN 'time_cap' END,
               CASE WHEN n % 7 = 0 THEN 'said "no", then' || chr(10) || 'left' END,
               CASE WHEN n % 5 = 0 AND n % 7 <> 0 THEN 0 ELSE 1 END,
               '2026-03-01T12:00:00Z'::timestamptz + n * interval '1 second'
        FROM generate_series($2::int - 1, 0, -1) AS n
        """, run_id, SIZE)
    return run_id


def _expected(n: int) -> dict[str, Any]:
    failed, capped = n % 7 == 0, n % 5 == 0 and n % 7 != 0
    return {"position": n, "profile_id": f"p{n}",
            "status": "failed" if failed else "excluded" if capped else "sent",
            "reason": "timeout" if failed else "time_cap" if capped else None,
            "error": 'said "no", then\nleft' if failed else None,
            "attempts": 0 if capped else 1, "provider_message_id": None,
            "updated_at": f"2026-03-01T{12 + n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
            "delivery": None}


async def _get(api: Api, path: str, accept: str) -> tuple[int, str, str]:
    response = await api.get(path, headers={"Accept": accept})
    return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_ndjson_streams_every_recipient_in_position_order(api: Api) -> None:
    run_id = await _run(api)
    status, media, text = await _get(api, f"/v1/runs/{run_id}/recipients", "application/x-ndjson")
    assert (status, media) == (200, "application/x-ndjson")
    lines = text.splitlines()
    assert len(lines) == SIZE
    assert [json.loads(line) for line in lines] == [_expected(n) for n in range(SIZE)]


async def test_csv_has_a_header_and_quotes_what_needs_it(api: Api) -> None:
    run_id = await _run(api)
    status, media, text = await _get(api, f"/v1/runs/{run_id}/recipients",
                                     "text/csv, application/json;q=0.5")
    assert (status, media) == (200, "text/csv; charset=utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == SIZE
    assert [int(row["position"]) for row in rows] == list(range(SIZE))
    assert rows[7]["error"] == 'said "no", then\nleft'
    expected = {k: "" if v is None else str(v) for k, v in _expected(10).items()
                if k != "delivery"}  # CSV: the outcome columns (delivery is in NDJSON)
    assert rows[10] == expected
    counter = RecordCounter(csv=True)
    for start in range(0, len(text), 100):  # split anywhere, inside quotes too
        counter.feed(text[start:start + 100].encode())
    assert counter.records == SIZE


@pytest.mark.parametrize(("query", "expected"), [
    ("status=failed", [n for n in range(SIZE) if n % 7 == 0]),
    ("reason=time_cap", [n for n in range(SIZE) if n % 5 == 0 and n % 7 != 0]),
    ("status=sent&cursor=", None),
    ("status=excluded&reason=timeout", []),
])
async def test_streams_take_the_json_filters(api: Api, query: str,
                                             expected: list[int] | None) -> None:
    run_id = await _run(api)
    if expected is None:  # a cursor: the stream starts after it
        page = await api.json("GET", f"/v1/runs/{run_id}/recipients?status=sent&limit=3", 200)
        query += page["next_cursor"]
        expected = [n for n in range(SIZE) if n % 7 and n % 5][3:]
    status, _, text = await _get(api, f"/v1/runs/{run_id}/recipients?{query}",
                                 "application/x-ndjson")
    assert status == 200
    assert [json.loads(line)["position"] for line in text.splitlines()] == expected


async def test_json_stays_the_default_and_a_page(api: Api) -> None:
    run_id = await _run(api)
    for accept in (None, "*/*", "application/json", "application/json, text/csv;q=0.9",
                   "text/csv;q=0, application/x-ndjson;q=0"):
        headers = {"Accept": accept} if accept else {}
        response = await api.get(f"/v1/runs/{run_id}/recipients?limit=2", headers=headers)
        assert response.status == 200, accept
        assert response.content_type == "application/json"
        page = await response.json()
        assert page["items"] == [_expected(0), _expected(1)]
        assert page["next_cursor"] is not None


async def test_errors_come_before_the_stream(api: Api) -> None:
    status, media, _ = await _get(api, "/v1/runs/run_nope/recipients", "text/csv")
    assert (status, media) == (404, "application/problem+json")
    run_id = await _run(api)
    status, media, _ = await _get(api, f"/v1/runs/{run_id}/recipients?status=bogus",
                                  "application/x-ndjson")
    assert (status, media) == (422, "application/problem+json")
    response = await api.get(f"/v1/runs/{run_id}/recipients", token=None,
                             headers={"Accept": "text/csv"})
    assert response.status == 401


async def test_cli_export_writes_the_stream_and_counts_it(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = await _run(api)
    code, out, err = await cli(api, capsys, "runs", "export", run_id, "--status", "failed",
                               "--format", "ndjson")
    assert code == 0
    failed = [n for n in range(SIZE) if n % 7 == 0]
    assert [json.loads(line)["position"] for line in out.splitlines()] == failed
    assert err == f"exported {len(failed):,} recipients\n"
    code, out, err = await cli(api, capsys, "runs", "export", run_id)
    assert code == 0
    assert len(list(csv.DictReader(io.StringIO(out, newline="")))) == SIZE
    assert err == f"exported {SIZE:,} recipients\n"
    code, _, err = await cli(api, capsys, "runs", "export", "run_nope")
    assert (code, err) == (1, "campaignd: 404 not_found: no run with this id\n")


async def test_a_failure_mid_stream_truncates_the_transfer(api: Api) -> None:
    """The export's database session dies after the first bytes: the client must see an
    incomplete transfer, not a well-formed short file."""
    run_id = await _run(api)
    await api.pool.execute(
        """INSERT INTO run_recipients (run_id, position, profile_id, status, attempts)
           SELECT $1, n, 'q' || n, 'sent', 1 FROM generate_series($2::int, 300000) AS n""",
        run_id, SIZE)
    response = await api.get(f"/v1/runs/{run_id}/recipients",
                             headers={"Accept": "application/x-ndjson"})
    assert response.status == 200
    first = await response.content.readline()
    assert json.loads(first)["position"] == 0
    killed = await api.pool.fetchval(
        """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
           WHERE pid <> pg_backend_pid() AND query LIKE '%FROM run_recipients WHERE%'""")
    assert killed == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        while await response.content.read(1 << 16):
            pass

"""A thin client of campaignd's HTTP API (SPEC §4) for the benches."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp

TERMINAL_RUN_STATUSES = frozenset({"completed", "cancelled", "failed"})


class BenchError(Exception):
    """The bench cannot go on: the message says what the daemon did instead."""


class ApiMissing(BenchError):
    """An endpoint of SPEC §4 is not served (yet) by this daemon."""


def profile_line(index: int) -> dict[str, Any]:
    """Profile number `index`: an email address and a first name for the templates."""
    return {
        "id": f"p{index:08d}",
        "email": f"user{index}@example.test",
        "attributes": {"first_name": f"Ann{index % 1000}"},
    }


def profile_ndjson(start: int, stop: int) -> bytes:
    return "".join(
        f'{{"id":"p{i:08d}","email":"user{i}@example.test",'
        f'"attributes":{{"first_name":"Ann{i % 1000}"}}}}\n'
        for i in range(start, stop)
    ).encode()


EMAIL_CONTENT = {
    "from": "bench@example.test",
    "subject": "Hi {{ profile.attributes.first_name }}",
    "text": "Your code is {{ context.promo }}. See you soon.",
}


class Api:
    """campaignd's API at `base_url`, with a bearer token."""

    def __init__(self, base_url: str, token: str, *, connections: int = 32) -> None:
        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            base_url,
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=600),
        )

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def request(
        self, method: str, path: str, *, expect: Iterable[int] = (200,), **kwargs: Any
    ) -> Any:
        """The decoded JSON answer; BenchError (ApiMissing for an unknown route) otherwise."""
        async with self.session.request(method, path, **kwargs) as response:
            raw = await response.read()
            if response.status in expect:
                return json.loads(raw) if raw else None
        detail = raw[:500].decode(errors="replace")
        if response.status in (404, 405) and _route_missing(response.status, raw):
            raise ApiMissing(f"{method} {path}: not served by this daemon ({response.status})")
        raise BenchError(f"{method} {path} -> {response.status}: {detail}")

    async def loop_lag(self) -> dict[str, float]:
        """The daemon's `campaignd_event_loop_lag_seconds` buckets (cumulative, by `le`);
        empty from a daemon without it."""
        async with self.session.get("/metrics") as response:
            text = await response.text()
        buckets: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("campaignd_event_loop_lag_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                buckets[le] = float(line.rsplit(" ", 1)[1])
        return buckets

    async def require(self, *paths: str) -> None:
        """Fail with ApiMissing unless the list endpoints exist (the API has landed)."""
        for path in paths:
            await self.request("GET", path)

    # -- profiles and audiences ---------------------------------------------------------

    async def import_profiles(
        self, count: int, audience: str, *, start: int = 0, chunk: int = 20_000
    ) -> dict[str, Any]:
        """Stream `count` NDJSON profiles into `audience`; the answer plus the rate."""
        await self.request("PUT", f"/v1/audiences/{audience}", json={"name": audience},
                           expect=(200, 201))

        async def body() -> AsyncIterator[bytes]:
            for offset in range(start, start + count, chunk):
                yield profile_ndjson(offset, min(offset + chunk, start + count))
                await asyncio.sleep(0)

        began = time.monotonic()
        answer = await self.request(
            "POST", "/v1/profiles/import", params={"audience": audience}, data=body(),
            headers={"Content-Type": "application/x-ndjson"}, expect=(200, 201, 202),
        )
        seconds = time.monotonic() - began
        return {"answer": answer, "seconds": seconds, "per_s": count / seconds}

    async def add_members(self, audience: str, count: int, *, chunk: int = 50_000) -> None:
        """Add profiles p00000000.. (the first `count` imported) to `audience`."""
        await self.request("PUT", f"/v1/audiences/{audience}", json={"name": audience},
                           expect=(200, 201))

        async def body() -> AsyncIterator[bytes]:
            for offset in range(0, count, chunk):
                yield "".join(
                    f'{{"profile_id":"p{i:08d}"}}\n'
                    for i in range(offset, min(offset + chunk, count))
                ).encode()
                await asyncio.sleep(0)

        await self.request(
            "POST", f"/v1/audiences/{audience}/members", data=body(),
            headers={"Content-Type": "application/x-ndjson"}, expect=(200, 201, 202),
        )

    # -- campaigns, triggers, runs ------------------------------------------------------

    async def create_campaign(
        self,
        campaign_id: str,
        *,
        audience: str | None = None,
        rate: int | None = None,
        pool: str | None = None,
        start_at: str | None = None,
        end_at: str | None = None,
        activate: bool = True,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": campaign_id, "name": campaign_id, "channel": "email",
            "content": EMAIL_CONTENT,
        }
        if audience is not None:
            body["audience"] = audience
        if start_at is not None or end_at is not None:
            body["schedule"] = {"start_at": start_at, "end_at": end_at}
        if rate is not None or pool is not None:
            body["throttle"] = {"rate_per_second": rate, "pool": pool}
        created: dict[str, Any] = await self.request(
            "POST", "/v1/campaigns", json=body, expect=(201,)
        )
        if activate:
            await self.request("POST", f"/v1/campaigns/{campaign_id}/activate", expect=(200,))
        return created

    async def trigger(
        self, campaign_id: str, body: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": key} if key else None
        answer: dict[str, Any] = await self.request(
            "POST", f"/v1/campaigns/{campaign_id}/triggers", json=body, headers=headers,
            expect=(202,),
        )
        return answer

    async def run(self, run_id: str) -> dict[str, Any]:
        report: dict[str, Any] = await self.request("GET", f"/v1/runs/{run_id}")
        return report

    async def cancel(self, run_id: str) -> None:
        await self.request("POST", f"/v1/runs/{run_id}/cancel", expect=(200, 202, 409))

    async def wait_run(
        self, run_id: str, *, within: float, statuses: frozenset[str] = TERMINAL_RUN_STATUSES,
        interval: float = 0.2,
    ) -> dict[str, Any]:
        """Poll the run until its status is one of `statuses`; BenchError after `within` s."""
        deadline = time.monotonic() + within
        while True:
            report = await self.run(run_id)
            if report["status"] in statuses:
                return report
            if time.monotonic() > deadline:
                raise BenchError(
                    f"run {run_id} still {report['status']} after {within:.0f} s: "
                    f"counts {json.dumps(report.get('counts'))}"
                )
            await asyncio.sleep(interval)


def _route_missing(status: int, raw: bytes) -> bool:
    """True for the router's own 404/405 (unknown path or method), not a handler's 404."""
    if status == 405:
        return True
    try:
        problem = json.loads(raw)
    except ValueError:
        return True
    # The daemon's "unknown campaign" 404s say which; the router's detail is the bare title.
    return isinstance(problem, dict) and problem.get("detail") in (None, "", "Not Found")

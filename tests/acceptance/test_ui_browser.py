"""The run page in a real browser (Debian chromium via Playwright) against the real daemon:
sign in, watch a sending run's counts and curve change, no request off 127.0.0.1, the token
never in a URL; a screenshot of the page (docs/ui-run.png when CAMPAIGND_UI_SCREENSHOT=1)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.acceptance.conftest import DaemonFactory

CHROMIUM = "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ui-run.png"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no {CHROMIUM} (.ci/run installs Debian's chromium)")


async def _points(page: object) -> int:
    value = await page.get_attribute("#line", "points")  # type: ignore[attr-defined]
    return len((value or "").split())


async def test_the_run_page_updates_live_in_a_browser(
    daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    daemon = daemon_factory()
    await daemon.start()
    async with daemon.client() as http:
        campaign = {"id": "b", "name": "Winter <b>sale</b>", "channel": "sms",
                    "content": {"body": "hi"}, "throttle": {"rate_per_second": 5}}
        assert (await http.post("/v1/campaigns", json=campaign)).status == 201
        assert (await http.post("/v1/campaigns/b/activate")).status == 200
        recipients = [{"profile_id": f"p{i}", "phone": f"+336123456{i:02d}"} for i in range(30)]
        recipients.append({"profile_id": "nophone"})
        response = await http.post("/v1/campaigns/b/triggers", json={"recipients": recipients})
        run_id = (await response.json())["run_id"]

    urls: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        page = await browser.new_page(viewport={"width": 960, "height": 900})
        page.on("request", lambda request: urls.append(request.url))
        await page.goto(f"{daemon.url}/ui/runs/{run_id}")
        assert page.url.endswith("/ui/login")
        await page.fill("input[name=token]", daemon.admin_token)
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{daemon.url}/ui/")
        assert "Winter &lt;b&gt;sale&lt;/b&gt;" in await page.content()
        await page.goto(f"{daemon.url}/ui/runs/{run_id}")
        first_sent = int(await page.text_content("#sent") or "0")
        first_points = await _points(page)
        async with asyncio.timeout(30):
            while int(await page.text_content("#sent") or "0") <= first_sent:
                await asyncio.sleep(0.2)
            while await page.text_content("#status") != "completed":
                await asyncio.sleep(0.2)
        assert await _points(page) > max(first_points, 2)
        async with daemon.client() as http:
            report = await (await http.get(f"/v1/runs/{run_id}")).json()
        counts = report["counts"]
        for name in ("targeted", "sent", "failed", "pending"):
            assert int(await page.text_content(f"#{name}") or "-1") == counts[name], name
        assert int(await page.text_content("#excluded") or "-1") == sum(
            counts["excluded"].values())
        assert counts["sent"] == 30
        # The tree is not written by a test run unless asked: the docs image is refreshed by hand.
        target = DOCS_SCREENSHOT if os.environ.get("CAMPAIGND_UI_SCREENSHOT") else (
            tmp_path / "ui-run.png")
        await page.locator("main").screenshot(path=str(target))
        assert target.stat().st_size > 0
        await browser.close()
    assert urls and all(urlsplit(url).hostname == "127.0.0.1" for url in urls), urls
    assert not [url for url in urls if daemon.admin_token in url]
    assert await daemon.terminate() == 0

"""`campaignd runs show|watch` against the real daemon, following a throttled run to its end."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.acceptance.conftest import DaemonFactory


async def test_watch_follows_a_run_to_its_summary(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    await daemon.start()
    async with daemon.client() as http:
        campaign = {"id": "w", "name": "w", "channel": "sms", "content": {"body": "hi"},
                    "throttle": {"rate_per_second": 4}}
        assert (await http.post("/v1/campaigns", json=campaign)).status == 201
        assert (await http.post("/v1/campaigns/w/activate")).status == 200
        recipients = [{"profile_id": f"p{i}", "phone": f"+3361234560{i}"} for i in range(6)]
        recipients.append({"profile_id": "nophone"})
        response = await http.post("/v1/campaigns/w/triggers", json={"recipients": recipients})
        assert response.status == 202
        run_id = (await response.json())["run_id"]

    common = ["--url", daemon.url, "--token", daemon.admin_token]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "runs", "watch", run_id, "--interval", "0.3", *common,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) >= 3  # several progress lines while 6 messages go out at 4/s
    assert lines[-2].startswith("completed") and "6/6" not in lines[0]
    assert "/s" in lines[-2] and "deadline" in lines[-2]
    assert lines[-1] == next(
        line for line in lines if line.startswith(run_id)
    ) and "sent 6" in lines[-1] and "no_address 1" in lines[-1] and "(delivered)" in lines[-1]

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "runs", "show", run_id, *common,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["counts"]["sent"] == 6 and report["counts"]["targeted"] == 7

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", "runs", "show", "run_nope", *common,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 1 and "404 not_found" in err.decode()
    assert await daemon.terminate() == 0

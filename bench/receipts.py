"""Bench 8, delivery receipts: what the receipt endpoint takes, and what it costs the sends.

The daemon sends an unthrottled campaign through the `webhook` provider (with a secret);
then receipts for those messages are posted to `POST /v1/receipts/webhook/gw`, signed per
Standard Webhooks, as fast as 64 connections go: one receipt per request (as Twilio and
most gateways do) and NDJSON batches of 100. Reported: receipts/s and request latency.

Then a campaign throttled at 2,000 msg/s runs three times: alone; while receipts come in
at 2,000/s one per request (each moving a message's delivery to `delivered`); and while
they come at 2,000/s in requests of 20 (moving it to `failed`). Reported: the runs' rate
profiles (achieved/configured, largest 1 s and 100 ms windows), the receipts' own rate
and latency meanwhile, and the CPU of the daemon and of the whole machine in each run
(a machine already busy slows the sends whatever the daemon does).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import asyncpg

from bench.harness import DaemonProcess, Harness, run_to_end
from bench.runner import Options, main
from bench.stats import rate_profile, summary_ms

KEY = b"bench-receipts-key-0123456789abc"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
RATE = 2000
CONNECTIONS = 64
BATCH = 100
PACED_BATCH = 20  # receipts per request in the third paced run (100 requests/s)
FULL = {"flood": 60_000, "paced": 24_000}  # 12 s at 2,000/s
SMOKE = {"flood": 2_000, "paced": 2_000}


def _signed(webhook_id: str, body: bytes, content_type: str) -> dict[str, str]:
    timestamp = str(int(time.time()))
    digest = hmac.digest(KEY, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return {"Content-Type": content_type, "webhook-id": webhook_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": "v1," + base64.b64encode(digest).decode()}


class Poster:
    """Posts receipts to the daemon from CONNECTIONS workers; times every request."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.errors: dict[int, int] = {}
        self.sequence = 0

    async def post(self, session: aiohttp.ClientSession, lines: Sequence[dict[str, Any]]
                   ) -> None:
        self.sequence += 1
        if len(lines) == 1:
            body, kind = json.dumps(lines[0]).encode(), "application/json"
        else:
            body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
            kind = "application/x-ndjson"
        headers = _signed(f"bench-{self.sequence}", body, kind)
        began = time.perf_counter()
        async with session.post(self.url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                self.errors[response.status] = self.errors.get(response.status, 0) + 1
        self.latencies.append(time.perf_counter() - began)

    async def flood(self, ids: Sequence[str], status: str, per_request: int) -> float:
        """Post every receipt as fast as the workers go; receipts per second."""
        groups = [[{"id": i, "status": status} for i in ids[n:n + per_request]]
                  for n in range(0, len(ids), per_request)]
        queue = iter(groups)
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def worker() -> None:
                for group in queue:
                    await self.post(session, group)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
            seconds = time.perf_counter() - began
        return len(ids) / seconds

    async def paced(self, ids: Sequence[str], status: str, rate: float,
                    stop: asyncio.Event, per_request: int = 1) -> dict[str, Any]:
        """Receipts at `rate` per second (`per_request` in each request) until `ids` run out
        or `stop`."""
        connector = aiohttp.TCPConnector(limit=CONNECTIONS * 2)
        sent = 0
        async with aiohttp.ClientSession(connector=connector) as session:
            pending: set[asyncio.Task[None]] = set()
            began = time.perf_counter()
            for index in range(0, len(ids), per_request):
                if stop.is_set():
                    break
                delay = began + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # the load's pacing, in the bench process
                group = [{"id": i, "status": status} for i in ids[index:index + per_request]]
                task = asyncio.ensure_future(self.post(session, group))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += len(group)
            await asyncio.gather(*pending)
            seconds = time.perf_counter() - began
        return {"receipts": sent, "per_s": round(sent / seconds, 1),
                "per_request": per_request}


async def _message_ids(database_url: str, run_id: str) -> list[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT provider_message_id FROM run_recipients WHERE run_id = $1 "
            "AND status = 'sent' ORDER BY position", run_id)
    finally:
        await connection.close()
    return [row["provider_message_id"] for row in rows]


async def _daemon(harness: Harness) -> DaemonProcess:
    """The harness's daemon, its `gw` provider given a secret (for receipts)."""
    config = harness.daemon_config().replace(
        f'url = "{harness.gateway.hook_url}"',
        f'url = "{harness.gateway.hook_url}"\nsecret = "{SECRET}"')
    folder = harness.folder / f"daemon{len(harness.daemons)}"
    folder.mkdir()
    daemon = DaemonProcess(folder, config)
    harness.daemons.append(daemon)
    await daemon.start()
    return daemon


async def bench(options: Options) -> dict[str, Any]:
    sizes = SMOKE if options.smoke else FULL
    async with Harness("receipts", smoke=options.smoke,
                       database_url=options.database_url) as harness:
        assert harness.database is not None
        daemon = await _daemon(harness)
        gateway = harness.gateway
        poster = Poster(f"{daemon.url}/v1/receipts/webhook/gw")
        async with daemon.api() as api:
            await api.require("/v1/campaigns")
            await api.import_profiles(sizes["flood"], "flood")
            await api.import_profiles(sizes["paced"], "paced", start=sizes["flood"])
            await harness.settle()
            await api.create_campaign("flood", audience="flood")
            flood = await run_to_end(api, gateway, "flood", expected=sizes["flood"], rate=None)
            ids = await _message_ids(harness.database.url, flood["id"])
            half = len(ids) // 2
            single = await poster.flood(ids[:half], "sent", 1)
            single_latency = summary_ms(poster.latencies)
            poster.latencies = []
            batched = await poster.flood(ids[half:], "sent", BATCH)
            batched_latency = summary_ms(poster.latencies)
            poster.latencies = []

            for name in ("alone", "with_receipts", "with_batched_receipts"):
                await api.create_campaign(name, audience="paced", rate=RATE)
            await gateway.reset()
            alone_cpu = harness.cpu_window(daemon)
            alone_cpu.start()
            alone = await run_to_end(api, gateway, "alone", expected=sizes["paced"], rate=RATE)
            alone_cpu.stop()
            alone_profile = rate_profile((await gateway.arrivals()).times_for(campaign="alone"),
                                         RATE)
            await gateway.reset()
            stop = asyncio.Event()
            together_cpu = harness.cpu_window(daemon)
            together_cpu.start()
            receipts_task = asyncio.ensure_future(poster.paced(ids, "delivered", RATE, stop))
            together = await run_to_end(api, gateway, "with_receipts",
                                        expected=sizes["paced"], rate=RATE)
            stop.set()
            together_cpu.stop()
            paced = await receipts_task
            together_profile = rate_profile(
                (await gateway.arrivals()).times_for(campaign="with_receipts"), RATE)
            paced["latency"] = summary_ms(poster.latencies)
            poster.latencies = []
            await gateway.reset()
            stop = asyncio.Event()
            batched_cpu = harness.cpu_window(daemon)
            batched_cpu.start()
            batched_task = asyncio.ensure_future(
                poster.paced(ids, "failed", RATE, stop, per_request=PACED_BATCH))
            beside_batched = await run_to_end(api, gateway, "with_batched_receipts",
                                              expected=sizes["paced"], rate=RATE)
            stop.set()
            batched_cpu.stop()
            paced_batched = await batched_task
            paced_batched["latency"] = summary_ms(poster.latencies)
            batched_profile = rate_profile(
                (await gateway.arrivals()).times_for(campaign="with_batched_receipts"), RATE)
            report = await api.run(flood["id"])

    result: dict[str, Any] = {
        **harness.describe(),
        "messages": sizes["flood"],
        "single_per_s": round(single, 1),
        "single_latency": single_latency,
        "batched_per_s": round(batched, 1),
        "batch_size": BATCH,
        "batched_latency": batched_latency,
        "errors": poster.errors,
        "send_alone": alone_profile,
        "send_with_receipts": together_profile,
        "receipts_meanwhile": paced,
        "cpu_alone": alone_cpu.as_dict(),
        "cpu_with_receipts": together_cpu.as_dict(),
        "send_with_batched_receipts": batched_profile,
        "batched_receipts_meanwhile": paced_batched,
        "cpu_with_batched_receipts": batched_cpu.as_dict(),
        "ratio_change": (None if not alone_profile["ratio"] or not together_profile["ratio"]
                         else round(together_profile["ratio"] / alone_profile["ratio"], 4)),
        "flood_delivery": report["counts"]["delivery"],
        "finished": alone["finished"] and together["finished"] and beside_batched["finished"],
    }
    result["summary"] = [
        f"receipts: {result['single_per_s']}/s one per request "
        f"(p50 {single_latency['p50_ms']} ms, p99 {single_latency['p99_ms']} ms), "
        f"{result['batched_per_s']}/s in NDJSON batches of {BATCH}",
        f"send at {RATE}/s alone: ratio {alone_profile['ratio']}, max 1 s window "
        f"{alone_profile['max_1s_window']}; with {paced['per_s']} receipts/s meanwhile: "
        f"ratio {together_profile['ratio']}, max 1 s window "
        f"{together_profile['max_1s_window']} (receipt p99 {paced['latency']['p99_ms']} ms)",
        f"with {paced_batched['per_s']} receipts/s in requests of {PACED_BATCH}: ratio "
        f"{batched_profile['ratio']}, max 1 s window {batched_profile['max_1s_window']} "
        f"(request p99 {paced_batched['latency']['p99_ms']} ms)",
        f"daemon CPU share alone {result['cpu_alone']['daemon_cpu_share']}, with receipts "
        f"{result['cpu_with_receipts']['daemon_cpu_share']}, with batched receipts "
        f"{result['cpu_with_batched_receipts']['daemon_cpu_share']}; machine busy cores "
        f"{result['cpu_alone']['machine_busy_cores']}, "
        f"{result['cpu_with_receipts']['machine_busy_cores']}, "
        f"{result['cpu_with_batched_receipts']['machine_busy_cores']}",
        f"errors: {poster.errors or 'none'}; flood delivery counts {result['flood_delivery']}",
    ]
    return result


if __name__ == "__main__":
    main("receipts", bench, __doc__.splitlines()[0])

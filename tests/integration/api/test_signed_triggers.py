"""Signed triggers fire the campaign they were signed for only: a webhook-id is taken once,
across all campaigns, and a secret may be bound to the campaigns it may trigger."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from daemon.infra import config as config_module
from tests.integration.api.conftest import (
    OLD_WEBHOOK_SECRET,
    START,
    WEBHOOK_SECRET,
    Api,
)

BODY = json.dumps({"context": {"promo": "W"}})
WINDOW = {"end_at": "2026-04-01T00:00:00Z"}


def _signed(secret: str, msg_id: str, when: Any = START, body: str = BODY) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, body),
        "Content-Type": "application/json",
    }


async def _campaigns(api: Api, *ids: str) -> None:
    await api.audience("a", "p1")
    for campaign_id in ids:
        await api.live_campaign(id=campaign_id, audience="a", schedule=WINDOW)


def _trigger(campaign_id: str, query: str = "") -> str:
    return f"/v1/campaigns/{campaign_id}/triggers{query}"


async def _runs(api: Api, campaign_id: str) -> int:
    count: int = await api.pool.fetchval(
        "SELECT count(*) FROM runs WHERE campaign_id = $1", campaign_id)
    return count


def _bind(api: Api, tmp_path: Path, campaigns: list[str]) -> None:
    """WEBHOOK_SECRET may trigger only `campaigns`; OLD_WEBHOOK_SECRET any campaign."""
    path = tmp_path / "campaignd.toml"
    path.write_text(
        "[auth]\nwebhook_secrets = ["
        f'{{ secret = "{WEBHOOK_SECRET}", campaigns = {json.dumps(campaigns)} }}, '
        f'"{OLD_WEBHOOK_SECRET}"]\n'
    )
    api.ctx.config = config_module.load(path, {})


async def test_a_signed_request_replayed_at_another_campaign_is_refused(api: Api) -> None:
    await _campaigns(api, "w2", "w3")
    headers = _signed(WEBHOOK_SECRET, "msg_1")
    first = await api.json("POST", _trigger("w2"), 202, data=BODY, headers=headers, token=None)
    problem = await api.json("POST", _trigger("w3"), 422, data=BODY, headers=headers,
                             token=None)
    assert problem["code"] == "idempotency_key_reused"
    assert await _runs(api, "w3") == 0
    # At its own campaign, the replay still answers with its run.
    again = await api.json("POST", _trigger("w2"), 202, data=BODY, headers=headers, token=None)
    assert again["run_id"] == first["run_id"]
    assert await _runs(api, "w2") == 1


async def test_a_webhook_id_refused_at_its_first_campaign_is_taken_all_the_same(
    api: Api,
) -> None:
    await _campaigns(api, "w3")
    headers = _signed(WEBHOOK_SECRET, "msg_1")
    await api.json("POST", _trigger("nowhere"), 404, data=BODY, headers=headers, token=None)
    problem = await api.json("POST", _trigger("w3"), 422, data=BODY, headers=headers,
                             token=None)
    assert problem["code"] == "idempotency_key_reused"


async def test_a_signed_dry_run_replayed_at_another_campaign_is_refused(api: Api) -> None:
    await _campaigns(api, "w2", "w3")
    headers = _signed(WEBHOOK_SECRET, "msg_1")
    await api.json("POST", _trigger("w2", "?dry_run=true"), 200, data=BODY, headers=headers,
                   token=None)
    await api.json("POST", _trigger("w3"), 422, data=BODY, headers=headers, token=None)
    # Its own campaign may still take it for real.
    await api.json("POST", _trigger("w2"), 202, data=BODY, headers=headers, token=None)


async def test_bearer_idempotency_keys_stay_per_campaign(api: Api) -> None:
    await _campaigns(api, "w2", "w3")
    key = {"Idempotency-Key": "msg_1"}
    await api.json("POST", _trigger("w2"), 202, json={}, headers=key, token="trigger")
    await api.json("POST", _trigger("w3"), 202, json={}, headers=key, token="trigger")


async def test_a_bound_secret_triggers_its_campaigns_only(api: Api, tmp_path: Path) -> None:
    await _campaigns(api, "w1", "w2", "w3")
    _bind(api, tmp_path, ["w1", "w2"])
    for n, campaign_id in enumerate(("w1", "w2")):
        await api.json("POST", _trigger(campaign_id), 202, data=BODY,
                       headers=_signed(WEBHOOK_SECRET, f"msg_{n}"), token=None)
    problem = await api.json("POST", _trigger("w3"), 403, data=BODY,
                             headers=_signed(WEBHOOK_SECRET, "msg_3"), token=None)
    assert problem["code"] == "campaign_not_allowed"
    assert await _runs(api, "w3") == 0
    # The refused request, replayed where the secret may trigger, is refused too.
    await api.json("POST", _trigger("w1"), 422, data=BODY,
                   headers=_signed(WEBHOOK_SECRET, "msg_3"), token=None)
    # An unbound secret still triggers any campaign.
    await api.json("POST", _trigger("w3"), 202, data=BODY,
                   headers=_signed(OLD_WEBHOOK_SECRET, "msg_4"), token=None)


async def test_expired_webhook_ids_are_pruned_by_later_triggers(api: Api) -> None:
    await _campaigns(api, "w2")
    for n in range(3):
        await api.json("POST", _trigger("w2"), 202, data=BODY,
                       headers=_signed(WEBHOOK_SECRET, f"old_{n}"), token=None)
    api.clock.advance(7 * 60)
    for n in range(2):
        await api.json("POST", _trigger("w2"), 202, data=BODY,
                       headers=_signed(WEBHOOK_SECRET, f"new_{n}", api.clock.now()), token=None)
    left = await api.pool.fetch("SELECT webhook_id FROM signed_trigger_ids ORDER BY 1")
    assert [r["webhook_id"] for r in left] == ["new_0", "new_1"]


async def test_simultaneous_requests_with_one_webhook_id_at_two_campaigns_make_one_run(
    api: Api,
) -> None:
    await _campaigns(api, "w2", "w3")
    headers = _signed(WEBHOOK_SECRET, "msg_race")

    async def fire(campaign_id: str) -> int:
        response = await api.post(_trigger(campaign_id), data=BODY, headers=headers, token=None)
        return response.status

    statuses = await asyncio.gather(*(fire(c) for c in ("w2", "w3") * 10))
    assert sorted(set(statuses)) == [202, 422], statuses
    runs = await api.pool.fetchval("SELECT count(*) FROM runs")
    assert runs == 1

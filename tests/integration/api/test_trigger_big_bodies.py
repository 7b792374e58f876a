"""Triggers with many inline recipients: validated off the loop, stored whole, replayable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from tests.integration.api.conftest import Api

TRIGGERS = "/v1/campaigns/spring-sale/triggers"
WINDOW = {"end_at": "2026-04-01T00:00:00Z"}  # a windowed campaign takes many triggers
SMALL = {"recipients": [{"profile_id": "small", "email": "small@example.com"}]}


def _big_body(count: int, *, last_email: str | None = None) -> dict[str, Any]:
    recipients = [{"profile_id": f"p{n}", "email": f"p{n}@example.com",
                   "attributes": {"first_name": "Ann", "n": n}} for n in range(count)]
    if last_email is not None:
        recipients[-1]["email"] = last_email
    return {"context": {"promo": "X"}, "recipients": recipients}


async def test_a_small_trigger_is_answered_while_a_big_one_is_validated(api: Api) -> None:
    await api.live_campaign(schedule=WINDOW)
    await api.json("POST", TRIGGERS, 202, json=SMALL)  # the token is cached from here on
    # 10,000 recipients (the default limit), the last one invalid: the big trigger is
    # refused (422) as soon as its validation ends, without touching the database.
    raw = json.dumps(_big_body(10_000, last_email="not an address")).encode()
    sent = asyncio.Event()

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 65536):
            yield raw[start:start + 65536]
        sent.set()

    finished: list[tuple[str, int]] = []

    async def post(name: str, **kwargs: Any) -> None:
        response = await api.post(TRIGGERS, headers={"Content-Type": "application/json"},
                                  **kwargs)
        await response.read()
        finished.append((name, response.status))

    big = asyncio.create_task(post("big", data=stream()))
    await sent.wait()
    await post("small", data=json.dumps(SMALL))
    await big
    # Validated on the loop, the big trigger would hold it until its 422 was written.
    assert finished == [("small", 202), ("big", 422)]


async def test_a_trigger_of_10000_recipients_stores_each_and_replays_by_key(api: Api) -> None:
    await api.live_campaign(schedule=WINDOW)
    body = _big_body(10_000)
    headers = {"Idempotency-Key": "big-1"}
    first = await api.json("POST", TRIGGERS, 202, json=body, headers=headers)
    again = await api.json("POST", TRIGGERS, 202, json=body, headers=headers)
    assert again["run_id"] == first["run_id"]
    rows = await api.pool.fetch(
        "SELECT position, profile_id, data FROM run_inline_recipients WHERE run_id = $1 "
        "ORDER BY position", first["run_id"])
    assert [r["profile_id"] for r in rows] == [f"p{n}" for n in range(10_000)]
    assert rows[9_999]["data"] == {"email": "p9999@example.com",
                                   "attributes": {"first_name": "Ann", "n": 9_999}}
    body["recipients"][-1]["attributes"]["n"] = -1  # the same key, another body
    other = await api.json("POST", TRIGGERS, 422, json=body, headers=headers)
    assert other["code"] == "idempotency_key_reused"


async def test_a_big_trigger_names_every_bad_recipient_as_a_small_one_would(api: Api) -> None:
    await api.live_campaign(schedule=WINDOW)
    body = _big_body(1_000)  # ~90 KiB: validated in steps, off the loop
    body["recipients"][5]["email"] = "nope"
    body["recipients"][780]["email"] = "nope either"
    refused = await api.json("POST", TRIGGERS, 422, json=body)
    assert [e["loc"] for e in refused["errors"]] == ["recipients.5.email", "recipients.780.email"]
    both = await api.json("POST", TRIGGERS, 422, json={**_big_body(1_000), "audience": "a"})
    assert "not both" in both["detail"]
    api.reconfigure(CAMPAIGND_LIMITS_MAX_INLINE_RECIPIENTS="999")
    over = await api.json("POST", TRIGGERS, 422, json=_big_body(1_000))
    assert [e["loc"] for e in over["errors"]] == ["recipients"]

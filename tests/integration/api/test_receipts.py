"""Receipt endpoints over HTTP: Twilio signatures, Standard Webhooks, bad input, replays.

Twilio's signatures are computed here from Twilio's documented recipe (independently of
`daemon.receipts.twilio_signature`), and once more by the `twilio` package's own
RequestValidator.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from structlog.testing import capture_logs
from twilio.request_validator import RequestValidator

from daemon.api.signatures import sign
from daemon.receipts.writer import SERVICE_NAME, ReceiptWriter
from daemon.store import Pool
from tests.integration.api.conftest import WEBHOOK_KEY, WEBHOOK_SECRET, Api
from tests.integration.receipts.rows import RUN, make_run, mark_sent

PUBLIC = "https://campaigns.example.com"
TOKEN = "twilio-auth-token-0123456789abcd"
OTHER_KEY = b"another-key-another-key-another!!"
OTHER_SECRET = "whsec_" + base64.b64encode(OTHER_KEY).decode()


@pytest.fixture
def config_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "campaignd.toml"
    path.write_text(f"""
[server]
public_url = "{PUBLIC}"
[providers.tw]
kind = "twilio"
account_sid = "AC0123"
auth_token = "{TOKEN}"
from = "+15005550006"
[providers.hook]
kind = "webhook"
url = "http://127.0.0.1:9/send"
secret = "{WEBHOOK_SECRET}"
[providers.bare]
kind = "webhook"
url = "http://127.0.0.1:9/send"
[providers.mail]
kind = "smtp"
host = "127.0.0.1"
receipt_secret = "{OTHER_SECRET}"
[channels]
sms = "tw"
""")
    return {"CAMPAIGND_CONFIG": str(path)}


@pytest.fixture
async def writer(api: Api) -> AsyncIterator[ReceiptWriter]:
    import asyncio

    writer = ReceiptWriter(api.pool, api.clock, api.ctx.metrics, reconcile_interval=3600)
    await writer.start()
    api.ctx.services[SERVICE_NAME] = writer
    try:
        yield writer
    finally:
        await writer.stop(5.0, asyncio.Event())


def twilio_signature(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    """Twilio's recipe: the URL, then each parameter's name and value, names sorted."""
    data = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()
                            ).decode()


async def post_twilio(api: Api, params: dict[str, str], *, provider: str = "tw",
                      query: str = "", signature: str | None = "compute",
                      signed_url: str | None = None) -> Any:
    path = f"/v1/receipts/twilio/{provider}{query}"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature == "compute":
        signature = twilio_signature(signed_url or PUBLIC + path, params)
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    return await api.post(path, token=None, data=urlencode(params), headers=headers)


def status(sid: str, message_status: str, **more: str) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "MessageStatus": message_status,
            "SmsStatus": message_status, "AccountSid": "AC0123", "From": "+15005550006",
            "To": "+33600000000", "ApiVersion": "2010-04-01", **more}


def signed_headers(api: Api, body: bytes, webhook_id: str = "msg_1",
                   key: bytes = WEBHOOK_KEY, *, content_type: str = "application/json",
                   age: int = 0) -> dict[str, str]:
    timestamp = int(api.clock.now().timestamp()) - age
    return {"Content-Type": content_type, "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(key, webhook_id, timestamp, body)}


async def post_webhook(api: Api, body: bytes, provider: str = "hook", **kw: Any) -> Any:
    headers = kw.pop("headers", None) or signed_headers(api, body, **kw)
    return await api.post(f"/v1/receipts/webhook/{provider}", token=None, data=body,
                          headers=headers)


async def delivery(pool: Pool, position: int) -> str | None:
    value: str | None = await pool.fetchval(
        "SELECT delivery FROM run_recipients WHERE run_id = $1 AND position = $2", RUN, position)
    return value


async def receipts_stored(pool: Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM delivery_receipts")
    return count


def metric(api: Api, name: str, **labels: str) -> float:
    value = api.ctx.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- Twilio ---------------------------------------------------------------------------------------


async def test_a_signed_twilio_status_is_applied(api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=2)
    await mark_sent(api.pool, RUN, [0, 1], "tw")
    response = await post_twilio(api, status("SM0", "delivered"))
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["applied"] == 1 and body["received"] == 1
    assert await delivery(api.pool, 0) == "delivered"
    assert metric(api, "campaignd_deliveries_total", status="delivered") == 1


async def test_twilio_undelivered_is_a_bounce_with_its_error_code(api: Api,
                                                                  writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "tw")
    response = await post_twilio(api, status("SM0", "undelivered", ErrorCode="30005"))
    assert response.status == 200
    row = await api.pool.fetchrow("SELECT delivery, delivery_reason FROM run_recipients")
    assert (row["delivery"], row["delivery_reason"]) == ("bounced", "twilio_30005")


async def test_the_twilio_package_signature_is_accepted(api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "tw")
    params = status("SM0", "sent")
    query = f"?m={RUN}:0"
    signature = RequestValidator(TOKEN).compute_signature(
        f"{PUBLIC}/v1/receipts/twilio/tw{query}", params)
    response = await post_twilio(api, params, query=query, signature=signature)
    assert response.status == 200, await response.text()
    assert await delivery(api.pool, 0) == "sent"


async def test_a_twilio_status_before_the_outcome_is_kept_and_applied(
        api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    response = await post_twilio(api, status("SMearly", "delivered"), query=f"?m={RUN}:0")
    assert response.status == 200
    assert (await response.json())["pending"] == 1
    await mark_sent(api.pool, RUN, [0], "tw", message_id="SMearly")
    await writer.reconcile()
    assert await delivery(api.pool, 0) == "delivered"


@pytest.mark.parametrize("case", ["missing", "wrong token", "other url", "tampered"])
async def test_a_badly_signed_twilio_status_is_403_and_writes_nothing(
        api: Api, writer: ReceiptWriter, case: str) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "tw")
    params = status("SM0", "delivered")
    signature: str | None = {
        "missing": None,
        "wrong token": twilio_signature(PUBLIC + "/v1/receipts/twilio/tw", params, "nope"),
        "other url": twilio_signature("https://evil.example/v1/receipts/twilio/tw", params),
        "tampered": twilio_signature(PUBLIC + "/v1/receipts/twilio/tw",
                                     status("SM0", "undelivered")),
    }[case]
    with capture_logs() as logs:
        response = await post_twilio(api, params, signature=signature)
    assert response.status == 403
    assert (await response.json())["code"] == "invalid_signature"
    assert await receipts_stored(api.pool) == 0 and await delivery(api.pool, 0) is None
    warning = [e for e in logs if e["event"] == "receipt.rejected"]
    assert warning and warning[0]["provider"] == "tw" and warning[0]["log_level"] == "warning"
    assert TOKEN not in json.dumps(logs, default=str)


async def test_an_unknown_twilio_sid_is_404_and_counted(api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    response = await post_twilio(api, status("SMnone", "delivered"))
    assert response.status == 404
    assert (await response.json())["code"] == "unknown_message"
    assert metric(api, "campaignd_receipts_total", provider="tw", result="unknown") == 1


async def test_a_message_of_another_provider_is_404(api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "hook", message_id="SM0")
    response = await post_twilio(api, status("SM0", "delivered"), query=f"?m={RUN}:0")
    assert response.status == 404
    assert await delivery(api.pool, 0) is None


@pytest.mark.parametrize(("path", "kind"), [
    ("/v1/receipts/twilio/hook", "form"), ("/v1/receipts/twilio/nobody", "form"),
    ("/v1/receipts/webhook/tw", "json"), ("/v1/receipts/webhook/log", "json"),
])
async def test_a_provider_of_another_kind_is_404(api: Api, writer: ReceiptWriter, path: str,
                                                 kind: str) -> None:
    content_type = {"form": "application/x-www-form-urlencoded", "json": "application/json"}
    response = await api.post(path, token=None, data=b"{}",
                              headers={"Content-Type": content_type[kind]})
    assert response.status == 404
    assert (await response.json())["code"] == "unknown_provider"


@pytest.mark.parametrize(("params", "loc"), [
    ({"MessageSid": "SM0"}, "form.MessageStatus"),
    ({"MessageStatus": "delivered"}, "form.MessageSid"),
    ({"MessageSid": "SM0", "MessageStatus": "teleported"}, "form.MessageStatus"),
])
async def test_a_signed_but_incomplete_twilio_form_is_422(
        api: Api, writer: ReceiptWriter, params: dict[str, str], loc: str) -> None:
    response = await post_twilio(api, params)
    assert response.status == 422
    body = await response.json()
    assert body["errors"][0]["loc"] == loc
    assert response.content_type == "application/problem+json"


async def test_a_twilio_form_of_another_type_is_415(api: Api, writer: ReceiptWriter) -> None:
    response = await api.post("/v1/receipts/twilio/tw", token=None, json={"MessageSid": "x"})
    assert response.status == 415


# -- Standard Webhooks ---------------------------------------------------------------------------


async def test_a_signed_webhook_receipt_is_applied(api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "hook", message_id=f"{RUN}:0")
    body = json.dumps({"id": f"{RUN}:0", "status": "bounced", "reason": "mailbox full",
                       "at": "2026-03-01T12:00:05Z"}).encode()
    response = await post_webhook(api, body)
    assert response.status == 200, await response.text()
    row = await api.pool.fetchrow("SELECT delivery, delivery_reason, delivery_at "
                                  "FROM run_recipients")
    assert (row["delivery"], row["delivery_reason"]) == ("bounced", "mailbox full")
    assert row["delivery_at"].isoformat() == "2026-03-01T12:00:05+00:00"


async def test_an_ndjson_batch_is_taken_whole(api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=3)
    await mark_sent(api.pool, RUN, range(3), "hook", message_id="gw-{position}")
    lines = [{"id": "gw-0", "status": "delivered"}, {"id": "gw-1", "status": "failed"},
             {"id": "gw-9", "status": "delivered"}]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    response = await post_webhook(api, body, content_type="application/x-ndjson")
    assert response.status == 200
    answer = await response.json()
    assert (answer["applied"], answer["unknown"], answer["received"]) == (2, 1, 3)
    report = await api.json("GET", f"/v1/runs/{RUN}", 200)
    assert report["counts"]["delivery"] == {"delivered": 1, "bounced": 0, "failed": 1,
                                            "unknown": 1}


async def test_a_replayed_webhook_id_changes_nothing(api: Api, writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "hook", message_id="gw-0")
    first = json.dumps({"id": "gw-0", "status": "delivered"}).encode()
    assert (await post_webhook(api, first, webhook_id="msg_a")).status == 200
    replay = json.dumps({"id": "gw-0", "status": "bounced"}).encode()
    response = await post_webhook(api, replay, webhook_id="msg_a")
    assert response.status == 200 and (await response.json())["replayed"] is True
    assert await delivery(api.pool, 0) == "delivered"


@pytest.mark.parametrize("case", ["unsigned", "other secret", "stale", "tampered",
                                  "no secret"])
async def test_a_badly_signed_webhook_receipt_is_401_and_writes_nothing(
        api: Api, writer: ReceiptWriter, case: str) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "hook", message_id="gw-0")
    body = json.dumps({"id": "gw-0", "status": "delivered"}).encode()
    provider = "bare" if case == "no secret" else "hook"
    headers = {
        "unsigned": {"Content-Type": "application/json"},
        "other secret": signed_headers(api, body, key=OTHER_KEY),
        "stale": signed_headers(api, body, age=301),
        "tampered": signed_headers(api, body.replace(b"delivered", b"bounced")),
        "no secret": signed_headers(api, body),
    }[case]
    with capture_logs() as logs:
        response = await post_webhook(api, body, provider=provider, headers=headers)
    assert response.status == 401
    assert await receipts_stored(api.pool) == 0 and await delivery(api.pool, 0) is None
    assert [e["provider"] for e in logs if e["event"] == "receipt.rejected"] == [provider]
    assert WEBHOOK_SECRET not in json.dumps(logs, default=str)


@pytest.mark.parametrize(("body", "content_type", "code", "loc"), [
    (b"{not json", "application/json", "malformed_json", None),
    (b'{"id": "gw-0"}', "application/json", "validation_error", "body.status"),
    (b'{"id": "gw-0", "status": "eaten"}', "application/json", "validation_error",
     "body.status"),
    (b'{"id": 5, "status": "delivered"}', "application/json", "validation_error", "body.id"),
    (b'{"id": "gw-0", "status": "delivered", "at": "yesterday"}', "application/json",
     "validation_error", "body.at"),
    (b'[{"id": "gw-0", "status": "delivered"}]', "application/json", "validation_error",
     "body"),
    (b'{"id": "gw-0", "status": "delivered"}\n{"id": "gw-1"}\n', "application/x-ndjson",
     "validation_error", "line 2.status"),
    (b'{"id": "gw-0", "status": "delivered"}\n{oops\n', "application/x-ndjson",
     "malformed_json", None),
    (b"\n\n", "application/x-ndjson", "validation_error", "body"),
])
async def test_malformed_webhook_receipts_are_refused_whole(
        api: Api, writer: ReceiptWriter, body: bytes, content_type: str, code: str,
        loc: str | None) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "hook", message_id="gw-0")
    response = await post_webhook(api, body, content_type=content_type)
    answer = await response.json()
    assert response.status == (400 if code == "malformed_json" else 422), answer
    assert answer["code"] == code
    if loc is not None:
        assert answer["errors"][0]["loc"] == loc
    assert await receipts_stored(api.pool) == 0


async def test_an_email_service_reports_bounces_by_message_id(api: Api,
                                                              writer: ReceiptWriter) -> None:
    await make_run(api.pool, size=1)
    await mark_sent(api.pool, RUN, [0], "mail", message_id=f"<{RUN}=3A0@example.com>")
    body = json.dumps({"id": f"{RUN}=3A0@example.com", "status": "bounced",
                       "reason": "550 5.1.1 no such user"}).encode()
    response = await post_webhook(api, body, provider="mail", key=OTHER_KEY)
    assert response.status == 200, await response.text()
    assert await delivery(api.pool, 0) == "bounced"


# -- what the reports show -----------------------------------------------------------------------


async def _delivered_bounced_and_silent(api: Api) -> None:
    await make_run(api.pool, size=4)
    await mark_sent(api.pool, RUN, range(3), "tw")
    await post_twilio(api, status("SM0", "delivered"))
    await post_twilio(api, status("SM1", "undelivered", ErrorCode="30003"))
    await post_twilio(api, status("SM2", "sent"))


async def test_the_recipients_list_shows_and_filters_by_delivery(api: Api,
                                                                 writer: ReceiptWriter) -> None:
    await _delivered_bounced_and_silent(api)
    page = await api.json("GET", f"/v1/runs/{RUN}/recipients", 200, token="trigger")
    deliveries = [item["delivery"] for item in page["items"]]
    assert [d and d["status"] for d in deliveries] == ["delivered", "bounced", "sent", None]
    assert deliveries[1]["reason"] == "twilio_30003"
    assert deliveries[1]["at"] == "2026-03-01T12:00:00Z"
    bounced = await api.json("GET", f"/v1/runs/{RUN}/recipients?delivery=bounced", 200)
    assert [item["position"] for item in bounced["items"]] == [1]
    unknown = await api.json("GET", f"/v1/runs/{RUN}/recipients?delivery=unknown", 200)
    assert [item["position"] for item in unknown["items"]] == [2]  # sent, no final receipt
    wrong = await api.json("GET", f"/v1/runs/{RUN}/recipients?delivery=lost", 422)
    assert wrong["errors"][0]["loc"] == "query.delivery"


async def test_run_and_campaign_reports_count_deliveries(api: Api, writer: ReceiptWriter
                                                         ) -> None:
    await _delivered_bounced_and_silent(api)
    expected = {"delivered": 1, "bounced": 1, "failed": 0, "unknown": 1}
    report = await api.json("GET", f"/v1/runs/{RUN}", 200)
    assert report["counts"]["delivery"] == expected
    campaign = await api.json("GET", f"/v1/campaigns/c-{RUN}/report", 200)
    assert campaign["totals"]["delivery"] == expected
    assert campaign["runs"][0]["counts"]["delivery"] == expected
    metrics = await (await api.get("/metrics")).text()
    assert 'campaignd_deliveries_total{status="bounced"} 1.0' in metrics


async def test_receipt_lookups_and_the_delivery_filter_use_their_indexes(
        api: Api, writer: ReceiptWriter) -> None:
    from daemon.store import receipts as store
    from daemon.store import runs
    from tests.integration.api.conftest import plan_nodes

    await make_run(api.pool, size=20_000)
    await mark_sent(api.pool, RUN, range(20_000), "tw")
    await api.pool.execute("ANALYZE run_recipients")
    raw = await api.pool.fetchval("EXPLAIN (FORMAT JSON) " + store._FIND, ["tw"], ["SM5"],
                                  [None], [None])
    names = {node.get("Index Name") for node in plan_nodes(raw)}
    assert "run_recipients_provider_message" in names, names
    async with api.pool.acquire() as connection:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        rows = await runs.recipients(connection, RUN, None, None, -1, 10, "bounced")
        assert rows == []
        raw = await connection.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT position FROM run_recipients WHERE run_id = $1 "
            "AND position > $2 AND delivery = $3 ORDER BY position LIMIT $4",
            RUN, -1, "bounced", 10)
    names = {node.get("Index Name") for node in plan_nodes(raw)}
    assert "run_recipients_delivery" in names, names

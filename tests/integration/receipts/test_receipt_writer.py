"""The receipt writer against PostgreSQL: matching, order of statuses, parking, replays."""

from __future__ import annotations

import asyncio

import pytest

from daemon.receipts.model import DeliveryStatus, Receipt, Result
from daemon.receipts.writer import ReceiptWriter
from daemon.store import Pool
from daemon.store.recipients import OutcomeRow, write_outcomes
from tests.integration.receipts.rows import RUN, START, make_run, mark_sent

D = DeliveryStatus


def receipt(message_id: str, status: DeliveryStatus, provider: str = "tw", **kw: object
            ) -> Receipt:
    return Receipt(provider=provider, message_id=message_id, status=status, **kw)  # type: ignore[arg-type]


async def delivery(pool: Pool, position: int, run_id: str = RUN) -> str | None:
    value: str | None = await pool.fetchval(
        "SELECT delivery FROM run_recipients WHERE run_id = $1 AND position = $2",
        run_id, position)
    return value


async def counts(pool: Pool, run_id: str = RUN) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT delivered, bounced, failed FROM run_deliveries WHERE run_id = $1", run_id)
    return (0, 0, 0) if row is None else (row["delivered"], row["bounced"], row["failed"])


async def test_the_outcome_write_records_provider_and_message_id(pool: Pool) -> None:
    await make_run(pool, size=2)
    await mark_sent(pool, RUN, [0], "tw")
    row = await pool.fetchrow(
        "SELECT provider, provider_message_id FROM run_recipients WHERE position = 0")
    assert (row["provider"], row["provider_message_id"]) == ("tw", "SM0")


async def test_receipts_move_delivery_up_and_count_finals(pool: Pool, writer: ReceiptWriter
                                                          ) -> None:
    await make_run(pool, size=4)
    await mark_sent(pool, RUN, range(4), "tw")
    outcome = await writer.submit([receipt("SM0", D.SENT), receipt("SM1", D.DELIVERED),
                                   receipt("SM2", D.BOUNCED), receipt("SM3", D.FAILED)])
    assert outcome.results == [Result.APPLIED] * 4
    assert [await delivery(pool, p) for p in range(4)] == ["sent", "delivered", "bounced",
                                                          "failed"]
    assert await counts(pool) == (1, 1, 1)


async def test_the_same_receipt_twice_changes_nothing(pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=1)
    await mark_sent(pool, RUN, [0], "tw")
    first = await writer.submit([receipt("SM0", D.DELIVERED)])
    again = await writer.submit([receipt("SM0", D.DELIVERED)])
    assert (first.results, again.results) == ([Result.APPLIED], [Result.UNCHANGED])
    assert await counts(pool) == (1, 0, 0)
    stored = await pool.fetchval("SELECT count(*) FROM delivery_receipts")
    assert stored == 1


async def test_a_final_status_never_goes_back_to_an_intermediate_one(
        pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=1)
    await mark_sent(pool, RUN, [0], "tw")
    await writer.submit([receipt("SM0", D.DELIVERED)])
    late = await writer.submit([receipt("SM0", D.SENT), receipt("SM0", D.QUEUED)])
    assert late.results == [Result.UNCHANGED, Result.UNCHANGED]
    assert await delivery(pool, 0) == "delivered"


async def test_a_bounce_after_delivered_moves_the_count(pool: Pool, writer: ReceiptWriter
                                                        ) -> None:
    await make_run(pool, size=1)
    await mark_sent(pool, RUN, [0], "tw")
    await writer.submit([receipt("SM0", D.DELIVERED)])
    assert await counts(pool) == (1, 0, 0)
    await writer.submit([receipt("SM0", D.BOUNCED, reason="30005")])
    assert await delivery(pool, 0) == "bounced"
    assert await counts(pool) == (0, 1, 0)


async def test_receipts_of_one_batch_for_one_message_keep_the_greatest(
        pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=1)
    await mark_sent(pool, RUN, [0], "tw")
    outcome = await writer.submit([receipt("SM0", D.QUEUED), receipt("SM0", D.DELIVERED),
                                   receipt("SM0", D.SENT)])
    assert outcome.results == [Result.UNCHANGED, Result.APPLIED, Result.UNCHANGED]
    assert await delivery(pool, 0) == "delivered"
    assert await counts(pool) == (1, 0, 0)


async def test_concurrent_submissions_are_written_together(pool: Pool, writer: ReceiptWriter
                                                           ) -> None:
    await make_run(pool, size=200)
    await mark_sent(pool, RUN, range(200), "tw")
    outcomes = await asyncio.gather(*(writer.submit([receipt(f"SM{p}", D.DELIVERED)])
                                      for p in range(200)))
    assert all(o.results == [Result.APPLIED] for o in outcomes)
    assert writer.totals.batches < 200  # group commit: several per transaction
    assert await counts(pool) == (200, 0, 0)


async def test_unknown_ids_and_other_providers_messages_are_unknown(
        pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=2)
    await mark_sent(pool, RUN, [0], "tw")
    await mark_sent(pool, RUN, [1], "hook")
    outcome = await writer.submit([receipt("SM-nothing", D.DELIVERED),
                                   receipt("SM1", D.DELIVERED)])
    assert outcome.results == [Result.UNKNOWN, Result.UNKNOWN]
    assert await delivery(pool, 1) is None
    parked = await pool.fetchval(
        "SELECT count(*) FROM delivery_receipts WHERE applied_at IS NULL")
    assert parked == 2


async def test_a_receipt_before_the_outcome_is_kept_and_applied_once_sent(
        pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=1)
    early = await writer.submit([receipt("SMx", D.DELIVERED, key=(RUN, 0))])
    assert early.results == [Result.PENDING]
    assert await writer.reconcile() == [Result.PENDING]  # still pending: nothing yet
    await mark_sent(pool, RUN, [0], "tw", message_id="SMx")
    assert await writer.reconcile() == [Result.APPLIED]
    assert await delivery(pool, 0) == "delivered"
    assert await counts(pool) == (1, 0, 0)
    assert await writer.reconcile() == []  # nothing parked any more


async def test_a_gateway_id_reported_before_the_outcome_is_applied_later(
        pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=1)
    first = await writer.submit([receipt("gw-77", D.BOUNCED, provider="hook")])
    assert first.results == [Result.UNKNOWN]
    await mark_sent(pool, RUN, [0], "hook", message_id="gw-77")
    assert await writer.reconcile() == [Result.APPLIED]
    assert await counts(pool) == (0, 1, 0)


async def test_receipts_never_move_a_failed_recipient(pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=1)
    await write_outcomes(pool, [OutcomeRow(RUN, 0, "failed", "rejected", "x", 1, None, None,
                                           START)])
    outcome = await writer.submit([receipt("SM0", D.DELIVERED, key=(RUN, 0))])
    assert outcome.results == [Result.UNCHANGED]
    row = await pool.fetchrow("SELECT status, delivery FROM run_recipients")
    assert (row["status"], row["delivery"]) == ("failed", None)


async def test_a_replayed_webhook_id_does_nothing_again(pool: Pool, writer: ReceiptWriter
                                                        ) -> None:
    await make_run(pool, size=1)
    await mark_sent(pool, RUN, [0], "hook")
    first = await writer.submit([receipt("SM0", D.DELIVERED, provider="hook")],
                                webhook_id=("hook", "msg_1"))
    again = await writer.submit([receipt("SM0", D.BOUNCED, provider="hook")],
                                webhook_id=("hook", "msg_1"))
    assert first.results == [Result.APPLIED]
    assert again.replayed and again.results == []
    assert await delivery(pool, 0) == "delivered"


async def test_what_was_submitted_is_written_at_stop(pool: Pool, writer: ReceiptWriter) -> None:
    await make_run(pool, size=50)
    await mark_sent(pool, RUN, range(50), "tw")
    submissions = [asyncio.ensure_future(writer.submit([receipt(f"SM{p}", D.DELIVERED)]))
                   for p in range(50)]
    await asyncio.sleep(0)  # all queued
    await writer.stop(5.0, asyncio.Event())
    assert all(s.result().results == [Result.APPLIED] for s in submissions)
    assert await counts(pool) == (50, 0, 0)


async def test_applying_receipts_probes_rows_by_primary_key_without_fresh_statistics(
        pool: Pool) -> None:
    """Rows sent since the last ANALYZE (always, for a run still sending): the change of
    each receipt must find its row by the primary key, not walk the outcome index."""
    import json
    from datetime import UTC, datetime

    from daemon.store import receipts as store
    from tests.integration.api.conftest import plan_nodes

    await pool.execute("ANALYZE run_recipients")  # statistics of an empty table
    await make_run(pool, size=30_000)
    await mark_sent(pool, RUN, range(30_000), "tw")
    now = datetime.now(UTC)
    changes = [store.Change(RUN, p, "tw", "delivered", None, now) for p in range(2000)]
    async with pool.acquire() as connection, connection.transaction():
        raw = await connection.fetchval(
            "EXPLAIN (FORMAT JSON) " + store._APPLY, [c.run_id for c in changes],
            [c.position for c in changes], [c.provider for c in changes],
            [c.delivery for c in changes], [c.reason for c in changes],
            [c.at for c in changes])
    names = {node.get("Index Name") for node in plan_nodes(json.loads(raw) if isinstance(
        raw, str) else raw)}
    assert "run_recipients_outcome" not in names and "run_recipients_pkey" in names, names


async def test_a_writer_that_fails_refuses_receipts_loudly_instead_of_hanging(
        pool: Pool, writer: ReceiptWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    from structlog.testing import capture_logs

    from daemon.receipts import writer as writer_module
    from daemon.receipts.writer import WriterStopped

    async def broken(*args: object) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(writer_module.matching, "apply", broken)
    with capture_logs() as logs, pytest.raises(WriterStopped):
        await writer.submit([receipt("SM0", D.DELIVERED)])
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["receipts.writer_failed"]
    with pytest.raises(WriterStopped):
        await writer.submit([receipt("SM0", D.DELIVERED)])

"""One batch of receipts against the recipients they name (inside the writer's transaction).

Each receipt is looked up by our key when it carries it, else by (provider, message id):
- no such recipient, or one sent by another provider: `unknown` (parked: a gateway that
  answers with its own ids may report before the send's outcome is written);
- a recipient still pending (its outcome not written yet): `pending` (parked, applied
  once it is sent);
- a recipient failed or excluded: `unchanged` (receipts refine `sent`, never move a
  recipient out of its outcome);
- a sent recipient: its delivery moves to the greatest status of the batch's receipts
  for it, if that is greater than what it has; the receipt that moved it is `applied`,
  the others `unchanged`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from daemon.receipts.model import Receipt, Result, rank
from daemon.store import Connection, Record
from daemon.store import receipts as store


def _lookup(receipt: Receipt) -> store.Lookup:
    run_id, position = receipt.key if receipt.key is not None else (None, None)
    return store.Lookup(receipt.provider, receipt.message_id, run_id, position)


def _classify(receipts: Sequence[Receipt], found: dict[int, Record]
              ) -> tuple[list[Result], dict[tuple[str, int], int]]:
    """Results before the write (applied ones still `unchanged`), and per sent recipient the
    index of the receipt with the greatest status."""
    results: list[Result] = []
    best: dict[tuple[str, int], int] = {}
    for index, receipt in enumerate(receipts):
        row = found.get(index)
        if row is None:
            results.append(Result.UNKNOWN)
        elif row["status"] == "pending":
            results.append(Result.PENDING)
        elif row["status"] != "sent":
            results.append(Result.UNCHANGED)
        elif row["provider"] != receipt.provider:
            results.append(Result.UNKNOWN)
        else:
            results.append(Result.UNCHANGED)
            target = (row["run_id"], row["position"])
            other = best.get(target)
            better = other is None or receipts[other].status.rank < receipt.status.rank
            if better and rank(row["delivery"]) < receipt.status.rank:
                best[target] = index
    return results, best


async def apply(connection: Connection, receipts: Sequence[Receipt], now: datetime
                ) -> tuple[list[Result], list[Record]]:
    """Find, apply and store `receipts`; the result of each and the transitions made."""
    if not receipts:
        return [], []
    found = await store.find_recipients(connection, [_lookup(r) for r in receipts])
    results, best = _classify(receipts, found)
    changes = [
        store.Change(run_id, position, receipts[index].provider, receipts[index].status.value,
                     receipts[index].reason, receipts[index].occurred_at or now)
        for (run_id, position), index in sorted(best.items())
    ]
    transitions = await store.apply(connection, changes)
    changed = {(row["run_id"], row["position"]) for row in transitions}
    for target, index in best.items():
        if target in changed:
            results[index] = Result.APPLIED
    kept: dict[tuple[str, str, str], store.StoredReceipt] = {}
    for index, receipt in enumerate(receipts):
        row = found.get(index)
        known = results[index] in (Result.APPLIED, Result.UNCHANGED)
        run_id, position = ((row["run_id"], row["position"]) if row is not None and known
                            else receipt.key or (None, None))
        entry = store.StoredReceipt(
            receipt.provider, receipt.message_id, receipt.status.value, run_id, position,
            receipt.reason, receipt.occurred_at, now, now if known else None)
        previous = kept.get((receipt.provider, receipt.message_id, receipt.status.value))
        if previous is None or (entry.applied_at is not None and previous.applied_at is None):
            kept[(receipt.provider, receipt.message_id, receipt.status.value)] = entry
    await store.store(connection, list(kept.values()))
    return results, transitions

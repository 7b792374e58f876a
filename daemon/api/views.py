"""Stored rows as API JSON (the shapes of `schemas.py`): timestamps RFC 3339 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from daemon.planning import windows
from daemon.store import Record
from daemon.store.campaigns import CampaignRecord
from daemon.store.runs import DELIVERY_COUNTS, EXCLUSION_COLUMNS


def iso(value: datetime | None) -> str | None:
    """`2026-12-01T08:00:00Z` (UTC, with a Z), or None."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def campaign_view(record: CampaignRecord) -> dict[str, Any]:
    spec = record.spec
    return {
        "id": spec.id,
        "name": spec.name,
        "channel": spec.channel.value,
        "content": spec.content,
        "audience": spec.audience_id,
        "schedule": {"start_at": iso(spec.start_at), "end_at": iso(spec.end_at),
                     "windows": spec.windows},
        "throttle": {"rate_per_second": spec.rate_per_second, "pool": spec.rate_pool},
        "status": record.status.value,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "activated_at": iso(record.activated_at),
        "finished_at": iso(record.finished_at),
    }


def counts_view(row: Record) -> dict[str, Any]:
    return {
        "targeted": row["targeted"],
        "sent": row["sent"],
        "failed": row["failed"],
        "pending": row["pending"],
        "excluded": {
            column.removeprefix("excluded_"): row[column] for column in EXCLUSION_COLUMNS
        },
        "delivery": delivery_counts_view(row),
    }


def delivery_counts_view(row: Record) -> dict[str, int]:
    """SPEC §9.5 over the sent recipients: final receipts by status, `unknown` the rest."""
    counts = {name: int(row.get(f"delivery_{name}") or 0) for name in DELIVERY_COUNTS}
    return {**counts, "unknown": max(0, int(row["sent"]) - sum(counts.values()))}


def run_view(row: Record, *, now: datetime | None = None) -> dict[str, Any]:
    """A run report, in SPEC §4.3's shape. With `now` (a single run's report) and send
    windows, `send_window` says whether the run may send now, until or from when."""
    return {
        "id": row["id"],
        "campaign_id": row["campaign_id"],
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "scheduled_for": iso(row["scheduled_for"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "rate_per_second": row["rate_per_second"],
        "deadline": iso(row["deadline"]),
        "end_reason": row["end_reason"],
        "counts": counts_view(row),
        "rerun_of": row["rerun_of"],
        "reruns": list(row["reruns"]),
        "send_window": (send_window_view(row["send_windows"], now, row["status"])
                        if now is not None else None),
        "pool": pool_view(row) if now is not None else None,
    }


def pool_view(row: Record) -> dict[str, Any] | None:
    """SPEC §9.3 in a run's report: its campaign's pool and current share of it."""
    name = row["rate_pool"]
    if name is None:
        return None
    share = row["pool_share"]
    return {"name": name, "share_per_second": round(float(share), 3) if share else 0.0}


def send_window_view(stored: list[dict[str, Any]] | None, now: datetime, status: str
                     ) -> dict[str, Any] | None:
    """SPEC §9.2 as a run sees it now: open (until `closes_at`) or closed (until
    `next_opening`); None without windows or once the run has ended."""
    if not stored or status not in ("scheduled", "running", "paused"):
        return None
    chosen = windows.from_stored(stored)
    closes_at = windows.open_until(chosen, now)
    return {
        "open": closes_at is not None,
        "closes_at": iso(closes_at),
        "next_opening": None if closes_at is not None else iso(
            windows.next_opening(chosen, now)),
        "timezone": stored[0]["timezone"],
    }


def recipient_view(row: Record) -> dict[str, Any]:
    return {
        "position": row["position"],
        "profile_id": row["profile_id"],
        "status": row["status"],
        "reason": row["reason"],
        "error": row["error"],
        "attempts": row["attempts"],
        "provider_message_id": row["provider_message_id"],
        "updated_at": iso(row["updated_at"]),
        "delivery": None if row["delivery"] is None else {
            "status": row["delivery"], "reason": row["delivery_reason"],
            "at": iso(row["delivery_at"]),
        },
    }


def profile_view(row: Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "email": row["email"],
        "phone": row["phone"],
        "push_tokens": list(row["push_tokens"]),
        "attributes": row["attributes"],
        "subscriptions": {
            "email": row["sub_email"], "sms": row["sub_sms"], "push": row["sub_push"],
        },
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def audience_view(row: Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "size": row["size"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }

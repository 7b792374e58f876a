"""Prometheus metrics (served at /metrics). One registry per daemon, so tests can build several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Every metric the daemon exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages = Counter(
            "campaignd_messages_total",
            "Recipient outcomes recorded, by campaign, channel, outcome and reason.",
            ["campaign_id", "channel", "outcome", "reason"],
            registry=self.registry,
        )
        self.provider_calls = Counter(
            "campaignd_provider_calls_total",
            "Provider calls (first attempts and retries), by provider and result.",
            ["provider", "result"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "campaignd_event_loop_lag_seconds",
            "How late the event loop ran a 20 ms timer: its stalls (a long write, a GC pass,"
            " the CPU taken by another process), which push the senders' slots back.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.provider_latency = Histogram(
            "campaignd_provider_latency_seconds",
            "Provider call latency.",
            ["provider"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.achieved_rate = Gauge(
            "campaignd_achieved_rate_per_second",
            "Provider calls per second over the last progress interval, by campaign.",
            ["campaign_id"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "campaignd_pending_recipients",
            "Recipients not yet sent, failed or excluded in running runs, by campaign.",
            ["campaign_id"],
            registry=self.registry,
        )
        self.runs_active = Gauge(
            "campaignd_runs_running", "Runs executing on this instance.", registry=self.registry
        )
        self.replans = Counter(
            "campaignd_replans_total",
            "Run re-plans applied on this instance (a resume or a rate change, SPEC §9.1).",
            registry=self.registry,
        )
        self.campaigns = Gauge(
            "campaignd_campaigns",
            "Campaigns by status (read from the database at each scrape).",
            ["status"],
            registry=self.registry,
        )
        self.trigger_requests = Counter(
            "campaignd_trigger_requests_total",
            "Trigger requests, by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "campaignd_http_requests_total",
            "HTTP requests, by method and status.",
            ["method", "status"],
            registry=self.registry,
        )
        self.deliveries = Counter(
            "campaignd_deliveries_total",
            "Delivery statuses recipients moved to on a receipt (queued, sent, delivered, "
            "failed, bounced).",
            ["status"],
            registry=self.registry,
        )
        self.receipts = Counter(
            "campaignd_receipts_total",
            "Receipts taken, by provider and result (applied, unchanged, pending, unknown, "
            "replayed, rejected, malformed).",
            ["provider", "result"],
            registry=self.registry,
        )
        self.notifications = Counter(
            "campaignd_notifications_total",
            "Lifecycle notification attempts by outcome (delivered, retried, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.notification_backlog = Gauge(
            "campaignd_notification_backlog",
            "Lifecycle notifications not delivered yet (pending in the outbox, every daemon's).",
            registry=self.registry,
        )
        self.event_loop_tasks = Gauge(
            "campaignd_event_loop_tasks",
            "asyncio tasks alive on the daemon's event loop (counted at each scrape): flat "
            "between runs, or something leaks.",
            registry=self.registry,
        )

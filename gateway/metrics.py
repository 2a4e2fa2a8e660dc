"""Prometheus metrics for the gateway.

Every :class:`Metrics` instance owns its own :class:`CollectorRegistry`, so two
apps built in one process (as tests do) never clash over metric names and the
global default registry is never touched.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

PREFIX = "switchboard_"

# Turn latency: from a fast cached reply (~5 ms) to a long tool-using LLM turn (~2 min).
TURN_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
)

# Group-commit batch sizes: powers of two from 1 to 512.
JOURNAL_BATCH_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(10))

# Reasons accepted for ``rejected_total``; documented here so call sites agree.
REJECT_REASONS: tuple[str, ...] = (
    "bad_signature",
    "stale",
    "malformed",
    "too_large",
    "unknown_bot",
    "backpressure",
)


class Metrics:
    """All gateway metrics, registered on a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        self.inbound_total = Counter(
            PREFIX + "inbound_total",
            "Inbound messages journaled.",
            ["platform"],
            registry=r,
        )
        self.dedup_hits_total = Counter(
            PREFIX + "dedup_hits_total",
            "Platform retries recognised as duplicates and turned into no-ops.",
            ["platform"],
            registry=r,
        )
        self.rejected_total = Counter(
            PREFIX + "rejected_total",
            "Inbound requests rejected, by reason (see REJECT_REASONS).",
            ["platform", "reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            PREFIX + "queue_depth",
            "Inbound messages waiting for their turn.",
            registry=r,
        )
        self.turns_running = Gauge(
            PREFIX + "turns_running",
            "Agent turns currently running.",
            registry=r,
        )
        self.turn_limit = Gauge(
            PREFIX + "turn_limit",
            "Turns allowed to run at once now (below bus.max_concurrency while the event loop lags).",
            registry=r,
        )
        self.turn_latency_seconds = Histogram(
            PREFIX + "turn_latency_seconds",
            "Wall time of one agent turn.",
            buckets=TURN_LATENCY_BUCKETS,
            registry=r,
        )
        self.turn_errors_total = Counter(
            PREFIX + "turn_errors_total",
            "Agent turns that ended in an error, by kind.",
            ["kind"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            PREFIX + "outbox_pending",
            "Outbound messages waiting to be sent.",
            registry=r,
        )
        self.outbox_dead = Gauge(
            PREFIX + "outbox_dead",
            "Outbound messages that exhausted their retries.",
            registry=r,
        )
        self.sent_total = Counter(
            PREFIX + "sent_total",
            "Outbound messages delivered to a platform.",
            ["platform"],
            registry=r,
        )
        self.send_errors_total = Counter(
            PREFIX + "send_errors_total",
            "Outbound send attempts that failed, by platform and error code.",
            ["platform", "code"],
            registry=r,
        )
        self.event_loop_lag_seconds = Gauge(
            PREFIX + "event_loop_lag_seconds",
            "How late the event loop woke up from a timed sleep, last sample.",
            registry=r,
        )
        self.adapter_connected = Gauge(
            PREFIX + "adapter_connected",
            "1 when the adapter's platform connection is up, else 0.",
            ["adapter"],
            registry=r,
        )
        self.connection_up = Gauge(
            PREFIX + "connection_up",
            "1 when one platform connection (e.g. one bot's long connection) is up, else 0.",
            ["adapter", "connection"],
            registry=r,
        )
        self.connection_events = Gauge(
            PREFIX + "connection_events",
            "Monotonic per-connection counts reported by the adapter (connects, reconnects, messages, acks).",
            ["adapter", "connection", "kind"],
            registry=r,
        )
        self.journal_batch_size = Histogram(
            PREFIX + "journal_batch_size",
            "Records written per journal group commit.",
            buckets=JOURNAL_BATCH_BUCKETS,
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        """Return the exposition body and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

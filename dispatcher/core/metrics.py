"""Prometheus metrics, declared once, with few and bounded labels."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

PUSHES = Counter("dispatcher_pushes_total", "Pushes settled, by platform and verdict",
                 ["platform", "verdict"])
GATEWAY_LATENCY = Histogram("dispatcher_gateway_latency_seconds", "Time from send to the gateway's answer",
                            ["platform"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
IN_FLIGHT = Gauge("dispatcher_pushes_in_flight", "Pushes sent and not yet answered", ["platform"])
RETRIES = Counter("dispatcher_retries_total", "Pushes released for another attempt", ["platform"])
DEAD_TOKENS = Counter("dispatcher_dead_tokens_removed_total", "Devices removed on the gateway's word",
                      ["platform"])
DEAD_LETTERS = Counter("dispatcher_dead_letters_total", "Pushes given up on (permanent or retries spent)",
                       ["platform"])
DEAD_LETTERS_HANDLED = Counter("dispatcher_dead_letters_handled_total",
                               "Dead letters re-driven or purged by operators (the API)", ["action"])
EXPIRED = Counter("dispatcher_expired_total", "Pushes dropped unsent because their ttl had passed", ["platform"])
QUEUE_DEPTH = Gauge("dispatcher_queue_tasks", "Tasks in the node's tubes by state", ["tube", "state"])
TARANTOOL_MEMORY = Gauge("dispatcher_tarantool_memory_bytes", "The node's Tarantool memory by kind", ["kind"])
QUEUE_OLDEST = Gauge("dispatcher_queue_oldest_ready_seconds", "Age of the next ready task", ["tube"])
ENQUEUED = Counter("dispatcher_broadcast_tasks_enqueued_total", "Send tasks enqueued by broadcast fan-out",
                   ["platform"])
FANOUT_TAKEN_OVER = Counter("dispatcher_fanout_taken_over_total",
                            "Fan-out tasks this node re-issued because the node holding them was down",
                            ["reason"])
PEERS_ALIVE = Gauge("dispatcher_peers_alive", "Peers whose Tarantool this node reaches now")
PEERS_CONFIGURED = Gauge("dispatcher_peers_configured", "Peers in this node's cluster list")
# Replicated figures: every node reports the same, so read them with max by.
BROADCAST_PROGRESS = Gauge("dispatcher_broadcast_progress",
                           "Running broadcasts' progress summed over the nodes, by counter (targeted, enqueued, "
                           "delivered, pending, settled, ...)", ["broadcast", "counter"])
BROADCASTS = Counter("dispatcher_broadcasts_total", "Broadcasts by what happened to them", ["event"])
API_REQUESTS = Counter("dispatcher_api_requests_total", "HTTP API requests by route and status",
                       ["route", "status"])
GATE_PAUSED = Gauge("dispatcher_gateway_paused", "1 while an app's gateway is paused, by cause (config: our "
                    "credentials or settings; outage: failures in a row; guard: dead-token spike)",
                    ["app", "platform", "cause"])
GATE_PAUSES = Counter("dispatcher_gateway_pauses_total", "Times an app's gateway was paused, by cause",
                      ["app", "platform", "cause"])
GATE_PROBES = Counter("dispatcher_gateway_probes_total", "Pushes sent to a paused gateway to see if it healed",
                      ["app", "platform"])
GUARD_TRIPS = Counter("dispatcher_removal_guard_trips_total",
                      "Times dead-token verdicts spiked for an app and device removal stopped", ["app", "platform"])
SETTLE_FAILURES = Counter("dispatcher_settle_failures_total",
                          "Settle calls to Tarantool that failed and were sent again", ["tube"])

# Series that exist from the start, at 0, so that a rate or a dashboard
# panel reads "none yet" rather than "no data" (which also hides a typo).
for _platform in ("ios", "android"):
    for _verdict in ("delivered", "dead_token", "failed", "expired", "cancelled"):
        PUSHES.labels(_platform, _verdict)
    for _metric in (GATEWAY_LATENCY, IN_FLIGHT, RETRIES, DEAD_TOKENS, DEAD_LETTERS, EXPIRED, ENQUEUED):
        _metric.labels(_platform)
FANOUT_TAKEN_OVER.labels("node_down")
for _action in ("redriven", "purged"):
    DEAD_LETTERS_HANDLED.labels(_action)
for _event in ("created", "started", "fanned_out", "cancelled"):
    BROADCASTS.labels(_event)
for _tube in ("ios", "android", "fanout"):
    SETTLE_FAILURES.labels(_tube)


@dataclass(frozen=True, slots=True)
class SendMetrics:
    """A send pipeline's children of the metrics above, bound once: a
    ``labels()`` lookup per push cost more than the increment itself."""

    # dispatcher_pushes_total by verdict
    delivered: Counter
    dead_token: Counter
    failed: Counter
    expired_push: Counter
    cancelled: Counter
    # the other per-platform metrics
    expired: Counter
    retries: Counter
    dead_tokens: Counter
    dead_letters: Counter
    in_flight: Gauge
    latency: Histogram

    @classmethod
    def bind(cls, platform: str) -> SendMetrics:
        def push(verdict: str) -> Counter:
            return PUSHES.labels(platform, verdict)

        return cls(push("delivered"), push("dead_token"), push("failed"), push("expired"), push("cancelled"),
                   EXPIRED.labels(platform), RETRIES.labels(platform), DEAD_TOKENS.labels(platform),
                   DEAD_LETTERS.labels(platform), IN_FLIGHT.labels(platform), GATEWAY_LATENCY.labels(platform))

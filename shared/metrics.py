"""Prometheus metrics every service exposes on /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_PUBLISHED = Counter(
    "doorstep_events_published_total", "Events the outbox relay published", ["service", "type"]
)
EVENTS_CONSUMED = Counter(
    "doorstep_events_consumed_total",
    "Events the consumer finished with, by outcome (handled, duplicate, ignored, dead_lettered)",
    ["service", "type", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "doorstep_handler_seconds",
    "Time to handle one event, inbox transaction included",
    ["service", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HANDLER_RETRIES = Counter(
    "doorstep_handler_retries_total", "Handler attempts that failed and were retried", ["service"]
)
TRANSACTION_RETRIES = Counter(
    "doorstep_transaction_retries_total",
    "Units of work MongoDB made start again (a write conflict with another transaction, most"
    " often), by what the work was",
    ["service", "work"],
)
EVENTS_REFUSED = Counter(
    "doorstep_outbox_refused_total",
    "Outbox events Kafka refuses for good (too large, say), set aside in outbox_refused",
    ["service", "type"],
)
OUTBOX_BACKLOG = Gauge(
    "doorstep_outbox_backlog", "Outbox events committed but not yet published", ["service"]
)
CONSUMER_LAG = Gauge(
    "doorstep_consumer_lag",
    "Messages behind the partition's high watermark",
    ["service", "topic", "partition"],
)
DEAD_LETTERS = Counter(
    "doorstep_dead_letters_total", "Messages sent to the dead-letter topic", ["service", "reason"]
)
HTTP_REQUESTS = Histogram(
    "doorstep_http_request_seconds",
    "HTTP request latency",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LOOP_LAG = Histogram(
    "doorstep_event_loop_lag_seconds",
    "How late the event loop woke a 50 ms sleep: time it was blocked, or starved of CPU",
    ["service"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CONSUMER_RUN_EVENTS = Histogram(
    "doorstep_consumer_run_events",
    "Events handled in one consumer transaction (a busy consumer handles more per commit)",
    ["service"],
    buckets=(1, 2, 3, 5, 10, 20, 50),
)

"""Metrics recorded where things happen, and the registry ``/metrics`` serves.

Two kinds of counters, for two kinds of process:

- **Web processes** (granian runs several) record into prometheus_client metrics.
  With ``PROMETHEUS_MULTIPROC_DIR`` set (``deploy/run.py`` sets it) each process
  writes its values to files in that directory and a scrape of any one process
  adds up all of them; without it (tests, ``runserver``) the process's own
  registry is served.
- **Celery workers** run on other machines, beyond any shared directory and with
  no port of their own to scrape. They count into one Redis hash per metric
  (``HINCRBY``, one round trip); every web process reads the same totals. Redis
  is already the home of fast counters; losing it resets them to zero, which
  Prometheus' ``rate()`` treats as a counter reset.

This module imports no models, so any app may record into it.
"""

import json
import logging
import os
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import REGISTRY, CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from config.redis_client import redis_client

logger = logging.getLogger(__name__)

# Route patterns, not paths: a path carries ids (unbounded label values, and
# identifiers in a place meant for aggregates).
HTTP_REQUEST_SECONDS = Histogram(
    "cango_http_request_duration_seconds",
    "Time to answer an HTTP request, by route pattern, method and status class.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SYNC_INFERENCES = Counter(
    "cango_sync_inferences",
    "Synchronous inference calls run by the web tier, by model, site and outcome.",
    ["model", "site", "status"],
)

CSP_VIOLATIONS = Counter(
    "cango_csp_violations",
    "Content-Security-Policy violations browsers reported, by directive.",
    ["directive"],
)

JOBS_KEY = "cango:metrics:jobs"
WEBHOOKS_KEY = "cango:metrics:webhooks"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def http_method_label(method: str | None) -> str:
    """Known methods as they are; anything a client invents becomes ``other``."""
    return method if method in _METHODS else "other"


def sync_inference_count(*, model: str, site: str, status: str) -> None:
    SYNC_INFERENCES.labels(model=model, site=site, status=status).inc()


def _shared_count(key: str, labels: dict[str, str]) -> None:
    """Add one to a worker-side counter in Redis; a metric never fails the work."""
    field = json.dumps(labels, sort_keys=True, separators=(",", ":"))
    try:
        redis_client().hincrby(key, field, 1)
    except redis.RedisError as exc:
        logger.warning("metric not counted: %s", exc, extra={"metric": key})


def job_outcome_count(*, model: str, site: str, outcome: str) -> None:
    """Count one run of an async job (one attempt: a retried job counts each attempt)."""
    _shared_count(JOBS_KEY, {"model": model, "site": site, "outcome": outcome})


def webhook_delivery_count(*, ok: bool) -> None:
    _shared_count(WEBHOOKS_KEY, {"outcome": "ok" if ok else "failed"})


class SharedCountersCollector(Collector):
    """The workers' Redis counters, read at scrape time (two ``HGETALL``)."""

    FAMILIES = (
        (
            JOBS_KEY,
            "cango_job_runs",
            "Async job runs (attempts) by model, site and outcome.",
            ("model", "site", "outcome"),
        ),
        (WEBHOOKS_KEY, "cango_webhook_deliveries", "Job webhooks by outcome.", ("outcome",)),
    )

    def collect(self) -> Iterator[CounterMetricFamily]:
        for key, name, documentation, labels in self.FAMILIES:
            family = CounterMetricFamily(name, documentation, labels=labels)
            try:
                raw = redis_client().hgetall(key)
            except redis.RedisError as exc:
                logger.warning("shared counters unreadable: %s", exc, extra={"metric": key})
                continue
            for field, value in sorted(raw.items()):
                values = json.loads(field)
                family.add_metric([str(values.get(label, "")) for label in labels], int(value))
            yield family


def registry(*extra: Collector) -> CollectorRegistry:
    """What one scrape reports: this process (or all web processes) plus ``extra``."""
    scraped = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(scraped)
    else:
        # The process's own default registry (the metrics above, plus process and
        # platform collectors); multi-process mode has no per-process view.
        scraped.register(_DefaultRegistry())
    scraped.register(SharedCountersCollector())
    for collector in extra:
        scraped.register(collector)
    return scraped


class _DefaultRegistry(Collector):
    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()

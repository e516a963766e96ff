"""Health checks of every Triton server, written to Redis for routing.

Each check asks the server whether it is live and ready, whether each deployed
model is ready, and reads its Prometheus metrics for queue depth (pending requests
per model) and recent latency (the change in cumulative request time over the
change in request count since the previous check). Results go to one Redis hash
(``routing.HEALTH_KEY``), one JSON field per server.
"""

import json
import logging
import re
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from config.redis_client import redis_client

from . import routing, triton
from .models import Deployment, TritonServer

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 1.0
_METRIC_RE = re.compile(r"^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$")
_LABEL_RE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Metrics:
    pending: dict[str, int]
    request_count: int
    request_duration_us: float


def metrics_parse(text: str) -> Metrics:
    """Pull per-model pending requests and total request count/time from Triton's metrics."""
    pending: dict[str, int] = defaultdict(int)
    count = 0
    duration = 0.0
    for line in text.splitlines():
        match = _METRIC_RE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name == "nv_inference_pending_request_count":
            model = dict(_LABEL_RE.findall(labels)).get("model", "")
            pending[model] += int(float(value))
        elif name == "nv_inference_request_success":
            count += int(float(value))
        elif name == "nv_inference_request_duration_us":
            duration += float(value)
    return Metrics(dict(pending), count, duration)


def _fetch_metrics(url: str) -> Metrics | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_SECONDS) as response:  # noqa: S310 - operator-configured URL
            return metrics_parse(response.read().decode())
    except OSError as exc:
        logger.info("health: metrics unreadable at %s: %s", url, exc)
        return None


def server_check(
    server: TritonServer, model_names: Iterable[str], previous: dict[str, object] | None
) -> dict[str, object]:
    """Check one server now; ``previous`` is its last snapshot (for latency deltas)."""
    endpoint = triton.Endpoint.from_url(server.pk, server.http_url, server.auth_header)
    ready_models: list[str] = []
    healthy = False
    try:
        triton.call(endpoint, "GET", "/v2/health/live", timeout=CHECK_TIMEOUT_SECONDS)
        triton.call(endpoint, "GET", "/v2/health/ready", timeout=CHECK_TIMEOUT_SECONDS)
        healthy = True
        for name in model_names:
            try:
                triton.call(
                    endpoint, "GET", f"/v2/models/{name}/ready", timeout=CHECK_TIMEOUT_SECONDS
                )
                ready_models.append(name)
            except triton.TritonError:
                logger.info("health: %s not ready on %s", name, server)
    except triton.TritonError as exc:
        logger.warning("health: server %s failed its check: %s", server, exc.message)
    snapshot: dict[str, object] = {
        "healthy": healthy,
        "ready_models": ready_models,
        "queue_depth": {},
        "latency_ms": previous.get("latency_ms", 0.0) if previous else 0.0,
        "checked_at": time.time(),
        "site": server.site.slug,
    }
    metrics = _fetch_metrics(server.metrics_url) if healthy else None
    if metrics is not None:
        snapshot["queue_depth"] = metrics.pending
        snapshot["request_count"] = metrics.request_count
        snapshot["request_duration_us"] = metrics.request_duration_us
        if previous is not None:
            done = metrics.request_count - int(previous.get("request_count", 0))  # type: ignore[call-overload]
            spent = metrics.request_duration_us - float(
                previous.get("request_duration_us", 0.0)  # type: ignore[arg-type]
            )
            if done > 0 and spent >= 0:
                snapshot["latency_ms"] = round(spent / done / 1000.0, 3)
    return snapshot


def servers_check() -> dict[int, dict[str, object]]:
    """Check every enabled server and publish the results for routing."""
    servers = list(TritonServer.objects.filter(enabled=True).select_related("site"))
    models_by_server: dict[int, set[str]] = defaultdict(set)
    for server_id, name in Deployment.objects.filter(enabled=True).values_list(
        "server_id", "triton_model_name"
    ):
        models_by_server[server_id].add(name)
    client = redis_client()
    previous_raw = client.hgetall(routing.HEALTH_KEY)
    previous = {int(k): json.loads(v) for k, v in previous_raw.items()}
    results = {
        server.pk: server_check(
            server, sorted(models_by_server[server.pk]), previous.get(server.pk)
        )
        for server in servers
    }
    pipe = client.pipeline()
    pipe.delete(routing.HEALTH_KEY)
    if results:
        pipe.hset(routing.HEALTH_KEY, mapping={str(k): json.dumps(v) for k, v in results.items()})
    pipe.execute()
    return results

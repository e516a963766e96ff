"""Which Triton server gets a request: the score, the shared state, the circuit breaker.

The score (lower is better) of a deployment that may take work:

    score = 1000 × load  +  latency_ms  +  0.01 × power_usd_per_mwh  (+ 500 if unknown)

where ``load = (queue_depth + in_flight) / max_concurrency``. The weights make the
order lexicographic in practice: a quarter of a server's capacity (250) outweighs
any latency difference seen here, and 100 ms of latency outweighs the largest
power-price gap (≈ $100/MWh → 1). A server whose health has not been checked yet
(or not for ``HEALTH_STALE_SECONDS``) is usable but placed after checked ones.

Candidates are deployments of the model on enabled servers at *active* sites
(draining and offline sites take no new work), in the tenant's pinned region when
it has one, whose server passed its last health check with the model ready and
whose circuit breaker is closed.

Shared state lives in Redis (``workers.health`` writes it every few seconds); each
process reads it at most once per ``SNAPSHOT_SECONDS`` and keeps the deployment
table for ``TABLE_SECONDS``, so routing costs no round trip on most requests.
"""

import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import redis

from config.redis_client import redis_client

from . import liveness
from .triton import Endpoint

logger = logging.getLogger(__name__)

HEALTH_KEY = "cango:health"
HEALTH_STALE_SECONDS = 30.0
SNAPSHOT_SECONDS = 1.0
TABLE_SECONDS = 5.0
UNKNOWN_PENALTY = 500.0
BREAKER_THRESHOLD = 3
BREAKER_OPEN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment that could serve a model, with what routing needs to know of it."""

    deployment_id: int
    server_id: int
    site_slug: str
    region: str
    power_usd_per_mwh: float
    max_concurrency: int
    triton_model_name: str
    triton_model_version: str
    endpoint: Endpoint

    @property
    def infer_path(self) -> str:
        if self.triton_model_version:
            return f"/v2/models/{self.triton_model_name}/versions/{self.triton_model_version}/infer"
        return f"/v2/models/{self.triton_model_name}/infer"


@dataclass(frozen=True, slots=True)
class ServerHealth:
    """One server's last health check, as written by ``workers.health``."""

    healthy: bool
    ready_models: frozenset[str]
    queue_depth: dict[str, int]
    latency_ms: float
    checked_at: float

    @classmethod
    def from_json(cls, raw: bytes | str) -> "ServerHealth":
        data = json.loads(raw)
        return cls(
            healthy=bool(data["healthy"]),
            ready_models=frozenset(data.get("ready_models", [])),
            queue_depth={str(k): int(v) for k, v in data.get("queue_depth", {}).items()},
            latency_ms=float(data.get("latency_ms", 0.0)),
            checked_at=float(data["checked_at"]),
        )


def deployment_score(
    *,
    queue_depth: int,
    in_flight: int,
    max_concurrency: int,
    latency_ms: float,
    power_usd_per_mwh: float,
    health_known: bool,
) -> float:
    """Lower is better. Pure: see the module docstring for the formula and its reasons."""
    load = (queue_depth + in_flight) / max(max_concurrency, 1)
    score = 1000.0 * load + latency_ms + 0.01 * power_usd_per_mwh
    return score if health_known else score + UNKNOWN_PENALTY


def candidates_rank(
    candidates: list[Candidate],
    health: dict[int, ServerHealth],
    *,
    in_flight: dict[int, int],
    breaker_open: set[int],
    region_pin: str,
    exclude: frozenset[int],
    now: float,
) -> list[Candidate]:
    """Filter to the deployments that may take work and order them best first. Pure."""
    scored: list[tuple[float, int, Candidate]] = []
    for candidate in candidates:
        if candidate.server_id in exclude or candidate.server_id in breaker_open:
            continue
        if region_pin and candidate.region != region_pin:
            continue
        state = health.get(candidate.server_id)
        known = state is not None and now - state.checked_at < HEALTH_STALE_SECONDS
        if known and state is not None:
            if not state.healthy or candidate.triton_model_name not in state.ready_models:
                continue
            queue_depth = state.queue_depth.get(candidate.triton_model_name, 0)
            latency_ms = state.latency_ms
        else:
            queue_depth, latency_ms = 0, 0.0
        score = deployment_score(
            queue_depth=queue_depth,
            in_flight=in_flight.get(candidate.server_id, 0),
            max_concurrency=candidate.max_concurrency,
            latency_ms=latency_ms,
            power_usd_per_mwh=candidate.power_usd_per_mwh,
            health_known=known,
        )
        scored.append((score, candidate.deployment_id, candidate))
    scored.sort(key=lambda item: (item[0], item[1]))
    return [candidate for _, _, candidate in scored]


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float = 0.0


@dataclass
class _ProcessState:
    """Routing state private to this process: caches, in-flight counts, breakers."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    table: dict[str, list[Candidate]] = field(default_factory=dict)
    table_loaded_at: float = -1e9
    health: dict[int, ServerHealth] = field(default_factory=dict)
    health_loaded_at: float = -1e9
    live_sites: frozenset[str] = frozenset()
    in_flight: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    breakers: dict[int, _Breaker] = field(default_factory=lambda: defaultdict(_Breaker))


_state = _ProcessState()


def _table_load() -> dict[str, list[Candidate]]:
    from .models import Deployment, Site  # models load after apps are ready

    table: dict[str, list[Candidate]] = defaultdict(list)
    rows = Deployment.objects.filter(
        enabled=True, server__enabled=True, server__site__status=Site.Status.ACTIVE
    ).select_related("server__site", "model")
    for row in rows:
        server = row.server
        table[row.model.slug].append(
            Candidate(
                deployment_id=row.pk,
                server_id=server.pk,
                site_slug=server.site.slug,
                region=server.site.region,
                power_usd_per_mwh=float(server.site.power_price_usd_per_mwh),
                max_concurrency=row.max_concurrency,
                triton_model_name=row.triton_model_name,
                triton_model_version=row.triton_model_version,
                endpoint=Endpoint.from_url(server.pk, server.http_url, server.auth_header),
            )
        )
    return dict(table)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What routing decides on besides the deployment table."""

    health: dict[int, ServerHealth]
    live_sites: frozenset[str]


def snapshot_load() -> Snapshot:
    """The servers' health and the sites with live workers, read now (one round trip;
    empty when Redis is unreadable)."""
    health, live_sites = _health_load()
    return Snapshot(health=health, live_sites=live_sites)


def _health_load() -> tuple[dict[int, ServerHealth], frozenset[str]]:
    """The servers' health and the sites with live workers, in one round trip."""
    pipe = redis_client().pipeline(transaction=False)
    pipe.hgetall(HEALTH_KEY)
    pipe.zrangebyscore(liveness.KEY, time.time() - liveness.live_window_seconds(), "+inf")
    try:
        raw, live = pipe.execute()
    except redis.RedisError:
        logger.warning("routing: Redis unreadable; routing without health data")
        return {}, frozenset()
    health: dict[int, ServerHealth] = {}
    for key, value in raw.items():
        try:
            health[int(key)] = ServerHealth.from_json(value)
        except (ValueError, KeyError):
            logger.warning("routing: bad health entry for server %s", key)
    return health, liveness.live_sites_parse(live)


def refresh(*, force: bool = False) -> None:
    """Reload the deployment table and health snapshot if they are older than allowed."""
    now = time.monotonic()
    if force or now - _state.table_loaded_at > TABLE_SECONDS:
        table = _table_load()
        with _state.lock:
            _state.table, _state.table_loaded_at = table, now
    if force or now - _state.health_loaded_at > SNAPSHOT_SECONDS:
        health, live_sites = _health_load()
        with _state.lock:
            _state.health, _state.health_loaded_at = health, now
            _state.live_sites = live_sites


def candidates_for(
    model_slug: str,
    *,
    region_pin: str = "",
    exclude: frozenset[int] = frozenset(),
    for_jobs: bool = False,
) -> list[Candidate]:
    """The deployments of ``model_slug`` that may take work now, best first.

    ``for_jobs``: where to queue an async job. Sites whose workers are live
    (``workers.liveness``) come first; when none of the candidates' sites is live,
    the order is Triton's health alone and the job waits for a worker there.
    """
    refresh()
    now_wall = time.time()
    now = time.monotonic()
    with _state.lock:
        breaker_open = {sid for sid, b in _state.breakers.items() if b.open_until > now}
        in_flight = dict(_state.in_flight)
        ranked = candidates_rank(
            _state.table.get(model_slug, []),
            _state.health,
            in_flight=in_flight,
            breaker_open=breaker_open,
            region_pin=region_pin,
            exclude=exclude,
            now=now_wall,
        )
        live_sites = _state.live_sites
    if not for_jobs:
        return ranked
    return jobs_order(ranked, live_sites)


def jobs_order(ranked: list[Candidate], live_sites: frozenset[str]) -> list[Candidate]:
    """``ranked`` with the candidates at sites with live workers first, in their order. Pure."""
    live = [candidate for candidate in ranked if candidate.site_slug in live_sites]
    if not live:
        return ranked
    return live + [candidate for candidate in ranked if candidate.site_slug not in live_sites]


def model_available(model_slug: str) -> bool:
    return bool(candidates_for(model_slug))


class InFlight:
    """Counts a call against its server while it runs (``with InFlight(server_id):``)."""

    def __init__(self, server_id: int) -> None:
        self.server_id = server_id

    def __enter__(self) -> None:
        with _state.lock:
            _state.in_flight[self.server_id] += 1

    def __exit__(self, *exc: object) -> None:
        with _state.lock:
            _state.in_flight[self.server_id] -= 1


def breaker_record(server_id: int, *, ok: bool) -> None:
    """Open a server's breaker after consecutive failures; one success closes it.

    While open, the server gets no traffic from this process; after
    ``BREAKER_OPEN_SECONDS`` it is tried again (half-open) and the next result decides.
    """
    with _state.lock:
        breaker = _state.breakers[server_id]
        if ok:
            breaker.failures = 0
            breaker.open_until = 0.0
            return
        breaker.failures += 1
        if breaker.failures >= BREAKER_THRESHOLD:
            breaker.open_until = time.monotonic() + BREAKER_OPEN_SECONDS
            breaker.failures = BREAKER_THRESHOLD - 1  # half-open: one more failure reopens
            logger.warning("routing: breaker open for server %s", server_id)


def reset() -> None:
    """Forget every cache and breaker (tests, and after an operator changes sites)."""
    global _state
    _state = _ProcessState()

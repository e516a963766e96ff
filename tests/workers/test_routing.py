"""The routing score and candidate ranking: pure functions, no services."""

import time

from tests.factories import candidate_make
from workers import routing
from workers.routing import ServerHealth


def _health(
    *,
    healthy: bool = True,
    queue: int = 0,
    latency: float = 1.0,
    ready: tuple[str, ...] = ("echo",),
    age: float = 0.0,
) -> ServerHealth:
    return ServerHealth(
        healthy=healthy,
        ready_models=frozenset(ready),
        queue_depth={"echo": queue},
        latency_ms=latency,
        checked_at=time.time() - age,
    )


def _rank(
    candidates,
    health,
    *,
    in_flight=None,
    breaker_open=frozenset(),
    region_pin="",
    exclude=frozenset(),
):
    return routing.candidates_rank(
        candidates,
        health,
        in_flight=in_flight or {},
        breaker_open=set(breaker_open),
        region_pin=region_pin,
        exclude=frozenset(exclude),
        now=time.time(),
    )


def test_load_outranks_latency_and_latency_outranks_power():
    busy_fast_cheap = candidate_make(1, power=10)
    idle_slow_dear = candidate_make(2, power=120)
    ranked = _rank(
        [busy_fast_cheap, idle_slow_dear],
        {1: _health(queue=4, latency=0.5), 2: _health(queue=0, latency=40.0)},
    )
    assert [c.server_id for c in ranked] == [2, 1]

    fast_dear, slow_cheap = candidate_make(1, power=120), candidate_make(2, power=10)
    ranked = _rank([fast_dear, slow_cheap], {1: _health(latency=2.0), 2: _health(latency=8.0)})
    assert [c.server_id for c in ranked] == [1, 2]

    dear, cheap = candidate_make(1, power=90), candidate_make(2, power=20)
    ranked = _rank([dear, cheap], {1: _health(latency=3.0), 2: _health(latency=3.0)})
    assert [c.server_id for c in ranked] == [2, 1]


def test_in_flight_counts_against_capacity():
    small, large = candidate_make(1, capacity=2), candidate_make(2, capacity=16)
    ranked = _rank([small, large], {1: _health(), 2: _health()}, in_flight={1: 2, 2: 2})
    assert [c.server_id for c in ranked] == [2, 1]


def test_unhealthy_not_ready_open_breaker_and_excluded_are_left_out():
    candidates = [candidate_make(i) for i in range(1, 6)]
    health = {
        1: _health(healthy=False),
        2: _health(ready=("other",)),
        3: _health(),
        4: _health(),
        5: _health(),
    }
    ranked = _rank(candidates, health, breaker_open={3}, exclude={4})
    assert [c.server_id for c in ranked] == [5]


def test_unknown_or_stale_health_is_usable_but_last():
    known, unknown, stale = candidate_make(1, power=90), candidate_make(2), candidate_make(3)
    ranked = _rank(
        [unknown, stale, known],
        {1: _health(queue=1, latency=20.0), 3: _health(age=routing.HEALTH_STALE_SECONDS + 1)},
    )
    assert ranked[0].server_id == 1
    assert {c.server_id for c in ranked[1:]} == {2, 3}


def test_region_pin_keeps_only_that_region():
    us, eu = candidate_make(1, region="us"), candidate_make(2, region="eu")
    assert [c.server_id for c in _rank([us, eu], {}, region_pin="eu")] == [2]
    assert _rank([us], {}, region_pin="eu") == []


def test_score_formula():
    assert (
        routing.deployment_score(
            queue_depth=2,
            in_flight=2,
            max_concurrency=8,
            latency_ms=3.0,
            power_usd_per_mwh=50.0,
            health_known=True,
        )
        == 500.0 + 3.0 + 0.5
    )


def test_breaker_opens_after_consecutive_failures_and_a_success_closes_it(monkeypatch):
    routing.reset()
    for _ in range(routing.BREAKER_THRESHOLD - 1):
        routing.breaker_record(7, ok=False)
    assert routing._state.breakers[7].open_until == 0.0
    routing.breaker_record(7, ok=False)
    assert routing._state.breakers[7].open_until > time.monotonic()
    routing.breaker_record(7, ok=True)
    assert routing._state.breakers[7].open_until == 0.0
    routing.reset()


def test_jobs_go_to_sites_with_live_workers_first_in_rank_order():
    best_dead, live_b, live_c = (
        candidate_make(1, site="a"),
        candidate_make(2, site="b"),
        candidate_make(3, site="c"),
    )
    ranked = [best_dead, live_b, live_c]
    assert routing.jobs_order(ranked, frozenset({"b", "c"})) == [live_b, live_c, best_dead]
    assert routing.jobs_order(ranked, frozenset({"c"})) == [live_c, best_dead, live_b]


def test_jobs_keep_the_health_order_when_no_candidate_site_is_live():
    ranked = [candidate_make(1, site="a"), candidate_make(2, site="b")]
    assert routing.jobs_order(ranked, frozenset()) == ranked
    assert routing.jobs_order(ranked, frozenset({"elsewhere"})) == ranked

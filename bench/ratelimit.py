"""Benchmark: what the API rate and in-flight limits add to a sync request.

In one run, against one granian server (2 workers x 4 threads, as bench.inference)
and one real tritonserver site serving ``echo``, two tenants send the same requests:

* ``limited`` has all four limits (key and tenant, per minute and in flight), set far
  above the load so nothing is refused: each request pays the limiter's one Lua call
  and, after its response, the release of its in-flight slots;
* ``unlimited`` is on a tier with no limits (in this run the server's ``free`` tier is
  configured so), which skips the limiter entirely.

The difference is what the limiter adds. Sequential p50/p99 over alternating rounds
for ``GET /v1/me`` and ``POST /v2/models/echo/infer``, requests/s with 8 clients on
the inference call, and the limiter's own calls timed in-process (``admit`` then
``release``, straight to Redis).

    BENCH_DATABASE=cango_bench_ratelimit .venv/bin/python -m bench.ratelimit
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.harness import (
    BENCH_LIMITS,
    ROOT,
    Request,
    database_prepare,
    granian,
    limits_lift,
    median,
    percentile,
    sequential,
    throughput,
)

ECHO = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
LIMIT_NAMES = ("key_per_minute", "key_in_flight", "tenant_per_minute", "tenant_in_flight")
SERVER_TIERS: dict[str, dict[str, int | None]] = {
    "standard": {name: BENCH_LIMITS[f"limit_{name}"] for name in LIMIT_NAMES},
    "free": dict.fromkeys(LIMIT_NAMES),  # no limits: the limiter is skipped
}


def _setup(workdir: Path) -> tuple[dict[str, str], dict[str, str], object]:
    """Database, one echo site, and a funded key per tenant; the child env and the tokens."""
    env = database_prepare()
    from billing import ledger
    from billing.models import LedgerEntry
    from deploy import triton as launcher
    from marketplace import services as marketplace_services
    from marketplace.models import User
    from workers import health, services

    site = launcher.site_start("bench-rl", ["echo"], workdir)
    services.server_register(
        site_slug=site.slug,
        http_url=site.http_url,
        metrics_url=site.metrics_url,
        defaults=services.defaults_load(str(ROOT / "deploy" / "catalog.json")),
    )
    health.servers_check()
    owner, _ = User.objects.get_or_create(email="bench@cango.local")
    tokens = {}
    for name in ("limited", "unlimited"):
        tenant = marketplace_services.tenant_create(name=f"Bench {name}", owner=owner)
        if name == "limited":
            limits_lift(tenant)
        else:
            marketplace_services.tenant_limits_set(
                tenant=tenant, actor=None, limits={"tier": "free"}
            )
        ledger.entry_book(
            tenant_id=tenant.pk,
            kind=LedgerEntry.Kind.GRANT,
            source=f"bench-{name}",
            amount_micros=10**12,
        )
        _, tokens[name] = marketplace_services.api_key_create(
            tenant=tenant, actor=owner, name="bench"
        )
    env["RATE_LIMIT_TIERS"] = json.dumps(SERVER_TIERS)
    return env, tokens, site


def _limiter_calls(count: int) -> tuple[list[float], list[float]]:
    """In-process µs of ``admit`` and of ``release``, with all four limits active."""
    from marketplace import ratelimits

    limits = ratelimits.Limits(*(SERVER_TIERS["standard"][name] for name in LIMIT_NAMES))
    admits, releases = [], []
    for _ in range(count):
        started = time.perf_counter()
        admission = ratelimits.admit(key_id=10**9, tenant_id=10**9, limits=limits)
        admitted = time.perf_counter()
        ratelimits.release(admission)
        admits.append((admitted - started) * 1e6)
        releases.append((time.perf_counter() - admitted) * 1e6)
    return admits, releases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="sequential, per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-ratelimit-"))
    env, tokens, site = _setup(workdir)
    body = json.dumps(ECHO).encode()

    def requests(token: str) -> dict[str, Request]:
        auth = {"Authorization": f"Bearer {token}"}
        return {
            "me": Request("GET", "/v1/me", auth),
            "infer": Request(
                "POST",
                "/v2/models/echo/infer",
                {**auth, "Content-Type": "application/json"},
                body,
            ),
        }

    by_tenant = {name: requests(token) for name, token in tokens.items()}
    p50: dict[tuple[str, str], list[float]] = {}
    p99: dict[tuple[str, str], list[float]] = {}
    rps: dict[str, list[float]] = {"limited": [], "unlimited": []}
    try:
        with granian(env, workers=2, threads=4) as port:
            for round_no in range(args.rounds):
                order = ["limited", "unlimited"] if round_no % 2 == 0 else ["unlimited", "limited"]
                for endpoint in ("me", "infer"):
                    for tenant in order:
                        samples = sequential(port, by_tenant[tenant][endpoint], args.requests)
                        p50.setdefault((tenant, endpoint), []).append(percentile(samples, 50))
                        p99.setdefault((tenant, endpoint), []).append(percentile(samples, 99))
                for tenant in order:
                    rps[tenant].append(
                        throughput(port, by_tenant[tenant]["infer"], args.clients, args.seconds)
                    )
    finally:
        site.stop()  # type: ignore[attr-defined]
    admits, releases = _limiter_calls(5000)

    print(f"rounds={args.rounds} sequential={args.requests}/round clients={args.clients}")
    print("| request | limiter | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- |")
    for endpoint in ("me", "infer"):
        for tenant in ("unlimited", "limited"):
            label = "off (no limits)" if tenant == "unlimited" else "on (4 limits)"
            print(
                f"| {by_tenant[tenant][endpoint].method} {by_tenant[tenant][endpoint].path} "
                f"| {label} | {median(p50[(tenant, endpoint)]):.3f} "
                f"| {median(p99[(tenant, endpoint)]):.3f} |"
            )
    for endpoint in ("me", "infer"):
        pairs = zip(p50[("limited", endpoint)], p50[("unlimited", endpoint)], strict=True)
        added_p50 = [(on - off) * 1000 for on, off in pairs]
        pairs = zip(p99[("limited", endpoint)], p99[("unlimited", endpoint)], strict=True)
        added_p99 = [(on - off) * 1000 for on, off in pairs]
        print(
            f"added by the limiter on {endpoint}: p50 {median(added_p50):.0f} µs "
            f"(rounds {[round(v) for v in added_p50]}), p99 {median(added_p99):.0f} µs "
            f"(rounds {[round(v) for v in added_p99]})"
        )
    ratio = median(rps["limited"]) / median(rps["unlimited"])
    print(
        f"infer req/s with {args.clients} clients: on {median(rps['limited']):.0f}, "
        f"off {median(rps['unlimited']):.0f} (ratio {ratio:.3f}); "
        f"per round on {[round(v) for v in rps['limited']]}, "
        f"off {[round(v) for v in rps['unlimited']]}"
    )
    print(
        f"in-process: admit p50 {percentile(admits, 50):.0f} µs, p99 {percentile(admits, 99):.0f}"
        f" µs; release p50 {percentile(releases, 50):.0f} µs, "
        f"p99 {percentile(releases, 99):.0f} µs"
    )


if __name__ == "__main__":
    main()

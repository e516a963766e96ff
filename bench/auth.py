"""Benchmark: what API-key authentication adds to a request.

Compares, in one run against the same granian server, authenticated ``GET /v1/me``
with the unauthenticated trivial view ``GET /v1/health/live``: sequential p50/p99
over several alternating rounds, and requests/s with 8 concurrent clients.

    .venv/bin/python -m bench.auth            # needs PostgreSQL and Redis (make test's defaults)

Target (issue 2): the key check adds at most 1 ms at p50.
"""

from __future__ import annotations

import argparse
import sys

from bench.harness import (
    Request,
    database_prepare,
    granian,
    limits_lift,
    median,
    percentile,
    sequential,
    throughput,
)


def _prepare() -> tuple[dict[str, str], str]:
    """The bench database with a tenant and a key; the child env and the key's token."""
    env = database_prepare()
    from marketplace import services
    from marketplace.models import User

    owner, _ = User.objects.get_or_create(email="bench@cango.local")
    tenant = services.tenant_create(name="Bench", owner=owner)
    limits_lift(tenant)
    _, token = services.api_key_create(tenant=tenant, actor=owner, name="bench")
    return env, token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="per round, sequential")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    env, token = _prepare()
    trivial = Request("GET", "/v1/health/live", {})
    me = Request("GET", "/v1/me", {"Authorization": f"Bearer {token}"})

    p50s: dict[str, list[float]] = {"trivial": [], "me": []}
    p99s: dict[str, list[float]] = {"trivial": [], "me": []}
    rps: dict[str, list[float]] = {"trivial": [], "me": []}
    with granian(env) as port:
        for round_no in range(args.rounds):
            order = [("trivial", trivial), ("me", me)]
            if round_no % 2:
                order.reverse()
            for name, req in order:
                samples = sequential(port, req, args.requests)
                p50s[name].append(percentile(samples, 50))
                p99s[name].append(percentile(samples, 99))
            for name, req in order:
                rps[name].append(throughput(port, req, args.clients, args.seconds))

    print(f"rounds={args.rounds} requests/round={args.requests} clients={args.clients}")
    print("| endpoint | p50 ms | p99 ms | req/s (8 clients) |")
    print("| --- | --- | --- | --- |")
    for name, label in (("trivial", "GET /v1/health/live (no auth)"), ("me", "GET /v1/me (key)")):
        print(
            f"| {label} | {median(p50s[name]):.3f} | {median(p99s[name]):.3f} "
            f"| {median(rps[name]):.0f} |"
        )
    added_p50 = median([m - t for m, t in zip(p50s["me"], p50s["trivial"], strict=True)])
    added_p99 = median([m - t for m, t in zip(p99s["me"], p99s["trivial"], strict=True)])
    ratio = median(rps["me"]) / median(rps["trivial"])
    print(
        f"added by the key check: p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms; "
        f"throughput ratio {ratio:.2f}"
    )
    print("per-round p50 ms:", {k: [round(v, 3) for v in vals] for k, vals in p50s.items()})
    sys.exit(0 if added_p50 <= 1.0 else 1)


if __name__ == "__main__":
    main()

"""Benchmark: what API-key authentication adds to a request.

Compares, in one run against the same granian server, authenticated ``GET /v1/me``
with the unauthenticated trivial view ``GET /v1/health/live``: sequential p50/p99
over several alternating rounds, and requests/s with 8 concurrent clients.

    .venv/bin/python -m bench.auth            # needs PostgreSQL and Redis (make test's defaults)

Target (issue 2): the key check adds at most 1 ms at p50.
"""

from __future__ import annotations

import argparse
import os
import sys

import django
import psycopg

from bench.harness import Request, granian, median, percentile, sequential, throughput

BENCH_DB = "cango_bench"


def _prepare(database_url: str) -> str:
    """Create and migrate the bench database, seed a tenant and key; return the token."""
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [BENCH_DB]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    os.environ["DATABASE_URL"] = database_url.rsplit("/", 1)[0] + "/" + BENCH_DB
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    django.setup()
    from django.core.management import call_command

    from marketplace import services
    from marketplace.models import User

    call_command("migrate", verbosity=0)
    owner, _ = User.objects.get_or_create(email="bench@cango.local")
    tenant = services.tenant_create(name="Bench", owner=owner)
    _, token = services.api_key_create(tenant=tenant, actor=owner, name="bench")
    return token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="per round, sequential")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cango")
    token = _prepare(database_url)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.dev",
        "DJANGO_DEBUG": "false",
        "LOG_LEVEL": "WARNING",
    }
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

"""Benchmark: the cost of one ``/metrics`` scrape's database and Redis reads, with history.

Seeds (into its own database ``cango_bench_metrics``, emptied first) what is *in flight*
— queued and running jobs, open reservations, unsent usage records — and times the
operator collector (``observability.collectors.OperatorCollector``, in-process: the
queries and Redis reads a scrape makes). Then adds a long *history* — finished jobs,
settled reservations, usage already sent, ``--history`` rows of each — and times it
again. A scrape whose time grows with the history reads finished rows. Prints the
plans PostgreSQL chooses (``EXPLAIN (ANALYZE, BUFFERS)``) at the larger size.

    .venv/bin/python -m bench.metrics [--history 200000] [--runs 50]

Needs PostgreSQL (``DATABASE_URL``'s server) and Redis (``REDIS_URL``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench import harness

IN_FLIGHT_JOBS = 200
OPEN_HOLDS = 100
UNSENT_USAGE = 500


def _reset() -> tuple[int, int, int]:
    """Empty the tables the collector reads; return (tenant, account, model) ids."""
    from django.db import connection

    from billing.models import CreditAccount
    from marketplace.models import CatalogModel, Tenant
    from workers.models import Site

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE billing_usagerecord, billing_ledgerentry, billing_reservation, "
            "marketplace_webhookdelivery, marketplace_job CASCADE"
        )
    tenant, _ = Tenant.objects.get_or_create(slug="bench-metrics", defaults={"name": "Bench"})
    account, _ = CreditAccount.objects.get_or_create(tenant=tenant)
    CreditAccount.objects.filter(pk=account.pk).update(stripe_customer_id="cus_bench")
    model, _ = CatalogModel.objects.get_or_create(
        slug="bench-echo", defaults={"name": "echo", "price_micros": 10}
    )
    for slug in ("bench-a", "bench-b"):
        Site.objects.get_or_create(slug=slug, defaults={"name": slug, "region": "us-tx"})
    return tenant.pk, account.pk, model.pk


def _jobs(tenant: int, model: int, count: int, statuses: tuple[str, ...], tag: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO marketplace_job (tenant_id, public_id, model_id, status, request_hash,
                request, error_code, error_message, site_slug, model_version, attempts,
                max_cost_micros, webhook_url, created_at)
            SELECT %(tenant)s, %(tag)s || g, %(model)s, (%(statuses)s::text[])[1 + g %% %(n)s],
                   'x', '{}'::jsonb, '', '', CASE WHEN g %% 2 = 0 THEN 'bench-a' ELSE 'bench-b' END,
                   '', 1, 0, '', now() - g * interval '1 second'
              FROM generate_series(1, %(count)s) AS g
            """,
            {
                "tenant": tenant,
                "model": model,
                "tag": tag,
                "statuses": list(statuses),
                "n": len(statuses),
                "count": count,
            },
        )


def _reservations(tenant: int, account: int, count: int, status: str, tag: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_reservation (account_id, tenant_id, source, amount_micros,
                status, created_at, expires_at)
            SELECT %(account)s, %(tenant)s, %(tag)s || g, 1000, %(status)s,
                   now() - g * interval '1 second', now() + interval '1 minute'
              FROM generate_series(1, %(count)s) AS g
            """,
            {"account": account, "tenant": tenant, "tag": tag, "status": status, "count": count},
        )


def _usage(tenant: int, account: int, count: int, *, sent: bool, tag: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH entries AS (
                INSERT INTO billing_ledgerentry (account_id, tenant_id, kind, source,
                    amount_micros, model_slug, reason, created_at)
                SELECT %(account)s, %(tenant)s, 'usage', %(tag)s || g, -10, 'bench-echo', '',
                       now() - g * interval '1 second'
                  FROM generate_series(1, %(count)s) AS g
                RETURNING id, created_at
            )
            INSERT INTO billing_usagerecord (account_id, tenant_id, ledger_entry_id, model_slug,
                units, cost_micros, created_at, sent_at, attempts, last_error)
            SELECT %(account)s, %(tenant)s, id, 'bench-echo', 1, 10, created_at,
                   CASE WHEN %(sent)s THEN now() END, 0, ''
              FROM entries
            """,
            {"account": account, "tenant": tenant, "tag": tag, "count": count, "sent": sent},
        )


def _analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("marketplace_job", "billing_reservation", "billing_usagerecord"):
            cursor.execute(f"ANALYZE {table}")


def _time_scrapes(runs: int) -> tuple[float, float, int]:
    """Median and p95 milliseconds of one collection, and its query count."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from observability.collectors import OperatorCollector

    collector = OperatorCollector()
    list(collector.collect())  # warm connections
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        families = list(collector.collect())
        samples.append((time.perf_counter() - started) * 1000)
    up = next(f for f in families if f.name == "cango_metrics_source_up")
    if any(sample.value != 1 for sample in up.samples):
        raise RuntimeError(f"a source failed: {up.samples}")
    with CaptureQueriesContext(connection) as queries:
        list(collector.collect())
    return harness.median(samples), harness.percentile(samples, 95), len(queries)


def _plans() -> list[tuple[str, str]]:
    from billing.models import Reservation, UsageRecord
    from marketplace.models import Job

    in_flight = Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING])
    querysets: list[tuple[str, Any]] = [
        ("jobs in flight", in_flight.values("site_slug", "status")),
        ("open holds", Reservation.objects.filter(status="open").values("amount_micros")),
        (
            "meter backlog",
            UsageRecord.objects.filter(sent_at__isnull=True)
            .exclude(account__stripe_customer_id="")
            .values("created_at"),
        ),
    ]
    return [(label, qs.explain(analyze=True, buffers=True)) for label, qs in querysets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=200_000, help="finished rows per table")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    harness.BENCH_DB = "cango_bench_metrics"  # its own database: it truncates tables
    harness.database_prepare()
    tenant, account, model = _reset()
    _jobs(tenant, model, IN_FLIGHT_JOBS, ("queued", "running"), "bjob_live_")
    _reservations(tenant, account, OPEN_HOLDS, "open", "hold_live_")
    _usage(tenant, account, UNSENT_USAGE, sent=False, tag="usage_live_")
    _analyze()
    small = _time_scrapes(args.runs)

    began = time.perf_counter()
    _jobs(tenant, model, args.history, ("succeeded", "failed", "canceled"), "bjob_done_")
    _reservations(tenant, account, args.history, "settled", "hold_done_")
    _usage(tenant, account, args.history, sent=True, tag="usage_done_")
    _analyze()
    seeded = time.perf_counter() - began
    big = _time_scrapes(args.runs)

    print(
        f"in flight: {IN_FLIGHT_JOBS} jobs, {OPEN_HOLDS} open holds, {UNSENT_USAGE} unsent "
        f"usage records; history: {args.history:,} finished rows per table (seeded in "
        f"{seeded:.1f} s); {args.runs} collections each"
    )
    print("| history | p50 ms | p95 ms | queries |")
    print("| --- | --- | --- | --- |")
    for label, (p50, p95, queries) in (("none", small), (f"{args.history:,}", big)):
        print(f"| {label} | {p50:.2f} | {p95:.2f} | {queries} |")
    for label, plan in _plans():
        print(f"\n{label}:\n{plan}")


if __name__ == "__main__":
    main()

"""Benchmark: what billing adds to a sync request, and meter events sent per second.

In one run, against one real tritonserver site and PostgreSQL:

* the same echo request through three granian servers side by side — the
  marketplace as shipped (each settle also holds for the caller's next call, so a
  call pays one round trip: ``billing.ahead``), the same with holding ahead turned
  off (``SYNC_HOLD_AHEAD_MIN_CALLS=0``: every call holds for itself, as a caller's
  first call or a tenant near exhaustion does), and ``bench.nobilling_wsgi`` (the
  same code with the hold and the charge taken out) — sequential p50/p99 over
  rounds in rotating order; the differences are what billing adds;
* meter events per second: N usage records sent by ``billing.metering.usage_send``
  to the project's Stripe-compatible server through the official ``stripe`` client.

    .venv/bin/python -m bench.billing

Targets (issue 4): billing adds at most 1 ms at p50; at least 1,000 meter events/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.harness import (
    ROOT,
    Request,
    database_prepare,
    free_port,
    granian,
    limits_lift,
    median,
    percentile,
    sequential,
)


def http_get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
            return int(response.status)
    except OSError:
        return None


ECHO = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


def _setup(workdir: Path) -> tuple[dict[str, str], str, object, int]:
    env = database_prepare()
    from billing import ledger
    from billing.models import LedgerEntry
    from deploy import triton as launcher
    from marketplace import services as marketplace_services
    from marketplace.models import User
    from workers import health, services

    site = launcher.site_start("bill-1", ["echo"], workdir)
    services.server_register(
        site_slug=site.slug,
        http_url=site.http_url,
        metrics_url=site.metrics_url,
        defaults=services.defaults_load(str(ROOT / "deploy" / "catalog.json")),
    )
    health.servers_check()
    owner, _ = User.objects.get_or_create(email="bench@cango.local")
    tenant = marketplace_services.tenant_create(name="Bench billing", owner=owner)
    limits_lift(tenant)
    ledger.entry_book(
        tenant_id=tenant.pk,
        kind=LedgerEntry.Kind.GRANT,
        source="bench",
        amount_micros=10**12,
    )
    _, token = marketplace_services.api_key_create(tenant=tenant, actor=owner, name="bench")
    _vacuum()
    return env, token, site, tenant.pk


def _vacuum() -> None:
    """Vacuum what earlier runs left: this machine's PostgreSQL runs without autovacuum.

    Each run leaves ~25,000 dead reservation and outbox rows (settled holds, sent
    records) that a production server's autovacuum would have cleared; left in place,
    later runs measured the bloat, not billing (runs drifted from 0.9 to 1.7 ms).
    """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "VACUUM (ANALYZE) billing_creditaccount, billing_reservation, "
            "billing_ledgerentry, billing_usagerecord, billing_keyspend"
        )


def _meter_events(tenant_id: int, count: int) -> float:
    """Seed ``count`` unsent usage records, send them all, return events per second."""
    from django.conf import settings
    from django.utils import timezone

    from billing import metering, payments, stripe_gateway
    from billing.models import (
        BillingMeter,
        CreditAccount,
        LedgerEntry,
        SubscriptionItem,
        UsageRecord,
    )

    # The server runs in its own process, as Stripe would: in this one it would share
    # the interpreter lock with the sender and measure neither.
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.stripe_server",
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while http_get_status(f"http://127.0.0.1:{port}/_test/health") != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the Stripe-compatible server did not start")
            time.sleep(0.1)
        settings.STRIPE_API_BASE = f"http://127.0.0.1:{port}"
        settings.STRIPE_SECRET_KEY = "sk_test_bench"  # noqa: S105 - the local test server
        stripe_gateway.client.cache_clear()
        # Stripe objects of an earlier run lived in an earlier (in-memory) server.
        SubscriptionItem.objects.all().delete()
        BillingMeter.objects.all().delete()
        CreditAccount.objects.update(stripe_customer_id="", stripe_subscription_id="")
        payments.customer_ensure(tenant_id=tenant_id, tenant_name="Bench", email="b@x.y")
        account = CreditAccount.objects.get(tenant_id=tenant_id)
        UsageRecord.objects.filter(sent_at__isnull=True).update(sent_at=timezone.now())
        now = timezone.now()
        entries = LedgerEntry.objects.bulk_create(
            LedgerEntry(
                account=account,
                tenant_id=tenant_id,
                kind="usage",
                source=f"bench-meter:{time.time_ns()}:{i}",
                amount_micros=-10,
                model_slug="echo",
                units=1,
            )
            for i in range(count)
        )
        UsageRecord.objects.bulk_create(
            UsageRecord(
                account=account,
                tenant_id=tenant_id,
                ledger_entry=entry,
                model_slug="echo",
                units=1,
                cost_micros=10,
                created_at=now,
            )
            for entry in entries
        )
        metering.usage_send(limit=10)  # creates the meter, price and subscription first
        started = time.perf_counter()
        sent = 0
        while True:
            result = metering.usage_send(limit=count)
            sent += result["sent"]
            if not result["sent"]:
                break
        elapsed = time.perf_counter() - started
        return sent / elapsed
    finally:
        server.terminate()
        server.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="sequential, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--meter-events", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=4, help="granian blocking threads")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    env, token, site, tenant_id = _setup(workdir)
    request = Request(
        "POST",
        "/v2/models/echo/infer",
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        json.dumps(ECHO).encode(),
    )
    names = ("without", "with", "with, each call holding")
    samples: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p99": []} for name in names}
    try:
        with (
            granian(env, workers=1, threads=args.threads) as with_port,
            granian(
                {**env, "SYNC_HOLD_AHEAD_MIN_CALLS": "0"}, workers=1, threads=args.threads
            ) as holding_port,
            granian(
                env, workers=1, threads=args.threads, app="bench.nobilling_wsgi:application"
            ) as without_port,
        ):
            ports = dict(zip(names, (without_port, with_port, holding_port), strict=True))
            for round_no in range(args.rounds):
                for name in names[round_no % 3 :] + names[: round_no % 3]:
                    latencies = sequential(ports[name], request, args.requests)
                    samples[name]["p50"].append(percentile(latencies, 50))
                    samples[name]["p99"].append(percentile(latencies, 99))
        rate = _meter_events(tenant_id, args.meter_events)
    finally:
        site.stop()  # type: ignore[attr-defined]

    print(
        f"rounds={args.rounds} sequential={args.requests}/round "
        f"(echo, one site, {args.threads} blocking threads)"
    )
    print("| path | p50 ms | p99 ms | billing adds, p50 µs | p99 µs |")
    print("| --- | --- | --- | --- | --- |")
    base = samples["without"]
    for name in names:
        added = {
            pct: median([w - o for w, o in zip(samples[name][pct], base[pct], strict=True)])
            for pct in ("p50", "p99")
        }
        print(
            f"| {name} | {median(samples[name]['p50']):.3f} | {median(samples[name]['p99']):.3f} "
            f"| {added['p50'] * 1000:.0f} | {added['p99'] * 1000:.0f} |"
        )
    print("per-round p50 ms:", {k: [round(v, 3) for v in s["p50"]] for k, s in samples.items()})
    print(f"meter events: {rate:.0f}/s ({args.meter_events} sent to the local Stripe server)")


if __name__ == "__main__":
    main()

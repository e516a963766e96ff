"""Benchmark: the portal's and the operator console's pages with a tenant's history.

Seeds (into the ``cango_bench`` database, replacing its own earlier seed) a big tenant
with 10,000 jobs, 100,000 ledger entries and 1,000 audit events over the last 60
days, and a small one with 10 jobs, 100 entries and 1 event, then measures each page
two ways:

- **queries**, in-process with Django's test ``Client`` and ``CaptureQueriesContext``:
  once with only the small tenant in the database (its pages), once after the big
  tenant is seeded (its pages). A page whose count differs has a query count that
  grows with the data.
- **time**, over HTTP against granian (1 worker, 4 threads) after logging in through
  the allauth form: ``--requests`` sequential GETs per page after ``--warmup``, in
  ``--rounds`` rounds that alternate the page order; medians across rounds of the
  per-round p50/p99. "ms" is what the client sees on loopback (``requests``, keep-alive);
  "app ms" is the time inside Django's WSGI handler up to ``start_response``, read
  from a header this module's WSGI wrapper adds (no granian, no socket).

    .venv/bin/python -m bench.portal      # needs PostgreSQL and Redis (make test's defaults)

Target (issue 5): every page under 200 ms at p50, and no query count that grows with
the data. Exits non-zero if a query count grows (a slow page is only flagged).
"""

from __future__ import annotations

import argparse
import functools
import random
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from bench.harness import database_prepare, granian, median, percentile

TARGET_P50_MS = 200.0
BATCH = 5_000
DAYS = 60
PASSWORD = "bench-portal-Pass-7391"  # noqa: S105 - a throwaway user of the bench database
STAFF_EMAIL = "bench-portal-staff@cango.local"
APP_TIME_HEADER = "X-Bench-App-Ms"


@dataclass(frozen=True)
class Size:
    name: str
    owner_email: str
    jobs: int
    entries: int


SMALL = Size("Bench Portal Small", "bench-portal-small@cango.local", jobs=10, entries=100)
BIG = Size("Bench Portal Big", "bench-portal-big@cango.local", jobs=10_000, entries=100_000)

# slug, name, task, pricing unit, price in micro-USD per unit
_MODELS = (
    ("bench-portal-embed", "Bench embedder", "embedding", "1k_tokens", 20_000),
    ("bench-portal-classify", "Bench classifier", "classification", "request", 1_000),
    ("bench-portal-gpu", "Bench GPU model", "tensor", "gpu_second", 500_000),
)
_JOB_STATUSES = (  # status, weight
    ("succeeded", 80),
    ("failed", 8),
    ("canceled", 4),
    ("expired", 3),
    ("queued", 3),
    ("running", 2),
)
_SITES = ("bench-site-eu", "bench-site-us")


# ---- The WSGI app under test, timed inside granian's worker -----------------------


@functools.cache
def _django_app() -> Any:
    from config.wsgi import application as django_application

    return django_application


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """The project's WSGI app, adding the time spent in Django as a response header."""
    app = _django_app()
    start = time.perf_counter()

    def timed(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        elapsed = f"{(time.perf_counter() - start) * 1000:.3f}"
        return start_response(status, [*headers, (APP_TIME_HEADER, elapsed)], exc_info)

    return app(environ, timed)


# ---- Seeding ---------------------------------------------------------------------


@contextmanager
def _created_at_settable(*model_classes: Any) -> Iterator[None]:
    """Let ``bulk_create`` write the ``created_at`` given (it is ``auto_now_add``)."""
    fields = [cls._meta.get_field("created_at") for cls in model_classes]
    saved = [field.auto_now_add for field in fields]
    for field in fields:
        field.auto_now_add = False
    try:
        yield
    finally:
        for field, value in zip(fields, saved, strict=True):
            field.auto_now_add = value


def _batched(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _reset() -> None:
    """Remove what an earlier run of this benchmark seeded (raw deletes: 100k rows)."""
    from allauth.account.models import EmailAddress
    from django.db import connection

    from billing.models import CreditAccount, LedgerEntry, Purchase, Reservation, UsageRecord
    from marketplace.models import Job, Tenant, User, WebhookDelivery

    tenants = list(Tenant.objects.filter(slug__startswith="bench-portal-"))
    ids = [t.pk for t in tenants]
    if ids:
        with connection.cursor() as cursor:
            for model in (
                UsageRecord,
                Reservation,
                Purchase,
                LedgerEntry,
                WebhookDelivery,
                Job,
                CreditAccount,
            ):
                table = model._meta.db_table
                cursor.execute(f"DELETE FROM {table} WHERE tenant_id = ANY(%s)", [ids])  # noqa: S608
        for tenant in tenants:
            tenant.delete()
    emails = [SMALL.owner_email, BIG.owner_email, STAFF_EMAIL]
    EmailAddress.objects.filter(email__in=emails).delete()
    User.objects.filter(email__in=emails).delete()


def _user(email: str, *, staff: bool = False) -> Any:
    from allauth.account.models import EmailAddress

    from marketplace.models import User

    user = User.objects.create_user(email=email, password=PASSWORD, is_staff=staff)
    EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
    return user


def _catalog() -> list[Any]:
    from marketplace.models import CatalogModel

    models = []
    for slug, name, task, unit, price in _MODELS:
        model, _ = CatalogModel.objects.update_or_create(
            slug=slug,
            defaults={"name": name, "task": task, "pricing_unit": unit, "price_micros": price},
        )
        models.append(model)
    return models


def _cost(model: Any, units: int) -> int:
    if model.pricing_unit == "request":
        return int(model.price_micros) * units
    if model.pricing_unit == "gpu_second":
        return int(model.price_micros) * units // 1_000_000
    return int(model.price_micros) * units // 1_000


def _units(model: Any, rng: random.Random) -> int:
    if model.pricing_unit == "request":
        return rng.randint(1, 8)
    if model.pricing_unit == "gpu_second":
        return rng.randint(5_000, 200_000)  # GPU-microseconds
    return rng.randint(10, 2_000)


def _seed_tenant(size: Size, models: list[Any], rng: random.Random) -> Any:
    """A tenant with its owner, ``size.jobs`` jobs and ``size.entries`` ledger entries."""
    from django.db import transaction
    from django.db.models import Sum
    from django.utils import timezone

    from billing.models import CreditAccount, LedgerEntry
    from marketplace import services
    from marketplace.models import Job

    owner = _user(size.owner_email)
    tenant = services.tenant_create(name=size.name, owner=owner)
    services.api_key_create(tenant=tenant, actor=owner, name="bench")
    account = CreditAccount.objects.get(tenant=tenant)
    now = timezone.now()
    span = timedelta(days=DAYS).total_seconds()
    statuses = [s for s, _ in _JOB_STATUSES]
    weights = [w for _, w in _JOB_STATUSES]

    def job(i: int) -> Job:
        status = rng.choices(statuses, weights)[0]
        model = rng.choice(models)
        final = status not in ("queued", "running")
        created = now - timedelta(seconds=rng.uniform(0, span) if final else rng.uniform(0, 600))
        units = _units(model, rng)
        succeeded = status == "succeeded"
        return Job(
            tenant=tenant,
            public_id=f"job_{uuid.uuid4().hex[:24]}",
            model=model,
            status=status,
            request_hash=f"{i:064x}",
            request={
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]
            },
            output={"outputs": []} if succeeded else None,
            error_code="site_error" if status == "failed" else "",
            error_message="The site failed the request." if status == "failed" else "",
            site_slug=rng.choice(_SITES) if status in ("succeeded", "failed", "running") else "",
            attempts=1 if status != "queued" else 0,
            units=units if succeeded else None,
            cost_micros=_cost(model, units) if succeeded else (0 if final else None),
            max_cost_micros=_cost(model, units) * 2,
            created_at=created,
            enqueued_at=created,
            started_at=created + timedelta(milliseconds=5) if status != "queued" else None,
            finished_at=created + timedelta(milliseconds=rng.randint(20, 900)) if final else None,
        )

    charged: list[Job] = []
    with transaction.atomic(), _created_at_settable(Job, LedgerEntry):
        for batch in _batched(job(i) for i in range(size.jobs)):
            Job.objects.bulk_create(batch)
            charged += [j for j in batch if j.status == "succeeded"]

        purchases = max(2, size.entries // 40)
        grants = max(1, size.entries // 200)
        sync_calls = size.entries - purchases - grants - len(charged)
        slugs = {m.pk: m.slug for m in models}

        def entries() -> Iterator[LedgerEntry]:
            common = {"account": account, "tenant": tenant}
            for j in charged:
                yield LedgerEntry(
                    **common,
                    kind="usage",
                    source=f"job:{j.pk}",
                    amount_micros=-int(j.cost_micros or 0),
                    model_slug=slugs[j.model_id],
                    units=j.units,
                    created_at=j.finished_at or now,
                )
            for _ in range(sync_calls):
                model = rng.choice(models)
                units = _units(model, rng)
                yield LedgerEntry(
                    **common,
                    kind="usage",
                    source=f"req:{uuid.uuid4()}",
                    amount_micros=-_cost(model, units),
                    model_slug=model.slug,
                    units=units,
                    created_at=now - timedelta(seconds=rng.uniform(0, span)),
                )
            for n in range(purchases):
                yield LedgerEntry(
                    **common,
                    kind="purchase",
                    source=f"purchase:bench-{n}",
                    amount_micros=rng.choice((10, 20, 50, 100)) * 1_000_000,
                    created_at=now - timedelta(seconds=rng.uniform(0, span)),
                )
            for n in range(grants):
                yield LedgerEntry(
                    **common,
                    kind="grant",
                    source=f"grant:bench-{n}",
                    amount_micros=5_000_000,
                    reason="Bench grant",
                    created_at=now - timedelta(seconds=rng.uniform(0, span)),
                )

        for batch in _batched(entries()):
            LedgerEntry.objects.bulk_create(batch)
        total = LedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount_micros"))["s"]
        CreditAccount.objects.filter(pk=account.pk).update(balance_micros=total, reserved_micros=0)
    _seed_audit(tenant, owner, size.entries // AUDIT_EVENTS_PER_ENTRY, rng)
    return tenant


#: One audit event per this many ledger entries (1,000 for the big tenant).
AUDIT_EVENTS_PER_ENTRY = 100
_AUDIT_ACTIONS = ("api_key.created", "api_key.revoked", "membership.role_changed", "credit.granted")


def _seed_audit(tenant: Any, owner: Any, count: int, rng: random.Random) -> None:
    """``count`` audit events of the tenant over the seeded period, in bulk."""
    from django.utils import timezone

    from marketplace.models import AuditEvent

    now = timezone.now()
    span = timedelta(days=DAYS).total_seconds()
    with _created_at_settable(AuditEvent):
        AuditEvent.objects.bulk_create(
            AuditEvent(
                tenant=tenant,
                actor=owner,
                actor_label=owner.email,
                action=rng.choice(_AUDIT_ACTIONS),
                target_type="ApiKey",
                target_id=str(i),
                metadata={"name": f"bench key {i}"},
                created_at=now - timedelta(seconds=rng.uniform(0, span)),
            )
            for i in range(max(1, count))
        )


def _analyze() -> None:
    """Fresh planner statistics, as autovacuum would have after a bulk load."""
    from django.db import connection

    from billing.models import LedgerEntry
    from marketplace.models import AuditEvent, Job

    with connection.cursor() as cursor:
        for model in (Job, LedgerEntry, AuditEvent):
            cursor.execute(f"ANALYZE {model._meta.db_table}")


# ---- Pages -----------------------------------------------------------------------


def _pages(slug: str) -> list[tuple[str, str, bool]]:
    """(label, path, staff) of every page measured."""
    today = datetime.now(UTC).date()
    start = today - timedelta(days=DAYS)
    end = today + timedelta(days=1)
    return [
        ("/", "/", False),
        ("/jobs/", "/jobs/", False),
        ("/jobs/?status=succeeded", "/jobs/?status=succeeded", False),
        ("/billing/", "/billing/", False),
        ("/ops/", "/ops/", True),
        ("/ops/tenants/", "/ops/tenants/", True),
        ("/ops/tenants/<slug>/", f"/ops/tenants/{slug}/", True),
        ("/ops/revenue/", "/ops/revenue/", True),
        (
            "/ops/revenue/?start=-60d (61 days)",
            f"/ops/revenue/?start={start.isoformat()}&end={end.isoformat()}",
            True,
        ),
        ("/ops/failures/", "/ops/failures/", True),
        ("/audit/", "/audit/", False),
        ("/audit/?action=credit.granted", "/audit/?action=credit.granted", False),
        ("/ops/audit/", "/ops/audit/", True),
        ("/ops/audit/?tenant=<slug>", f"/ops/audit/?tenant={slug}", True),
    ]


@dataclass
class Captured:
    count: int
    slowest: list[tuple[float, str]]


def _query_counts(owner: Any, staff: Any, slug: str) -> dict[str, Captured]:
    """Each page's queries, in-process, after one warm-up request of the same page."""
    from django.db import connections
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    clients = {False: Client(SERVER_NAME="127.0.0.1"), True: Client(SERVER_NAME="127.0.0.1")}
    clients[False].force_login(owner)
    clients[True].force_login(staff)
    found: dict[str, Captured] = {}
    for label, path, is_staff in _pages(slug):
        client = clients[is_staff]
        client.get(path)
        with (
            CaptureQueriesContext(connections["default"]) as default,
            CaptureQueriesContext(connections["holds"]) as holds,
        ):
            response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code} in-process")
        queries = [*default.captured_queries, *holds.captured_queries]
        slowest = sorted(((float(q["time"]) * 1000, q["sql"]) for q in queries), reverse=True)
        found[label] = Captured(len(queries), slowest[:3])
    return found


# ---- HTTP timing -----------------------------------------------------------------


def _login(base: str, email: str) -> requests.Session:
    """Sign in through allauth's form, as a browser would; the session keeps the cookies."""
    session = requests.Session()
    form = session.get(f"{base}/accounts/login/", timeout=30)
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    if match is None:
        raise RuntimeError("no CSRF token on the login page")
    answer = session.post(
        f"{base}/accounts/login/",
        data={"login": email, "password": PASSWORD, "csrfmiddlewaretoken": match.group(1)},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 302:
        raise RuntimeError(f"login of {email} answered {answer.status_code}")
    return session


def _timed(
    session: requests.Session, url: str, count: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Client-observed and in-Django latencies (ms) of ``count`` sequential GETs."""
    for _ in range(warmup):
        session.get(url, allow_redirects=False, timeout=60)
    client: list[float] = []
    app: list[float] = []
    for _ in range(count):
        start = time.perf_counter()
        response = session.get(url, allow_redirects=False, timeout=60)
        client.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
        app.append(float(response.headers[APP_TIME_HEADER]))
    return client, app


# ---- Main ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="per page and round")
    parser.add_argument("--warmup", type=int, default=20, help="per page and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    env = database_prepare()
    from marketplace.models import User

    rng = random.Random(5)  # the same data every run
    began = time.perf_counter()
    _reset()
    models = _catalog()
    staff = _user(STAFF_EMAIL, staff=True)
    small = _seed_tenant(SMALL, models, rng)
    _analyze()
    small_counts = _query_counts(User.objects.get(email=SMALL.owner_email), staff, small.slug)
    big = _seed_tenant(BIG, models, rng)
    _analyze()
    seeded = time.perf_counter() - began
    big_counts = _query_counts(User.objects.get(email=BIG.owner_email), staff, big.slug)
    print(
        f"seeded in {seeded:.1f} s: {big.slug} ({BIG.jobs:,} jobs, {BIG.entries:,} entries), "
        f"{small.slug} ({SMALL.jobs} jobs, {SMALL.entries} entries)"
    )

    pages = _pages(big.slug)
    p50s: dict[str, list[float]] = {label: [] for label, _, _ in pages}
    p99s: dict[str, list[float]] = {label: [] for label, _, _ in pages}
    app50s: dict[str, list[float]] = {label: [] for label, _, _ in pages}
    with granian(env, workers=1, threads=4, app="bench.portal:application") as port:
        base = f"http://127.0.0.1:{port}"
        sessions = {False: _login(base, BIG.owner_email), True: _login(base, STAFF_EMAIL)}
        for round_no in range(args.rounds):
            order = pages if round_no % 2 == 0 else list(reversed(pages))
            for label, path, is_staff in order:
                client, app = _timed(sessions[is_staff], base + path, args.requests, args.warmup)
                p50s[label].append(percentile(client, 50))
                p99s[label].append(percentile(client, 99))
                app50s[label].append(percentile(app, 50))

    print(f"rounds={args.rounds} requests/round={args.requests} warmup={args.warmup}")
    print("| page | queries (small) | queries (big) | p50 ms | p99 ms | app p50 ms | |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    grows: list[str] = []
    slow: list[str] = []
    for label, _, _ in pages:
        flags = []
        if big_counts[label].count != small_counts[label].count:
            grows.append(label)
            flags.append("**query count grows**")
        if median(p50s[label]) > TARGET_P50_MS:
            slow.append(label)
            flags.append("**over 200 ms**")
        print(
            f"| `{label}` | {small_counts[label].count} | {big_counts[label].count} "
            f"| {median(p50s[label]):.1f} | {median(p99s[label]):.1f} "
            f"| {median(app50s[label]):.1f} | {' '.join(flags)} |"
        )
    print("per-round p50 ms:", {k: [round(v, 1) for v in vals] for k, vals in p50s.items()})
    print("slowest queries of each page (big, in-process, one request):")
    for label, _, _ in pages:
        for ms, sql in big_counts[label].slowest[:2]:
            print(f"  {label}: {ms:.1f} ms  {sql[:300]}")
    print(f"over target: {slow or 'none'}; growing query counts: {grows or 'none'}")
    sys.exit(1 if grows else 0)


if __name__ == "__main__":
    main()

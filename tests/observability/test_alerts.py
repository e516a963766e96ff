"""Operator alerts: each fires when its condition holds and stays quiet when not."""

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing import ledger, stripe_gateway
from billing.models import BillingMeter, CreditAccount, LedgerEntry, UsageRecord
from config.redis_client import redis_client
from marketplace.logging import JsonFormatter, RedactFilter, RequestIdFilter
from marketplace.models import Tenant
from observability import alerts, tasks
from workers import routing
from workers.models import Site, TritonServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _alert_state_cleared() -> Iterator[None]:
    cache.delete_many(
        [
            alerts.RECONCILE_CACHE_KEY,
            *(
                alerts.MAILED_CACHE_KEY.format(n)
                for n in (
                    "meter_backlog",
                    "grant_mirror_backlog",
                    "reconcile_difference",
                    "site_down",
                )
            ),
        ]
    )
    yield
    cache.delete(alerts.RECONCILE_CACHE_KEY)


@pytest.fixture
def stripe_totals(monkeypatch) -> dict[str, object]:
    """Stripe's meter totals, as the reconciliation reads them (no HTTP here)."""
    state: dict[str, object] = {"total": 0, "calls": 0, "window": None}

    def meter_event_total(**kwargs: object) -> int:
        state["calls"] = int(str(state["calls"])) + 1
        state["window"] = (kwargs["start"], kwargs["end"])
        return int(str(state["total"]))

    monkeypatch.setattr(stripe_gateway, "meter_event_total", meter_event_total)
    return state


def _invoiced(tenant: Tenant) -> None:
    CreditAccount.objects.filter(tenant=tenant).update(stripe_customer_id=f"cus_{tenant.pk}")
    BillingMeter.objects.get_or_create(
        model_slug="echo", defaults={"event_name": "cango_usage_echo", "stripe_meter_id": "mtr_1"}
    )


def _usage(
    tenant: Tenant,
    source: str,
    cost: int,
    *,
    sent: bool,
    age_seconds: int = 0,
    at: datetime | None = None,
) -> None:
    hold = ledger.credit_reserve(
        tenant_id=tenant.pk, amount_micros=cost, source=source, ttl_seconds=60
    )
    ledger.credit_settle(hold=hold, cost_micros=cost, units=1, model_slug="echo", source=source)
    created = at or timezone.now() - timedelta(seconds=age_seconds)
    UsageRecord.objects.filter(ledger_entry__source=source).update(
        sent_at=timezone.now() if sent else None, created_at=created
    )
    LedgerEntry.objects.filter(source=source).update(created_at=created)


def _names(fired: list[alerts.Alert]) -> list[str]:
    return [alert.name for alert in fired]


# ---- Meter-event backlog --------------------------------------------------------


def test_backlog_alert_fires_when_the_oldest_unsent_record_is_too_old(
    world, stripe_totals, settings
):
    settings.ALERT_METER_BACKLOG_SECONDS = 300
    _invoiced(world.tenant)
    _usage(world.tenant, "req:fresh", 10, sent=False, age_seconds=60)
    stripe_totals["total"] = 0

    assert "meter_backlog" not in _names(alerts.checks_run())

    _usage(world.tenant, "req:stale", 10, sent=False, age_seconds=301)
    fired = {a.name: a for a in alerts.checks_run(force_reconcile=True)}

    assert fired["meter_backlog"].details["unsent"] == 2
    assert int(str(fired["meter_backlog"].details["oldest_age_seconds"])) >= 301


def test_grant_mirror_alert_fires_when_free_credit_waits_too_long(world, stripe_totals, settings):
    from billing.models import GrantMirror

    settings.ALERT_METER_BACKLOG_SECONDS = 300
    assert "grant_mirror_backlog" not in _names(alerts.checks_run())  # no customer yet
    _invoiced(world.tenant)
    assert "grant_mirror_backlog" not in _names(alerts.checks_run())  # the fixture's: fresh

    GrantMirror.objects.update(created_at=timezone.now() - timedelta(seconds=301))
    fired = {a.name: a for a in alerts.checks_run()}
    assert fired["grant_mirror_backlog"].details["unsent"] == 1

    GrantMirror.objects.update(stripe_credit_grant_id="credgr_test_1")
    assert "grant_mirror_backlog" not in _names(alerts.checks_run())


def test_backlog_alert_fires_on_too_many_unsent_records(world, stripe_totals, settings):
    settings.ALERT_METER_BACKLOG_RECORDS = 2
    _invoiced(world.tenant)
    for n in range(2):
        _usage(world.tenant, f"req:{n}", 10, sent=False)
    assert "meter_backlog" not in _names(alerts.checks_run())

    _usage(world.tenant, "req:3", 10, sent=False)

    assert "meter_backlog" in _names(alerts.checks_run())


def test_usage_of_tenants_without_a_stripe_customer_is_not_a_backlog(world, settings):
    settings.ALERT_METER_BACKLOG_SECONDS = 1
    _usage(world.tenant, "req:old", 10, sent=False, age_seconds=3600)

    assert "meter_backlog" not in _names(alerts.checks_run())


# ---- Reconciliation -------------------------------------------------------------

# A fixed moment in the middle of a month, and usage charged earlier that month.
NOW = datetime(2026, 5, 20, 12, 30, 45, tzinfo=UTC)
CHARGED = datetime(2026, 5, 10, 8, 0, tzinfo=UTC)


def test_reconcile_alert_fires_when_stripe_and_the_ledger_disagree(world, stripe_totals):
    _invoiced(world.tenant)
    _usage(world.tenant, "req:a", 120, sent=True, at=CHARGED)
    stripe_totals["total"] = 120
    assert alerts.reconcile_check(NOW, force=True) is None

    stripe_totals["total"] = 100
    alert = alerts.reconcile_check(NOW, force=True)

    assert alert is not None
    assert alert.name == "reconcile_difference"
    assert "difference" in alert.message
    # The month so far, up to ten minutes ago on a minute (Stripe aggregates late).
    assert stripe_totals["window"] == (
        datetime(2026, 5, 1, tzinfo=UTC),
        datetime(2026, 5, 20, 12, 20, tzinfo=UTC),
    )


def test_usage_still_waiting_to_be_sent_is_not_a_difference(world, stripe_totals):
    _invoiced(world.tenant)
    _usage(world.tenant, "req:sent", 120, sent=True, at=CHARGED)
    _usage(world.tenant, "req:waiting", 30, sent=False, at=CHARGED)
    stripe_totals["total"] = 120

    assert alerts.reconcile_check(NOW, force=True) is None


def test_usage_of_the_last_minutes_is_left_to_the_next_check(world, stripe_totals):
    _invoiced(world.tenant)
    _usage(world.tenant, "req:old", 120, sent=True, at=CHARGED)
    _usage(world.tenant, "req:just-now", 30, sent=True, at=NOW - timedelta(minutes=2))
    stripe_totals["total"] = 120  # Stripe has not aggregated the newest event yet

    assert alerts.reconcile_check(NOW, force=True) is None


def test_stripe_is_asked_at_most_once_per_interval(world, stripe_totals, settings):
    settings.ALERT_RECONCILE_INTERVAL_SECONDS = 3600
    _invoiced(world.tenant)
    _usage(world.tenant, "req:a", 120, sent=True, at=CHARGED)
    stripe_totals["total"] = 100

    first = alerts.reconcile_check(NOW)
    stripe_totals["total"] = 120  # fixed in Stripe, but not asked again yet
    second = alerts.reconcile_check(NOW)

    assert stripe_totals["calls"] == 1
    assert first == second
    assert first is not None
    assert alerts.reconcile_check(NOW, force=True) is None
    assert stripe_totals["calls"] == 2


def test_a_reconciliation_that_cannot_reach_stripe_is_an_alert_of_its_own(world, monkeypatch):
    _invoiced(world.tenant)

    def down(**kwargs: object) -> int:
        raise stripe_gateway.GatewayError("connection refused")

    monkeypatch.setattr(stripe_gateway, "meter_event_total", down)
    monkeypatch.setattr(alerts.timezone, "now", lambda: NOW)
    _usage(world.tenant, "req:b", 120, sent=True, at=CHARGED)

    assert _names(alerts.checks_run(force_reconcile=True)) == ["reconcile_difference_failed"]


def test_the_first_minutes_of_a_month_have_nothing_to_compare(world, stripe_totals):
    _invoiced(world.tenant)
    _usage(world.tenant, "req:a", 120, sent=True, at=CHARGED)

    assert alerts.reconcile_check(datetime(2026, 6, 1, 0, 5, tzinfo=UTC), force=True) is None
    assert stripe_totals["calls"] == 0


# ---- Sites ----------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[TritonServer]:
    site = Site.objects.create(
        slug="alert-a", name="A", region="us-tx", power_price_usd_per_mwh=Decimal(30)
    )
    server = TritonServer.objects.create(site=site, name="t1", http_url="http://10.0.0.5:8000")
    yield server
    redis_client().hdel(routing.HEALTH_KEY, str(server.pk))


def _health(server: TritonServer, *, healthy: bool, age: float = 0) -> None:
    snapshot = {"healthy": healthy, "ready_models": [], "checked_at": time.time() - age}
    redis_client().hset(routing.HEALTH_KEY, str(server.pk), json.dumps(snapshot))


def test_site_down_fires_when_no_server_of_an_active_site_is_healthy(server):
    _health(server, healthy=True)
    assert _names(alerts.checks_run()) == []

    _health(server, healthy=False)
    fired = alerts.checks_run()
    assert _names(fired) == ["site_down"]
    assert fired[0].details == {"sites": ["alert-a"]}

    _health(server, healthy=True, age=routing.HEALTH_STALE_SECONDS + 5)
    assert _names(alerts.checks_run()) == ["site_down"]  # a stale snapshot proves nothing


def test_a_draining_or_offline_site_is_not_down(server):
    _health(server, healthy=False)
    Site.objects.filter(pk=server.site_id).update(status=Site.Status.OFFLINE)

    assert _names(alerts.checks_run()) == []


# ---- The command and the beat task ----------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    for log_filter in (RequestIdFilter(), RedactFilter()):
        handler.addFilter(log_filter)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("observability")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_ops_check_exits_non_zero_with_an_error_line_per_alert(server, json_lines):
    _health(server, healthy=False)

    with pytest.raises(CommandError, match="1 alert"):
        call_command("ops_check")

    entries = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert [(e["level"], e["alert"]) for e in entries] == [("ERROR", "site_down")]
    assert entries[0]["sites"] == ["alert-a"]


def test_ops_check_says_ok_and_logs_nothing_when_all_is_well(server, json_lines):
    _health(server, healthy=True)
    out = io.StringIO()

    call_command("ops_check", stdout=out)

    assert "OK" in out.getvalue()
    assert json_lines.getvalue() == ""


def test_the_beat_task_mails_the_admins_once_per_hour_per_alert(server, settings):
    settings.ADMINS = [("ops", "ops@cango.example")]
    _health(server, healthy=False)

    assert tasks.ops_check.run() == ["site_down"]
    assert tasks.ops_check.run() == ["site_down"]

    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["ops@cango.example"]
    assert "site_down" in mail.outbox[0].subject


def test_the_beat_task_is_scheduled(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["ops-check"]
    assert entry["task"] == tasks.ops_check.name
    assert entry["schedule"] <= 600

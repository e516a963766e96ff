"""Operator alerts: checks that something needing a person is wrong.

Run by ``manage.py ops_check`` (exit status 1 when any alert fires: for cron,
systemd timers or a monitoring agent) and by the beat task ``observability.ops_check``
every ``ALERT_CHECK_INTERVAL_SECONDS``, which also mails ``settings.ADMINS``. Every
alert is one ERROR log line with ``alert=<name>``, so a log pipeline can page on it.

The alerts (README, "Observability"):

- ``meter_backlog``: usage is not reaching Stripe (oldest unsent record too old, or
  too many unsent): invoices will be short until it does.
- ``grant_mirror_backlog``: credit that staff gave is not reaching Stripe as credit
  grants (the oldest waits longer than ``ALERT_METER_BACKLOG_SECONDS``): invoices would
  ask tenants to pay for usage that this credit covered.
- ``reconcile_difference``: this month's ledger usage and Stripe's meter totals
  (up to ten minutes ago) disagree beyond what is still waiting to be sent.
- ``site_down``: an active site has enabled servers and none of them is healthy.
- ``<check>_failed``: a check could not run (database, Redis or Stripe unreachable).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
import stripe
from django.conf import settings
from django.core.cache import cache
from django.core.mail import mail_admins
from django.db import DatabaseError
from django.utils import timezone

from billing import metering, stripe_gateway

from . import selectors

logger = logging.getLogger(__name__)

RECONCILE_CACHE_KEY = "ops:reconcile:last"
MAILED_CACHE_KEY = "ops:alert-mailed:{}"
MAIL_REPEAT_SECONDS = 3600
STRIPE_SUMMARY_LAG_SECONDS = 600


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    message: str
    details: dict[str, object] = field(default_factory=dict)


def meter_backlog_check(now: datetime) -> Alert | None:
    backlog = selectors.meter_backlog()
    age = backlog.oldest_age_seconds(now)
    if age <= settings.ALERT_METER_BACKLOG_SECONDS and (
        backlog.count <= settings.ALERT_METER_BACKLOG_RECORDS
    ):
        return None
    return Alert(
        "meter_backlog",
        f"{backlog.count} usage records not sent to Stripe; the oldest is {age:.0f} s old.",
        {"unsent": backlog.count, "oldest_age_seconds": round(age)},
    )


def grant_mirror_check(now: datetime) -> Alert | None:
    backlog = selectors.grant_mirror_backlog()
    age = backlog.oldest_age_seconds(now)
    if age <= settings.ALERT_METER_BACKLOG_SECONDS:
        return None
    return Alert(
        "grant_mirror_backlog",
        f"{backlog.count} credit grants not mirrored to Stripe; the oldest is {age:.0f} s old.",
        {"unsent": backlog.count, "oldest_age_seconds": round(age)},
    )


def month_of(now: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) holding ``now``, half-open."""
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _reconcile_now(now: datetime) -> list[str]:
    """This month's differences that the unsent backlog does not explain.

    The month is compared up to ``STRIPE_SUMMARY_LAG_SECONDS`` ago (on a minute, as
    Stripe's summaries want): Stripe aggregates meter events asynchronously, so the
    last minutes' events may be sent yet not counted.
    """
    start, _ = month_of(now)
    end = (now - timedelta(seconds=STRIPE_SUMMARY_LAG_SECONDS)).replace(second=0, microsecond=0)
    if end <= start:
        return []
    unsent = selectors.unsent_usage_micros(start=start, end=end)
    return [
        str(difference)
        for difference in metering.reconcile(start=start, end=end)
        if difference.stripe_micros
        != difference.ledger_micros - unsent.get((difference.tenant_id, difference.model_slug), 0)
    ]


def reconcile_check(now: datetime, *, force: bool = False) -> Alert | None:
    """Reconcile at most every ``ALERT_RECONCILE_INTERVAL_SECONDS``; reuse the last
    result in between, so frequent checks never hammer Stripe."""
    last = cache.get(RECONCILE_CACHE_KEY)
    interval = settings.ALERT_RECONCILE_INTERVAL_SECONDS
    fresh = last is not None and time.time() - last["at"] < interval
    if fresh and not force:
        differences: list[str] = last["differences"]
    else:
        differences = _reconcile_now(now)
        cache.set(
            RECONCILE_CACHE_KEY,
            {"at": time.time(), "differences": differences},
            timeout=settings.ALERT_RECONCILE_INTERVAL_SECONDS,
        )
    if not differences:
        return None
    return Alert(
        "reconcile_difference",
        f"{len(differences)} ledger/Stripe difference(s) this month: {differences[0]}",
        {"differences": differences[:20]},
    )


def site_down_check(now: datetime) -> Alert | None:
    down = sorted(
        slug
        for slug, (healthy, enabled) in selectors.sites_healthy_servers().items()
        if enabled and not healthy
    )
    if not down:
        return None
    return Alert("site_down", f"No healthy server at: {', '.join(down)}.", {"sites": down})


CHECKS: dict[str, Callable[[datetime], Alert | None]] = {
    "meter_backlog": meter_backlog_check,
    "grant_mirror_backlog": grant_mirror_check,
    "reconcile_difference": reconcile_check,
    "site_down": site_down_check,
}
_CHECK_ERRORS = (
    DatabaseError,
    redis.RedisError,
    selectors.SnapshotUnavailable,
    stripe_gateway.GatewayError,
    stripe.StripeError,
)


def checks_run(*, force_reconcile: bool = False) -> list[Alert]:
    """Every check; one that cannot run becomes an alert of its own."""
    now = timezone.now()
    alerts = []
    for name, check in CHECKS.items():
        try:
            if check is reconcile_check:
                alert = reconcile_check(now, force=force_reconcile)
            else:
                alert = check(now)
        except _CHECK_ERRORS as exc:
            alert = Alert(f"{name}_failed", f"The {name} check could not run: {exc}")
        if alert is not None:
            alerts.append(alert)
    return alerts


def alerts_report(alerts: list[Alert], *, mail: bool) -> None:
    """One ERROR line per alert; with ``mail``, mail ``ADMINS`` about alerts not
    mailed within the last hour (a check every few minutes must not flood them)."""
    for alert in alerts:
        logger.error(alert.message, extra={"alert": alert.name, **alert.details})
    if not mail:
        return
    fresh = [a for a in alerts if _mail_due(a.name)]
    if not fresh:
        return
    subject = "Alert: " + ", ".join(a.name for a in fresh)
    body = "\n\n".join(f"{a.name}: {a.message}" for a in fresh)
    try:
        mail_admins(subject, body)
    except OSError as exc:
        logger.error("alert mail not sent: %s", exc, extra={"alert": "mail_failed"})


def _mail_due(name: str) -> bool:
    try:
        return bool(cache.add(MAILED_CACHE_KEY.format(name), 1, timeout=MAIL_REPEAT_SECONDS))
    except redis.RedisError:
        return True  # Without Redis, mail every time rather than never.

"""Billing's Celery entry points (default queue)."""

from celery import shared_task
from django.conf import settings

from . import ledger, metering, payments, stripe_gateway


@shared_task(
    name="billing.purchase_mirror",
    acks_late=True,
    autoretry_for=(stripe_gateway.GatewayError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=8,
    ignore_result=True,
)
def purchase_mirror(purchase_id: int) -> None:
    payments.purchase_mirror(purchase_id=purchase_id)


@shared_task(name="billing.grants_mirror", acks_late=False, expires=60, ignore_result=True)
def grants_mirror() -> None:
    payments.grants_mirror()


@shared_task(name="billing.usage_send", acks_late=False, expires=20, ignore_result=True)
def usage_send() -> None:
    metering.usage_send()


@shared_task(name="billing.auto_topups", acks_late=False, expires=60, ignore_result=True)
def auto_topups() -> None:
    payments.auto_topups_run()


@shared_task(name="billing.reservations_release", acks_late=False, expires=30, ignore_result=True)
def reservations_release() -> None:
    """Free the holds of calls that never settled (a crashed web process or worker)."""
    ledger.reservations_release_expired()


@shared_task(name="billing.reservations_purge", acks_late=False, expires=600, ignore_result=True)
def reservations_purge() -> None:
    """Delete closed holds past ``RESERVATION_RETENTION_DAYS`` (0 keeps them forever)."""
    days = settings.RESERVATION_RETENTION_DAYS
    if days > 0:
        ledger.reservations_purge_closed(older_than_days=days)

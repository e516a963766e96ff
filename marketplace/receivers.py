"""Receivers of other apps' signals (billing does not know who to e-mail)."""

from typing import Any

from django.core.mail import send_mail
from django.dispatch import receiver

from billing import ledger, money, payments

from .models import Membership, Role, Tenant


@receiver(payments.auto_topup_disabled)
def auto_topup_declined_email(sender: object, *, tenant_id: int, message: str, **_: Any) -> None:
    """A declined automatic top-up is switched off; the owners must know."""
    tenant = Tenant.objects.get(pk=tenant_id)
    recipients = _billing_recipients(tenant)
    if recipients:
        send_mail(
            subject=f"[Cango] {tenant.name}: automatic top-up declined and switched off",
            message=(
                f"Your card was declined ({message}). Automatic top-up is now off; buy "
                "credits or update your card on the Billing page to turn it on again.\n"
            ),
            from_email=None,
            recipient_list=recipients,
        )


def _billing_recipients(tenant: Tenant) -> list[str]:
    return list(
        Membership.objects.filter(tenant=tenant, role__in=[Role.OWNER, Role.BILLING]).values_list(
            "user__email", flat=True
        )
    )


@receiver(ledger.low_balance)
def low_balance_email(
    sender: object, *, tenant_id: int, available_micros: int, threshold_micros: int, **_: Any
) -> None:
    """Tell the tenant's owners and billing members that credit is running low."""
    tenant = Tenant.objects.get(pk=tenant_id)
    recipients = _billing_recipients(tenant)
    if not recipients:
        return
    send_mail(
        subject=f"[Cango] {tenant.name}: credit below {money.format_usd(threshold_micros)}",
        message=(
            f"The available credit of {tenant.name} is {money.format_usd(available_micros)}, "
            f"below your alert threshold of {money.format_usd(threshold_micros)}.\n\n"
            "Calls are refused with 402 once it reaches zero. Buy credits or turn on "
            "automatic top-up on the Billing page.\n"
        ),
        from_email=None,
        recipient_list=recipients,
    )

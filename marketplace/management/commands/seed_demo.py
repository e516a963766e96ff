"""Seed the one-command demo: a staff login, a demo tenant with its owner, a fresh API key.

Safe to run again: users and the tenant are reused; earlier demo keys are revoked
and a new one is printed, because a key's secret is never stored and cannot be shown twice.
"""

from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from billing import ledger
from billing.models import LedgerEntry
from marketplace import services
from marketplace.models import ApiKey, Membership, Role, Tenant, User

DEMO_PASSWORD = "cango-demo-2026"  # noqa: S105 - a published demo login, never used in production
OWNER_EMAIL = "demo@cango.local"
STAFF_EMAIL = "staff@cango.local"
DEMO_KEY_NAME = "Demo key"


def _user(email: str, *, staff: bool) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        factory = User.objects.create_superuser if staff else User.objects.create_user
        user = factory(email=email, password=DEMO_PASSWORD)
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user


class Command(BaseCommand):
    help = "Create the demo tenant, its owner and a staff user, and print a new demo API key."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            owner = _user(OWNER_EMAIL, staff=False)
            _user(STAFF_EMAIL, staff=True)
            membership = Membership.objects.filter(user=owner, role=Role.OWNER).first()
            tenant: Tenant = (
                membership.tenant
                if membership is not None
                else services.tenant_create(name="Demo Co", owner=owner)
            )
            for old in ApiKey.objects.filter(
                tenant=tenant, name=DEMO_KEY_NAME, revoked_at__isnull=True
            ):
                services.api_key_revoke(key=old, actor=None)
            _, token = services.api_key_create(tenant=tenant, actor=owner, name=DEMO_KEY_NAME)
            ledger.entry_book(
                tenant_id=tenant.pk,
                kind=LedgerEntry.Kind.GRANT,
                source="demo-welcome",
                amount_micros=10_000_000,
                reason="Demo welcome credit",
            )
        base = settings.SITE_URL.rstrip("/")
        self.stdout.write(f"Demo owner login : {OWNER_EMAIL} / {DEMO_PASSWORD}")
        self.stdout.write(f"Staff login      : {STAFF_EMAIL} / {DEMO_PASSWORD} (at {base}/admin/)")
        self.stdout.write(f"Demo API key     : {token}")
        self.stdout.write(
            f'Try it           : curl -H "Authorization: Bearer {token}" {base}/v1/me'
        )

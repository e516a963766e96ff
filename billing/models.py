"""The credit ledger: accounts, append-only entries, reservations, the metering outbox.

Invariants (checked by ``billing.ledger.account_check`` and the reconciliation):
- ``CreditAccount.balance_micros`` == the sum of the account's ``LedgerEntry`` amounts;
  both change in the same transaction.
- ``CreditAccount.reserved_micros`` == the sum of its open ``Reservation`` amounts.
- Spending never takes ``balance - reserved`` below zero: a reservation is taken by
  one conditional UPDATE that checks it.
- A ledger entry is unique on (account, kind, source): a replayed webhook, a
  redelivered task or a retried request cannot apply twice.

This app refers to tenants only by the string FK ``"marketplace.Tenant"``.
"""

from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q

#: A row's copy of its account's tenant, kept for tenant-scoped queries and indexes.
#: Deleting a tenant is still refused (by Django, and by the account's own foreign
#: key in the database); the database does not check the copy on each insert, which
#: saves a lookup per hot-path write (bench/billing.py).
TENANT_COPY: dict[str, Any] = {
    "on_delete": models.PROTECT,
    "related_name": "+",
    "db_index": False,
    "db_constraint": False,
}


class CreditAccount(models.Model):
    """A tenant's prepaid credit, with its Stripe customer and alert settings."""

    tenant = models.OneToOneField(
        "marketplace.Tenant", on_delete=models.PROTECT, related_name="credit_account"
    )
    balance_micros = models.BigIntegerField(default=0)
    reserved_micros = models.BigIntegerField(default=0)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    stripe_subscription_id = models.CharField(max_length=64, blank=True)
    stripe_payment_method_id = models.CharField(max_length=64, blank=True)
    low_balance_threshold_micros = models.BigIntegerField(default=5_000_000)
    low_balance_alerted = models.BooleanField(default=False)
    auto_topup_enabled = models.BooleanField(default=False)
    auto_topup_threshold_micros = models.BigIntegerField(default=5_000_000)
    auto_topup_amount_cents = models.PositiveIntegerField(default=2_000)
    auto_topup_daily_limit_cents = models.PositiveIntegerField(default=20_000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=Q(reserved_micros__gte=0), name="creditaccount_reserved_non_negative"
            )
        ]

    def __str__(self) -> str:
        return f"credit account of tenant {self.tenant_id}"

    @property
    def available_micros(self) -> int:
        return self.balance_micros - self.reserved_micros


class LedgerEntry(models.Model):
    """One signed movement of credit. Never updated or deleted."""

    class Kind(models.TextChoices):
        PURCHASE = "purchase", "Purchase"
        USAGE = "usage", "Usage"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"
        GRANT = "grant", "Grant"
        EXPIRY = "expiry", "Expiry"

    # Foreign keys without their own index where a composite index leads with them:
    # every index is written on the hot path of every charge.
    account = models.ForeignKey(
        CreditAccount, on_delete=models.PROTECT, related_name="entries", db_index=False
    )
    tenant = models.ForeignKey("marketplace.Tenant", **TENANT_COPY)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    source = models.CharField(max_length=128, help_text="What caused it: job:…, cs_…, req_…")
    amount_micros = models.BigIntegerField()
    model_slug = models.CharField(max_length=64, blank=True)
    site_slug = models.CharField(
        max_length=64,
        blank=True,
        help_text="Where a usage entry's call ran; empty for other kinds, and for usage "
        "booked before sites were recorded.",
    )
    api_key_id = models.BigIntegerField(null=True, blank=True)
    units = models.BigIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["account", "kind", "source"], name="ledgerentry_unique_source"
            )
        ]
        indexes: ClassVar = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["tenant", "kind", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_micros} µ$ ({self.source})"


class Reservation(models.Model):
    """Credit held for a call in progress: its worst-case cost."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"

    account = models.ForeignKey(
        CreditAccount, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    tenant = models.ForeignKey("marketplace.Tenant", **TENANT_COPY)
    source = models.CharField(max_length=128)
    amount_micros = models.BigIntegerField()
    settled_micros = models.BigIntegerField(null=True, blank=True)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    key_month = models.DateField(null=True, blank=True, help_text="Month charged to the key's cap.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["account", "source"], name="reservation_unique_source"),
            models.CheckConstraint(
                condition=Q(amount_micros__gte=0), name="reservation_amount_non_negative"
            ),
            # A hold is closed exactly when it is settled or released; the expiry
            # sweep's index relies on it.
            models.CheckConstraint(
                condition=Q(status="open", closed_at__isnull=True)
                | (~Q(status="open") & Q(closed_at__isnull=False)),
                name="reservation_closed_unless_open",
            ),
        ]
        # The expiry sweep reads open holds by ``closed_at IS NULL``, not by status:
        # an index whose predicate were ``status = 'open'`` would be chosen by the
        # settle's and release's ``id = … AND status = 'open'`` too, walking every
        # entry of closed holds not yet vacuumed instead of one primary-key lookup.
        # Settling or releasing a hold never writes to this index.
        indexes: ClassVar = [
            models.Index(
                fields=["expires_at"],
                condition=Q(closed_at__isnull=True),
                name="reservation_unclosed_expiry",
            )
        ]

    def __str__(self) -> str:
        return f"{self.status} {self.amount_micros} µ$ ({self.source})"


class KeySpend(models.Model):
    """An API key's spend in one calendar month (UTC), for its monthly cap."""

    api_key_id = models.BigIntegerField()
    month = models.DateField()
    spent_micros = models.BigIntegerField(default=0)
    reserved_micros = models.BigIntegerField(default=0)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["api_key_id", "month"], name="keyspend_unique_month")
        ]

    def __str__(self) -> str:
        return f"key {self.api_key_id} {self.month:%Y-%m}: {self.spent_micros} µ$"


class UsageRecord(models.Model):
    """One charged call, to be sent to Stripe as a meter event (the outbox).

    Written in the settle statement with its ledger entry; its id is the meter
    event's ``identifier``, so a resend is deduplicated by Stripe.
    """

    # Copies of the ledger entry's account and tenant, which its foreign key guards.
    account = models.ForeignKey(
        CreditAccount,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    tenant = models.ForeignKey("marketplace.Tenant", **TENANT_COPY)
    ledger_entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+")
    model_slug = models.CharField(max_length=64)
    api_key_id = models.BigIntegerField(null=True, blank=True)
    units = models.BigIntegerField()
    cost_micros = models.BigIntegerField()
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.CharField(max_length=500, blank=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(
                fields=["attempts", "created_at"],
                condition=Q(sent_at__isnull=True),
                name="usage_unsent",
            ),
        ]

    def __str__(self) -> str:
        return f"usage {self.pk}: {self.model_slug} {self.cost_micros} µ$"

    @property
    def identifier(self) -> str:
        return f"usage_{self.pk}"


class GrantMirror(models.Model):
    """Free credit (a staff grant or a positive adjustment) to mirror in Stripe: the outbox.

    Purchases are mirrored as paid credit grants; without this, credit that staff
    gave would not be in Stripe, and an invoice would ask the tenant to pay for usage
    it had already covered. Written with its ledger entry; sent as a promotional
    credit grant once the tenant has a Stripe customer (``payments.grants_mirror``).
    """

    ledger_entry = models.OneToOneField(LedgerEntry, on_delete=models.PROTECT, related_name="+")
    account = models.ForeignKey(
        CreditAccount, on_delete=models.PROTECT, related_name="+", db_index=False
    )
    amount_cents = models.PositiveBigIntegerField()
    stripe_credit_grant_id = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes: ClassVar = [
            models.Index(
                fields=["attempts", "created_at"],
                condition=Q(stripe_credit_grant_id=""),
                name="grantmirror_unsent",
            ),
        ]

    def __str__(self) -> str:
        return f"grant mirror {self.pk}: {self.amount_cents}¢"


class Purchase(models.Model):
    """Credit bought through Stripe: a Checkout Session or an automatic top-up."""

    class Kind(models.TextChoices):
        CHECKOUT = "checkout", "Checkout"
        AUTO_TOPUP = "auto_topup", "Automatic top-up"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PAID = "paid", "Paid"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    account = models.ForeignKey(CreditAccount, on_delete=models.PROTECT, related_name="purchases")
    tenant = models.ForeignKey("marketplace.Tenant", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHECKOUT)
    amount_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    stripe_checkout_session_id = models.CharField(max_length=255, blank=True, db_index=True)
    stripe_payment_intent_id = models.CharField(max_length=255, blank=True, db_index=True)
    stripe_credit_grant_id = models.CharField(max_length=255, blank=True)
    failure_message = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_cents}¢ {self.status}"

    @property
    def ledger_source(self) -> str:
        return f"purchase:{self.pk}"


class StripeEvent(models.Model):
    """Each Stripe event id, recorded once: a replayed webhook changes nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text="When Stripe created the event.")
    received_at = models.DateTimeField(auto_now_add=True)
    processed = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"


class BillingMeter(models.Model):
    """A catalog model's Stripe Billing Meter and metered Price (value: micro-USD charged)."""

    model_slug = models.CharField(max_length=64, unique=True)
    event_name = models.CharField(max_length=100, unique=True)
    stripe_meter_id = models.CharField(max_length=255, blank=True)
    stripe_price_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"meter {self.event_name}"


class SubscriptionItem(models.Model):
    """A metered price on a tenant's Stripe subscription."""

    account = models.ForeignKey(CreditAccount, on_delete=models.PROTECT, related_name="+")
    meter = models.ForeignKey(BillingMeter, on_delete=models.PROTECT, related_name="+")
    stripe_subscription_item_id = models.CharField(max_length=255)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["account", "meter"], name="subscriptionitem_unique")
        ]

    def __str__(self) -> str:
        return self.stripe_subscription_item_id


class Invoice(models.Model):
    """A mirror of a Stripe invoice for the portal, kept by ``invoice.*`` webhooks."""

    tenant = models.ForeignKey("marketplace.Tenant", on_delete=models.PROTECT, related_name="+")
    stripe_invoice_id = models.CharField(max_length=255, unique=True)
    number = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=32)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    subtotal_cents = models.BigIntegerField(default=0)
    credit_cents = models.BigIntegerField(default=0)
    total_cents = models.BigIntegerField(default=0)
    amount_due_cents = models.BigIntegerField(default=0)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    invoice_pdf_url = models.URLField(max_length=500, blank=True)
    lines = models.JSONField(default=list, blank=True)
    stripe_event_created = models.DateTimeField(help_text="The newest event applied.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["tenant", "-period_end"])]

    def __str__(self) -> str:
        return self.number or self.stripe_invoice_id

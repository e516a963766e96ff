"""Portal pages. Each view parses input, calls one service or selector, renders."""

import csv
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, date, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from allauth.account.adapter import get_adapter
from allauth.account.views import SignupView as AllauthSignupView
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.forms import Form
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from billing import ledger, money, payments, stripe_gateway
from billing import selectors as billing_selectors
from billing.forms import BillingSettingsForm, CreditPurchaseForm, LedgerExportForm
from billing.models import Invoice, LedgerEntry, Purchase

from . import selectors, services
from .adapters import PENDING_INVITATION_SESSION_KEY
from .exceptions import DomainError, InvitationInvalid
from .forms import ApiKeyCreateForm, InviteForm, OrganisationForm, RoleForm
from .models import ApiKey, Invitation, Membership, Role, Tenant, User
from .roles import Permission, role_allows

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponseBase]


class SignedInRequest(HttpRequest):
    """A portal request after ``login_required``; set up by ``PortalTenantMiddleware``."""

    user: User
    membership: Membership | None
    tenant: Tenant | None


class PortalRequest(HttpRequest):
    """A portal request after ``tenant_page``: a member of an active tenant."""

    user: User
    membership: Membership
    tenant: Tenant


def tenant_page(permission: Permission | None = None) -> Callable[[View], View]:
    """Guard a portal page: signed in, a member of an active tenant, allowed by role."""

    def decorator(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            membership: Membership | None = getattr(request, "membership", None)
            if membership is None:
                return redirect("portal:onboarding")
            if membership.tenant.is_suspended:
                return render(
                    request, "portal/suspended.html", {"tenant": membership.tenant}, status=403
                )
            if permission is not None and not role_allows(membership.role, permission):
                return render(request, "errors/403.html", status=403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class SignupView(AllauthSignupView):
    """django-allauth's sign-up, with the organisation required unless invited."""

    def get_form(self, form_class: type[Form] | None = None) -> Form:
        form = super().get_form(form_class)
        invited = bool(self.request.session.get(PENDING_INVITATION_SESSION_KEY))
        form.fields["organisation"].required = not invited
        return form


@tenant_page()
def dashboard(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/dashboard.html")


@tenant_page(Permission.USE_MODELS)
def models_page(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/placeholder.html", {"title": "Models", "nav": "models"})


@tenant_page(Permission.USE_MODELS)
def jobs_page(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/placeholder.html", {"title": "Jobs", "nav": "jobs"})


@never_cache
@tenant_page(Permission.MANAGE_BILLING)
def billing_page(request: PortalRequest) -> HttpResponse:
    """Balance, buying credit, the ledger (keyset pages), invoices and billing settings."""
    return _billing_render(request)


def _billing_render(
    request: PortalRequest,
    *,
    purchase_form: CreditPurchaseForm | None = None,
    settings_form: BillingSettingsForm | None = None,
    export_form: LedgerExportForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """The Billing page. Each read below is one indexed query, whatever the ledger's size."""
    tenant_id = request.tenant.pk
    account = billing_selectors.account_get(tenant_id)
    balance = billing_selectors.balance_of(account)
    page = billing_selectors.ledger_page(
        tenant_id, before=request.GET.get("before"), after=request.GET.get("after")
    )
    month_start = billing_selectors.month_start_utc()
    if settings_form is None:
        settings_form = BillingSettingsForm(initial=BillingSettingsForm.initial_for(account))
    export_period = _export_period_default()
    if export_form is None:
        export_form = LedgerExportForm(initial=export_period)
    auto_topup_on = account is not None and account.auto_topup_enabled
    return render(
        request,
        "portal/billing.html",
        {
            "nav": "billing",
            "available": _usd_exact(balance["available_micros"]),
            "balance": _usd_exact(balance["balance_micros"]),
            "reserved": _usd_exact(balance["reserved_micros"]),
            "month_to_date": _usd_exact(billing_selectors.month_to_date_usage(tenant_id)),
            "month_start": month_start,
            "packs": [(cents, _pack_label(cents)) for cents in settings.CREDIT_PACKS_CENTS],
            "purchase_form": purchase_form or CreditPurchaseForm(),
            "settings_form": settings_form,
            "card_pending": auto_topup_on and not (account and account.stripe_payment_method_id),
            "export_form": export_form,
            "export_period": export_period,
            "ledger": [_ledger_row(entry) for entry in page.entries],
            "ledger_older": page.older,
            "ledger_newer": page.newer,
            "invoices": [_invoice_row(inv) for inv in billing_selectors.invoices_list(tenant_id)],
        },
        status=status,
    )


def _pack_label(cents: int) -> str:
    """``$50`` for whole dollars, ``$12.50`` otherwise."""
    return money.format_usd(money.cents_to_micros(cents), places=0 if cents % 100 == 0 else 2)


def _usd_exact(micros: int) -> str:
    """Dollars and cents, with all six decimals when the amount has a fraction of a cent."""
    return money.format_usd(micros, places=2 if micros % money.MICROS_PER_CENT == 0 else 6)


def _ledger_row(entry: LedgerEntry) -> dict[str, object]:
    sign = "+" if entry.amount_micros > 0 else ""
    return {
        "created_at": entry.created_at,
        "kind": entry.get_kind_display(),
        "kind_value": entry.kind,
        "description": entry.reason or _LEDGER_DESCRIPTIONS.get(entry.kind, ""),
        "source": entry.source,
        "model": entry.model_slug,
        "units": entry.units,
        "amount": sign + _usd_exact(entry.amount_micros),
        "credit": entry.amount_micros > 0,
    }


_INVOICE_BADGES = {
    "paid": "active",
    "open": "expired",
    "void": "revoked",
    "uncollectible": "revoked",
}


def _invoice_row(invoice: Invoice) -> dict[str, object]:
    return {
        "number": invoice.number,
        "period_start": invoice.period_start,
        "period_end": invoice.period_end,
        "status": invoice.status,
        "status_badge": _INVOICE_BADGES.get(invoice.status, ""),
        "total": money.format_usd(money.cents_to_micros(invoice.total_cents)),
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "invoice_pdf_url": invoice.invoice_pdf_url,
    }


_LEDGER_DESCRIPTIONS: dict[str, str] = {
    LedgerEntry.Kind.PURCHASE: "Credit purchase",
    LedgerEntry.Kind.USAGE: "Model call",
    LedgerEntry.Kind.REFUND: "Refund",
    LedgerEntry.Kind.ADJUSTMENT: "Adjustment",
    LedgerEntry.Kind.GRANT: "Credit grant",
    LedgerEntry.Kind.EXPIRY: "Expired credit",
}


def _export_period_default() -> dict[str, date]:
    """This UTC month so far: from its first day up to and including today."""
    today = timezone.now().astimezone(UTC).date()
    return {"start": today.replace(day=1), "end": today + timedelta(days=1)}


@require_POST
@tenant_page(Permission.MANAGE_BILLING)
def billing_checkout(request: PortalRequest) -> HttpResponse:
    """Start a Stripe Checkout for a pack or a custom amount; 303 to Stripe's page."""
    form = CreditPurchaseForm(request.POST)
    if form.is_valid():
        tenant = request.tenant
        success = request.build_absolute_uri(reverse("portal:billing_success"))
        try:
            url = payments.checkout_start(
                tenant_id=tenant.pk,
                tenant_name=tenant.name,
                email=request.user.email,
                amount_cents=form.amount_cents(),
                # Stripe replaces the placeholder with the session id.
                success_url=f"{success}?session_id={{CHECKOUT_SESSION_ID}}",
                cancel_url=request.build_absolute_uri(reverse("portal:billing_cancel")),
            )
        except ValueError as exc:
            field = "amount_dollars" if form.cleaned_data["pack_cents"] is None else None
            form.add_error(field, str(exc))
        except stripe_gateway.GatewayError:
            logger.warning("checkout could not start", exc_info=True)
            form.add_error(
                None, "Payments are unavailable right now and nothing was charged. Try again soon."
            )
            return _billing_render(request, purchase_form=form, status=503)
        else:
            return HttpResponseRedirect(url, status=303)
    return _billing_render(request, purchase_form=form, status=400)


#: The success page reloads itself this often, this many times, while the payment
#: is still being confirmed (Stripe's webhook usually lands within seconds).
_SUCCESS_REFRESH_SECONDS = 3
_SUCCESS_REFRESH_LIMIT = 40


@never_cache
@tenant_page(Permission.MANAGE_BILLING)
def billing_success(request: PortalRequest) -> HttpResponse:
    """Where Stripe sends the buyer back; shows the balance until the credit lands."""
    session_id = request.GET.get("session_id", "")[:255]
    purchase = billing_selectors.purchase_for_checkout(request.tenant.pk, session_id)
    refreshes = request.GET.get("n", "0")
    count = int(refreshes) if refreshes.isdigit() and len(refreshes) < 4 else 0
    pending = purchase is not None and purchase.status == Purchase.Status.PENDING
    refresh_url = None
    if pending and count < _SUCCESS_REFRESH_LIMIT:
        refresh_url = "?" + urlencode({"session_id": session_id, "n": count + 1})
    balance = billing_selectors.balance_get(request.tenant.pk)
    return render(
        request,
        "portal/billing_success.html",
        {
            "nav": "billing",
            "purchase": purchase,
            "purchase_amount": (
                money.format_usd(money.cents_to_micros(purchase.amount_cents)) if purchase else ""
            ),
            "paid": purchase is not None and purchase.status == Purchase.Status.PAID,
            "refresh_url": refresh_url,
            "refresh_seconds": _SUCCESS_REFRESH_SECONDS,
            "available": _usd_exact(balance["available_micros"]),
        },
    )


@tenant_page(Permission.MANAGE_BILLING)
def billing_cancel(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/billing_cancel.html", {"nav": "billing"})


@require_POST
@tenant_page(Permission.MANAGE_BILLING)
def billing_settings(request: PortalRequest) -> HttpResponse:
    """Save the low-balance alert and automatic top-up settings."""
    form = BillingSettingsForm(request.POST)
    if not form.is_valid():
        return _billing_render(request, settings_form=form, status=400)
    ledger.account_open(tenant_id=request.tenant.pk)
    form.save(tenant_id=request.tenant.pk)
    messages.success(request, "Billing settings saved.")
    return redirect(reverse("portal:billing") + "#settings")


@never_cache
@tenant_page(Permission.MANAGE_BILLING)
def billing_ledger_csv(request: PortalRequest) -> HttpResponseBase:
    """The ledger of a period as CSV, streamed: memory stays flat for any number of rows."""
    form = LedgerExportForm(request.GET if request.GET else _export_period_default())
    if not form.is_valid():
        return _billing_render(request, export_form=form, status=400)
    start_day, end_day = form.cleaned_data["start"], form.cleaned_data["end"]
    rows = billing_selectors.ledger_rows_for_csv(
        request.tenant.pk,
        billing_selectors.day_start_utc(start_day),
        billing_selectors.day_start_utc(end_day),
    )
    response = StreamingHttpResponse(_csv_lines(rows), content_type="text/csv; charset=utf-8")
    name = f"cango-ledger-{request.tenant.slug}-{start_day:%Y%m%d}-{end_day:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


LEDGER_CSV_COLUMNS = (
    "created_at",
    "kind",
    "source",
    "model",
    "api_key_id",
    "units",
    "amount_micros",
    "amount_usd",
)


class _Line:
    """A file-like target for ``csv.writer`` that hands back each line it is given."""

    def write(self, value: str) -> str:
        return value


def _csv_text(value: str) -> str:
    # A cell starting with one of these runs as a formula when opened in a spreadsheet.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _decimal_usd(micros: int) -> str:
    whole, fraction = divmod(abs(micros), money.MICROS_PER_DOLLAR)
    return f"{'-' if micros < 0 else ''}{whole}.{fraction:06d}"


def _csv_lines(rows: Iterator[billing_selectors.LedgerRow]) -> Iterator[str]:
    writer = csv.writer(_Line())
    yield writer.writerow(LEDGER_CSV_COLUMNS)
    for row in rows:
        yield writer.writerow(
            (
                row.created_at.astimezone(UTC).isoformat(),
                row.kind,
                _csv_text(row.source),
                _csv_text(row.model_slug),
                "" if row.api_key_id is None else row.api_key_id,
                "" if row.units is None else row.units,
                row.amount_micros,
                _decimal_usd(row.amount_micros),
            )
        )


@login_required
def onboarding(request: SignedInRequest) -> HttpResponse:
    """A signed-in user without an organisation creates one here."""
    if request.membership is not None:
        return redirect("portal:dashboard")
    form = OrganisationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        tenant = services.tenant_create(name=form.cleaned_data["name"], owner=request.user)
        request.session["tenant_id"] = tenant.pk
        return redirect("portal:dashboard")
    return render(request, "portal/onboarding.html", {"form": form})


@login_required
@require_POST
def tenant_switch(request: SignedInRequest) -> HttpResponse:
    tenant_id = request.POST.get("tenant_id", "")
    membership = selectors.memberships_for_user(user=request.user).filter(
        tenant_id=int(tenant_id) if tenant_id.isdigit() else -1
    )
    if membership.exists():
        request.session["tenant_id"] = int(tenant_id)
    return redirect("portal:dashboard")


@never_cache
@tenant_page(Permission.MANAGE_KEYS)
def api_keys(request: PortalRequest) -> HttpResponse:
    """List keys; on a valid POST create one and show its token this once."""
    tenant = request.tenant
    form = ApiKeyCreateForm(request.POST or None)
    created_token = None
    created_key = None
    if request.method == "POST" and form.is_valid():
        created_key, created_token = services.api_key_create(
            tenant=tenant,
            actor=request.user,
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_on"],
            allowed_models=form.cleaned_data["allowed_models"],
            monthly_spend_cap_micros=form.cleaned_cap_micros(),
        )
        form = ApiKeyCreateForm()
    status = 400 if request.method == "POST" and created_key is None else 200
    return render(
        request,
        "portal/api_keys.html",
        {
            "nav": "keys",
            "form": form,
            "keys": selectors.api_keys_list(tenant=tenant),
            "created_key": created_key,
            "created_token": created_token,
        },
        status=status,
    )


@require_POST
@tenant_page(Permission.MANAGE_KEYS)
def api_key_revoke(request: PortalRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=pk, tenant=request.tenant)
    services.api_key_revoke(key=key, actor=request.user)
    messages.success(request, f"Key “{key.name}” revoked. Programs using it now get 401.")
    return redirect("portal:api_keys")


@tenant_page()
def team(request: PortalRequest) -> HttpResponse:
    tenant = request.tenant
    membership: Membership = request.membership
    form = InviteForm(request.POST or None)
    if not role_allows(membership.role, Permission.MANAGE_MEMBERS):
        # Only owners may make owners; admins are not offered the choice.
        form.fields["role"].choices = [c for c in Role.choices if c[0] != Role.OWNER]  # type: ignore[attr-defined]
    status = 200
    if request.method == "POST":
        if not role_allows(membership.role, Permission.INVITE_MEMBERS):
            return render(request, "errors/403.html", status=403)
        if form.is_valid():
            role = form.cleaned_data["role"]
            services.invitation_create(
                tenant=tenant,
                actor=request.user,
                email=form.cleaned_data["email"],
                role=role,
            )
            messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
            return redirect("portal:team")
        status = 400
    return render(
        request,
        "portal/team.html",
        {
            "nav": "team",
            "form": form,
            "members": selectors.members_list(tenant=tenant),
            "invitations": selectors.invitations_open(tenant=tenant),
            "roles": Role.choices,
        },
        status=status,
    )


def _member_action(
    request: PortalRequest, pk: int, action: Callable[[Membership], None]
) -> HttpResponse:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "tenant"),
        pk=pk,
        tenant=request.tenant,
    )
    try:
        action(membership)
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("portal:team")


@require_POST
@tenant_page(Permission.MANAGE_MEMBERS)
def member_role(request: PortalRequest, pk: int) -> HttpResponse:
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid role.")
        return redirect("portal:team")

    def change(membership: Membership) -> None:
        services.membership_change_role(
            membership=membership,
            actor=request.user,
            role=form.cleaned_data["role"],
        )
        messages.success(
            request, f"{membership.user.email} is now {membership.get_role_display()}."
        )

    return _member_action(request, pk, change)


@require_POST
@tenant_page()
def member_remove(request: PortalRequest, pk: int) -> HttpResponse:
    """Owners remove anyone; every member may remove themself (leave)."""
    me: Membership = request.membership
    leaving = me.pk == pk
    if not leaving and not role_allows(me.role, Permission.MANAGE_MEMBERS):
        return render(request, "errors/403.html", status=403)

    def remove(membership: Membership) -> None:
        services.membership_remove(membership=membership, actor=request.user)
        if leaving:
            request.session.pop("tenant_id", None)
            messages.success(request, f"You left {membership.tenant.name}.")
        else:
            messages.success(request, f"{membership.user.email} was removed.")

    response = _member_action(request, pk, remove)
    left = leaving and not Membership.objects.filter(pk=pk).exists()
    return redirect("portal:dashboard") if left else response


@require_POST
@tenant_page(Permission.INVITE_MEMBERS)
def invitation_revoke(request: PortalRequest, pk: int) -> HttpResponse:
    invitation = get_object_or_404(Invitation, pk=pk, tenant=request.tenant)
    services.invitation_revoke(invitation=invitation, actor=request.user)
    messages.success(request, f"Invitation to {invitation.email} withdrawn.")
    return redirect("portal:team")


@never_cache
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """Show an invitation; signed-in users accept it, others sign up or log in first."""
    try:
        invitation = services.invitation_get_open(token=token)
    except InvitationInvalid as exc:
        return render(request, "portal/invitation.html", {"error": exc.message}, status=404)
    if not request.user.is_authenticated:
        request.session[PENDING_INVITATION_SESSION_KEY] = token
        # The link reached this address's inbox, which is what verification proves.
        get_adapter(request).stash_verified_email(request, invitation.email)
        return render(request, "portal/invitation.html", {"invitation": invitation})
    if request.method == "POST":
        try:
            membership = services.invitation_accept(token=token, user=request.user)
        except InvitationInvalid as exc:
            return render(request, "portal/invitation.html", {"error": exc.message}, status=400)
        request.session.pop(PENDING_INVITATION_SESSION_KEY, None)
        request.session["tenant_id"] = membership.tenant_id
        messages.success(request, f"Welcome to {membership.tenant.name}.")
        return redirect("portal:dashboard")
    return render(request, "portal/invitation.html", {"invitation": invitation})

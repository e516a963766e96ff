"""The operator console at ``/ops/``: sites, revenue, tenants and recent failures.

Staff only. Anyone else — signed in or not — gets the ordinary 404 page, for GET
and POST alike, so the console's existence is not revealed. Each view parses its
input, calls one selector or service, and renders.
"""

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from billing import money
from billing import selectors as billing_selectors
from billing.forms import DayPeriodForm, StaffCreditForm
from billing.models import LedgerEntry
from workers import routing
from workers import services as worker_services
from workers.models import Site

from . import audit_display, ops_selectors, services
from .forms import AuditFilterForm
from .models import AuditEvent, Tenant, User

View = Callable[..., HttpResponseBase]


class StaffRequest(HttpRequest):
    """A console request after ``staff_only``."""

    user: User


def staff_only(view: View) -> View:
    """Let staff through; 404 for everyone else, before CSRF is even checked.

    The middleware's CSRF check runs before any view, so a POST without a token
    would answer 403 and reveal the URL. The view is therefore exempt from the
    middleware and checked here instead, once the caller is known to be staff.
    """
    protected = csrf_protect(never_cache(view))

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        user = request.user
        if not (user.is_authenticated and user.is_active and user.is_staff):
            raise Http404
        return protected(request, *args, **kwargs)

    return csrf_exempt(wrapped)


def _usd(micros: int | None) -> str:
    """Dollars and cents, with all six decimals when there is a fraction of a cent."""
    value = micros or 0
    return money.format_usd(value, places=2 if value % money.MICROS_PER_CENT == 0 else 6)


# ---- Forms ---------------------------------------------------------------------


class ReasonForm(forms.Form):
    """Why an operator acts; stored with the audit event."""

    reason = forms.CharField(label="Reason", max_length=500)

    def clean_reason(self) -> str:
        reason: str = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why.")
        return reason


class SiteStatusForm(ReasonForm):
    status = forms.ChoiceField(choices=Site.Status.choices, widget=forms.HiddenInput)


class TenantSearchForm(forms.Form):
    q = forms.CharField(label="Name or slug", max_length=100, required=False)
    status = forms.ChoiceField(
        label="Status", choices=[("", "Any"), *Tenant.Status.choices], required=False
    )


class OpsAuditFilterForm(AuditFilterForm):
    """The console's audit filter: any action, and one tenant by its slug."""

    tenant = forms.SlugField(label="Tenant (slug)", max_length=60, required=False)

    def clean_tenant(self) -> Tenant | None:
        slug: str = self.cleaned_data["tenant"]
        if not slug:
            return None
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise forms.ValidationError(f"No tenant has the slug “{slug}”.")
        return tenant

    def filter_names(self) -> tuple[str, ...]:
        return ("tenant", "action")

    def query(self, **cursor: str) -> str:
        tenant = self.cleaned_data.get("tenant")
        params = {"tenant": tenant.slug} if tenant else {}
        if self.cleaned_data.get("action"):
            params["action"] = self.cleaned_data["action"]
        return "?" + urlencode({**params, **cursor})


class RevenuePeriodForm(DayPeriodForm):
    """The revenue report's period (UTC days, ``end`` excluded)."""

    VERB = "Report"

    @classmethod
    def this_month(cls) -> dict[str, date]:
        first = timezone.now().astimezone(UTC).date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return {"start": first, "end": following}


# ---- Writes --------------------------------------------------------------------


# ---- Sites ---------------------------------------------------------------------

_SITE_ACTIONS: dict[str, tuple[str, str]] = {
    # status: (button, confirmation asked before submitting; "" asks nothing)
    Site.Status.ACTIVE: ("Set active", ""),
    Site.Status.DRAINING: (
        "Drain",
        "Drain site {site}? It takes no new work; work in progress finishes.",
    ),
    Site.Status.OFFLINE: (
        "Take offline",
        "Take site {site} offline? It takes no new work.",
    ),
}


def _site_form(site: Site, status: str, data: Any = None) -> SiteStatusForm:
    """The form that moves ``site`` to ``status``, with ids and a label unique on the page."""
    label = _SITE_ACTIONS[status][0] if status in _SITE_ACTIONS else "change"
    form = SiteStatusForm(data, initial={"status": status}, auto_id=f"id_{site.slug}_{status}_%s")
    form.fields["reason"].label = f"Reason ({label.lower()})"
    return form


def _site_actions(site: Site, bound: SiteStatusForm | None) -> list[dict[str, object]]:
    actions: list[dict[str, object]] = []
    for status, (label, confirm) in _SITE_ACTIONS.items():
        if status == site.status:
            continue
        is_bound = bound is not None and bound.data.get("status") == status
        actions.append(
            {
                "status": status,
                "label": label,
                "confirm": confirm.format(site=site.slug),
                "form": bound if is_bound else _site_form(site, status),
                "danger": status != Site.Status.ACTIVE,
            }
        )
    return actions


def _sites_render(
    request: StaffRequest,
    *,
    bound_site: str = "",
    bound: SiteStatusForm | None = None,
    status: int = 200,
) -> HttpResponse:
    rows = ops_selectors.sites_overview(ops_selectors.health_snapshot())
    sites = [
        {
            "row": row,
            "actions": _site_actions(row.site, bound if row.site.slug == bound_site else None),
        }
        for row in rows
    ]
    return render(
        request,
        "ops/sites.html",
        {"ops_nav": "sites", "sites": sites, "stale_seconds": int(routing.HEALTH_STALE_SECONDS)},
        status=status,
    )


@staff_only
@require_GET
def sites(request: StaffRequest) -> HttpResponse:
    """Every site, its servers' live health and load, and its status controls."""
    return _sites_render(request)


@staff_only
@require_POST
def site_status(request: StaffRequest, slug: str) -> HttpResponse:
    site = get_object_or_404(Site, slug=slug)
    requested = request.POST.get("status", "")
    form = _site_form(site, requested if requested in _SITE_ACTIONS else "unknown", request.POST)
    if not form.is_valid():
        if "status" in form.errors:
            # No form on the page stands for an unknown status, so say it here.
            messages.error(request, "Choose active, draining or offline.")
        return _sites_render(request, bound_site=site.slug, bound=form, status=400)
    worker_services.site_status_set(
        site=site,
        status=form.cleaned_data["status"],
        actor=request.user,
        reason=form.cleaned_data["reason"],
    )
    messages.success(request, f"Site {site.slug} is now {site.get_status_display().lower()}.")
    return redirect("ops:sites")


# ---- Revenue -------------------------------------------------------------------


def _day_start(day: date) -> datetime:
    return billing_selectors.day_start_utc(day)


@staff_only
@require_GET
def revenue(request: StaffRequest) -> HttpResponse:
    """Usage charged in a period, per model and per site, with GPU-seconds where measured."""
    form = RevenuePeriodForm(request.GET if request.GET else RevenuePeriodForm.this_month())
    context: dict[str, object] = {"ops_nav": "revenue", "form": form}
    if not form.is_valid():
        return render(request, "ops/revenue.html", context, status=400)
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    report = ops_selectors.revenue_summary(_day_start(start), _day_start(end))
    context.update(
        {
            "start": start,
            "last_day": end - timedelta(days=1),
            "total": _usd(report.total_micros),
            "total_calls": report.total_calls,
            "by_model": [_revenue_row(row) for row in report.by_model],
            "by_site": [_revenue_row(row) for row in report.by_site],
            "gpu_priced_models": report.gpu_priced_models,
        }
    )
    return render(request, "ops/revenue.html", context)


def _revenue_row(row: ops_selectors.RevenueRow) -> dict[str, object]:
    seconds = row.gpu_seconds
    return {
        "group": row.group,
        "calls": row.calls,
        "units": row.units,
        "revenue": _usd(row.cost_micros),
        "gpu_seconds": None if seconds is None else f"{seconds:,.3f}",
    }


# ---- Tenants -------------------------------------------------------------------


@staff_only
@require_GET
def tenants(request: StaffRequest) -> HttpResponse:
    """Tenants by name, searchable and filterable, with balance, usage and members."""
    form = TenantSearchForm(request.GET)
    valid = form.is_valid()
    query = form.cleaned_data.get("q", "") if valid else ""
    status = form.cleaned_data.get("status", "") if valid else ""
    month_start = billing_selectors.month_start_utc()
    page = ops_selectors.tenants_page(
        query=query, status=status, page=request.GET.get("page", 1), month_start=month_start
    )
    rows = [
        {
            "tenant": tenant,
            "balance": _usd(getattr(tenant, "credit_balance_micros", None)),
            "month_to_date": _usd(getattr(tenant, "usage_month_micros", None)),
            "members": getattr(tenant, "member_count", 0),
        }
        for tenant in page.object_list
    ]
    filters = {key: value for key, value in (("q", query), ("status", status)) if value}
    return render(
        request,
        "ops/tenants.html",
        {
            "ops_nav": "tenants",
            "form": form,
            "rows": rows,
            "page": page,
            "filters": filters,
            "month_start": month_start,
        },
        status=200 if valid else 400,
    )


def _tenant_render(
    request: StaffRequest,
    tenant: Tenant,
    *,
    status_form: ReasonForm | None = None,
    credit_form: StaffCreditForm | None = None,
    status: int = 200,
) -> HttpResponse:
    detail = ops_selectors.tenant_detail(tenant)
    ledger_rows = [
        {
            "entry": entry,
            "amount": ("+" if entry.amount_micros > 0 else "") + _usd(entry.amount_micros),
            "credit": entry.amount_micros > 0,
        }
        for entry in detail.ledger
    ]
    return render(
        request,
        "ops/tenant_detail.html",
        {
            "ops_nav": "tenants",
            "tenant": tenant,
            "detail": detail,
            "balance": _usd(detail.balance["balance_micros"]),
            "reserved": _usd(detail.balance["reserved_micros"]),
            "available": _usd(detail.balance["available_micros"]),
            "month_to_date": _usd(detail.month_to_date_micros),
            "ledger_rows": ledger_rows,
            "status_form": status_form or ReasonForm(auto_id="id_status_%s"),
            "credit_form": credit_form
            or StaffCreditForm(initial={"token": uuid.uuid4()}, auto_id="id_credit_%s"),
        },
        status=status,
    )


@staff_only
@require_GET
def tenant_detail(request: StaffRequest, slug: str) -> HttpResponse:
    return _tenant_render(request, get_object_or_404(Tenant, slug=slug))


def _tenant_status_change(
    request: StaffRequest, slug: str, action: Callable[..., Tenant], done: str
) -> HttpResponse:
    tenant = get_object_or_404(Tenant, slug=slug)
    form = ReasonForm(request.POST, auto_id="id_status_%s")
    if not form.is_valid():
        return _tenant_render(request, tenant, status_form=form, status=400)
    action(tenant=tenant, actor=request.user, reason=form.cleaned_data["reason"])
    messages.success(request, f"{tenant.name} {done}.")
    return redirect("ops:tenant_detail", slug=tenant.slug)


@staff_only
@require_POST
def tenant_suspend(request: StaffRequest, slug: str) -> HttpResponse:
    return _tenant_status_change(
        request, slug, services.tenant_suspend, "is suspended: its keys now get 403"
    )


@staff_only
@require_POST
def tenant_reactivate(request: StaffRequest, slug: str) -> HttpResponse:
    return _tenant_status_change(request, slug, services.tenant_reactivate, "is active again")


@staff_only
@require_POST
def tenant_credit(request: StaffRequest, slug: str) -> HttpResponse:
    """Adjust a tenant's credit by a signed amount; the same form submitted twice books once."""
    tenant = get_object_or_404(Tenant, slug=slug)
    form = StaffCreditForm(request.POST, auto_id="id_credit_%s")
    if not form.is_valid():
        return _tenant_render(request, tenant, credit_form=form, status=400)
    _, created = services.credit_staff_book(
        tenant=tenant,
        actor=request.user,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        amount_micros=form.amount_micros(),
        reason=form.cleaned_data["reason"],
        token=form.cleaned_data["token"],
    )
    if created:
        messages.success(request, f"Adjustment of {_usd(form.amount_micros())} booked.")
    else:
        messages.warning(request, "This form was already submitted; nothing more was booked.")
    return redirect("ops:tenant_detail", slug=tenant.slug)


# ---- Failures ------------------------------------------------------------------


@staff_only
@require_GET
def failures(request: StaffRequest) -> HttpResponse:
    """The latest failed jobs, webhook deliveries and meter events, across tenants."""
    return render(
        request,
        "ops/failures.html",
        {"ops_nav": "failures", "failures": ops_selectors.failures_recent()},
    )


# ---- Audit ---------------------------------------------------------------------


@staff_only
@require_GET
def audit(request: StaffRequest) -> HttpResponse:
    """Every audit event, tenants' and the operator's own, by tenant and action, keyset-paged."""
    form = OpsAuditFilterForm(request.GET, actions=AuditEvent.ACTIONS)
    context: dict[str, object] = {"ops_nav": "audit", "form": form, "events": []}
    if not form.is_valid():
        return render(request, "ops/audit.html", context, status=400)
    data = form.cleaned_data
    page = ops_selectors.audit_page(
        tenant=data["tenant"],
        action=data["action"] or None,
        before=data["before"],
        after=data["after"],
    )
    context.update(
        {
            "events": [audit_display.audit_row(e, with_tenant=True) for e in page.rows],
            "filtered": bool(data["tenant"] or data["action"]),
            "older_url": form.query(before=page.older) if page.older else None,
            "newer_url": form.query(after=page.newer) if page.newer else None,
        }
    )
    return render(request, "ops/audit.html", context)

"""Portal pages. Each view parses input, calls one service or selector, renders."""

import csv
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlencode, urlsplit

from allauth.account.adapter import get_adapter
from allauth.account.views import SignupView as AllauthSignupView
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.forms import Form
from django.http import (
    Http404,
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

from billing import money, payments, stripe_gateway
from billing import selectors as billing_selectors
from billing.exceptions import BillingError, InsufficientCredits
from billing.forms import BillingSettingsForm, CreditPurchaseForm, LedgerExportForm
from billing.models import Invoice, LedgerEntry, Purchase
from workers import kserve
from workers.dispatch import NoHealthySite, SitesUnavailable
from workers.kserve import TensorSpec
from workers.triton import TritonError, TritonRejected

from . import audit_display, catalog, inference, jobs, portal_selectors, selectors, services
from .adapters import PENDING_INVITATION_SESSION_KEY
from .catalog import CatalogEntry
from .exceptions import (
    ApiKeyAlreadyCreated,
    DomainError,
    InvitationInvalid,
    WebhookSecretChanged,
)
from .forms import (
    ApiKeyCreateForm,
    AuditFilterForm,
    InviteForm,
    OrganisationForm,
    RoleForm,
    WebhookSecretForm,
)
from .models import (
    ApiKey,
    AuditEvent,
    CatalogModel,
    Invitation,
    Job,
    Membership,
    Role,
    Tenant,
    User,
)
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
    """Credit, recent jobs, site status and the last 30 days' usage.

    A fixed number of queries: one row each for balance, month-to-date spend and
    key presence, ten jobs, two for the sites, and two aggregates of usage.
    """
    tenant = request.tenant
    balance = billing_selectors.balance_get(tenant.pk)
    today = timezone.now().astimezone(UTC).date()
    usage_start = billing_selectors.day_start_utc(today - timedelta(days=USAGE_DAYS - 1))
    usage_end = billing_selectors.day_start_utc(today + timedelta(days=1))
    by_model = billing_selectors.usage_summary(tenant.pk, usage_start, usage_end, "model")
    by_day = billing_selectors.usage_summary(tenant.pk, usage_start, usage_end, "day")
    by_day_model = billing_selectors.usage_by_day_and_model(tenant.pk, usage_start, usage_end)
    return render(
        request,
        "portal/overview.html",
        {
            "nav": "dashboard",
            "available": _usd_exact(balance["available_micros"]),
            "has_credit": balance["available_micros"] > 0,
            "month_to_date": _usd_exact(billing_selectors.month_to_date_usage(tenant.pk)),
            "month_start": billing_selectors.month_start_utc(),
            "has_key": ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).exists(),
            "jobs": [_job_row(job) for job in portal_selectors.jobs_recent(tenant=tenant)],
            "sites": portal_selectors.sites_status(),
            "usage_start": usage_start,
            "usage_days": USAGE_DAYS,
            "usage_by_model": [_usage_row(row) for row in by_model],
            "usage_by_day": [
                {**_usage_row(row), "by_model": by_day_model.get(row.group, {})}  # type: ignore[arg-type]
                for row in by_day
            ],
            "usage_total": _usd_exact(sum(row.cost_micros for row in by_day)),
        },
    )


#: The dashboard's usage tables cover this many UTC days, today included.
USAGE_DAYS = 30


def _usage_row(row: billing_selectors.UsageRow) -> dict[str, object]:
    return {
        "group": row.group,
        "calls": row.calls,
        "units": row.units,
        "cost": _usd_exact(row.cost_micros),
    }


_JOB_BADGES = {
    Job.Status.QUEUED: "badge-queued",
    Job.Status.RUNNING: "badge-role",
    Job.Status.SUCCEEDED: "badge-active",
    Job.Status.FAILED: "badge-revoked",
    Job.Status.CANCELED: "badge-canceled",
    Job.Status.EXPIRED: "badge-expired",
}


def _job_cost(job: Job) -> str:
    """What a finished job cost; for a job still in progress, its most."""
    if job.is_final:
        return _usd_exact(job.cost_micros or 0)
    return "up to " + _usd_exact(job.max_cost_micros)


def _job_row(job: Job) -> dict[str, object]:
    return {
        "public_id": job.public_id,
        "model": job.model.slug,
        "model_name": job.model.name,
        "status": job.status,
        "status_label": job.get_status_display(),
        "status_badge": _JOB_BADGES.get(Job.Status(job.status), ""),
        "created_at": job.created_at,
        "cost": _job_cost(job),
        "final": job.is_final,
    }


# ---- Models and the playground ------------------------------------------------


def _price_label(model: CatalogModel) -> str:
    """``$0.00001 per request``, ``$0.02 per 1K tokens``: exact, without trailing zeros."""
    text = money.format_usd(model.price_micros, places=6)
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction} {model.get_pricing_unit_display()}"


def _model_card(model: CatalogModel, sites: list[portal_selectors.ModelSite]) -> dict[str, object]:
    return {
        "slug": model.slug,
        "name": model.name,
        "task": model.get_task_display(),
        "price": _price_label(model),
        "sites": sites,
        "available": any(site.healthy for site in sites),
    }


@tenant_page(Permission.USE_MODELS)
def models_page(request: PortalRequest) -> HttpResponse:
    """Every model the tenant may call: one query for the models, one for where they run."""
    models = list(catalog.models_visible(tenant=request.tenant))
    sites = portal_selectors.model_sites(model.pk for model in models)
    return render(
        request,
        "portal/models.html",
        {"nav": "models", "models": [_model_card(m, sites.get(m.pk, [])) for m in models]},
    )


_EXAMPLE_TEXT = "hello world"
_NUMPY_TYPES = {
    "BOOL": "np.bool_",
    "FP16": "np.float16",
    "FP32": "np.float32",
    "FP64": "np.float64",
    "BYTES": "np.object_",
}


def _example_value(datatype: str) -> object:
    """One element of an example tensor: valid for the datatype and readable."""
    if datatype == "BYTES":
        return _EXAMPLE_TEXT
    if datatype == "BOOL":
        return True
    if datatype.startswith(("FP", "BF")):
        return 1.0
    return 1


def _example_shape(spec: TensorSpec) -> list[int]:
    """The spec's shape with every variable dimension (the batch first) set to 1."""
    return [dim if dim > 0 else 1 for dim in spec.shape]


def _example_inputs(entry: CatalogEntry) -> list[dict[str, object]]:
    inputs: list[dict[str, object]] = []
    for spec in entry.inputs:
        shape = _example_shape(spec)
        count = 1
        for dim in shape:
            count *= dim
        inputs.append(
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": shape,
                "data": [_example_value(spec.datatype)] * count,
            }
        )
    return inputs


def _example_body(entry: CatalogEntry) -> str:
    """A valid v2 request for the model, one input per line."""
    lines = ",\n".join(f"    {json.dumps(item)}" for item in _example_inputs(entry))
    return '{\n  "inputs": [\n' + lines + "\n  ]\n}"


def _shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _code_samples(entry: CatalogEntry, base_url: str) -> dict[str, str]:
    """curl, ``tritonclient.http`` and (embedding models) ``openai`` calls of the model."""
    model = entry.model
    parts = urlsplit(base_url)
    root = base_url.rstrip("/")
    compact = json.dumps({"inputs": _example_inputs(entry)}, separators=(",", ":"))
    samples = {
        "curl": (
            f'curl -H "Authorization: Bearer $CANGO_API_KEY" '
            f'-H "Content-Type: application/json" \\\n'
            f"  {root}/v2/models/{model.slug}/infer \\\n"
            f"  -d {_shell_quote(compact)}"
        )
    }
    ssl = ", ssl=True" if parts.scheme == "https" else ""
    lines = [
        "import os",
        "",
        "import numpy as np",
        "import tritonclient.http as httpclient",
        "",
        f"client = httpclient.InferenceServerClient(url={json.dumps(parts.netloc)}{ssl})",
        'headers = {"Authorization": f"Bearer {os.environ[\'CANGO_API_KEY\']}"}',
        "",
        "inputs = []",
    ]
    for spec in entry.inputs:
        shape = _example_shape(spec)
        value = _example_value(spec.datatype)
        literal = f'b"{_EXAMPLE_TEXT}"' if spec.datatype == "BYTES" else repr(value)
        dtype = _NUMPY_TYPES.get(spec.datatype, f"np.{spec.datatype.lower()}")
        lines += [
            f"tensor = httpclient.InferInput({json.dumps(spec.name)}, {shape}, "
            f"{json.dumps(spec.datatype)})",
            f"tensor.set_data_from_numpy(np.full({shape}, {literal}, dtype={dtype}))",
            "inputs.append(tensor)",
        ]
    lines += ["", f"result = client.infer({json.dumps(model.slug)}, inputs, headers=headers)"]
    lines += [f"print(result.as_numpy({json.dumps(spec.name)}))" for spec in entry.outputs]
    samples["python"] = "\n".join(lines)
    if model.task == CatalogModel.Task.EMBEDDING:
        samples["openai"] = "\n".join(
            [
                "import os",
                "",
                "import openai",
                "",
                f"client = openai.OpenAI(base_url={json.dumps(root + '/v1')}, "
                'api_key=os.environ["CANGO_API_KEY"])',
                f"response = client.embeddings.create(model={json.dumps(model.slug)}, "
                f"input=[{json.dumps(_EXAMPLE_TEXT)}])",
                "print(response.data[0].embedding[:4])",
            ]
        )
    return samples


def _schema_rows(specs: list[TensorSpec]) -> list[dict[str, str]]:
    return [
        {"name": s.name, "datatype": s.datatype, "shape": "[" + ", ".join(map(str, s.shape)) + "]"}
        for s in specs
    ]


class PlaygroundForm(Form):
    """The playground's request: a KServe v2 JSON body, at most ``INFER_MAX_BODY_BYTES``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = settings.INFER_MAX_BODY_BYTES
        self.fields["body"] = forms.CharField(
            label="Request body (JSON)",
            max_length=limit,
            strip=False,
            widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false", "class": "code-input"}),
            help_text=(
                "A KServe v2 inference request, as sent to /v2/models/&lt;id&gt;/infer. "
                f"Running it is a real call, paid from your credit. At most {limit:,} bytes."
            ),
        )

    def clean_body(self) -> bytes:
        text: str = self.cleaned_data["body"]
        encoded = text.encode()
        if len(encoded) > settings.INFER_MAX_BODY_BYTES:
            raise forms.ValidationError(
                f"The request is {len(encoded):,} bytes; at most "
                f"{settings.INFER_MAX_BODY_BYTES:,} are allowed."
            )
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}.") from None
        if not isinstance(parsed, dict):
            raise forms.ValidationError('The request must be a JSON object: {"inputs": [...]}.')
        return encoded


@dataclass(frozen=True, slots=True)
class PlaygroundRun:
    output: str
    truncated: bool
    latency_ms: str
    cost: str
    units: int
    site: str
    model_version: str


#: The playground and the job page show at most this much of a JSON document.
PREVIEW_BYTES = 20_000


def _scalar_list(array: Any) -> list[object]:
    flat = array.reshape(-1)
    if flat.dtype == object:
        return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in flat]
    if flat.dtype.kind == "f":
        # The shortest text that reads back as the same float32, not its float64 widening.
        return [float(str(v)) for v in flat]
    return list(flat.tolist())


def _response_document(outcome: inference.InferOutcome) -> object:
    """The v2 response as JSON, with binary outputs decoded into ``data`` lists."""
    if not outcome.header_length:
        return json.loads(outcome.body)
    header_length = int(outcome.header_length)
    header = json.loads(outcome.body[:header_length])
    arrays = kserve.response_parse(outcome.body, header_length)
    for output in header.get("outputs", []):
        parameters = output.get("parameters") or {}
        if parameters.pop("binary_data_size", None) is not None:
            output["data"] = _scalar_list(arrays[output["name"]])
        if not parameters:
            output.pop("parameters", None)
    return header


def _pretty_json(value: object, depth: int = 0) -> str:
    """Indented JSON whose lists of numbers or strings stay on one line."""
    pad = "  " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {_pretty_json(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * depth + "}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        items = [f"{pad}{_pretty_json(v, depth + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * depth + "]"
    return json.dumps(value, ensure_ascii=False)


def _preview(value: object) -> tuple[str, bool]:
    """Pretty JSON cut to ``PREVIEW_BYTES``, and whether it was cut."""
    text = _pretty_json(value)
    encoded = text.encode()
    if len(encoded) <= PREVIEW_BYTES:
        return text, False
    return encoded[:PREVIEW_BYTES].decode(errors="ignore"), True


def _playground_run(outcome: inference.InferOutcome, elapsed: float) -> PlaygroundRun:
    try:
        output, truncated = _preview(_response_document(outcome))
    except (ValueError, KeyError, kserve.KServeError):
        logger.warning("playground: response of %s not shown as JSON", outcome.site_slug)
        output = outcome.body[:PREVIEW_BYTES].decode(errors="replace")
        truncated = len(outcome.body) > PREVIEW_BYTES
    return PlaygroundRun(
        output=output,
        truncated=truncated,
        latency_ms=f"{elapsed * 1000:.1f}",
        cost=_usd_exact(outcome.usage.cost_micros),
        units=outcome.usage.units,
        site=outcome.site_slug,
        model_version=outcome.model_version,
    )


@dataclass(frozen=True, slots=True)
class PlaygroundError:
    status: int
    message: str
    code: str


def _playground_error(exc: Exception) -> PlaygroundError:
    """The API's error vocabulary (``marketplace.api.errors``) for the playground form."""
    if isinstance(exc, kserve.KServeError):
        where = f" ({exc.field})" if exc.field else ""
        return PlaygroundError(exc.status, exc.message + where, exc.code)
    if isinstance(exc, DomainError):
        return PlaygroundError(exc.status, exc.message, exc.code)
    if isinstance(exc, InsufficientCredits):
        return PlaygroundError(402, "Not enough credit — buy credits to run this call.", exc.code)
    if isinstance(exc, BillingError):
        return PlaygroundError(402, exc.message, exc.code)
    if isinstance(exc, NoHealthySite):
        return PlaygroundError(
            503,
            "No site can serve this model right now. Nothing was charged; try again soon.",
            "no_healthy_site",
        )
    if isinstance(exc, SitesUnavailable):
        return PlaygroundError(
            503,
            f"Every site tried was busy or failed ({exc.message}). Nothing was charged.",
            "overloaded" if exc.busy else "sites_unavailable",
        )
    if isinstance(exc, TritonRejected):
        return PlaygroundError(
            400, f"The model refused the input: {exc.message}", "inference_rejected"
        )
    if isinstance(exc, TritonError):
        return PlaygroundError(
            502, f"The site answered with an error: {exc.message}", "upstream_error"
        )
    raise exc


@never_cache
@tenant_page(Permission.USE_MODELS)
def model_page(request: PortalRequest, slug: str) -> HttpResponse:
    """A model's schema, code samples and playground; a POST runs a real, paid call."""
    try:
        entry = catalog.model_for_caller(slug, tenant=request.tenant, key=None)
    except DomainError as exc:
        raise Http404(exc.message) from None
    model = entry.model
    form = PlaygroundForm(request.POST or None, initial={"body": _example_body(entry)})
    run: PlaygroundRun | None = None
    error: PlaygroundError | None = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            started = time.perf_counter()
            try:
                outcome = inference.infer_v2(
                    tenant=request.tenant,
                    key=None,
                    slug=model.slug,
                    body=form.cleaned_data["body"],
                    header_length=None,
                )
            except (
                kserve.KServeError,
                DomainError,
                BillingError,
                NoHealthySite,
                SitesUnavailable,
                TritonError,
            ) as exc:
                error = _playground_error(exc)
                if error.status >= 500:
                    logger.warning("playground: %s for %s: %s", error.code, model.slug, exc)
                form.add_error("body", error.message)
                status = error.status
            else:
                run = _playground_run(outcome, time.perf_counter() - started)
        else:
            status = 400
    sites = portal_selectors.model_sites([model.pk]).get(model.pk, [])
    return render(
        request,
        "portal/model.html",
        {
            "nav": "models",
            "model": _model_card(model, sites),
            "description": model.description,
            "max_batch_size": model.max_batch_size,
            "inputs": _schema_rows(entry.inputs),
            "outputs": _schema_rows(entry.outputs),
            "samples": _code_samples(entry, request.build_absolute_uri("/")),
            "form": form,
            "run": run,
            "error": error,
        },
        status=status,
    )


# ---- Jobs ----------------------------------------------------------------------


class JobFilterForm(Form):
    """The jobs list's filters and page position, from the query string."""

    status = forms.ChoiceField(
        label="Status", required=False, choices=[("", "Any status"), *Job.Status.choices]
    )
    model = forms.ChoiceField(label="Model", required=False)
    before = forms.CharField(required=False, max_length=50, widget=forms.HiddenInput)
    after = forms.CharField(required=False, max_length=50, widget=forms.HiddenInput)

    def __init__(self, *args: Any, model_slugs: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [("", "Any model"), *((s, s) for s in model_slugs)]  # type: ignore[attr-defined]

    def _clean_cursor(self, name: str) -> tuple[datetime, int] | None:
        raw: str = self.cleaned_data[name]
        if not raw:
            return None
        position = portal_selectors.cursor_decode(raw)
        if position is None:
            raise forms.ValidationError("This page link is not valid; start from the newest jobs.")
        return position

    def clean_before(self) -> tuple[datetime, int] | None:
        return self._clean_cursor("before")

    def clean_after(self) -> tuple[datetime, int] | None:
        return self._clean_cursor("after")


def _jobs_query(filters: dict[str, Any], **cursor: str) -> str:
    params = {k: filters[k] for k in ("status", "model") if filters.get(k)}
    return "?" + urlencode({**params, **cursor})


@never_cache
@tenant_page(Permission.USE_MODELS)
def jobs_page(request: PortalRequest) -> HttpResponse:
    """The tenant's jobs, newest first, filtered by status and model, keyset-paged."""
    slugs = list(catalog.models_visible(tenant=request.tenant).values_list("slug", flat=True))
    form = JobFilterForm(request.GET, model_slugs=slugs)
    rows: list[dict[str, object]] = []
    older_url = newer_url = None
    status = 200
    if form.is_valid():
        data = form.cleaned_data
        page = portal_selectors.jobs_page(
            tenant=request.tenant,
            status=data["status"] or None,
            model_slug=data["model"] or None,
            before=data["before"],
            after=data["after"],
        )
        rows = [_job_row(job) for job in page.jobs]
        older_url = _jobs_query(data, before=page.older) if page.older else None
        newer_url = _jobs_query(data, after=page.newer) if page.newer else None
    else:
        status = 400
    return render(
        request,
        "portal/jobs.html",
        {
            "nav": "jobs",
            "form": form,
            "filtered": any(request.GET.get(k) for k in ("status", "model")),
            "jobs": rows,
            "older_url": older_url,
            "newer_url": newer_url,
        },
        status=status,
    )


#: A job page that is not final reloads itself this often (no script needed).
JOB_REFRESH_SECONDS = 2
_CANCELABLE = (Job.Status.QUEUED, Job.Status.RUNNING)


@never_cache
@tenant_page(Permission.USE_MODELS)
def job_page(request: PortalRequest, public_id: str) -> HttpResponse:
    """One job: state, cost, input and output previews, webhook deliveries."""
    job = portal_selectors.job_get(tenant=request.tenant, public_id=public_id)
    if job is None:
        raise Http404("No such job.")
    if job.payload_purged:
        request_preview, request_cut = "", False
    else:
        request_preview, request_cut = _preview(job.request)
    output_preview, output_cut = _preview(job.output) if job.output is not None else ("", False)
    return render(
        request,
        "portal/job.html",
        {
            "nav": "jobs",
            "job": job,
            "row": _job_row(job),
            "cancelable": job.status in _CANCELABLE,
            "refresh_seconds": None if job.is_final else JOB_REFRESH_SECONDS,
            "request_preview": request_preview,
            "request_truncated": request_cut,
            "output_preview": output_preview,
            "output_truncated": output_cut,
            "deliveries": list(job.webhook_deliveries.order_by("attempt")[:50]),
            "retention_days": settings.JOB_PAYLOAD_RETENTION_DAYS,
        },
    )


@require_POST
@tenant_page(Permission.USE_MODELS)
def job_cancel(request: PortalRequest, public_id: str) -> HttpResponse:
    """Cancel a queued or running job and release its hold."""
    job = portal_selectors.job_get(tenant=request.tenant, public_id=public_id)
    if job is None:
        raise Http404("No such job.")
    try:
        jobs.job_cancel(job=job)
    except DomainError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Job canceled. Its credit hold was released; nothing is charged.")
    return redirect("portal:job", public_id=job.public_id)


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
    # The saved values as initial data, so the audit event names only what changed.
    account = billing_selectors.account_get(request.tenant.pk)
    form = BillingSettingsForm(request.POST, initial=BillingSettingsForm.initial_for(account))
    if not form.is_valid():
        return _billing_render(request, settings_form=form, status=400)
    services.billing_settings_save(tenant=request.tenant, actor=request.user, form=form)
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
    form = ApiKeyCreateForm(request.POST or None)
    if request.method != "POST":
        return _api_keys_render(request, form=form)
    if not form.is_valid():
        return _api_keys_render(request, form=form, status=400)
    try:
        created_key, created_token = services.api_key_create(
            tenant=request.tenant,
            actor=request.user,
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_on"],
            allowed_models=form.cleaned_data["allowed_models"],
            monthly_spend_cap_micros=form.cleaned_cap_micros(),
            creation_token=form.cleaned_data["token"],
        )
    except ApiKeyAlreadyCreated as exc:
        messages.warning(request, exc.message)
        return _api_keys_render(request, status=exc.status)
    return _api_keys_render(request, created_key=created_key, created_token=created_token)


@never_cache
@require_POST
@tenant_page(Permission.MANAGE_KEYS)
def webhook_secret(request: PortalRequest) -> HttpResponse:
    """Reveal or rotate the webhook signing secret and show it in this answer only.

    The Keys page is rendered here rather than redirected to, so the secret never
    travels in a URL or a flash message and a GET of the page never holds it.
    """
    form = WebhookSecretForm(request.POST)
    if not form.is_valid():
        return _api_keys_render(request, webhook_form=form, status=400)
    if form.cleaned_data["action"] == "reveal":
        secret = services.webhook_secret_reveal(tenant=request.tenant, actor=request.user)
        return _api_keys_render(request, webhook_secret=secret)
    try:
        secret = services.webhook_secret_rotate(
            tenant=request.tenant,
            actor=request.user,
            expected_fingerprint=form.cleaned_data["current"],
        )
    except WebhookSecretChanged as exc:
        form.add_error("current", exc.message)
        return _api_keys_render(request, webhook_form=form, status=exc.status)
    return _api_keys_render(request, webhook_secret=secret, webhook_rotated=True)


def _api_keys_render(
    request: PortalRequest,
    *,
    form: ApiKeyCreateForm | None = None,
    created_key: ApiKey | None = None,
    created_token: str | None = None,
    webhook_form: WebhookSecretForm | None = None,
    webhook_secret: str | None = None,
    webhook_rotated: bool = False,
    status: int = 200,
) -> HttpResponse:
    """The Keys page: the keys, the create form and the webhook signing secret's card.

    ``created_token`` and ``webhook_secret`` are shown only in the answer to the POST
    that made or revealed them.
    """
    tenant = request.tenant
    previous_signs = len(tenant.webhook_secrets()) > 1
    return render(
        request,
        "portal/api_keys.html",
        {
            "nav": "keys",
            "form": form or ApiKeyCreateForm(),
            "keys": selectors.api_keys_list(tenant=tenant),
            "created_key": created_key,
            "created_token": created_token,
            "webhook_form": webhook_form,
            "webhook_secret": webhook_secret,
            "webhook_rotated": webhook_rotated,
            "webhook_overlap_hours": services.WEBHOOK_SECRET_OVERLAP // timedelta(hours=1),
            "webhook_fingerprint": tenant.webhook_secret_fingerprint,
            "webhook_previous_until": (
                tenant.webhook_secret_previous_until if previous_signs else None
            ),
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


# ---- Audit log -----------------------------------------------------------------


@never_cache
@tenant_page(Permission.VIEW_AUDIT)
def audit_page(request: PortalRequest) -> HttpResponse:
    """Who did what in this organisation, newest first, by action, keyset-paged."""
    form = AuditFilterForm(request.GET, actions=AuditEvent.TENANT_ACTIONS)
    rows: list[dict[str, object]] = []
    older_url = newer_url = None
    status = 200
    if form.is_valid():
        data = form.cleaned_data
        page = selectors.audit_events_page(
            tenant=request.tenant,
            action=data["action"] or None,
            before=data["before"],
            after=data["after"],
        )
        rows = [audit_display.audit_row(event) for event in page.rows]
        older_url = form.query(before=page.older) if page.older else None
        newer_url = form.query(after=page.newer) if page.newer else None
    else:
        status = 400
    action = request.GET.get("action", "")
    return render(
        request,
        "portal/audit.html",
        {
            "nav": "audit",
            "form": form,
            "filtered": bool(action),
            "csv_query": "?" + urlencode({"action": action}) if action else "",
            "events": rows,
            "older_url": older_url,
            "newer_url": newer_url,
        },
        status=status,
    )


@never_cache
@tenant_page(Permission.VIEW_AUDIT)
def audit_csv(request: PortalRequest) -> HttpResponseBase:
    """The organisation's audit log (optionally one action's) as CSV, streamed."""
    form = AuditFilterForm(request.GET, actions=AuditEvent.TENANT_ACTIONS)
    if not form.is_valid():
        return render(
            request, "portal/audit.html", {"nav": "audit", "form": form, "events": []}, status=400
        )
    events = selectors.audit_events_for_csv(
        tenant=request.tenant, action=form.cleaned_data["action"] or None
    )
    response = StreamingHttpResponse(
        audit_display.audit_csv_lines(events), content_type="text/csv; charset=utf-8"
    )
    name = f"cango-audit-{request.tenant.slug}-{timezone.now():%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response

"""Sync inference: validate, price, reserve, route and run one request in the web process.

Nothing reaches a site before the request has been checked against the model's
metadata and its worst-case cost is held against the tenant's credit (and the
key's monthly cap). After the call the actual cost is settled — ledger entry,
meter-event outbox row and balance in one statement — and the rest released; a
call that fails is released without charge.
"""

import json
import logging
import uuid
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from billing import ahead, ledger
from observability.metrics import sync_inference_count
from workers import kserve
from workers.dispatch import Dispatched, NoHealthySite, SitesUnavailable, dispatch
from workers.triton import TritonRejected

from . import catalog, pricing
from .exceptions import ChargeNotRecorded, DomainError
from .models import ApiKey, CatalogModel, Tenant
from .pricing import Usage

Unit = CatalogModel.PricingUnit
logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InferOutcome:
    body: bytes
    content_type: str
    header_length: str | None
    site_slug: str
    model_version: str
    usage: Usage
    max_cost_micros: int


@dataclass(frozen=True, slots=True)
class EmbedOutcome:
    vectors: np.ndarray
    prompt_tokens: int
    site_slug: str
    model_version: str
    usage: Usage
    max_cost_micros: int


def _request_headers(header_length: int | None) -> dict[str, str]:
    if header_length is None:
        return {"Content-Type": "application/json"}
    return {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(header_length),
    }


def _with_usage_output(
    parsed: kserve.ParsedRequest, body: bytes, header_length: int | None, output: str
) -> tuple[bytes, int | None]:
    """Make sure Triton returns the output that carries billable units."""
    requested = parsed.header.get("outputs")
    if requested is None or any(o.get("name") == output for o in requested):
        return body, header_length
    header = dict(parsed.header)
    header["outputs"] = [*requested, {"name": output, "parameters": {"binary_data": True}}]
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return encoded + body[parsed.binary_offset :], len(encoded)


def _response_header_length(done: Dispatched) -> int | None:
    raw = done.response.headers.get("inference-header-content-length")
    return int(raw) if raw else None


def _tokens(model: CatalogModel, done: Dispatched) -> int:
    outputs = kserve.response_parse(done.response.body, _response_header_length(done))
    tokens = outputs.get(model.usage_output)
    if tokens is None:
        raise DomainError(f"{model.slug} did not report its usage.", field="model")
    return int(tokens.sum())


def units_used(model: CatalogModel, *, input_elements: int, done: Dispatched) -> int:
    """Billable units of a finished call, by the model's pricing unit."""
    unit = Unit(model.pricing_unit)
    if unit == Unit.REQUEST:
        return 1
    if unit == Unit.THOUSAND_INPUT_ELEMENTS:
        return input_elements
    if unit == Unit.GPU_SECOND:
        return done.elapsed_us
    return _tokens(model, done)


def _model_version(done: Dispatched) -> str:
    if done.candidate.triton_model_version:
        return done.candidate.triton_model_version
    header_length = _response_header_length(done)
    body = done.response.body
    header = body[:header_length] if header_length else body
    try:
        return str(json.loads(header).get("model_version", ""))
    except ValueError:
        return ""


def _failure_status(exc: BaseException) -> str:
    """The metric's status for a call that failed: the same vocabulary as its HTTP error."""
    if isinstance(exc, NoHealthySite):
        return "no_site"
    if isinstance(exc, SitesUnavailable):
        return "busy" if exc.busy else "unavailable"
    if isinstance(exc, TritonRejected):
        return "rejected"
    return "error"


def _charged(
    *,
    tenant: Tenant,
    key: ApiKey | None,
    model: CatalogModel,
    max_units: int,
    input_elements: int,
    body: bytes,
    headers: dict[str, str],
) -> tuple[Dispatched, Usage, int]:
    """Hold the worst case, run the call at the best site, settle what it used;
    release the hold if the call fails.

    The hold is one taken ahead by this caller's previous call when there is one
    (``billing.ahead``), and the settle takes one for the next call: so a caller
    with credit to spare pays one database round trip per call, not two.
    """
    max_cost = pricing.cost_micros(model, max_units)
    caller = (tenant.pk, key.pk if key else None)
    cap = key.monthly_spend_cap_micros if key else None
    ahead_ok = cap is None and settings.SYNC_HOLD_AHEAD_MIN_CALLS > 0
    hold = ahead.take(caller, max_cost) if ahead_ok else None
    if hold is None:
        hold = ledger.credit_reserve(
            tenant_id=tenant.pk,
            amount_micros=max_cost,
            source=f"req:{uuid.uuid4().hex}",
            ttl_seconds=_hold_ttl_seconds(),
            api_key_id=caller[1],
            key_cap_micros=cap,
            using="holds",
        )
    try:
        done = dispatch(
            model_slug=model.slug,
            body=body,
            headers=headers,
            timeout=settings.INFER_TIMEOUT_SECONDS,
            region_pin=tenant.region_pin,
        )
        units = min(units_used(model, input_elements=input_elements, done=done), max_units)
    except BaseException as exc:
        ledger.credit_release(reservation_id=hold.reservation_id, using="holds")
        sync_inference_count(model=model.slug, site="", status=_failure_status(exc))
        raise
    sync_inference_count(model=model.slug, site=done.candidate.site_slug, status="ok")
    usage = pricing.usage(model, units)
    settled = ledger.credit_settle(
        hold=hold,
        cost_micros=usage.cost_micros,
        units=units,
        model_slug=model.slug,
        source=hold.source,
        site_slug=done.candidate.site_slug,
        ahead=_ahead_for(caller, max_cost) if ahead_ok else None,
    )
    if settled is None:
        logger.error(
            "sync call not charged: its hold was gone",
            extra={"reservation_id": hold.reservation_id, "model": model.slug},
        )
        raise ChargeNotRecorded("The call could not be charged; nothing was. Retry it.")
    if settled.next_hold is not None:
        ahead.put(caller, settled.next_hold, usable_seconds=settings.SYNC_HOLD_AHEAD_SECONDS)
    return done, usage, max_cost


def _hold_ttl_seconds() -> float:
    """How long a hold stays open unsettled before the sweep frees it: past any call."""
    return settings.INFER_TIMEOUT_SECONDS + 60


def _ahead_for(caller: ahead.Caller, amount_micros: int) -> ledger.Ahead | None:
    """What to ask the settle to hold for ``caller``'s next call, if it would be kept.

    It expires once it can no longer be taken and still cover a whole call.
    """
    if not ahead.has_room(caller):
        return None
    return ledger.Ahead(
        source=f"req:{uuid.uuid4().hex}",
        amount_micros=amount_micros,
        ttl_seconds=settings.SYNC_HOLD_AHEAD_SECONDS + _hold_ttl_seconds(),
    )


def infer_v2(
    *,
    tenant: Tenant,
    key: ApiKey | None,
    slug: str,
    body: bytes,
    header_length: int | None,
) -> InferOutcome:
    """Run a KServe v2 inference request for ``tenant`` and say what it cost."""
    entry = catalog.model_for_caller(slug, tenant=tenant, key=key)
    model = entry.model
    parsed = kserve.request_parse(body, header_length)
    batch = kserve.request_validate(
        parsed, entry.inputs, model.max_batch_size, max_elements=settings.INFER_MAX_ELEMENTS
    )
    elements = kserve.count_units(parsed)
    timeout = settings.INFER_TIMEOUT_SECONDS
    bound = pricing.max_units(
        model, batch_size=batch, input_elements=elements, timeout_seconds=timeout
    )
    if model.usage_output:
        body, header_length = _with_usage_output(parsed, body, header_length, model.usage_output)
    headers = _request_headers(header_length)
    done, usage, max_cost = _charged(
        tenant=tenant,
        key=key,
        model=model,
        max_units=bound,
        input_elements=elements,
        body=body,
        headers=headers,
    )
    header_out = done.response.headers.get("inference-header-content-length")
    return InferOutcome(
        body=done.response.body,
        content_type=done.response.headers.get("content-type", "application/json"),
        header_length=header_out,
        site_slug=done.candidate.site_slug,
        model_version=_model_version(done),
        usage=usage,
        max_cost_micros=max_cost,
    )


def embed(
    *,
    tenant: Tenant,
    key: ApiKey | None,
    slug: str,
    texts: list[str],
    dimensions: int | None = None,
) -> EmbedOutcome:
    """Embed ``texts`` with an embedding model (the OpenAI-compatible endpoint's work)."""
    entry = catalog.model_for_caller(slug, tenant=tenant, key=key)
    model = entry.model
    if model.task != CatalogModel.Task.EMBEDDING or len(entry.inputs) != 1:
        raise DomainError(f"'{slug}' is not an embedding model.", field="model")
    if model.max_batch_size and len(texts) > model.max_batch_size:
        raise DomainError(
            f"At most {model.max_batch_size} inputs per request for '{slug}'.", field="input"
        )
    vector_spec = next(
        (o for o in entry.outputs if o.datatype == "FP32" and o.name != model.usage_output),
        None,
    )
    if vector_spec is None:
        raise DomainError(f"'{slug}' has no embedding output.", field="model")
    if dimensions is not None and dimensions != vector_spec.shape[-1]:
        raise DomainError(
            f"'{slug}' makes {vector_spec.shape[-1]}-dimension embeddings.", field="dimensions"
        )
    timeout = settings.INFER_TIMEOUT_SECONDS
    bound = pricing.max_units(
        model, batch_size=len(texts), input_elements=len(texts), timeout_seconds=timeout
    )
    texts_array = np.array([[text.encode()] for text in texts], dtype=np.object_)
    wanted = [vector_spec.name] + ([model.usage_output] if model.usage_output else [])
    body, header_length = kserve.request_build(
        [(entry.inputs[0].name, texts_array)], wanted, binary=True
    )
    headers = _request_headers(header_length)
    done, usage, max_cost = _charged(
        tenant=tenant,
        key=key,
        model=model,
        max_units=bound,
        input_elements=len(texts),
        body=body,
        headers=headers,
    )
    outputs = kserve.response_parse(done.response.body, _response_header_length(done))
    tokens = int(outputs[model.usage_output].sum()) if model.usage_output else 0
    return EmbedOutcome(
        vectors=outputs[vector_spec.name].reshape(len(texts), -1),
        prompt_tokens=tokens,
        site_slug=done.candidate.site_slug,
        model_version=_model_version(done),
        usage=usage,
        max_cost_micros=max_cost,
    )

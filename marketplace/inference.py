"""Sync inference: validate, price, route and run one request in the web process.

Nothing reaches a site before the request has been checked against the model's
metadata and its worst-case cost is known. The order matters for billing: the
bound is computed before dispatch (the reservation) and the usage after (the charge).
"""

import json
from dataclasses import dataclass

import numpy as np
from django.conf import settings

from workers import kserve
from workers.dispatch import dispatch

from . import catalog, pricing
from .exceptions import DomainError
from .models import ApiKey, CatalogModel, Tenant
from .pricing import Usage


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


def _units(
    model: CatalogModel,
    *,
    input_elements: int,
    response_body: bytes,
    response_hl: str | None,
    elapsed_us: int,
) -> int:
    unit = CatalogModel.PricingUnit(model.pricing_unit)
    if unit == CatalogModel.PricingUnit.REQUEST:
        return 1
    if unit == CatalogModel.PricingUnit.THOUSAND_INPUT_ELEMENTS:
        return input_elements
    if unit == CatalogModel.PricingUnit.GPU_SECOND:
        return elapsed_us
    outputs = kserve.response_parse(response_body, int(response_hl) if response_hl else None)
    tokens = outputs.get(model.usage_output)
    if tokens is None:
        raise DomainError(f"{model.slug} did not report its usage.", field="model")
    return int(tokens.sum())


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
    done = dispatch(
        model_slug=model.slug,
        body=body,
        headers=_request_headers(header_length),
        timeout=timeout,
        region_pin=tenant.region_pin,
    )
    response = done.response
    response_hl = response.headers.get("inference-header-content-length")
    units = _units(
        model,
        input_elements=elements,
        response_body=response.body,
        response_hl=response_hl,
        elapsed_us=done.elapsed_us,
    )
    return InferOutcome(
        body=response.body,
        content_type=response.headers.get("content-type", "application/json"),
        header_length=response_hl,
        site_slug=done.candidate.site_slug,
        model_version=done.candidate.triton_model_version
        or _version_of(response.body, response_hl),
        usage=pricing.usage(model, units),
        max_cost_micros=pricing.cost_micros(model, bound),
    )


def _version_of(body: bytes, header_length: str | None) -> str:
    header = body[: int(header_length)] if header_length else body
    try:
        return str(json.loads(header).get("model_version", ""))
    except ValueError:
        return ""


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
    vector_output = vector_spec.name
    if dimensions is not None and dimensions != vector_spec.shape[-1]:
        raise DomainError(
            f"'{slug}' makes {vector_spec.shape[-1]}-dimension embeddings.", field="dimensions"
        )
    timeout = settings.INFER_TIMEOUT_SECONDS
    bound = pricing.max_units(
        model, batch_size=len(texts), input_elements=len(texts), timeout_seconds=timeout
    )
    texts_array = np.array([[text.encode()] for text in texts], dtype=np.object_)
    wanted = [vector_output] + ([model.usage_output] if model.usage_output else [])
    body, header_length = kserve.request_build(
        [(entry.inputs[0].name, texts_array)], wanted, binary=True
    )
    done = dispatch(
        model_slug=model.slug,
        body=body,
        headers=_request_headers(header_length),
        timeout=timeout,
        region_pin=tenant.region_pin,
    )
    response_hl = done.response.headers.get("inference-header-content-length")
    outputs = kserve.response_parse(done.response.body, int(response_hl) if response_hl else None)
    tokens = int(outputs[model.usage_output].sum()) if model.usage_output else 0
    unit = CatalogModel.PricingUnit(model.pricing_unit)
    units = {
        CatalogModel.PricingUnit.REQUEST: 1,
        CatalogModel.PricingUnit.THOUSAND_INPUT_ELEMENTS: len(texts),
        CatalogModel.PricingUnit.THOUSAND_TOKENS: tokens,
        CatalogModel.PricingUnit.GPU_SECOND: done.elapsed_us,
    }[unit]
    return EmbedOutcome(
        vectors=outputs[vector_output].reshape(len(texts), -1),
        prompt_tokens=tokens,
        site_slug=done.candidate.site_slug,
        model_version=done.candidate.triton_model_version
        or _version_of(done.response.body, response_hl),
        usage=pricing.usage(model, units),
        max_cost_micros=pricing.cost_micros(model, bound),
    )

"""The marketplace with reservation and settle taken out — for ``bench.billing`` only.

Serving this module next to ``config.wsgi`` in the same run measures what billing
adds to a sync request. It replaces ``marketplace.inference._charged`` with a
version that runs the call, counts it in the metrics and prices it, but holds and
charges nothing.
"""

from django.conf import settings

from config.wsgi import application
from marketplace import inference, pricing
from marketplace.models import ApiKey, CatalogModel, Tenant
from observability.metrics import sync_inference_count
from workers.dispatch import Dispatched, dispatch


def _uncharged(
    *,
    tenant: Tenant,
    key: ApiKey | None,
    model: CatalogModel,
    max_units: int,
    input_elements: int,
    body: bytes,
    headers: dict[str, str],
) -> tuple[Dispatched, pricing.Usage, int]:
    done = dispatch(
        model_slug=model.slug,
        body=body,
        headers=headers,
        timeout=settings.INFER_TIMEOUT_SECONDS,
        region_pin=tenant.region_pin,
    )
    sync_inference_count(model=model.slug, site=done.candidate.site_slug, status="ok")
    units = min(inference.units_used(model, input_elements=input_elements, done=done), max_units)
    return done, pricing.usage(model, units), pricing.cost_micros(model, max_units)


inference._charged = _uncharged

__all__ = ["application"]

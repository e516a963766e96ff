"""Writes for sites, servers and deployments: registering a server, changing a site's status."""

import json
import logging
from dataclasses import dataclass
from decimal import Decimal

from django.db import transaction

from marketplace.models import CatalogModel, User
from marketplace.services import audit_record

from . import routing, triton
from .models import Deployment, Site, TritonServer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    """How a model found on a server is listed in the catalog the first time it is seen."""

    name: str
    description: str
    task: str
    pricing_unit: str
    price_micros: int
    usage_output: str = ""
    max_units_per_item: int = 0


def _get_json(endpoint: triton.Endpoint, method: str, path: str) -> object:
    return triton.call(endpoint, method, path, timeout=5.0).json()


def _metadata_shapes(metadata: dict[str, object], max_batch_size: int) -> tuple[list, list]:
    """Tensor lists as the catalog stores them: the batch dimension first when batching."""

    def tensors(key: str) -> list[dict[str, object]]:
        result = []
        for item in metadata.get(key, []):  # type: ignore[attr-defined]
            shape = [int(d) for d in item["shape"]]
            result.append({"name": item["name"], "datatype": item["datatype"], "shape": shape})
        return result

    return tensors("inputs"), tensors("outputs")


@transaction.atomic
def server_register(
    *,
    site_slug: str,
    http_url: str,
    grpc_url: str = "",
    metrics_url: str = "",
    region: str = "local",
    power_price_usd_per_mwh: Decimal = Decimal(0),
    server_name: str = "triton-1",
    models: list[str] | None = None,
    defaults: dict[str, ModelDefaults] | None = None,
    actor: User | None = None,
) -> list[Deployment]:
    """Register the Triton server at ``http_url`` and a deployment for each ready model.

    Reads the server's repository index and each model's metadata and config; a
    model not yet in the catalog is added (priced from ``defaults``, else not
    listed until staff price it: inactive with price 0).
    """
    endpoint = triton.Endpoint.from_url(0, http_url)
    index = _get_json(endpoint, "POST", "/v2/repository/index")
    ready = [
        str(entry["name"])
        for entry in index  # type: ignore[attr-defined]
        if entry.get("state") == "READY" and (models is None or entry["name"] in models)
    ]
    site, site_created = Site.objects.get_or_create(
        slug=site_slug,
        defaults={
            "name": site_slug,
            "region": region,
            "power_price_usd_per_mwh": power_price_usd_per_mwh,
        },
    )
    server, _ = TritonServer.objects.update_or_create(
        site=site,
        name=server_name,
        defaults={"http_url": http_url, "grpc_url": grpc_url, "metrics_url": metrics_url},
    )
    deployments = []
    for name in sorted(ready):
        metadata = _get_json(endpoint, "GET", f"/v2/models/{name}")
        config = _get_json(endpoint, "GET", f"/v2/models/{name}/config")
        if not isinstance(metadata, dict) or not isinstance(config, dict):
            raise triton.TritonRejected(f"{name}: unexpected metadata from {http_url}")
        max_batch_size = int(config.get("max_batch_size", 0))
        inputs, outputs = _metadata_shapes(metadata, max_batch_size)
        spec = (defaults or {}).get(name)
        model, created = CatalogModel.objects.get_or_create(
            slug=name,
            defaults={
                "name": spec.name if spec else name,
                "description": spec.description if spec else "",
                "task": spec.task if spec else CatalogModel.Task.TENSOR,
                "pricing_unit": spec.pricing_unit if spec else CatalogModel.PricingUnit.REQUEST,
                "price_micros": spec.price_micros if spec else 0,
                "usage_output": spec.usage_output if spec else "",
                "max_units_per_item": spec.max_units_per_item if spec else 0,
                "is_active": spec is not None,
                "inputs": inputs,
                "outputs": outputs,
                "versions": metadata.get("versions", []),
                "max_batch_size": max_batch_size,
            },
        )
        if not created and (model.inputs != inputs or model.outputs != outputs):
            logger.warning(
                "catalog: %s on %s has a different schema than the catalog's", name, server
            )
        deployment, _ = Deployment.objects.update_or_create(
            model=model, server=server, defaults={"triton_model_name": name, "enabled": True}
        )
        deployments.append(deployment)
    audit_record(
        action="server.registered",
        actor=actor,
        actor_label=None if actor else "manage.py",
        target=server,
        tenant=None,
        metadata={"site": site.slug, "site_created": site_created, "models": ready},
    )
    transaction.on_commit(routing.reset)
    return deployments


def defaults_load(path: str) -> dict[str, ModelDefaults]:
    with open(path) as handle:
        raw = json.load(handle)
    return {name: ModelDefaults(**values) for name, values in raw.items()}


@transaction.atomic
def site_status_set(*, site: Site, status: str, actor: User | None, reason: str = "") -> Site:
    """Set a site active, draining (no new work; in-flight work finishes) or offline."""
    old = site.status
    site.status = status
    site.save(update_fields=["status"])
    audit_record(
        action="site.status_changed",
        actor=actor,
        target=site,
        tenant=None,
        reason=reason,
        metadata={"site": site.slug, "from": old, "to": status},
    )
    transaction.on_commit(routing.reset)
    return site

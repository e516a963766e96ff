"""Signed job-completion webhooks, retried with backoff, with a delivery log.

The POST body is the job as ``GET /v1/jobs/{id}`` shows it. The header
``Cango-Signature: t=<unix time>,v1=<hex>`` carries HMAC-SHA256 of ``"<t>.<body>"``
keyed with the tenant's webhook secret; receivers should check it and reject
timestamps older than a few minutes. For a day after the tenant rotates its secret
the header carries one ``v1`` per secret, the new one first
(``t=<t>,v1=<new>,v1=<previous>``), as Stripe does during a roll: a receiver that
accepts any matching ``v1`` keeps working while it moves to the new secret.
"""

import hashlib
import hmac
import ipaddress
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import urlsplit

from django.conf import settings

from marketplace.models import Job, WebhookDelivery
from observability.metrics import webhook_delivery_count


class WebhookUrlRefused(ValueError):
    pass


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """``t=<t>,v1=<hex>[,v1=<hex>…]``: one ``v1`` per secret, in the order given."""
    if not secrets:
        raise ValueError("A webhook is signed with at least one secret.")
    return ",".join([f"t={timestamp}", *(f"v1={_mac(s, timestamp, body)}" for s in secrets)])


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The header for one secret: ``t=<t>,v1=<hex>``."""
    return signature_header([secret], timestamp, body)


def url_check(url: str) -> None:
    """Refuse URLs a webhook must not reach: non-HTTP schemes, and private networks
    unless ``WEBHOOK_ALLOW_PRIVATE_NETWORKS`` (development and tests)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookUrlRefused("webhook_url must be an http(s) URL.")
    if settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443)
    except OSError as exc:
        raise WebhookUrlRefused(f"webhook_url host does not resolve: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise WebhookUrlRefused("webhook_url must not point at a private network.")


def schedule(job_id: int, attempt: int = 1, countdown: float = 0) -> None:
    from .tasks import webhook_deliver  # tasks import this module

    webhook_deliver.apply_async(args=(job_id, attempt), countdown=countdown, queue="default")


def deliver(job_id: int, attempt: int) -> bool:
    """POST the job to its webhook once; log the attempt; schedule the next on failure."""
    from marketplace.api.jobs import job_representation  # API shape, no cycle

    job = Job.objects.select_related("tenant", "model").get(pk=job_id)
    body = json.dumps(job_representation(job), separators=(",", ":")).encode()
    timestamp = int(time.time())
    # Which secrets sign is decided at the signed time ``t``, not a moment later.
    secrets = job.tenant.webhook_secrets(now=datetime.fromtimestamp(timestamp, tz=UTC))
    request = urllib.request.Request(  # noqa: S310 - scheme checked by url_check
        job.webhook_url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "Cango-Webhooks/1",
            "Cango-Signature": signature_header(secrets, timestamp, body),
            "Cango-Event": f"job.{job.status}",
        },
    )
    started = time.monotonic()
    status_code: int | None = None
    error = ""
    try:
        url_check(job.webhook_url)
        with urllib.request.urlopen(request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310
            status_code = response.status
    except urllib.error.HTTPError as exc:
        status_code = exc.code
        error = f"HTTP {exc.code}"
    except (OSError, WebhookUrlRefused) as exc:
        error = str(exc)[:500]
    ok = status_code is not None and 200 <= status_code < 300
    WebhookDelivery.objects.create(
        tenant=job.tenant,
        job=job,
        attempt=attempt,
        url=job.webhook_url,
        status_code=status_code,
        error=error,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    webhook_delivery_count(ok=ok)
    if not ok and attempt < settings.WEBHOOK_MAX_ATTEMPTS:
        schedule(job_id, attempt + 1, countdown=min(3600, 2**attempt * 5))
    return ok

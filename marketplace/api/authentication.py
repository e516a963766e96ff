"""API-key authentication for DRF.

Hot path: the key and its tenant come from ``keycache`` (one Redis read when cached,
else one indexed query), then a SHA-256 and a constant-time compare. The key's
last-used time is written at most once per ``API_KEY_LAST_USED_RESOLUTION_SECONDS``
per process, not on every request.
"""

import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from marketplace import keycache, keys, ratelimits
from marketplace.api import throttling
from marketplace.logging import tenant_id_var
from marketplace.models import ApiKey, Tenant

_last_used_written: dict[int, float] = {}


@dataclass(frozen=True, slots=True)
class ApiKeyPrincipal:
    """``request.user`` for key-authenticated requests: the key acts for its tenant."""

    key: ApiKey

    is_authenticated = True
    is_anonymous = False

    @property
    def tenant(self) -> Tenant:
        return self.key.tenant

    def __str__(self) -> str:
        return f"api-key:{self.key.public_id}"


def request_key(request: Request) -> ApiKey:
    """The API key a request was authenticated with (views behind IsAuthenticated only)."""
    key = request.auth
    if not isinstance(key, ApiKey):
        raise exceptions.NotAuthenticated()
    return key


class KeyInvalid(exceptions.AuthenticationFailed):
    default_code = "invalid_api_key"


class TenantSuspended(exceptions.PermissionDenied):
    default_code = "tenant_suspended"
    default_detail = "This organisation is suspended. Contact support to reactivate it."


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[ApiKeyPrincipal, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise KeyInvalid("Malformed Authorization header: expected 'Bearer <API key>'.")
        parsed = keys.token_parse(raw.strip())
        if parsed is None:
            raise KeyInvalid("Malformed API key.")
        key = _cached_and_admitted(request, parsed) or _key_loaded(parsed)
        tenant_id_var.set(str(key.tenant_id))
        _last_used_touch(key)
        return ApiKeyPrincipal(key), key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


_UNKNOWN_KEY = "Unknown API key."


def _refusal(parsed: keys.ParsedToken, key: ApiKey) -> exceptions.APIException | None:
    """Why ``key`` cannot authenticate a request bearing ``parsed``, or ``None``."""
    if not keys.token_matches(parsed.token, key.secret_hash):
        return KeyInvalid(_UNKNOWN_KEY)
    if key.revoked_at is not None:
        return KeyInvalid("This API key has been revoked.")
    if key.expires_at is not None and key.expires_at <= timezone.now():
        return KeyInvalid("This API key has expired.")
    if key.tenant.is_suspended:
        return TenantSuspended()
    return None


def _key_loaded(parsed: keys.ParsedToken) -> ApiKey:
    """The key through ``keycache.key_get`` (epoch read, then cache or database), vetted."""
    key = keycache.key_get(parsed.public_id)
    if key is None:
        raise KeyInvalid(_UNKNOWN_KEY)
    refusal = _refusal(parsed, key)
    if refusal is not None:
        if isinstance(refusal, TenantSuspended):
            tenant_id_var.set(str(key.tenant_id))  # the refusal's log line names it
        raise refusal
    return key


def _cached_and_admitted(request: Request, parsed: keys.ParsedToken) -> ApiKey | None:
    """The cached key, vetted and admitted under its rate limits, in one Redis round trip.

    A cached key must be confirmed by the key-cache epoch, and the request must be
    admitted by the rate limiter: both live in Redis, so the admission script reads
    the epoch too (``ratelimits.admit(read=...)``). Only a key that is usable as
    cached (right secret, not revoked, expired or suspended) is admitted, so a wrong
    secret never counts against the key's limits. ``None`` when the shortcut does not
    apply — no usable entry, no limits, or the epoch moved (then the admission is
    given back and the request takes the ordinary path: ``key_get``, then the
    throttle).
    """
    entry = keycache.key_peek(parsed.public_id)
    if entry is None or _refusal(parsed, entry.key) is not None:
        return None
    key = entry.key
    limits = ratelimits.limits_for(key.tenant)
    if not ratelimits.limited(limits):
        return None
    http_request = request._request
    try:
        admission = ratelimits.admit(
            key_id=key.pk, tenant_id=key.tenant_id, limits=limits, read=keycache.EPOCH_KEY
        )
    except ratelimits.LimitExceeded as refusal:
        if not keycache.epoch_current(entry, refusal.read_value):
            return None
        throttling.refusal_record(http_request, refusal)
        return key
    if not keycache.epoch_current(entry, admission.read_value):
        ratelimits.release(admission)
        return None
    throttling.admission_record(http_request, admission)
    return key


def _last_used_touch(key: ApiKey) -> None:
    monotonic = time.monotonic()
    last = _last_used_written.get(key.pk)
    if last is not None and monotonic - last < settings.API_KEY_LAST_USED_RESOLUTION_SECONDS:
        return
    _last_used_written[key.pk] = monotonic
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())

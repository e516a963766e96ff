"""Test settings: PostgreSQL and Redis from the environment, captured e-mail, fast hashing."""

import uuid

from .base import *  # noqa: F403
from .base import database_from_env, databases, env

# Longer than 20 characters on purpose: Hypothesis draws string constants of up to 20
# characters from the project's own modules, and the API fuzz test then sent this one
# in a query string, which the request log recorded and tests/logscan.py flagged.
SECRET_KEY = "test-only-secret-key-for-no-deployment-at-all"  # noqa: S105
ALLOWED_HOSTS = ["*"]
DATABASES = databases(database_from_env("postgres://postgres@127.0.0.1:5432/cango"))
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.locmem.EmailBackend")
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_AUTOREFRESH = True

# Each test run gets its own cache namespace in the shared Redis, so one run's
# counters never leak into the next.
CACHES["default"]["KEY_PREFIX"] = f"test-{uuid.uuid4().hex[:8]}"  # noqa: F405
# Likewise for the API rate-limit counters (processes a test starts pass theirs on).
RATE_LIMIT_KEY_PREFIX = env.str("RATE_LIMIT_KEY_PREFIX", default=f"test-{uuid.uuid4().hex[:8]}:rl")
# The default tiers would throttle tests of other features (200 concurrent calls from
# one key); the limiter still runs on every API call. Tests of the limits set their own.
RATE_LIMIT_TIERS = env.json(
    "RATE_LIMIT_TIERS",
    default={
        tier: {
            "key_per_minute": 1_000_000,
            "key_in_flight": 10_000,
            "tenant_per_minute": 1_000_000,
            "tenant_in_flight": 10_000,
        }
        for tier in ("free", "standard", "enterprise")
    },
)
# django-allauth's per-address limits (one confirmation mail per 3 minutes) would
# make repeated runs fail; tests of throttling switch them back on.
ACCOUNT_RATE_LIMITS = False

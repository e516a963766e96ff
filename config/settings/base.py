"""Settings shared by every environment, read from the process environment.

Each environment module (``dev``, ``test``, ``production``) imports this one and
changes only what differs. Every variable is documented in ``.env.example``.
"""

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django_stubs_ext
import environ

# Lets type parameters such as ``admin.ModelAdmin[Tenant]`` work at run time too.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY: str = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS: list[str] = env.list("ALLOWED_HOSTS", default=[])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SITE_URL: str = env.str("SITE_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "csp",
    "marketplace",
    "billing",
    "workers",
    "observability",
]

MIDDLEWARE = [
    # Observability: first, so a request's time includes all the other middleware.
    "observability.middleware.RequestMetricsMiddleware",
    "marketplace.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "marketplace.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "marketplace.middleware.PortalTenantMiddleware",
    # API rate limits: RateLimit-* headers, in-flight slots released after the response.
    "marketplace.api.throttling.RateLimitMiddleware",
    # After allauth's: staff must have enrolled and used a second factor.
    "marketplace.security.StaffMfaMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "marketplace.context_processors.portal",
            ],
        },
    },
]


def database_from_env(default: str) -> dict[str, Any]:
    """Parse ``DATABASE_URL`` and apply the per-engine options the project relies on.

    PostgreSQL keeps connections open between requests: opening one costs ~6 ms here,
    more than the whole hot path. SQLite (the demo default) runs in WAL mode with a
    busy timeout and IMMEDIATE transactions so the web process and the Celery
    workers do not fail with "database is locked".
    """
    db: dict[str, Any] = env.db_url_config(env.str("DATABASE_URL", default=default))
    if db["ENGINE"] == "django.db.backends.sqlite3":
        db["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    else:
        db["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=300)
        # PostgreSQL's JIT compiler spends ~170 ms compiling the operator reports'
        # aggregates (measured by bench/portal.py) and never pays off on short queries.
        options = dict(db.get("OPTIONS", {}))
        options["options"] = (options.get("options", "") + " -c jit=off").strip()
        # Failure behaviour: an unreachable server fails the request in seconds (a 503),
        # not after the OS's TCP timeout. libpq's minimum is 2 s.
        options.setdefault("connect_timeout", env.int("DATABASE_CONNECT_TIMEOUT", default=2))
        # Django turns psycopg's prepared statements off (``prepare_threshold=None``),
        # which also silently ignores ``prepare=True``. The ORM's client-side binding
        # cursors never prepare whatever this says; only the ledger's hot statements
        # (``billing.ledger._execute``) use it. Prepared, the settle skips ~0.3 ms of
        # parsing and planning per sync call (bench/billing.py). Set it to 0 behind a
        # pooler in transaction mode that cannot carry prepared statements.
        threshold = env.int("DATABASE_PREPARE_THRESHOLD", default=1)
        options.setdefault("prepare_threshold", threshold if threshold > 0 else None)
        db["OPTIONS"] = options
    return db


def databases(default: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The database, and ``holds``: the same database over a second connection whose
    commits do not wait for the WAL flush.

    Sync calls write their credit *hold* through ``holds``. A hold only protects a
    call in flight: if PostgreSQL crashes and loses a just-committed hold, the call's
    own connection is broken too, so it can never be charged against the lost hold.
    Charges (settle), purchases and everything else use ``default``, fully durable.
    """
    holds = {**default, "TEST": {"MIRROR": "default"}}
    if default["ENGINE"] != "django.db.backends.sqlite3":
        options = dict(default.get("OPTIONS", {}))
        options["options"] = (options.get("options", "") + " -c synchronous_commit=off").strip()
        holds["OPTIONS"] = options
    return {"default": default, "holds": holds}


DATABASES = databases(database_from_env("sqlite:///" + str(VAR_DIR / "db.sqlite3")))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL: str = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cango",
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}

AUTH_USER_MODEL = "marketplace.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "portal:dashboard"

# django-allauth: e-mail is the login; an address must be verified before the
# portal opens, and sign-up asks for the organisation that becomes the tenant.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_SIGNUP_FORM_CLASS = "marketplace.forms.SignupForm"
ACCOUNT_ADAPTER = "marketplace.adapters.AccountAdapter"
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = True
ACCOUNT_SESSION_REMEMBER = None
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Cango] "

EMAIL_BACKEND: str = env.str(
    "EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"
)
EMAIL_HOST: str = env.str("EMAIL_HOST", default="localhost")
EMAIL_PORT: int = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER: str = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD: str = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS: bool = env.bool("EMAIL_USE_TLS", default=False)
DEFAULT_FROM_EMAIL: str = env.str("DEFAULT_FROM_EMAIL", default="Cango <noreply@cango.local>")

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["marketplace.api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "marketplace.api.pagination.CursorPagination",
    # Per key and per tenant, in Redis (marketplace/ratelimits.py).
    "DEFAULT_THROTTLE_CLASSES": ["marketplace.api.throttling.ApiKeyRateLimit"],
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "marketplace.api.errors.exception_handler",
    # Schema fuzzing (h-fuzz): documents the errors every key-authenticated call shares.
    "DEFAULT_SCHEMA_CLASS": "marketplace.api.schema.ApiKeySchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Cango Inference Marketplace API",
    "DESCRIPTION": (
        "Call models on the operator's GPU sites with an API key: "
        '`Authorization: Bearer <key>`. Errors are `{"error": {code, message, request_id}}`.'
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # API rate limits: the schema is never limited; limited operations document 429.
    "SERVE_AUTHENTICATION": [],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "marketplace.api.throttling.schema_rate_limits_document",
    ],
}

# API keys: how long a key's last-used time may lag, per web process. Writing it on
# every request would put a row write on the hot path.
API_KEY_LAST_USED_RESOLUTION_SECONDS: int = env.int(
    "API_KEY_LAST_USED_RESOLUTION_SECONDS", default=60
)
# How long a web process may reuse a key it has looked up; revocations and
# suspensions still take effect at once (see marketplace/keycache.py).
API_KEY_CACHE_SECONDS: int = env.int("API_KEY_CACHE_SECONDS", default=30)
# How long a web process may reuse a catalog entry (price, visibility, schema).
CATALOG_CACHE_SECONDS: int = env.int("CATALOG_CACHE_SECONDS", default=5)
INVITATION_TTL_DAYS: int = env.int("INVITATION_TTL_DAYS", default=7)

# --- API rate and in-flight limits (marketplace/ratelimits.py) -----------------------
# Per tier: requests per minute (a sliding 60-second window) and requests in flight,
# for each API key and for all of a tenant's keys together. ``None`` means no limit.
# A tenant's ``limit_*`` fields, when set, override its tier's value.
RATE_LIMIT_TIERS: dict[str, dict[str, int | None]] = env.json(
    "RATE_LIMIT_TIERS",
    default={
        "free": {
            "key_per_minute": 60,
            "key_in_flight": 4,
            "tenant_per_minute": 120,
            "tenant_in_flight": 8,
        },
        "standard": {
            "key_per_minute": 600,
            "key_in_flight": 16,
            "tenant_per_minute": 1200,
            "tenant_in_flight": 32,
        },
        "enterprise": {
            "key_per_minute": 6000,
            "key_in_flight": 64,
            "tenant_per_minute": 30000,
            "tenant_in_flight": 256,
        },
    },
)
# An in-flight slot not released (its web process crashed) frees itself after this
# long; it must exceed the longest request (INFER_TIMEOUT_SECONDS and some).
RATE_LIMIT_IN_FLIGHT_TTL_SECONDS: int = env.int("RATE_LIMIT_IN_FLIGHT_TTL_SECONDS", default=120)
RATE_LIMIT_KEY_PREFIX: str = env.str("RATE_LIMIT_KEY_PREFIX", default="cango:rl")
# --- end of API rate limits ---------------------------------------------------------

# Celery: JSON only, UTC, every task bounded in time, acknowledged after it ran so a
# worker lost mid-task gives the message back (tasks are idempotent by design).
CELERY_BROKER_URL: str = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_SOFT_TIME_LIMIT: int = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=60)
CELERY_TASK_TIME_LIMIT: int = env.int("CELERY_TASK_TIME_LIMIT", default=90)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BEAT_SCHEDULE = {
    "health-check": {
        "task": "workers.health_check",
        "schedule": env.float("HEALTH_CHECK_INTERVAL_SECONDS", default=2.0),
        "options": {"queue": "default", "expires": 5},
    },
    "reservations-release": {
        "task": "billing.reservations_release",
        "schedule": 30.0,
        "options": {"queue": "default", "expires": 30},
    },
    "reservations-purge": {
        "task": "billing.reservations_purge",
        "schedule": 3600.0,
        "options": {"queue": "default", "expires": 600},
    },
    "usage-send": {
        "task": "billing.usage_send",
        "schedule": env.float("METER_EVENTS_INTERVAL_SECONDS", default=5.0),
        "options": {"queue": "default", "expires": 20},
    },
    "grants-mirror": {
        "task": "billing.grants_mirror",
        "schedule": env.float("GRANTS_MIRROR_INTERVAL_SECONDS", default=15.0),
        "options": {"queue": "default", "expires": 60},
    },
    "auto-topups": {
        "task": "billing.auto_topups",
        "schedule": 30.0,
        "options": {"queue": "default", "expires": 60},
    },
    "jobs-reap": {
        "task": "workers.jobs_reap",
        "schedule": 5.0,
        "options": {"queue": "default", "expires": 10},
    },
    # Data retention (issue 6): old jobs' payloads, see marketplace/retention.py.
    "jobs-purge-payloads": {
        "task": "workers.jobs_purge_payloads",
        "schedule": 600.0,
        "options": {"queue": "default", "expires": 600},
    },
}
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # An unacknowledged message returns to the queue after this long; it must exceed
    # the hard time limit of every task, or a long task would run twice.
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=300),
}

# Stripe and Triton are wired in by later parts; their variables are read here so
# that .env.example and production settings have one place to point at.
STRIPE_SECRET_KEY: str = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET: str = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE: str = env.str("STRIPE_API_BASE", default="")
# Credit packs sold in the portal, and the limits of a custom amount (US cents).
CREDIT_PACKS_CENTS: list[int] = [
    int(c) for c in env.list("CREDIT_PACKS_CENTS", default=[1000, 5000, 20000])
]
CREDIT_CUSTOM_MIN_CENTS: int = env.int("CREDIT_CUSTOM_MIN_CENTS", default=500)
CREDIT_CUSTOM_MAX_CENTS: int = env.int("CREDIT_CUSTOM_MAX_CENTS", default=500_000)
# Meter events sent per run of the beat task (it runs every few seconds).
METER_EVENTS_BATCH: int = env.int("METER_EVENTS_BATCH", default=2000)
# Sync inference: the whole request's deadline, the body size and element limits.
INFER_TIMEOUT_SECONDS: float = env.float("INFER_TIMEOUT_SECONDS", default=30.0)
INFER_MAX_BODY_BYTES: int = env.int("INFER_MAX_BODY_BYTES", default=8 * 1024 * 1024)
INFER_MAX_ELEMENTS: int = env.int("INFER_MAX_ELEMENTS", default=1_000_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = INFER_MAX_BODY_BYTES
# A sync call's settle also holds credit for the same caller's next call (saving that
# call its own hold round trip), while the tenant's available balance covers that many
# more calls of the same worst case besides; below it every call holds for itself.
# 0 turns holding ahead off.
SYNC_HOLD_AHEAD_MIN_CALLS: int = env.int("SYNC_HOLD_AHEAD_MIN_CALLS", default=1000)
# How long a hold taken ahead may wait for its call in the web process; unused, it
# expires with the rest and the beat sweep frees it.
SYNC_HOLD_AHEAD_SECONDS: float = env.float("SYNC_HOLD_AHEAD_SECONDS", default=10.0)
# Closed holds (settled or released) are deleted after this many days; what they
# charged stays in the ledger. 0 keeps them forever.
RESERVATION_RETENTION_DAYS: int = max(0, env.int("RESERVATION_RETENTION_DAYS", default=30))
# Async jobs: largest stored output, and how long a worker holds a running job
# before another may take it over (must exceed INFER_TIMEOUT_SECONDS).
JOB_MAX_OUTPUT_BYTES: int = env.int("JOB_MAX_OUTPUT_BYTES", default=1024 * 1024)
JOB_LEASE_SECONDS: int = env.int("JOB_LEASE_SECONDS", default=60)
JOB_MAX_ATTEMPTS: int = env.int("JOB_MAX_ATTEMPTS", default=5)
# A queued job whose message has not been picked up for this long is enqueued again
# (its site's workers may be gone, or Redis lost the message); after JOB_EXPIRE_SECONDS
# in the queue it expires.
JOB_REQUEUE_SECONDS: int = env.int("JOB_REQUEUE_SECONDS", default=30)
JOB_EXPIRE_SECONDS: int = env.int("JOB_EXPIRE_SECONDS", default=3600)
# Each site worker beats this often; a site none of whose workers beat in three
# intervals gets no new async jobs while another candidate site has live workers.
WORKER_HEARTBEAT_SECONDS: float = env.float("WORKER_HEARTBEAT_SECONDS", default=5.0)
# ---- Data retention (issue 6) ----
# A final job's input and output are deleted this many days after it finished (0
# keeps them forever); its status, cost, units, times, model and site stay, as do the
# ledger and usage records. The beat task purges at most BATCH × MAX_BATCHES per run.
JOB_PAYLOAD_RETENTION_DAYS: int = max(0, env.int("JOB_PAYLOAD_RETENTION_DAYS", default=30))
JOB_PAYLOAD_PURGE_BATCH: int = env.int("JOB_PAYLOAD_PURGE_BATCH", default=1000)
JOB_PAYLOAD_PURGE_MAX_BATCHES: int = env.int("JOB_PAYLOAD_PURGE_MAX_BATCHES", default=20)
# ---- end data retention ----
WEBHOOK_TIMEOUT_SECONDS: float = env.float("WEBHOOK_TIMEOUT_SECONDS", default=10.0)
WEBHOOK_MAX_ATTEMPTS: int = env.int("WEBHOOK_MAX_ATTEMPTS", default=6)
# Job webhooks may target private and loopback addresses only where this is true
# (development and tests); in production it guards against SSRF.
WEBHOOK_ALLOW_PRIVATE_NETWORKS: bool = env.bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", default=True)


# --- Observability (metrics, alerts) -------------------------------------------------
# Bearer token the Prometheus server sends to /metrics; empty disables bearer access
# (active staff sessions may still look).
METRICS_TOKEN: str = env.str("METRICS_TOKEN", default="")
# Who receives alert mail (``ops_check``): comma-separated e-mail addresses.
ADMINS: list[tuple[str, str]] = [(addr, addr) for addr in env.list("ADMINS", default=[])]
# Meter-event backlog: alert when the oldest unsent usage record is older than this,
# or when more than ALERT_METER_BACKLOG_RECORDS are waiting.
ALERT_METER_BACKLOG_SECONDS: int = env.int("ALERT_METER_BACKLOG_SECONDS", default=900)
ALERT_METER_BACKLOG_RECORDS: int = env.int("ALERT_METER_BACKLOG_RECORDS", default=50_000)
# Ledger-vs-Stripe reconciliation of the current month: at most this often (it makes
# one Stripe call per tenant and model); in between, the last result is reused.
ALERT_RECONCILE_INTERVAL_SECONDS: int = env.int("ALERT_RECONCILE_INTERVAL_SECONDS", default=3600)
ALERT_CHECK_INTERVAL_SECONDS: float = env.float("ALERT_CHECK_INTERVAL_SECONDS", default=300.0)
CELERY_BEAT_SCHEDULE["ops-check"] = {
    "task": "observability.ops_check",
    "schedule": ALERT_CHECK_INTERVAL_SECONDS,
    "options": {"queue": "default", "expires": ALERT_CHECK_INTERVAL_SECONDS},
}
# --- end observability ------------------------------------------------------------

LOG_LEVEL: str = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "marketplace.logging.RequestIdFilter"},
        # Observability: secrets out of every line, whatever logged it.
        "redact": {"()": "marketplace.logging.RedactFilter"},
    },
    "formatters": {"json": {"()": "marketplace.logging.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own console handler would print every django.* line a second time.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.db.backends": {"level": "WARNING"},
    },
}
# Celery's Django fixup closes the database connection around every task unless
# this is set; reconnecting costs more than a job. config/celery.py instead closes
# connections that are broken or past DATABASE_CONN_MAX_AGE, as Django does per request.
CELERY_DB_REUSE_MAX = 1_000_000

# Failure behaviour: every Redis client gives up within about a second, so a request
# meeting a Redis outage answers 503 (marketplace/api/errors.py) instead of hanging.
# Publishing a job is retried briefly only: a job whose message is lost stays queued
# in PostgreSQL and the reaper (workers.jobs_reap) enqueues it again.
CELERY_BROKER_TRANSPORT_OPTIONS["socket_connect_timeout"] = 1
CELERY_BROKER_TRANSPORT_OPTIONS["socket_timeout"] = 2  # > kombu's 1 s BRPOP wait
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.1,
    "interval_max": 0.1,
}

# ---- Security: login throttling, two-factor, Content-Security-Policy --------------
# (apps and middleware are in the lists at the top). README "Security".

# django-allauth's limits live in the Django cache (Redis), so they hold across every
# web process. A sliding window per action; "key" is the e-mail address tried.
ACCOUNT_RATE_LIMITS: dict[str, str] | bool = {
    # Failed logins: 10 a minute from one address, 5 per account per 15 minutes; a
    # correct password does not reset them (allauth rolls back only its own attempt).
    "login_failed": "10/m/ip,5/15m/key",
    # Any login attempt, failed or not, from one address.
    "login": "30/m/ip",
    "signup": "5/10m/ip,20/h/ip",
    "reset_password": "5/m/ip,3/15m/key",
    "reset_password_from_key": "20/m/ip",
    "change_password": "5/m/user",
    "manage_email": "10/m/user",
    "reauthenticate": "10/m/user",
    # One confirmation mail per address per 3 minutes.
    "confirm_email": "1/3m/key",
}
# Behind a proxy, allauth must count the client's address, not the proxy's; set
# ALLAUTH_TRUSTED_PROXY_COUNT (production) to the number of proxies in front.
ALLAUTH_TRUSTED_PROXY_COUNT: int = env.int("ALLAUTH_TRUSTED_PROXY_COUNT", default=0)

# Two-factor (django-allauth MFA): authenticator apps (TOTP) and recovery codes.
# Required for staff by marketplace.security.StaffMfaMiddleware.
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Cango"


def _stripe_origin() -> list[str]:
    """The origin of STRIPE_API_BASE, whose Checkout pages the portal redirects to."""
    parts = urlsplit(STRIPE_API_BASE)
    return [f"{parts.scheme}://{parts.netloc}"] if parts.scheme and parts.netloc else []


# Content-Security-Policy on every response (django-csp). No inline script or style
# anywhere: the portal, allauth's pages, the admin and Swagger UI (split view) load
# them from static files. Per-path additions are in CSP_PATH_UPDATES, each with why.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        # Forms post here only, and buying credit redirects to Stripe Checkout (or to
        # the Stripe-compatible server named by STRIPE_API_BASE in tests and the demo).
        "form-action": ["'self'", "https://checkout.stripe.com", *_stripe_origin()],
        # Browsers report what the policy blocked (observability/views.py).
        "report-uri": ["/csp-report/"],
    }
}
CSP_PATH_UPDATES: dict[str, dict[str, list[str]]] = {
    # swagger-ui.css draws its icons as data: SVG backgrounds.
    "/api/docs/": {"img-src": ["data:"]},
    # allauth shows the authenticator app's QR code as a data: image.
    "/accounts/2fa/totp/activate/": {"img-src": ["data:"]},
}
X_FRAME_OPTIONS = "DENY"

"""Production: every secret comes from the environment and has no default.

A missing variable stops the process at start-up with ImproperlyConfigured rather
than running with a guessable key or an empty webhook secret.
"""

from .base import *  # noqa: F403
from .base import database_from_env, databases, env

DEBUG = False
SECRET_KEY = env.str("SECRET_KEY")
# Keys that signed sessions and tokens before a rotation, still accepted (docs/operations.md).
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
DATABASES = databases(database_from_env(env.str("DATABASE_URL")))
REDIS_URL = env.str("REDIS_URL")
CACHES["default"]["LOCATION"] = REDIS_URL  # noqa: F405
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
# A site's job worker (CANGO_WORKER_SITE) never calls Stripe or receives its webhooks:
# the usage its jobs write is sent by the central default worker. Its machine need not
# hold the Stripe keys, so they are required everywhere else only.
if env.str("CANGO_WORKER_SITE", default=""):
    STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
    STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
else:
    STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY")
    STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")

WEBHOOK_ALLOW_PRIVATE_NETWORKS = env.bool("WEBHOOK_ALLOW_PRIVATE_NETWORKS", default=False)

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https"
# The web tier runs behind one TLS-terminating proxy (see SECURE_PROXY_SSL_HEADER):
# login and sign-up limits count the client address it appends to X-Forwarded-For.
ALLAUTH_TRUSTED_PROXY_COUNT = env.int("ALLAUTH_TRUSTED_PROXY_COUNT", default=1)

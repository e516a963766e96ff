"""Production settings refuse to start without their secrets."""

import os
import subprocess
import sys

import pytest

REQUIRED = {
    "SECRET_KEY": "x" * 50,
    "ALLOWED_HOSTS": "api.example.com",
    "DATABASE_URL": "postgres://u@db.example.com/cango",
    "REDIS_URL": "redis://redis.example.com:6379/0",
    "STRIPE_SECRET_KEY": "sk_test_x",
    "STRIPE_WEBHOOK_SECRET": "whsec_x",
}


def _load(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in REQUIRED and k not in ("DJANGO_SECRET_KEY", "CANGO_WORKER_SITE")
    }
    clean.update(env, DJANGO_SETTINGS_MODULE="config.settings.production")
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('ok')"],
        env=clean,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_production_settings_load_with_every_secret():
    result = _load(REQUIRED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_production_settings_refuse_a_missing_secret(missing):
    env = {k: v for k, v in REQUIRED.items() if k != missing}
    result = _load(env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert missing in result.stderr


def test_a_site_worker_machine_needs_no_stripe_keys():
    """Site workers run jobs; the central default worker talks to Stripe."""
    env = {k: v for k, v in REQUIRED.items() if not k.startswith("STRIPE_")}
    result = _load({**env, "CANGO_WORKER_SITE": "tx1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    # Everything else it still needs.
    result = _load(
        {**{k: v for k, v in env.items() if k != "DATABASE_URL"}, "CANGO_WORKER_SITE": "tx1"}
    )
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_secret_key_fallbacks_keep_old_signatures_valid_during_a_rotation():
    """A value signed with the old SECRET_KEY still loads once it is only a fallback."""
    script = (
        "import django; django.setup(); from django.core import signing; "
        "print(signing.loads(signing.dumps('ok', key='old-' + 'x' * 46)))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED}
    clean.update(
        REQUIRED,
        DJANGO_SETTINGS_MODULE="config.settings.production",
        SECRET_KEY="new-" + "y" * 46,
        SECRET_KEY_FALLBACKS="old-" + "x" * 46,
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=clean,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

"""Web security: CSRF on every form, a strict CSP on every page, no framing, CORS
closed, and ``check --deploy`` clean with the production settings."""

import itertools
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.urls.exceptions import NoReverseMatch

from tests.factories import MembershipFactory
from tests.mfa import staff_force_login

pytestmark = pytest.mark.django_db

ROOT = settings.BASE_DIR
# Routes that take no browser session, so CSRF does not apply: the API authenticates
# by key in a header (its schema and docs are read-only), the Stripe webhook by its
# signature; browsers send CSP reports without a token, and a report changes nothing.
CSRF_EXEMPT_PREFIXES = ("/v1/", "/v2", "/api/", "/billing/stripe/webhook", "/csp-report/")
# A value for each URL argument: the first that reverses is used.
ARGUMENT_GUESSES = ["1", "x", "marketplace", "x-1", "MQ", "set-password"]

STRICT_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "frame-ancestors": "'none'",
}
INLINE_SCRIPT = re.compile(
    r"<script(?![^>]*\bsrc=)(?![^>]*\btype=\"application/json\")[^>]*>", re.IGNORECASE
)
INLINE_STYLE = re.compile(r"<style\b|\sstyle=", re.IGNORECASE)
EVENT_HANDLER = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)


def _routes(
    patterns: list[URLPattern | URLResolver] | None = None, namespace: str = ""
) -> Iterator[tuple[str, list[str]]]:
    """Every named route as (``namespace:name``, its argument names)."""
    if patterns is None:
        patterns = get_resolver().url_patterns
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _routes(entry.url_patterns, inner)
        elif entry.name:
            yield f"{namespace}{entry.name}", list(entry.pattern.regex.groupindex)


def route_paths() -> list[str]:
    """One concrete path for every named route of the site (API and portal alike)."""
    paths: set[str] = set()
    for name, arguments in _routes():
        for values in itertools.product(ARGUMENT_GUESSES, repeat=len(arguments)):
            try:
                paths.add(reverse(name, kwargs=dict(zip(arguments, values, strict=True))))
                break
            except NoReverseMatch:
                continue
        else:
            raise AssertionError(f"no test path for the route {name} {arguments}")
    return sorted(paths)


@pytest.fixture
def staff_owner() -> Client:
    """A staff member with two-factor who also owns a tenant: every page opens."""
    membership = MembershipFactory.create()
    membership.user.is_staff = True
    membership.user.is_superuser = True
    membership.user.save(update_fields=["is_staff", "is_superuser"])
    return staff_force_login(Client(enforce_csrf_checks=True), membership.user)


def test_the_route_walk_covers_the_portal_the_console_the_admin_and_allauth():
    paths = route_paths()
    for expected in (
        "/keys/",
        "/team/members/1/role/",
        "/ops/tenants/1/suspend/",
        "/admin/marketplace/tenant/1/change/",
        "/accounts/login/",
        "/accounts/2fa/totp/activate/",
    ):
        assert expected in paths
    assert len(paths) > 80


def test_every_post_without_a_csrf_token_is_refused(staff_owner):
    """Every route a browser session can post to answers 403 without the token."""
    checked = []
    for path in route_paths():
        if path.startswith(CSRF_EXEMPT_PREFIXES):
            continue
        response = staff_owner.post(path, {"name": "x", "reason": "x"})
        assert response.status_code == 403, (path, response.status_code)
        assert "This form has expired" in response.content.decode(), path
        checked.append(path)
    assert len(checked) > 80


def test_the_same_posts_with_a_token_get_past_the_csrf_check(staff_owner):
    """The 403s above come from the missing token, not from the routes themselves."""
    staff_owner.get("/keys/")
    token = staff_owner.cookies[settings.CSRF_COOKIE_NAME].value
    for path in ("/keys/", "/team/", "/ops/tenants/", "/accounts/logout/"):
        response = staff_owner.post(path, {"csrfmiddlewaretoken": token, "name": "k"})
        assert response.status_code != 403, path


def _directives(header: str) -> dict[str, str]:
    return {
        part.strip().split(" ", 1)[0]: part.strip().split(" ", 1)[1]
        for part in header.split(";")
        if " " in part.strip()
    }


API_CSP = "default-src 'none'; frame-ancestors 'none'"


def test_api_answers_carry_a_policy_that_allows_nothing(world):
    for response in (world.api.get("/v1/me"), world.api.get("/v1/no-such-route/")):
        assert response["Content-Security-Policy"] == API_CSP
        assert response["X-Frame-Options"] == "DENY"


def test_every_html_page_has_the_strict_policy_and_no_inline_script_or_style(staff_owner):
    """Every route, as a staff owner: the CSP header allows no inline code, the page
    cannot be framed, and the HTML has no inline script, style or event handler."""
    pages = 0
    for path in route_paths():
        if path.startswith("/accounts/logout/"):
            continue  # GET shows a confirmation page, but keep the session for the rest
        response = staff_owner.get(path)
        if "text/html" not in response.get("Content-Type", ""):
            continue
        if path.startswith(("/v1/", "/v2/")):  # the API's fixed allow-nothing policy
            assert response["Content-Security-Policy"] == API_CSP, path
        else:
            directives = _directives(response["Content-Security-Policy"])
            for name, value in STRICT_CSP.items():
                assert directives[name] == value, (path, name, directives.get(name))
        assert response["X-Frame-Options"] == "DENY", path
        html = response.content.decode()
        assert not INLINE_SCRIPT.search(html), (path, INLINE_SCRIPT.search(html))
        assert not INLINE_STYLE.search(html), (path, INLINE_STYLE.search(html))
        assert not EVENT_HANDLER.search(html), (path, EVENT_HANDLER.search(html))
        pages += response.status_code == 200
    assert pages > 40


@pytest.mark.parametrize("who", ["anonymous", "owner"])
def test_public_and_error_pages_carry_the_policy_too(who):
    client = Client()
    if who == "owner":
        client.force_login(MembershipFactory.create().user)
    for path in ("/accounts/login/", "/accounts/signup/", "/no-such-page/", "/"):
        response = client.get(path)
        assert "'unsafe-inline'" not in response["Content-Security-Policy"], path
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"], path
        assert response["X-Frame-Options"] == "DENY", path


def test_swagger_ui_is_served_without_inline_script_and_its_icons_allowed():
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert not INLINE_SCRIPT.search(html)
    assert not INLINE_STYLE.search(html)
    directives = _directives(response["Content-Security-Policy"])
    assert directives["script-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    script = Client().get("/api/docs/?script=")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.content.decode()


def test_only_the_listed_paths_get_data_images():
    response = Client().get("/accounts/login/")
    assert _directives(response["Content-Security-Policy"])["img-src"] == "'self'"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/jobs", "/v2/models/echo/infer"])
def test_api_answers_a_foreign_preflight_without_cors_headers(world, path):
    response = world.api.options(
        path,
        HTTP_ORIGIN="https://evil.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization, content-type",
    )
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    response = world.api.get(path, HTTP_ORIGIN="https://evil.example")
    assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_session_and_csrf_cookies_are_httponly_where_they_can_be(world):
    client = Client()
    response = client.post(
        "/accounts/login/", {"login": world.owner.email, "password": "correct horse battery"}
    )
    assert response.status_code == 302
    assert client.cookies[settings.SESSION_COOKIE_NAME]["httponly"]


PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings.production",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "api.example.com",
    "DATABASE_URL": "postgres://u@db.example.com/cango",
    "REDIS_URL": "redis://redis.example.com:6379/0",
    "STRIPE_SECRET_KEY": "sk_test_x",
    "STRIPE_WEBHOOK_SECRET": "whsec_x",
}


def test_check_deploy_is_clean_with_production_settings():
    """No warning at all: nothing is silenced (SILENCED_SYSTEM_CHECKS is empty)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE_"))}
    env.update(PRODUCTION_ENV)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_production_settings_turn_on_https_only_cookies_and_hsts():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE_"))}
    env.update(PRODUCTION_ENV)
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_HSTS_SECONDS >= 31536000, s.SECURE_HSTS_INCLUDE_SUBDOMAINS, "
        "s.X_FRAME_OPTIONS, s.ALLAUTH_TRUSTED_PROXY_COUNT, bool(s.ACCOUNT_RATE_LIMITS))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True"] * 5 + ["DENY", "1", "True"]

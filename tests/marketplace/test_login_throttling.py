"""Login and sign-up are throttled against brute force, with the production limits.

The test settings switch django-allauth's limits off (repeated runs would trip
them); these tests switch the limits of config/settings/base.py back on. Each test
comes from its own client address, so the per-address counters in the shared Redis
never meet another test's.
"""

import random
import time
from types import SimpleNamespace

import pytest
from allauth.core.internal import ratelimit as allauth_ratelimit
from django.test import Client

from config.settings import base as base_settings
from marketplace.models import User
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"
LIMITS = base_settings.ACCOUNT_RATE_LIMITS


@pytest.fixture(autouse=True)
def _limits_on(settings) -> None:
    settings.ACCOUNT_RATE_LIMITS = LIMITS


@pytest.fixture
def client() -> Client:
    """A browser at an address no other test (or run) uses."""
    return Client(REMOTE_ADDR="10." + ".".join(str(random.randrange(1, 250)) for _ in range(3)))


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Moves allauth's rate-limit clock forward: ``later.seconds = 901``."""
    offset = SimpleNamespace(seconds=0.0)
    clock = SimpleNamespace(
        time=lambda: time.time() + offset.seconds, monotonic=time.monotonic, sleep=time.sleep
    )
    monkeypatch.setattr(allauth_ratelimit, "time", clock)
    return offset


def _log_in(client: Client, email: str, password: str):
    return client.post("/accounts/login/", {"login": email, "password": password})


def _is_logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_the_limits_are_explicit_in_the_base_settings():
    assert isinstance(LIMITS, dict)
    assert LIMITS["login_failed"] == "10/m/ip,5/15m/key"
    for action in ("login", "signup", "reset_password", "confirm_email"):
        assert LIMITS[action]


def test_five_wrong_passwords_lock_the_account_even_against_the_right_one(client, later):
    user = UserFactory.create()
    for _ in range(5):
        response = _log_in(client, user.email, "wrong password")
        assert response.status_code == 200
        assert "not correct" in response.content.decode()

    refused = _log_in(client, user.email, "wrong password")
    assert refused.status_code == 429
    assert "errors/429.html" in [t.name for t in refused.templates]
    page = refused.content.decode()
    assert "Too many attempts" in page
    assert "css/app.css" in page  # the portal's own page, not allauth's bare one

    # The right password is refused too while the window lasts, from anywhere.
    assert _log_in(client, user.email, PASSWORD).status_code == 429
    elsewhere = Client(REMOTE_ADDR="10.255.255.254")
    assert _log_in(elsewhere, user.email, PASSWORD).status_code == 429
    assert not _is_logged_in(client)
    later.seconds = 14 * 60
    assert _log_in(client, user.email, PASSWORD).status_code == 429

    later.seconds = 15 * 60 + 1
    response = _log_in(client, user.email, PASSWORD)
    assert response.status_code == 302
    assert _is_logged_in(client)


def test_a_correct_password_between_failures_does_not_reset_the_count(client):
    user = UserFactory.create()
    for _ in range(4):
        _log_in(client, user.email, "wrong password")
    assert _log_in(Client(), user.email, PASSWORD).status_code == 302
    assert _log_in(client, user.email, "wrong password").status_code == 200
    assert _log_in(client, user.email, "wrong password").status_code == 429


def test_one_address_trying_many_accounts_is_stopped_after_ten_failures(client):
    users = UserFactory.create_batch(11)
    for user in users[:10]:
        assert _log_in(client, user.email, "wrong password").status_code == 200
    assert _log_in(client, users[10].email, PASSWORD).status_code == 429
    # The accounts themselves are not locked: their owners log in from elsewhere.
    assert _log_in(Client(), users[10].email, PASSWORD).status_code == 302


def _sign_up(client: Client, n: int):
    return client.post(
        "/accounts/signup/",
        {
            "email": f"flood{n}-{random.randrange(10**9)}@example.com",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "organisation": f"Flood {n}",
        },
    )


def test_a_signup_flood_from_one_address_is_refused(client):
    for n in range(5):
        assert _sign_up(client, n).status_code == 302
    before = User.objects.count()
    refused = _sign_up(client, 5)
    assert refused.status_code == 429
    assert "Too many attempts" in refused.content.decode()
    assert User.objects.count() == before
    # Another address still signs up.
    assert _sign_up(Client(REMOTE_ADDR="10.255.255.253"), 6).status_code == 302


def test_password_reset_mails_are_limited_per_account_and_per_address(client):
    user = UserFactory.create()
    for _ in range(3):
        assert client.post("/accounts/password/reset/", {"email": user.email}).status_code == 302
    other = Client(REMOTE_ADDR="10.255.255.252")
    assert other.post("/accounts/password/reset/", {"email": user.email}).status_code == 429

    for n in range(2):
        response = client.post("/accounts/password/reset/", {"email": f"nobody{n}@example.com"})
        assert response.status_code == 302
    assert client.post("/accounts/password/reset/", {"email": "x@example.com"}).status_code == 429


def test_with_the_limits_off_nothing_is_refused(client, settings):
    settings.ACCOUNT_RATE_LIMITS = False
    user = UserFactory.create()
    for _ in range(12):
        assert _log_in(client, user.email, "wrong password").status_code == 200
    assert _log_in(client, user.email, PASSWORD).status_code == 302

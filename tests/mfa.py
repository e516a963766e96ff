"""Two-factor helpers for tests: enrol a user, compute codes, log staff in.

Codes are computed with django-allauth's own TOTP arithmetic from the secret, as an
authenticator app would.
"""

import time

from allauth.account.authentication import AUTHENTICATION_METHODS_SESSION_KEY
from allauth.mfa import app_settings as mfa_settings
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, format_hotp_value, generate_totp_secret, hotp_value
from django.test import Client

from marketplace.models import User

# allauth keeps the owner of the recorded steps next to them (a private name there).
AUTHENTICATION_USER_SESSION_KEY = "account_authentication_methods_user"


def totp_code(secret: str) -> str:
    """The current code for ``secret``, waiting out the last second of a period so the
    code is still current when the server checks it."""
    period = mfa_settings.TOTP_PERIOD
    if period - time.time() % period < 1.0:
        time.sleep(1.1)
    return format_hotp_value(hotp_value(secret, int(time.time()) // period))


def totp_enable(user: User) -> str:
    """Enrol ``user`` with an authenticator app and recovery codes; return the secret."""
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    RecoveryCodes.activate(user)
    return secret


def recovery_codes(user: User) -> list[str]:
    """The user's unused recovery codes."""
    instance = Authenticator.objects.get(user=user, type=Authenticator.Type.RECOVERY_CODES)
    codes: list[str] = RecoveryCodes(instance).get_unused_codes()
    return codes


def staff_force_login(client: Client, user: User) -> Client:
    """``force_login`` for staff: enrol a second factor if needed and record in the
    session that it was used, as a login through the two-factor step does."""
    if not Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists():
        totp_enable(user)
    client.force_login(user)
    session = client.session
    session[AUTHENTICATION_METHODS_SESSION_KEY] = [
        {"method": "password", "at": time.time(), "email": user.email},
        {"method": "mfa", "at": time.time(), "type": Authenticator.Type.TOTP.value},
    ]
    session[AUTHENTICATION_USER_SESSION_KEY] = str(user.pk)
    session.save()
    return client

from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.core.ratelimit import respond_429
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.forms import Form
from django.http import HttpRequest
from django.urls import reverse

from . import services
from .exceptions import InvitationInvalid
from .models import User

PENDING_INVITATION_SESSION_KEY = "pending_invitation"


class AccountAdapter(DefaultAccountAdapter):
    """Ties django-allauth's sign-up to tenancy.

    A new user either accepts the invitation they arrived with, or becomes the owner
    of the organisation named on the sign-up form.
    """

    def save_user(self, request: HttpRequest, user: Any, form: Form, commit: bool = True) -> User:
        saved: User = super().save_user(request, user, form, commit=commit)
        token = request.session.pop(PENDING_INVITATION_SESSION_KEY, None)
        if token:
            try:
                services.invitation_accept(token=token, user=saved)
                return saved
            except InvitationInvalid as exc:
                messages.warning(request, exc.message)
        organisation = (form.cleaned_data.get("organisation") or "").strip()
        if organisation:
            services.tenant_create(name=organisation, owner=saved)
        return saved

    def pre_authenticate(self, request: HttpRequest, **credentials: Any) -> None:
        """Answer 429 (the rate-limit page) once the failed-login limit is reached.

        allauth reports it as a form error on a 200 page; a 429 tells scripts and
        proxies to back off, and the page says when to try again. The limit stays
        closed to the right password too until its window passes.
        """
        try:
            super().pre_authenticate(request, **credentials)
        except ValidationError as exc:
            if exc.code == "too_many_login_attempts":
                raise ImmediateHttpResponse(respond_429(request)) from exc
            raise

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        token = request.session.get(PENDING_INVITATION_SESSION_KEY)
        if token:
            return reverse("portal:invitation_accept", args=[token])
        return super().get_login_redirect_url(request)

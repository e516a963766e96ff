from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.contrib import messages
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

    def get_login_redirect_url(self, request: HttpRequest) -> str:
        token = request.session.get(PENDING_INVITATION_SESSION_KEY)
        if token:
            return reverse("portal:invitation_accept", args=[token])
        return super().get_login_redirect_url(request)

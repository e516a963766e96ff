import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, time
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.http import HttpRequest
from django.utils import timezone

from config import keyset

from .models import AuditEvent, Role, User


class SignupForm(forms.Form):
    """Extra sign-up fields (django-allauth adds e-mail and passwords).

    The organisation becomes the new user's tenant. It is optional only when the
    person arrives through an invitation; the sign-up view decides which.
    """

    organisation = forms.CharField(
        label="Organisation name",
        max_length=100,
        required=False,
        help_text="Your company or team. You can invite colleagues later.",
    )

    def signup(self, request: HttpRequest, user: User) -> None:
        """Called by django-allauth after the user is saved; tenancy is set up by the adapter."""


class OrganisationForm(forms.Form):
    name = forms.CharField(label="Organisation name", max_length=100)

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Enter a name.")
        return name


def _model_ids(raw: str) -> list[str]:
    return sorted({part.strip() for part in raw.replace("\n", ",").split(",") if part.strip()})


class ApiKeyCreateForm(forms.Form):
    # One per rendered form: sent twice (a refresh of the answer), it makes one key.
    token = forms.UUIDField(widget=forms.HiddenInput, required=False, initial=uuid.uuid4)
    name = forms.CharField(label="Name", max_length=100, help_text="Where the key is used.")
    expires_on = forms.DateField(
        label="Expires on",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional. The key stops working at the start of this day (UTC).",
    )
    allowed_models = forms.CharField(
        label="Allowed models",
        required=False,
        max_length=2000,
        help_text="Optional. Comma-separated model ids; empty allows every model.",
    )
    monthly_spend_cap_dollars = forms.DecimalField(
        label="Monthly spend cap (USD)",
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        help_text="Optional. Calls past this amount in a calendar month are refused.",
    )

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Enter a name.")
        return name

    def clean_expires_on(self) -> datetime | None:
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        expires_at = datetime.combine(day, time.min, tzinfo=UTC)
        if expires_at <= timezone.now():
            raise forms.ValidationError("Choose a date in the future.")
        return expires_at

    def clean_allowed_models(self) -> list[str]:
        ids = _model_ids(self.cleaned_data.get("allowed_models") or "")
        for model_id in ids:
            if len(model_id) > 64 or not all(c.isalnum() or c in "-_." for c in model_id):
                raise forms.ValidationError(f"“{model_id[:64]}” is not a valid model id.")
        return ids

    def cleaned_cap_micros(self) -> int | None:
        dollars = self.cleaned_data.get("monthly_spend_cap_dollars")
        return None if dollars is None else int(dollars * 1_000_000)


_WEBHOOK_ACTION_ERROR = "The field “action” must be “reveal” or “rotate”."


class WebhookSecretForm(forms.Form):
    """Which of the Keys page's webhook-secret buttons was pressed; a rotation also
    names the secret it replaces (``Tenant.webhook_secret_fingerprint``)."""

    action = forms.ChoiceField(
        choices=[("reveal", "Reveal"), ("rotate", "Rotate")],
        error_messages={"required": _WEBHOOK_ACTION_ERROR, "invalid_choice": _WEBHOOK_ACTION_ERROR},
    )
    current = forms.CharField(required=False, max_length=64)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("action") == "rotate" and not cleaned.get("current"):
            self.add_error("current", "The field “current” is required to rotate.")
        return cleaned


class InviteForm(forms.Form):
    email = forms.EmailField(label="E-mail address")
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.DEVELOPER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class ReasonForm(forms.Form):
    reason = forms.CharField(
        label="Reason", max_length=500, widget=forms.Textarea(attrs={"rows": 3})
    )


class AuditFilterForm(forms.Form):
    """An audit page's filter and page position, from the query string."""

    action = forms.ChoiceField(label="Action", required=False)
    before = forms.CharField(required=False, max_length=50, widget=forms.HiddenInput)
    after = forms.CharField(required=False, max_length=50, widget=forms.HiddenInput)

    def __init__(self, *args: Any, actions: Iterable[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [(a, AuditEvent.ACTIONS.get(a, a)) for a in actions]
        self.fields["action"].choices = [("", "Any action"), *choices]  # type: ignore[attr-defined]

    def _clean_cursor(self, name: str) -> keyset.Position | None:
        raw: str = self.cleaned_data[name]
        if not raw:
            return None
        position = keyset.cursor_decode(raw)
        if position is None:
            raise forms.ValidationError(
                "This page link is not valid; start from the newest events."
            )
        return position

    def clean_before(self) -> keyset.Position | None:
        return self._clean_cursor("before")

    def clean_after(self) -> keyset.Position | None:
        return self._clean_cursor("after")

    def query(self, **cursor: str) -> str:
        """The query string of this filter with a page cursor (``before=`` or ``after=``)."""
        params = {k: self.cleaned_data[k] for k in self.filter_names() if self.cleaned_data.get(k)}
        return "?" + urlencode({**params, **cursor})

    def filter_names(self) -> tuple[str, ...]:
        return ("action",)

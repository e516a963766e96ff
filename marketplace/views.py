"""Portal pages. Each view parses input, calls one service or selector, renders."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from allauth.account.adapter import get_adapter
from allauth.account.views import SignupView as AllauthSignupView
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.forms import Form
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from . import selectors, services
from .adapters import PENDING_INVITATION_SESSION_KEY
from .exceptions import DomainError, InvitationInvalid
from .forms import ApiKeyCreateForm, InviteForm, OrganisationForm, RoleForm
from .models import ApiKey, Invitation, Membership, Role, Tenant, User
from .roles import Permission, role_allows

View = Callable[..., HttpResponseBase]


class SignedInRequest(HttpRequest):
    """A portal request after ``login_required``; set up by ``PortalTenantMiddleware``."""

    user: User
    membership: Membership | None
    tenant: Tenant | None


class PortalRequest(HttpRequest):
    """A portal request after ``tenant_page``: a member of an active tenant."""

    user: User
    membership: Membership
    tenant: Tenant


def tenant_page(permission: Permission | None = None) -> Callable[[View], View]:
    """Guard a portal page: signed in, a member of an active tenant, allowed by role."""

    def decorator(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            membership: Membership | None = getattr(request, "membership", None)
            if membership is None:
                return redirect("portal:onboarding")
            if membership.tenant.is_suspended:
                return render(
                    request, "portal/suspended.html", {"tenant": membership.tenant}, status=403
                )
            if permission is not None and not role_allows(membership.role, permission):
                return render(request, "errors/403.html", status=403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


class SignupView(AllauthSignupView):
    """django-allauth's sign-up, with the organisation required unless invited."""

    def get_form(self, form_class: type[Form] | None = None) -> Form:
        form = super().get_form(form_class)
        invited = bool(self.request.session.get(PENDING_INVITATION_SESSION_KEY))
        form.fields["organisation"].required = not invited
        return form


@tenant_page()
def dashboard(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/dashboard.html")


@tenant_page(Permission.USE_MODELS)
def models_page(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/placeholder.html", {"title": "Models", "nav": "models"})


@tenant_page(Permission.USE_MODELS)
def jobs_page(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/placeholder.html", {"title": "Jobs", "nav": "jobs"})


@tenant_page(Permission.MANAGE_BILLING)
def billing_page(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/placeholder.html", {"title": "Billing", "nav": "billing"})


@login_required
def onboarding(request: SignedInRequest) -> HttpResponse:
    """A signed-in user without an organisation creates one here."""
    if request.membership is not None:
        return redirect("portal:dashboard")
    form = OrganisationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        tenant = services.tenant_create(name=form.cleaned_data["name"], owner=request.user)
        request.session["tenant_id"] = tenant.pk
        return redirect("portal:dashboard")
    return render(request, "portal/onboarding.html", {"form": form})


@login_required
@require_POST
def tenant_switch(request: SignedInRequest) -> HttpResponse:
    tenant_id = request.POST.get("tenant_id", "")
    membership = selectors.memberships_for_user(user=request.user).filter(
        tenant_id=int(tenant_id) if tenant_id.isdigit() else -1
    )
    if membership.exists():
        request.session["tenant_id"] = int(tenant_id)
    return redirect("portal:dashboard")


@never_cache
@tenant_page(Permission.MANAGE_KEYS)
def api_keys(request: PortalRequest) -> HttpResponse:
    """List keys; on a valid POST create one and show its token this once."""
    tenant = request.tenant
    form = ApiKeyCreateForm(request.POST or None)
    created_token = None
    created_key = None
    if request.method == "POST" and form.is_valid():
        created_key, created_token = services.api_key_create(
            tenant=tenant,
            actor=request.user,
            name=form.cleaned_data["name"],
            expires_at=form.cleaned_data["expires_on"],
            allowed_models=form.cleaned_data["allowed_models"],
            monthly_spend_cap_micros=form.cleaned_cap_micros(),
        )
        form = ApiKeyCreateForm()
    status = 400 if request.method == "POST" and created_key is None else 200
    return render(
        request,
        "portal/api_keys.html",
        {
            "nav": "keys",
            "form": form,
            "keys": selectors.api_keys_list(tenant=tenant),
            "created_key": created_key,
            "created_token": created_token,
        },
        status=status,
    )


@require_POST
@tenant_page(Permission.MANAGE_KEYS)
def api_key_revoke(request: PortalRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(ApiKey, pk=pk, tenant=request.tenant)
    services.api_key_revoke(key=key, actor=request.user)
    messages.success(request, f"Key “{key.name}” revoked. Programs using it now get 401.")
    return redirect("portal:api_keys")


@tenant_page()
def team(request: PortalRequest) -> HttpResponse:
    tenant = request.tenant
    membership: Membership = request.membership
    form = InviteForm(request.POST or None)
    if not role_allows(membership.role, Permission.MANAGE_MEMBERS):
        # Only owners may make owners; admins are not offered the choice.
        form.fields["role"].choices = [c for c in Role.choices if c[0] != Role.OWNER]  # type: ignore[attr-defined]
    status = 200
    if request.method == "POST":
        if not role_allows(membership.role, Permission.INVITE_MEMBERS):
            return render(request, "errors/403.html", status=403)
        if form.is_valid():
            role = form.cleaned_data["role"]
            services.invitation_create(
                tenant=tenant,
                actor=request.user,
                email=form.cleaned_data["email"],
                role=role,
            )
            messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
            return redirect("portal:team")
        status = 400
    return render(
        request,
        "portal/team.html",
        {
            "nav": "team",
            "form": form,
            "members": selectors.members_list(tenant=tenant),
            "invitations": selectors.invitations_open(tenant=tenant),
            "roles": Role.choices,
        },
        status=status,
    )


def _member_action(
    request: PortalRequest, pk: int, action: Callable[[Membership], None]
) -> HttpResponse:
    membership = get_object_or_404(
        Membership.objects.select_related("user", "tenant"),
        pk=pk,
        tenant=request.tenant,
    )
    try:
        action(membership)
    except DomainError as exc:
        messages.error(request, exc.message)
    return redirect("portal:team")


@require_POST
@tenant_page(Permission.MANAGE_MEMBERS)
def member_role(request: PortalRequest, pk: int) -> HttpResponse:
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a valid role.")
        return redirect("portal:team")

    def change(membership: Membership) -> None:
        services.membership_change_role(
            membership=membership,
            actor=request.user,
            role=form.cleaned_data["role"],
        )
        messages.success(
            request, f"{membership.user.email} is now {membership.get_role_display()}."
        )

    return _member_action(request, pk, change)


@require_POST
@tenant_page()
def member_remove(request: PortalRequest, pk: int) -> HttpResponse:
    """Owners remove anyone; every member may remove themself (leave)."""
    me: Membership = request.membership
    leaving = me.pk == pk
    if not leaving and not role_allows(me.role, Permission.MANAGE_MEMBERS):
        return render(request, "errors/403.html", status=403)

    def remove(membership: Membership) -> None:
        services.membership_remove(membership=membership, actor=request.user)
        if leaving:
            request.session.pop("tenant_id", None)
            messages.success(request, f"You left {membership.tenant.name}.")
        else:
            messages.success(request, f"{membership.user.email} was removed.")

    response = _member_action(request, pk, remove)
    left = leaving and not Membership.objects.filter(pk=pk).exists()
    return redirect("portal:dashboard") if left else response


@require_POST
@tenant_page(Permission.INVITE_MEMBERS)
def invitation_revoke(request: PortalRequest, pk: int) -> HttpResponse:
    invitation = get_object_or_404(Invitation, pk=pk, tenant=request.tenant)
    services.invitation_revoke(invitation=invitation, actor=request.user)
    messages.success(request, f"Invitation to {invitation.email} withdrawn.")
    return redirect("portal:team")


@never_cache
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """Show an invitation; signed-in users accept it, others sign up or log in first."""
    try:
        invitation = services.invitation_get_open(token=token)
    except InvitationInvalid as exc:
        return render(request, "portal/invitation.html", {"error": exc.message}, status=404)
    if not request.user.is_authenticated:
        request.session[PENDING_INVITATION_SESSION_KEY] = token
        # The link reached this address's inbox, which is what verification proves.
        get_adapter(request).stash_verified_email(request, invitation.email)
        return render(request, "portal/invitation.html", {"invitation": invitation})
    if request.method == "POST":
        try:
            membership = services.invitation_accept(token=token, user=request.user)
        except InvitationInvalid as exc:
            return render(request, "portal/invitation.html", {"error": exc.message}, status=400)
        request.session.pop(PENDING_INVITATION_SESSION_KEY, None)
        request.session["tenant_id"] = membership.tenant_id
        messages.success(request, f"Welcome to {membership.tenant.name}.")
        return redirect("portal:dashboard")
    return render(request, "portal/invitation.html", {"invitation": invitation})

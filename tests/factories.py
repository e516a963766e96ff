"""factory_boy factories for the project's models."""

from typing import Any

import factory
from allauth.account.models import EmailAddress

from marketplace import services
from marketplace.models import ApiKey, CatalogModel, Membership, Role, Tenant, User
from marketplace.pricing import Usage
from workers.dispatch import Dispatched
from workers.routing import Candidate
from workers.triton import Endpoint, Response


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery")

    @factory.post_generation
    def verified(obj: User, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create and extracted is not False:
            obj.save()
            EmailAddress.objects.create(user=obj, email=obj.email, verified=True, primary=True)


class TenantFactory(factory.django.DjangoModelFactory[Tenant]):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.OWNER


def api_key_make(tenant: Tenant, **kwargs: Any) -> tuple[ApiKey, str]:
    """A key made the way the product makes them, returned with its token."""
    kwargs.setdefault("name", "test key")
    return services.api_key_create(tenant=tenant, actor=None, **kwargs)


def candidate_make(
    server_id: int,
    *,
    site: str = "a",
    region: str = "us",
    power: float = 30.0,
    capacity: int = 8,
    model: str = "echo",
) -> Candidate:
    """A routing candidate (no database row): server ``server_id`` at 127.0.0.1:9000+id."""
    return Candidate(
        deployment_id=server_id,
        server_id=server_id,
        site_slug=site,
        region=region,
        power_usd_per_mwh=power,
        max_concurrency=capacity,
        triton_model_name=model,
        triton_model_version="",
        endpoint=Endpoint(server_id, "127.0.0.1", 9000 + server_id),
    )


def dispatched_make(site: str = "a") -> Dispatched:
    """What a site answers a sync call, in place of ``workers.dispatch.dispatch``."""
    response = Response(status=200, headers={}, body=b'{"outputs": []}')
    return Dispatched(response=response, candidate=candidate_make(1, site=site), elapsed_us=500)


def sync_charge(
    tenant: Tenant, key: ApiKey | None, model: CatalogModel
) -> tuple[Dispatched, Usage, int]:
    """One sync call of one unit through ``marketplace.inference._charged`` (hold, the
    call, settle): the tests fake its ``dispatch``."""
    from marketplace import inference

    return inference._charged(
        tenant=tenant,
        key=key,
        model=model,
        max_units=1,
        input_elements=1,
        body=b"{}",
        headers={},
    )

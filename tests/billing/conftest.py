"""Fixtures of the billing tests."""

import pytest

from billing import stripe_gateway


@pytest.fixture
def stripe_server(settings):
    """The project's Stripe-compatible server, with the gateway pointed at it."""
    from deploy.stripe_server import StripeServer

    server = StripeServer().start()
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_SECRET_KEY = "sk_test_mirror"
    stripe_gateway.client.cache_clear()
    try:
        yield server
    finally:
        stripe_gateway.client.cache_clear()
        server.stop()

"""Fixtures: a Stripe test server, a webhook receiver, and the official client on it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from deploy.stripe_server import StripeServer
from tests.stripe_server.support import API_KEY, WEBHOOK_SECRET, Delivery, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status = state.record(
                Delivery(body, self.headers.get("Stripe-Signature", ""), dict(self.headers))
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/billing/stripe/webhook"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(receiver: Receiver) -> Iterator[StripeServer]:
    srv = StripeServer(
        webhook_url=receiver.url,
        webhook_secret=WEBHOOK_SECRET,
        webhook_retry_delays=(0.05, 0.1, 0.2),
    ).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: StripeServer) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses=server.base_addresses)

"""A small, stateful, Stripe-compatible HTTP server for tests and the demo.

The project's Stripe gateway talks to it through the official ``stripe`` library,
pointed here with ``StripeClient(key, base_addresses={"api": server.url, ...})``. Only
the endpoints the project uses exist; objects have Stripe's current shapes (built from
Stripe's published fixtures, ``fixtures3.json``, MIT — see ``LICENSE-stripe-openapi``).

Usage::

    server = StripeServer(webhook_url="http://127.0.0.1:8000/billing/stripe/webhook",
                          webhook_secret="whsec_test").start()
    client = stripe.StripeClient("sk_test_x", base_addresses=server.base_addresses)
    ...
    server.stop()

or ``python -m deploy.stripe_server --port 12111 --webhook-url ... --webhook-secret ...``.

Modules: :mod:`.http` (request handling, auth, idempotency), :mod:`.formdata` (form
decoding, param readers), :mod:`.state` (storage, events, pagination, expand),
:mod:`.objects` (object shapes from the fixtures), :mod:`.webhooks` (signing and
delivery), :mod:`.core` / :mod:`.payments` / :mod:`.billing` (the ``/v1`` endpoints and
the v2 meter event stream),
:mod:`.pages` (checkout/invoice pages), :mod:`.testing` (``/_test`` controls).

Behaviour worth knowing (each mirrors Stripe unless marked *test server*):

* Meter event ``identifier``: a repeat within 24 hours (server clock) answers
  ``400 invalid_request_error`` "An event already exists with identifier <id>." (no
  ``code``; ``Stripe-Should-Retry: false``) and is not counted; a retry with the same
  ``Idempotency-Key`` replays the first success instead.
* Meter events are validated at once (*test server*: unknown ``event_name``, unknown
  customer and bad values are 400s here; Stripe reports some of these asynchronously).
* The v2 meter event stream (``POST /v2/billing/meter_event_session``, then
  ``POST /v2/billing/meter_event_stream`` with the session's ``authentication_token``,
  1-100 events) stores events like v1 does; a batch with one invalid event is rejected
  whole (400 naming ``events[i].field``), a repeated ``identifier`` is skipped silently
  (the answer is ``{}`` either way), an expired session is a 401
  ``billing_meter_event_session_expired``.
* Invoice line amount: ``quantity × unit_amount_decimal`` rounded half up to a cent.
* Credit grants apply at finalization to metered lines in scope (priority, soonest
  expiry, promotional first, oldest first); what is used is debited and never reused.
* *Test server*: completing a checkout with ``setup_future_usage`` also makes the saved
  card the customer's ``invoice_settings.default_payment_method`` (Stripe only attaches
  it); switch off with ``set_default_payment_method_on_checkout=False``.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import TypedDict

from .http import StripeHTTPServer
from .state import DEFAULT_API_VERSION, Options, State
from .webhooks import WebhookDispatcher, signature_header

__all__ = ["DEFAULT_API_VERSION", "BaseAddresses", "StripeServer", "signature_header"]

log = logging.getLogger("deploy.stripe_server")


class BaseAddresses(TypedDict, total=False):
    """The shape of ``stripe.StripeClient(base_addresses=...)`` (without importing stripe)."""

    api: str | None
    connect: str | None
    files: str | None
    meter_events: str | None


class StripeServer:
    """The server: bind on construction, serve from a daemon thread after :meth:`start`.

    ``port=0`` picks a free port (see :attr:`url`). Webhooks go to ``webhook_url``
    signed with ``webhook_secret`` (a random ``whsec_`` one when only the URL is given);
    both can change at runtime (:meth:`configure_webhooks` or ``POST /_test/config``).
    ``public_url`` is the address browsers use (checkout/invoice links); it defaults to
    :attr:`url`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        *,
        public_url: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        enabled_events: Sequence[str] = ("*",),
        webhook_retry_delays: Sequence[float] = (0.5, 1.0, 2.0),
        set_default_payment_method_on_checkout: bool = True,
    ) -> None:
        if webhook_url and not webhook_secret:
            webhook_secret = "whsec_" + secrets.token_hex(24)
        self.dispatcher = WebhookDispatcher(
            webhook_url, webhook_secret, retry_delays=webhook_retry_delays
        )
        self._public_url = public_url.rstrip("/") if public_url else None
        self.state = State(
            self.dispatcher,
            lambda: self._public_url or self.url,
            Options(
                api_version=api_version,
                enabled_events=list(enabled_events),
                set_default_payment_method_on_checkout=set_default_payment_method_on_checkout,
            ),
        )
        self.dispatcher.on_result = self.state.delivery_result
        self._httpd = StripeHTTPServer((host, port), self.state)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the bound socket."""
        host, port = self._httpd.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if host_text in ("0.0.0.0", "::"):  # noqa: S104 - reporting, not binding
            host_text = "127.0.0.1"
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"

    @property
    def base_addresses(self) -> BaseAddresses:
        """``base_addresses`` for ``stripe.StripeClient`` (every API base points here)."""
        return {"api": self.url, "meter_events": self.url, "files": self.url, "connect": self.url}

    @property
    def webhook_secret(self) -> str | None:
        """The secret webhooks are signed with."""
        return self.dispatcher.secret

    def configure_webhooks(self, url: str | None, secret: str | None = None) -> None:
        """Point webhook delivery somewhere else (``None`` turns it off)."""
        with self.state.lock:
            self.dispatcher.url = url
            if secret is not None:
                self.dispatcher.secret = secret
            elif url and not self.dispatcher.secret:
                self.dispatcher.secret = "whsec_" + secrets.token_hex(24)

    def start(self) -> StripeServer:
        """Serve in a daemon thread; returns ``self``."""
        if self._thread is None:
            self.dispatcher.start()
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="stripe-server",
                daemon=True,
            )
            self._thread.start()
            log.info("Stripe test server on %s", self.url)
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (the CLI); returns after :meth:`stop`."""
        self.dispatcher.start()
        self._httpd.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        """Stop serving and delivering; the socket is closed."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self.dispatcher.stop()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def wait_for_webhooks(self, timeout: float = 10.0) -> bool:
        """Block until every queued webhook delivery has finished; True when idle."""
        return self.dispatcher.wait_idle(timeout)

    def __enter__(self) -> StripeServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

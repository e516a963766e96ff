"""``python -m deploy.stripe_server``: run the Stripe test server in the foreground.

Example::

    python -m deploy.stripe_server --port 12111 \\
        --webhook-url http://127.0.0.1:8000/billing/stripe/webhook \\
        --webhook-secret whsec_local

Point the project at it with ``STRIPE_API_BASE=http://127.0.0.1:12111`` and any
``sk_test_...`` key. Logs one line per request (and per webhook delivery attempt).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from . import StripeServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.stripe_server",
        description="A small stateful Stripe-compatible server for tests and the demo.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=12111, help="port (12111; 0 picks one)")
    parser.add_argument(
        "--webhook-url",
        default=os.environ.get("STRIPE_WEBHOOK_URL") or None,
        help="where to POST signed events (env STRIPE_WEBHOOK_URL)",
    )
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get("STRIPE_WEBHOOK_SECRET") or None,
        help="whsec_... signing secret (env STRIPE_WEBHOOK_SECRET; random if unset)",
    )
    parser.add_argument(
        "--public-url", default=None, help="address browsers use for checkout/invoice pages"
    )
    parser.add_argument(
        "--enabled-events",
        default="*",
        help="comma-separated event types to deliver (default: all)",
    )
    parser.add_argument(
        "--no-default-payment-method",
        action="store_true",
        help="checkout saves cards without making them the customer's default (like Stripe)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (INFO)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    server = StripeServer(
        args.host,
        args.port,
        args.webhook_url,
        args.webhook_secret,
        public_url=args.public_url,
        enabled_events=[e.strip() for e in args.enabled_events.split(",") if e.strip()],
        set_default_payment_method_on_checkout=not args.no_default_payment_method,
    )
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    logging.getLogger("deploy.stripe_server").info(
        "Stripe test server on %s (webhooks: %s, signed: %s)",
        server.url,
        args.webhook_url or "off",
        "yes" if server.webhook_secret else "no",  # never the secret itself in a log
    )
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

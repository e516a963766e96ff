"""``python -m deploy.stripe_server`` serves, logs one line per request, stops on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import stripe

from tests.stripe_server.support import Receiver

REPO = Path(__file__).resolve().parents[2]


def test_cli_serves_and_logs_each_request(receiver: Receiver) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy.stripe_server",
            "--port",
            "0",
            "--webhook-url",
            receiver.url,
            "--webhook-secret",
            "whsec_cli",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)", first)
        assert found, first
        url = found.group(1)
        client = stripe.StripeClient("sk_test_cli", base_addresses={"api": url})
        customer = client.v1.customers.create(params={"email": "cli@example.com"})
        delivery = receiver.wait_for("customer.created")[0]
        event = stripe.Webhook.construct_event(delivery.body, delivery.signature, "whsec_cli")
        assert event.data.object["id"] == customer.id
        line = process.stderr.readline()
        while "POST /v1/customers" not in line and line:
            line = process.stderr.readline()
        assert "POST /v1/customers -> 200" in line
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0

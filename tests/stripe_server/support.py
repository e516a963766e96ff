"""Helpers for the Stripe test server tests: a webhook receiver and plain HTTP calls."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from deploy.stripe_server import StripeServer

WEBHOOK_SECRET = "whsec_test_cango_0123456789abcdef"
API_KEY = "sk_test_cango_tests"


@dataclass
class Delivery:
    """One webhook POST as the receiver saw it."""

    body: bytes
    signature: str
    headers: dict[str, str]

    @property
    def event(self) -> dict[str, Any]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


@dataclass
class Receiver:
    """A local webhook endpoint that records deliveries and can fail on purpose."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    fail_next: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def record(self, delivery: Delivery) -> int:
        with self.cond:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 500
            self.deliveries.append(delivery)
            self.cond.notify_all()
            return 200

    def types(self) -> list[str]:
        with self.cond:
            return [d.event["type"] for d in self.deliveries]

    def wait_for(self, event_type: str, count: int = 1, timeout: float = 10.0) -> list[Delivery]:
        """Wait until ``count`` deliveries of ``event_type`` arrived; returns them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [d for d in self.deliveries if d.event["type"] == event_type]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [d.event["type"] for d in self.deliveries]
                    raise AssertionError(f"no {event_type} webhook; got {seen}")
                self.cond.wait(remaining)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch(
    method: str, url: str, data: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP call (no redirects followed): status, headers, body."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def control(server: StripeServer, path: str, **params: Any) -> Any:
    """POST a test-only control (``/_test/...``) and return its JSON."""
    status, _headers, body = fetch(
        "POST", server.url + path, {k: str(v) for k, v in params.items()}
    )
    data = json.loads(body)
    if status != 200:
        raise AssertionError(f"{path} -> {status}: {data}")
    return data

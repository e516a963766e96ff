"""Signed webhook delivery: one background thread, in order, with retries and a log.

Each event is POSTed as JSON with ``Stripe-Signature: t=<unix>,v1=<hex>``, where the
hex is HMAC-SHA256 keyed by the endpoint secret over ``"<t>.<raw body>"`` — exactly
what ``stripe.Webhook.construct_event`` verifies. The timestamp is the real wall clock
at each attempt (not the server's test clock), so signatures never look stale.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("deploy.stripe_server.webhooks")

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header for ``payload`` signed with ``secret``."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{stamp}.".encode() + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


@dataclass
class Attempt:
    """One delivery attempt, as kept in the delivery log."""

    event_id: str
    event_type: str
    attempt: int
    url: str | None
    status: int | None
    ok: bool
    error: str | None
    at: float
    resend: bool

    def to_dict(self) -> dict[str, Any]:
        """The attempt as JSON-ready data."""
        return asdict(self)


@dataclass
class _Job:
    event_id: str
    event_type: str
    body: bytes
    resend: bool


class WebhookDispatcher:
    """Delivers queued events to the configured URL from one daemon thread.

    ``on_result(event_id, ok)`` is called after the last attempt of each delivery, so
    the state can keep ``pending_webhooks`` current. ``retry_delays`` are the pauses
    before the 2nd, 3rd... attempts; a delivery whose attempts all fail is logged and
    dropped (``POST /_test/events/{id}/resend`` queues it again).
    """

    def __init__(
        self,
        url: str | None,
        secret: str | None,
        *,
        retry_delays: Sequence[float] = (0.5, 1.0, 2.0),
        timeout: float = 10.0,
        on_result: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.url = url
        self.secret = secret
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.on_result = on_result
        self.log: list[Attempt] = []
        self._jobs: deque[_Job] = deque()
        self._busy = False
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the delivery thread."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="stripe-server-webhooks", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the delivery thread (queued deliveries are dropped)."""
        with self._cond:
            self._stopping = True
            self._jobs.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def configured(self) -> bool:
        """Whether deliveries have somewhere to go."""
        return bool(self.url) and bool(self.secret)

    def enqueue(self, event_id: str, event_type: str, body: bytes, *, resend: bool = False) -> None:
        """Queue one event body for delivery (non-blocking; safe under the state lock)."""
        with self._cond:
            self._jobs.append(_Job(event_id, event_type, body, resend))
            self._cond.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every queued delivery is done (or ``timeout``); True when idle."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def attempts(self) -> list[dict[str, Any]]:
        """The delivery log as JSON-ready data."""
        with self._cond:
            return [a.to_dict() for a in self.log]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                ok = self._deliver(job)
                if self.on_result is not None:
                    self.on_result(job.event_id, ok)
            except Exception:  # pragma: no cover - a bug here must not kill the thread
                log.exception("webhook delivery of %s crashed", job.event_id)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _deliver(self, job: _Job) -> bool:
        delays = (0.0, *self.retry_delays)
        for number, delay in enumerate(delays, start=1):
            if delay:
                with self._cond:
                    if self._cond.wait_for(lambda: self._stopping, timeout=delay):
                        return False
            url, secret = self.url, self.secret
            if not url or not secret:
                self._record(job, number, url, None, False, "no webhook URL/secret configured")
                return False
            status, error = self._post(url, secret, job.body)
            ok = status is not None and 200 <= status < 300
            self._record(job, number, url, status, ok, error)
            log.info(
                "webhook %s %s -> %s (attempt %d)",
                job.event_type,
                job.event_id,
                status if status is not None else error,
                number,
            )
            if ok:
                return True
        return False

    def _post(self, url: str, secret: str, body: bytes) -> tuple[int | None, str | None]:
        if not url.startswith(("http://", "https://")):
            return None, f"unsupported URL scheme: {url}"
        request = urllib.request.Request(  # noqa: S310 - scheme checked above
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": USER_AGENT,
                "Stripe-Signature": signature_header(body, secret),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
                return int(response.status), None
        except urllib.error.HTTPError as exc:
            exc.read()
            return int(exc.code), None
        except (urllib.error.URLError, OSError) as exc:
            return None, str(getattr(exc, "reason", exc))

    def _record(
        self,
        job: _Job,
        number: int,
        url: str | None,
        status: int | None,
        ok: bool,
        error: str | None,
    ) -> None:
        with self._cond:
            self.log.append(
                Attempt(
                    event_id=job.event_id,
                    event_type=job.event_type,
                    attempt=number,
                    url=url,
                    status=status,
                    ok=ok,
                    error=error,
                    at=time.time(),
                    resend=job.resend,
                )
            )

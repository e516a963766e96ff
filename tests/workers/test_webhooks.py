"""Job webhooks' ``Cango-Signature``: one ``v1`` per secret that signs at the time,
the current one first, checked by a receiver on a local port."""

import hashlib
import hmac
import http.server
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace import services
from marketplace.models import CatalogModel, Job, Tenant, WebhookDelivery
from workers import webhooks

pytestmark = pytest.mark.django_db


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver_url() -> Iterator[str]:
    _Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def job(world, receiver_url) -> Job:
    spec = [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 3]}]
    model = CatalogModel.objects.create(
        slug="echo", name="Echo", price_micros=10, inputs=spec, outputs=spec
    )
    return Job.objects.create(
        tenant=world.tenant,
        public_id="job_webhook_1",
        model=model,
        status=Job.Status.SUCCEEDED,
        request_hash="x",
        request={"inputs": []},
        output={"outputs": []},
        cost_micros=10,
        max_cost_micros=10,
        webhook_url=receiver_url,
    )


def _delivered(job: Job) -> tuple[str, list[str], bytes]:
    """Deliver ``job`` once; the received header's ``t``, its ``v1`` values and the body."""
    assert webhooks.deliver(job.pk, 1)
    assert len(_Receiver.received) == 1
    headers, body = _Receiver.received[0]
    pairs = [part.split("=", 1) for part in headers["Cango-Signature"].split(",")]
    assert pairs[0][0] == "t"
    assert [key for key, _ in pairs[1:]] == ["v1"] * (len(pairs) - 1)
    assert WebhookDelivery.objects.get(job=job).status_code == 204
    return pairs[0][1], [value for _, value in pairs[1:]], body


def _mac(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_without_a_rotation_one_v1_made_with_the_current_secret(world, job):
    timestamp, signatures, body = _delivered(job)
    assert abs(int(timestamp) - time.time()) < 60
    assert signatures == [_mac(world.tenant.webhook_secret, timestamp, body)]
    assert webhooks.signature(world.tenant.webhook_secret, int(timestamp), body) == (
        f"t={timestamp},v1={signatures[0]}"
    )


def test_while_the_previous_secret_is_valid_each_secret_has_its_v1_current_first(world, job):
    old = world.tenant.webhook_secret
    new = services.webhook_secret_rotate(tenant=world.tenant, actor=None)

    timestamp, signatures, body = _delivered(job)

    assert len(signatures) == 2
    assert hmac.compare_digest(signatures[0], _mac(new, timestamp, body))
    assert hmac.compare_digest(signatures[1], _mac(old, timestamp, body))


def test_once_the_previous_secret_expires_only_the_current_one_signs(world, job):
    new = services.webhook_secret_rotate(tenant=world.tenant, actor=None)
    Tenant.objects.filter(pk=world.tenant.pk).update(
        webhook_secret_previous_until=timezone.now() - timedelta(seconds=1)
    )

    timestamp, signatures, body = _delivered(job)

    assert signatures == [_mac(new, timestamp, body)]


def test_the_header_lists_the_secrets_in_the_order_given():
    body = b'{"id":"job_1"}'
    header = webhooks.signature_header(["whsec_a", "whsec_b"], 1700000000, body)
    assert header == (
        f"t=1700000000,v1={_mac('whsec_a', '1700000000', body)},"
        f"v1={_mac('whsec_b', '1700000000', body)}"
    )
    assert webhooks.signature("whsec_a", 1700000000, body) == webhooks.signature_header(
        ["whsec_a"], 1700000000, body
    )
    with pytest.raises(ValueError, match="at least one secret"):
        webhooks.signature_header([], 1700000000, body)

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .collectors import OperatorCollector
from .metrics import registry


def _is_operator(request: HttpRequest) -> bool:
    """An active staff session, or ``Authorization: Bearer <METRICS_TOKEN>`` (for the
    Prometheus server) when a token is configured."""
    user = request.user
    if user.is_authenticated and user.is_active and user.is_staff:
        return True
    token = settings.METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme == "Bearer"
        and hmac.compare_digest(given.encode(errors="replace"), token.encode())
    )


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition. Anyone but the operator gets the ordinary 404,
    as for ``/ops/``, so the endpoint's existence is not revealed."""
    if not _is_operator(request):
        raise Http404
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    body = generate_latest(registry(OperatorCollector()))
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)

from collections.abc import Callable
from time import perf_counter

from django.http import HttpRequest, HttpResponse

from .metrics import HTTP_REQUEST_SECONDS, http_method_label


class RequestMetricsMiddleware:
    """Time every request, labelled by the URL pattern that matched it.

    The label is the route pattern (``v1/jobs/<str:public_id>``), never the path:
    paths carry ids, which would make one time series per object and put
    identifiers where only aggregates belong. Requests that matched no route share
    one label. First in ``MIDDLEWARE`` so the time includes the other middleware.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        route = (match.route or match.view_name) if match is not None else "<unmatched>"
        HTTP_REQUEST_SECONDS.labels(
            route=route,
            method=http_method_label(request.method),
            status=f"{response.status_code // 100}xx",
        ).observe(perf_counter() - started)
        return response

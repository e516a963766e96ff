import hmac
import json
import logging
import threading
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
)
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .collectors import OperatorCollector
from .metrics import CSP_VIOLATIONS, registry

logger = logging.getLogger(__name__)


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


#: Largest report read; browsers send well under 2 KB.
CSP_REPORT_MAX_BYTES = 16 * 1024
#: Log lines per process per minute; every report is still counted.
CSP_REPORT_LOG_PER_MINUTE = 30
#: Directives counted by name; anything else a browser sends is counted as "other".
_DIRECTIVES = frozenset(settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]) | {
    "script-src-elem",
    "script-src-attr",
    "style-src-elem",
    "style-src-attr",
}


class _LogBudget:
    """A fixed window of log lines per process, so a page in a loop cannot flood the logs."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.lock = threading.Lock()
        self.window = 0
        self.used = 0

    def take(self) -> bool:
        window = int(time.monotonic() // 60)
        with self.lock:
            if window != self.window:
                self.window, self.used = window, 0
            self.used += 1
            return self.used <= self.per_minute


_log_budget = _LogBudget(CSP_REPORT_LOG_PER_MINUTE)


def _without_query(uri: object) -> str:
    """Where a URI points, without its query string or fragment (they may carry
    tokens). The keywords browsers send instead ("inline", "eval") pass as they are."""
    text = str(uri or "")[:500]
    parts = urlsplit(text)
    if parts.netloc:
        return f"{parts.scheme}://{parts.netloc}{parts.path}"
    return parts.scheme or parts.path


def _error(field: str, message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": {"field": field, "message": message}}, status=status)


@csrf_exempt  # browsers send reports without cookies or tokens; nothing is changed
@never_cache
def csp_report(request: HttpRequest) -> HttpResponse:
    """Where browsers report Content-Security-Policy violations (``report-uri``).

    Each report is counted by directive (``cango_csp_violations_total``) and logged
    (at most ``CSP_REPORT_LOG_PER_MINUTE`` lines a minute per process) without query
    strings. Answers 204; a malformed report gets 400 naming the problem.
    """
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    body = request.body
    if len(body) > CSP_REPORT_MAX_BYTES:
        return _error("body", f"A report is at most {CSP_REPORT_MAX_BYTES} bytes.", 413)
    try:
        report = json.loads(body or b"null")["csp-report"]
        if not isinstance(report, dict):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        return _error("csp-report", 'Expected a JSON object {"csp-report": {...}}.')
    raw = str(report.get("effective-directive") or report.get("violated-directive") or "")
    directive = raw.split(" ", 1)[0]
    directive = directive if directive in _DIRECTIVES else "other"
    CSP_VIOLATIONS.labels(directive=directive).inc()
    line = report.get("line-number")
    if _log_budget.take():
        logger.warning(
            "csp violation",
            extra={
                "directive": directive,
                "blocked": _without_query(report.get("blocked-uri")),
                "page": _without_query(report.get("document-uri")),
                "source_file": _without_query(report.get("source-file")),
                "line": line if isinstance(line, int) else None,
            },
        )
    return HttpResponse(status=204)

"""Browsers' Content-Security-Policy violation reports: counted, logged without
query strings, and refused with a 4xx when malformed."""

import json
import logging

import pytest
from django.test import Client

from observability import views
from observability.metrics import CSP_VIOLATIONS

pytestmark = pytest.mark.django_db

REPORT = {
    "csp-report": {
        "document-uri": "https://cango.example/billing/?session_id=cs_secret123",
        "referrer": "",
        "violated-directive": "script-src-elem",
        "effective-directive": "script-src-elem",
        "original-policy": "default-src 'self'; report-uri /csp-report/",
        "blocked-uri": "https://evil.example/x.js?token=abc#frag",
        "status-code": 200,
        "source-file": "https://cango.example/static/app.js",
        "line-number": 12,
    }
}


def _post(body: object, content_type: str = "application/csp-report"):
    client = Client(enforce_csrf_checks=True)  # browsers send no CSRF token
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/csp-report/", data=payload, content_type=content_type)


def _count(directive: str) -> float:
    return CSP_VIOLATIONS.labels(directive=directive)._value.get()


def test_a_report_is_counted_and_logged_without_its_query_strings(caplog):
    before = _count("script-src-elem")
    with caplog.at_level(logging.WARNING, logger="observability.views"):
        response = _post(REPORT)
    assert response.status_code == 204
    assert _count("script-src-elem") == before + 1
    (record,) = [r for r in caplog.records if r.getMessage() == "csp violation"]
    assert record.blocked == "https://evil.example/x.js"
    assert record.page == "https://cango.example/billing/"
    assert (record.source_file, record.line) == ("https://cango.example/static/app.js", 12)
    logged = " ".join(str(value) for value in vars(record).values())
    assert "cs_secret123" not in logged
    assert "token=abc" not in logged


def test_inline_and_unknown_directives(caplog):
    before = _count("other")
    report = {"csp-report": {"violated-directive": "made-up-src", "blocked-uri": "inline"}}
    with caplog.at_level(logging.WARNING, logger="observability.views"):
        assert _post(report).status_code == 204
    assert _count("other") == before + 1
    (record,) = [r for r in caplog.records if r.getMessage() == "csp violation"]
    assert record.blocked == "inline"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"not json", 400, "csp-report"),
        ({"something": "else"}, 400, "csp-report"),
        ({"csp-report": ["a list"]}, 400, "csp-report"),
        (b"{" + b" " * (views.CSP_REPORT_MAX_BYTES + 1) + b"}", 413, "body"),
    ],
)
def test_a_malformed_report_gets_a_4xx_naming_the_problem(body, status, field):
    response = _post(body)
    assert response.status_code == status
    assert response.json()["error"]["field"] == field


def test_only_post_and_the_policy_names_the_endpoint():
    assert Client().get("/csp-report/").status_code == 405
    policy = Client().get("/accounts/login/").headers["Content-Security-Policy"]
    assert "report-uri /csp-report/" in policy


def test_logging_is_bounded_per_minute_but_every_report_counts(caplog, monkeypatch):
    monkeypatch.setattr(views, "_log_budget", views._LogBudget(per_minute=2))
    before = _count("script-src-elem")
    with caplog.at_level(logging.WARNING, logger="observability.views"):
        for _ in range(5):
            assert _post(REPORT).status_code == 204
    assert _count("script-src-elem") == before + 5
    assert len([r for r in caplog.records if r.getMessage() == "csp violation"]) == 2

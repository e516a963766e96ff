"""Structured logs: job and site ids in worker tasks and dispatch, never a secret."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from marketplace import keys
from marketplace.logging import JsonFormatter, RedactFilter, RequestIdFilter, log_context
from tests.factories import candidate_make
from workers import dispatch, routing, tasks, triton
from workers.jobs import RunResult


class Lines:
    """Log lines as the console handler writes them (same filters and formatter)."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def all(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def lines() -> Iterator[Lines]:
    captured = Lines()
    handler = logging.StreamHandler(captured.stream)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("obs-test")
    workers_logger = logging.getLogger("workers")
    for target in (logger, workers_logger):
        target.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield captured
    for target in (logger, workers_logger):
        target.removeHandler(handler)


def test_api_key_tokens_lose_their_secret_but_keep_the_public_id(lines):
    public_id, token = keys.token_generate()

    logging.getLogger("obs-test").warning("bad key %s", token)

    text = lines.text()
    assert token not in text
    assert f"cango_sk_{public_id}_[REDACTED]" in text


@pytest.mark.parametrize(
    "secret",
    [
        "sk_live_51HxAbCdEfGhIjKlMnOp",
        "sk_test_cango_integration",
        "rk_live_51HxAbCdEfGhIjKlMnOp",
        "whsec_0123456789abcdefABCDEF",
    ],
)
def test_stripe_keys_and_webhook_secrets_are_redacted(lines, secret):
    logging.getLogger("obs-test").error("stripe failed with %s", f"key={secret}")

    assert secret not in lines.text()
    assert "[REDACTED]" in lines.text()


def test_authorization_values_are_redacted_in_text_and_in_dict_reprs(lines):
    logger = logging.getLogger("obs-test")
    logger.info("headers %s", {"Authorization": "Bearer abc.def-ghi", "Accept": "*/*"})
    logger.info("raw header Authorization: Basic dXNlcjpwYXNz")

    text = lines.text()
    assert "abc.def-ghi" not in text
    assert "dXNlcjpwYXNz" not in text
    assert "*/*" in text


def test_passwords_in_dict_args_and_extra_fields_are_redacted(lines):
    logger = logging.getLogger("obs-test")
    logger.info("login %(email)s %(password)s", {"email": "a@b.c", "password": "hunter2!x"})
    logger.info(
        "form",
        extra={"form": {"password1": "s3cret-one", "email": "a@b.c"}, "api_key": "k-123456"},
    )
    logger.info("tokens used", extra={"prompt_tokens": 12})

    text = lines.text()
    for secret in ("hunter2!x", "s3cret-one", "k-123456"):
        assert secret not in text
    entries = lines.all()
    assert entries[0]["msg"] == "login a@b.c [REDACTED]"
    assert entries[1]["form"] == {"password1": "[REDACTED]", "email": "a@b.c"}
    assert entries[2]["prompt_tokens"] == 12  # a count named like a secret's key is kept


def test_a_traceback_holding_a_secret_is_redacted(lines):
    _, token = keys.token_generate()
    try:
        raise ValueError(f"refused {token}")
    except ValueError:
        logging.getLogger("obs-test").exception("call failed")

    entry = lines.all()[0]
    assert "ValueError: refused cango_sk_" in entry["exc"]
    assert token not in lines.text()


def test_log_context_tags_lines_and_an_explicit_extra_wins(lines):
    logger = logging.getLogger("obs-test")
    with log_context(job_id=42, site="site-a"):
        logger.info("inside")
        logger.info("override", extra={"site": "site-b"})
    logger.info("outside")

    inside, override, outside = lines.all()
    assert (inside["job_id"], inside["site"]) == ("42", "site-a")
    assert override["site"] == "site-b"
    assert "job_id" not in outside
    assert "site" not in outside


def test_the_job_task_tags_every_line_with_the_job_and_the_worker_site(lines, monkeypatch):
    def job_run(*, job_id: int, worker_site: str) -> RunResult:
        logging.getLogger("workers.jobs").info("working")
        return RunResult("succeeded", worker_site)

    monkeypatch.setattr(tasks.jobs, "job_run", job_run)
    monkeypatch.setenv("CANGO_WORKER_SITE", "site-b")

    assert tasks.job_run.run(7) == "succeeded"

    entries = lines.all()
    assert [e["msg"] for e in entries] == ["working", "job run"]
    assert all(e["job_id"] == "7" and e["site"] == "site-b" for e in entries)


def test_dispatch_tags_lines_written_during_a_call_with_the_site_called(lines, monkeypatch):
    candidate = candidate_make(1, site="site-c")

    def call(*args: object, **kwargs: object) -> triton.Response:
        logging.getLogger("workers.triton").info("calling")
        return triton.Response(200, {}, b"{}")

    monkeypatch.setattr(routing, "candidates_for", lambda *a, **k: [candidate])
    monkeypatch.setattr(triton, "call", call)

    dispatch.dispatch(model_slug="echo", body=b"{}", headers={}, timeout=5)

    assert lines.all()[0]["site"] == "site-c"


def test_redaction_is_stable_when_a_record_passes_through_several_handlers():
    from marketplace.logging import redact_text

    public_id, token = keys.token_generate()
    text = (
        f"{token} Authorization: Bearer x.y sk_test_abcdefgh whsec_abcdefgh0123 Authorization: z1"
    )

    once = redact_text(text)

    assert redact_text(once) == once
    assert once.startswith(f"cango_sk_{public_id}_[REDACTED] Authorization: Bearer [REDACTED]")


def test_an_object_in_an_extra_field_is_redacted_once_shown_as_text(lines):
    _, token = keys.token_generate()

    class Request:
        def __str__(self) -> str:
            return f"<Request GET /v1/models?key={token}>"

    logging.getLogger("obs-test").warning("odd request", extra={"request": Request()})

    assert token not in lines.text()
    assert "cango_sk_" in lines.all()[0]["request"]

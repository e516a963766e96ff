"""Structured JSON log lines carrying the current request, tenant, job and site.

The ids live in context variables set by ``RequestIdMiddleware``, by the Celery
task wrappers (``workers.tasks``) and by ``workers.dispatch`` while it calls a
site, so any logger anywhere picks them up without being passed them.

``RedactFilter`` (on every handler of ``settings.LOGGING``) removes secrets from a
record before any handler formats it: API key tokens, Stripe keys, webhook
secrets, ``Authorization`` values and anything under a secret-looking key of a
dict argument or ``extra`` field. It is the last line of defence, not a licence
to log secrets: the test suite fails if one appears in any log line
(``tests/logscan.py``).
"""

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
tenant_id_var: ContextVar[str] = ContextVar("tenant_id", default="")
job_id_var: ContextVar[str] = ContextVar("job_id", default="")
site_var: ContextVar[str] = ContextVar("site", default="")

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_CONTEXT_FIELDS = ("request_id", "tenant_id", "job_id", "site")


class RequestIdFilter(logging.Filter):
    """Copy the context variables onto the record; an explicit ``extra`` value wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.tenant_id = tenant_id_var.get()
        if not getattr(record, "job_id", ""):
            record.job_id = job_id_var.get()
        if not getattr(record, "site", ""):
            record.site = site_var.get()
        return True


@contextmanager
def log_context(*, job_id: object = None, site: str | None = None) -> Iterator[None]:
    """Tag every log line written inside the block with a job id and/or a site."""
    tokens = []
    if job_id is not None:
        tokens.append((job_id_var, job_id_var.set(str(job_id))))
    if site is not None:
        tokens.append((site_var, site_var.set(site)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


REDACTED = "[REDACTED]"
# The API key pattern keeps the public id (it only finds the row), the rest goes. Each
# pattern leaves its own output alone: a record may pass through several handlers.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (
        re.compile(
            r"\bcango_sk_(?![a-z2-7]{12}_\[)(?:([a-z2-7]{12})_(?=[A-Za-z0-9_-]{20}))?"
            r"[A-Za-z0-9_-]+"
        ),
        lambda m: f"cango_sk_{m[1]}_{REDACTED}" if m[1] else f"cango_sk_{REDACTED}",
    ),
    (re.compile(r"\b(sk|rk)_(live|test)_[A-Za-z0-9_]+"), r"\1_\2_" + REDACTED),
    (re.compile(r"\brk_[A-Za-z0-9_]{8,}"), "rk_" + REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9_+/=-]+"), "whsec_" + REDACTED),
    (
        re.compile(
            r"""((?:HTTP_)?Authorization['"]?\s*[:=]\s*['"]?)(?:(Bearer|Basic|Token)\s+)?[^\s'",}]+""",
            re.IGNORECASE,
        ),
        lambda m: f"{m[1]}{m[2]} {REDACTED}" if m[2] else f"{m[1]}{REDACTED}",
    ),
)
# Whole key names (or their last ``_`` part): ``prompt_tokens`` is a count, not a secret.
_SECRET_KEY_RE = re.compile(
    r"^(.*[_-])?(pass|passwd|password\d*|passphrase|secret|token|api[_-]?key|apikey"
    r"|authorization|cookie|signature)$",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: object, depth: int = 0) -> object:
    """A copy of ``value`` with secret-looking strings and dict entries replaced."""
    if depth > 5:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            key: REDACTED
            if isinstance(key, str) and _SECRET_KEY_RE.search(key) and item not in ("", None)
            else redact_value(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact_value(item, depth + 1) for item in value)
    return value


class RedactFilter(logging.Filter):
    """Take secrets out of the message, its arguments, the traceback and extra fields.

    The message is rendered here (arguments first redacted by key) and stored back
    without arguments, so every handler sees the same clean text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = redact_value(record.args)  # type: ignore[assignment]
        elif record.args:
            record.args = tuple(redact_value(arg) for arg in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_ATTRS or key in _CONTEXT_FIELDS:
                continue
            if _SECRET_KEY_RE.search(key) and value not in ("", None):
                record.__dict__[key] = REDACTED
            else:
                record.__dict__[key] = redact_value(value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra attributes passed to the logger become fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and value not in ("", None):
                entry[key] = value
        # A traceback already rendered (and redacted) by ``RedactFilter`` is used as is.
        if record.exc_text:
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        # Objects passed as extra fields (a request, an exception) are shown as text,
        # which the filter could not see: redact that text too.
        return json.dumps(entry, default=lambda value: redact_text(str(value)))

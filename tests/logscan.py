"""pytest plugin: the session fails if a secret appears in any log line.

For the whole session it keeps every log record the root logger emits, formatted
as the console handler formats it (JSON, through ``settings.LOGGING``'s filters,
redaction included), and at the end reads the log files written by the processes
the integration fixtures start (granian, Celery workers and beat, tritonserver):
every ``*.log`` under the session's base temporary directory. It then searches
all of it for

- every API key token minted during the session (``marketplace.keys.token_generate``
  is wrapped to collect them),
- every tenant webhook secret generated (the ``Tenant.webhook_secret`` default is
  wrapped), ``STRIPE_WEBHOOK_SECRET``, ``STRIPE_SECRET_KEY``, ``METRICS_TOKEN`` and
  ``SECRET_KEY``, read at the start and at the end of the session,
- the passwords the tests log in with (:data:`TEST_PASSWORDS`),
- and anything shaped like one of those secrets even if it was never collected
  (:data:`SECRET_SHAPES`).

A finding sets the session's exit status to failed (``pytest_sessionfinish``, after
the session fixtures have stopped their processes, so their last lines are read)
and is listed in the terminal summary. ``tests/test_logscan.py`` shows it failing.

Lines the redaction filter rewrote are counted in the summary: they mean some code
tried to log a secret and only the filter stopped it.

Records are captured at the root logger's level (``LOG_LEVEL``, INFO), which is
what production writes.
"""

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TEST_PASSWORDS = (
    "correct horse battery",  # tests/factories.py
    "a long enough passphrase 42",  # portal and Stripe flow tests
    "cango-demo-2026",  # seed_demo's published demo login
)
SECRET_SHAPES = (
    ("API key token", re.compile(r"cango_sk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}")),
    ("Stripe key", re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{12,}")),
    ("webhook secret", re.compile(r"\bwhsec_[A-Za-z0-9_+/=-]{16,}")),
)
SKIP_MARKER = ".logscan-skip"
MIN_SECRET_LENGTH = 8
REDACTED = "[REDACTED]"


@dataclass(frozen=True, slots=True)
class Finding:
    source: str
    line_number: int
    what: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line_number}: {self.what}"


def secrets_find(sources: Iterable[tuple[str, str]], secrets: Iterable[str]) -> list[Finding]:
    """Every line of ``sources`` (name, text) holding a known secret or a secret's shape.

    A finding names the kind of secret, never the secret itself, so the report does
    not leak what it found.
    """
    known = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len)
    findings = []
    for source, text in sources:
        for number, line in enumerate(text.splitlines(), start=1):
            hit = next((s for s in known if s in line), None)
            if hit is not None:
                findings.append(Finding(source, number, f"a collected secret ({hit[:4]}…)"))
                continue
            for name, shape in SECRET_SHAPES:
                if shape.search(line):
                    findings.append(Finding(source, number, f"something shaped like a {name}"))
                    break
    return findings


class _CaptureHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(level=logging.NOTSET)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is kept raw
            self.lines.append(f"{record.msg!r} {record.args!r}")


@dataclass
class LogScan:
    """The session's captured lines and collected secrets."""

    lines: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    findings: list[Finding] = field(default_factory=list)
    redacted_lines: int = 0
    files: int = 0
    handler: _CaptureHandler | None = None
    restore: list[Callable[[], None]] = field(default_factory=list)

    def attach(self) -> None:
        """(Re)attach the handler: ``logging.config.dictConfig`` replaces root handlers."""
        root = logging.getLogger()
        if self.handler is None:
            self.handler = _CaptureHandler(self.lines)
            console = next(
                (h for h in root.handlers if type(h.formatter).__name__ == "JsonFormatter"), None
            )
            if console is not None:
                self.handler.setFormatter(console.formatter)
                for log_filter in console.filters:
                    self.handler.addFilter(log_filter)
            else:
                from marketplace.logging import JsonFormatter, RedactFilter

                self.handler.setFormatter(JsonFormatter())
                self.handler.addFilter(RedactFilter())
        if self.handler not in root.handlers:
            root.addHandler(self.handler)

    def settings_secrets(self) -> None:
        try:
            from django.conf import settings

            if not settings.configured:
                return
            for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "METRICS_TOKEN"):
                self.secrets.add(str(getattr(settings, name, "") or ""))
            self.secrets.add(str(settings.SECRET_KEY))
        except ImportError:
            return

    def sources(self, basetemp: Path | None) -> Iterator[tuple[str, str]]:
        yield "log records", "\n".join(self.lines)
        if basetemp is None or not basetemp.exists():
            return
        skipped = {marker.parent for marker in basetemp.rglob(SKIP_MARKER)}
        for path in sorted(basetemp.rglob("*.log")):
            if path.is_file() and not any(parent in skipped for parent in path.parents):
                yield str(path), path.read_text(errors="replace")


def _wrap_token_generate(scan: LogScan) -> None:
    from marketplace import keys

    original = keys.token_generate

    def token_generate() -> tuple[str, str]:
        public_id, token = original()
        scan.secrets.add(token)
        return public_id, token

    keys.token_generate = token_generate
    scan.restore.append(lambda: setattr(keys, "token_generate", original))


def _wrap_webhook_secret_default(scan: LogScan) -> None:
    """``Tenant.webhook_secret``'s default is bound at class creation: wrap the field's."""
    from marketplace.models import Tenant

    model_field: Any = Tenant._meta.get_field("webhook_secret")
    original = model_field.default

    def webhook_secret_generate() -> str:
        secret = str(original())
        scan.secrets.add(secret)
        return secret

    model_field.default = webhook_secret_generate
    model_field.__dict__.pop("_get_default", None)  # a cached_property of the old default

    def restore() -> None:
        model_field.default = original
        model_field.__dict__.pop("_get_default", None)

    scan.restore.append(restore)


_SCAN_KEY = pytest.StashKey[LogScan]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SCAN_KEY] = LogScan()


def pytest_sessionstart(session: pytest.Session) -> None:
    scan = session.config.stash[_SCAN_KEY]
    scan.attach()
    scan.secrets.update(TEST_PASSWORDS)
    scan.settings_secrets()
    _wrap_token_generate(scan)
    try:
        from django.conf import settings

        if settings.configured:
            _wrap_webhook_secret_default(scan)
    except ImportError:
        pass


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash[_SCAN_KEY].attach()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the session fixtures' teardown (they run in an earlier sessionfinish)."""
    scan = session.config.stash[_SCAN_KEY]
    scan.settings_secrets()
    if scan.handler is not None:
        logging.getLogger().removeHandler(scan.handler)
    for undo in reversed(scan.restore):
        undo()
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = factory.getbasetemp() if factory is not None else None
    sources = list(scan.sources(basetemp))
    scan.files = len(sources) - 1
    scan.findings = secrets_find(sources, scan.secrets)
    scan.redacted_lines = sum(text.count(REDACTED) for _, text in sources)
    if scan.findings and session.exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    scan = config.stash.get(_SCAN_KEY, None)
    if scan is None:
        return
    if scan.findings:
        terminalreporter.section("secrets in logs", red=True, bold=True)
        for finding in scan.findings[:50]:
            terminalreporter.write_line(str(finding))
        terminalreporter.write_line(f"{len(scan.findings)} log line(s) hold a secret: FAILED")
    else:
        terminalreporter.write_line(
            f"logscan: no secret in {len(scan.lines)} log records and {scan.files} "
            f"subprocess log files ({len(scan.secrets)} secrets searched; "
            f"{scan.redacted_lines} redactions)"
        )

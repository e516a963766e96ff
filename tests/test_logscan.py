"""The secret-in-logs check (tests/logscan.py) finds what it must, and fails a session."""

import logging
import os
import textwrap
from pathlib import Path

import pytest

from marketplace import keys
from tests import logscan

ROOT = Path(__file__).resolve().parents[1]


def test_a_collected_secret_in_a_log_line_is_found_and_not_repeated():
    _, token = keys.token_generate()
    lines = [("worker.log", f'{{"msg": "ok"}}\n{{"msg": "calling with {token}"}}')]

    findings = logscan.secrets_find(lines, {token})

    assert [(f.source, f.line_number) for f in findings] == [("worker.log", 2)]
    assert token not in str(findings[0])


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer cango_sk_abcdefghijkl_" + "A" * 43,
        "stripe.api_key=sk_live_" + "x1" * 12,
        "signing with whsec_" + "Zz9" * 8,
    ],
)
def test_a_secret_never_collected_is_found_by_its_shape(line):
    assert logscan.secrets_find([("records", line)], set())


def test_clean_and_redacted_lines_are_not_findings():
    lines = [
        ("records", "job run cango_sk_abcdefghijkl_[REDACTED] whsec_[REDACTED] sk_test_[REDACTED]")
    ]

    assert logscan.secrets_find(lines, {"correct horse battery"}) == []


def test_a_session_whose_logs_hold_a_secret_fails(pytester: pytest.Pytester, monkeypatch):
    """A whole pytest run with the plugin: one test logs a password through logging,
    another writes a minted API key into a subprocess-style log file. Both pass, yet
    the session fails and names both places."""
    # This run's own files are not the outer session's logs.
    (pytester.path / logscan.SKIP_MARKER).write_text("")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makepyfile(
        test_planted=textwrap.dedent(
            """
            import logging

            from marketplace import keys


            def test_logs_a_password():
                logging.getLogger("planted").warning("login with correct horse battery")


            def test_a_worker_log_holds_a_key(tmp_path):
                _, token = keys.token_generate()
                (tmp_path / "worker.log").write_text("calling with " + token + "\\n")
            """
        )
    )

    result = pytester.runpytest_subprocess(
        "-p", "tests.logscan", "-p", "no:django", "-p", "no:cacheprovider"
    )

    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*secrets in logs*",
            "log records:*a collected secret*",
            "*worker.log:1: a collected secret*",
        ]
    )


def test_a_clean_session_passes(pytester: pytest.Pytester, monkeypatch):
    (pytester.path / logscan.SKIP_MARKER).write_text("")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytester.makepyfile(
        test_clean="""
        import logging

        def test_logs_nothing_secret():
            logging.getLogger("clean").warning("nothing to see")
        """
    )

    result = pytester.runpytest_subprocess(
        "-p", "tests.logscan", "-p", "no:django", "-p", "no:cacheprovider"
    )

    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["logscan: no secret in *"])


def test_the_capture_handler_sees_what_the_console_handler_writes(caplog):
    """The plugin is active in this session: its handler sits on the root logger."""
    root = logging.getLogger()
    assert any(type(h).__name__ == "_CaptureHandler" for h in root.handlers)

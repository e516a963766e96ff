"""The process table, and the Procfile and systemd units generated from it."""

from pathlib import Path

import pytest

from deploy import procs


def test_committed_procfile_and_units_are_what_procs_renders():
    """Editing a command in one place only (or a generated file by hand) fails here."""
    for path, text in procs.rendered().items():
        assert path.exists(), f"{path} missing: run `python -m deploy.procs`"
        assert path.read_text() == text, f"{path} is stale: run `python -m deploy.procs`"
    assert procs.main(["--check"]) == 0


def test_argv_fills_every_variable_and_resolves_the_program_in_the_venv():
    command = procs.argv(
        "site_worker",
        {"CANGO_WORKER_SITE": "tx1", "CANGO_WORKER_CONCURRENCY": "3"},
        Path("/venv/bin"),
    )
    assert command[0] == "/venv/bin/celery"
    assert command[command.index("-Q") + 1] == "site.tx1"
    assert command[command.index("-n") + 1] == "tx1@%h"  # Celery's own host-name specifier
    assert command[command.index("--concurrency") + 1] == "3"


def test_argv_refuses_a_missing_variable_rather_than_passing_an_empty_argument():
    with pytest.raises(KeyError, match="CANGO_WORKER_SITE"):
        procs.argv("site_worker", {"CANGO_WORKER_CONCURRENCY": "3"}, Path("/venv/bin"))


def test_units_escape_percent_and_site_unit_checks_its_env_file_names_the_instance():
    unit = procs.unit_render(procs.proc("site_worker"))
    assert "-n ${CANGO_WORKER_SITE}@%%h" in unit  # %h alone would be systemd's home dir
    assert "EnvironmentFile=/etc/cango/site-%i.env" in unit
    assert 'ExecStartPre=/usr/bin/test "${CANGO_WORKER_SITE}" = "%i"' in unit


def test_exactly_one_beat_in_the_process_table():
    assert [p.name for p in procs.PROCS if " beat" in " ".join(p.argv)] == ["beat"]

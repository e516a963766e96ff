# The two README commands: `make run` (the whole system on this machine) and
# `make test` (the test suite). Both install the dependencies first if needed.
.DEFAULT_GOAL := help
.PHONY: help install chromium run test lint fmt clean

VENV ?= .venv
PY = $(VENV)/bin/python
PYTEST_ARGS ?=

help:
	@echo "make install  create $(VENV) and install the dependencies (with the dev extra)"
	@echo "make run      run the whole system on http://127.0.0.1:8000 (Ctrl-C stops it)"
	@echo "make test     run the tests (PYTEST_ARGS='-k name -x' to narrow them)"
	@echo "make lint     ruff check, ruff format --check, mypy"
	@echo "make fmt      apply ruff's fixes and formatting"
	@echo "make clean    remove var/ (SQLite demo database, static files, embedded PostgreSQL)"

# Re-runs whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev,sites]"
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m deploy.run

# The browser tests drive Debian's Chromium; installed once here (we run as root).
# Playwright's own browser download (`playwright install`) is never used.
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

test: install chromium
	$(PY) -m deploy.testrun $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf var/

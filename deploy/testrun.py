"""Run the test suite: ``python -m deploy.testrun [pytest args...]`` (``make test``).

* PostgreSQL: ``DATABASE_URL`` if set (environment or ``.env``), else the server on
  127.0.0.1:5432 if it accepts user ``postgres``, else an embedded PostgreSQL with its
  data in ``var/embedded-postgres`` (kept, so ``--reuse-db`` stays fast).
* Redis: ``REDIS_URL`` if set, else 127.0.0.1:6379 if it answers, else a private
  ``redis-server``.

pytest runs as a child with ``DATABASE_URL``, ``REDIS_URL`` and
``DJANGO_SETTINGS_MODULE=config.settings.test`` exported; private servers are
stopped afterwards and pytest's exit code is returned.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from deploy.services import (
    BASE_DIR,
    VAR_DIR,
    EmbeddedPostgres,
    PrivateRedis,
    ServiceError,
    exit_code_of,
    load_dotenv,
    postgres_ensure,
    raise_keyboard_interrupt,
    redact,
    redis_ensure,
)

TEST_REDIS_URL = "redis://127.0.0.1:6379/1"


def describe(url: str, handle: EmbeddedPostgres | PrivateRedis | None, variable: str) -> str:
    """Where a service comes from, without secrets."""
    if handle is not None:
        return handle.describe()
    origin = f"from {variable}" if os.environ.get(variable) else "local server"
    return f"{redact(url)} ({origin})"


def run_pytest(args: Sequence[str], env: dict[str, str]) -> int:
    """Run pytest in the foreground process group; return its exit status.

    Ctrl-C at the terminal reaches pytest directly (same process group), so it is
    only waited for here; SIGTERM and SIGHUP sent to this process are passed on.
    """
    process = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=BASE_DIR, env=env)

    def forward(signum: int, frame: FrameType | None) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    signal.signal(signal.SIGINT, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    return exit_code_of(process.wait())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns pytest's exit code (2 if a service could not be provided)."""
    args = list(sys.argv[1:] if argv is None else argv)
    load_dotenv()
    # Until pytest runs, SIGTERM unwinds like Ctrl-C so the finally below runs.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    postgres: EmbeddedPostgres | None = None
    redis: PrivateRedis | None = None
    try:
        database_url, postgres = postgres_ensure(os.environ.get("DATABASE_URL") or None, VAR_DIR)
        # Database 1 of a shared local Redis keeps tests apart from a demo on database 0.
        redis_url, redis = redis_ensure(
            os.environ.get("REDIS_URL") or None, VAR_DIR, default_url=TEST_REDIS_URL
        )
        print(
            f"testrun: PostgreSQL {describe(database_url, postgres, 'DATABASE_URL')}; "
            f"Redis {describe(redis_url, redis, 'REDIS_URL')}",
            flush=True,
        )
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            DJANGO_SETTINGS_MODULE="config.settings.test",
        )
        if os.environ.get("CI") and "--create-db" not in args:
            # A CI run starts from the migrations as committed, never a kept test database.
            args = ["--create-db", *args]
        return run_pytest(args, env)
    except ServiceError as exc:
        print(f"testrun: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntestrun: interrupted", file=sys.stderr)
        return 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not skip this
            signal.signal(signum, signal.SIG_IGN)
        for handle in (redis, postgres):
            if handle is not None:
                try:
                    handle.stop()
                except Exception as exc:  # report it and go on stopping the rest
                    print(f"testrun: could not stop {handle.describe()}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""Run the whole system on one machine: ``python -m deploy.run [--port 8000]`` (``make run``).

* Database: ``DATABASE_URL`` if set (environment or ``.env``), else the SQLite file
  ``var/db.sqlite3`` that ``config.settings.dev`` defaults to.
* Redis: ``REDIS_URL`` if set, else 127.0.0.1:6379 if it answers, else a private
  ``redis-server`` that is stopped again on exit.
* Prepares the database (migrate, collectstatic, seed_demo), then supervises the
  web server, a Celery worker and Celery beat until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.services import (
    BASE_DIR,
    VAR_DIR,
    PrivateRedis,
    ServiceError,
    Supervisor,
    exit_code_of,
    http_status,
    load_dotenv,
    raise_keyboard_interrupt,
    redact,
    redis_ensure,
    tcp_reachable,
)

HOST = "127.0.0.1"
HEALTH_TIMEOUT_SECONDS = 90.0
BIN = Path(sys.executable).parent  # the venv's bin/, not resolved: it may be a symlink
WEB_ARGS = ["--interface", "wsgi", "config.wsgi:application", "--host", HOST]
WEB_ARGS += ["--workers", "1", "--blocking-threads", "4"]
WORKER_ARGS = ["-A", "config", "worker", "--loglevel", "INFO", "--concurrency", "2"]
BEAT_ARGS = ["-A", "config", "beat", "--loglevel", "INFO"]


class StepFailed(RuntimeError):
    """A preparation step (``manage.py ...``) exited non-zero."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def say(message: str) -> None:
    """Print a line of the launcher's own before the supervisor takes over the output."""
    print(f"==> {message}", flush=True)


def venv_executable(name: str) -> Path:
    """An entry point installed next to ``sys.executable`` (granian, celery)."""
    path = BIN / name
    if not path.exists():
        raise ServiceError(f"{path} not found; run `make install` first")
    return path


def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
    """Run ``manage.py <args>``; output goes to the terminal (and is returned if ``capture``)."""
    say("manage.py " + " ".join(args))
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE if capture else None,
        check=False,
    )
    output = result.stdout.decode(errors="replace") if capture else ""
    if output:
        print(output, end="" if output.endswith("\n") else "\n", flush=True)
    if result.returncode != 0:
        code = exit_code_of(result.returncode)
        raise StepFailed(f"manage.py {' '.join(args)} failed (exit status {code})", code or 1)
    return output


def banner(base: str, seed_output: str) -> str:
    """The lines shown once the web server answers."""
    rule = "=" * 72
    lines = [
        rule,
        "Cango is running.",
        f"  Portal   : {base}/",
        f"  Admin    : {base}/admin/",
        f"  API docs : {base}/api/docs/",
        *(f"  {line.strip()}" for line in seed_output.splitlines() if line.strip()),
        "Ctrl-C stops everything.",
        rule,
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m deploy.run", description="Run Cango.")
    parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
    return parser.parse_args(argv)


def serve(port: int, env: dict[str, str], seed_output: str, redis: PrivateRedis | None) -> int:
    """Start and supervise the long-running processes; return the exit code."""
    base = env["SITE_URL"]
    granian, celery = venv_executable("granian"), venv_executable("celery")
    with Supervisor(cwd=BASE_DIR, env=env) as sup:
        if redis is not None:
            sup.watch("redis", redis.process)
        # One line per process; later: Triton per site, the Stripe stand-in, a worker per queue.
        sup.start("web", [granian, *WEB_ARGS, "--port", str(port)])
        sup.start("worker", [celery, *WORKER_ARGS, "-Q", "default", "-n", "default@%h"])
        sup.start("beat", [celery, *BEAT_ARGS, "--schedule", VAR_DIR / "celerybeat-schedule"])

        health = f"{base}/v1/health"
        last: list[int | None] = [None]

        def healthy() -> bool:
            last[0] = http_status(health)
            return last[0] == 200

        if sup.wait_until(healthy, timeout=HEALTH_TIMEOUT_SECONDS):
            sup.say(banner(base, seed_output))
        elif not sup.stopping:
            answer = "no answer" if last[0] is None else f"last status {last[0]}"
            sup.fail(f"{health} did not return 200 within {HEALTH_TIMEOUT_SECONDS:g} s ({answer})")
        return sup.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    load_dotenv()
    VAR_DIR.mkdir(exist_ok=True)
    if tcp_reachable(HOST, args.port):
        print(f"Port {args.port} on {HOST} is in use; pick another: --port N", file=sys.stderr)
        return 2
    # Until the supervisor takes over, SIGTERM unwinds like Ctrl-C so the finally below runs.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    redis: PrivateRedis | None = None
    try:
        redis_url, redis = redis_ensure(os.environ.get("REDIS_URL") or None, VAR_DIR)
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings.dev",
            REDIS_URL=redis_url,
            SITE_URL=f"http://{HOST}:{args.port}",
            PYTHONUNBUFFERED="1",
        )
        database = os.environ.get("DATABASE_URL")
        say(f"Database: {redact(database) if database else 'SQLite var/db.sqlite3'}")
        say(f"Redis   : {redis.describe() if redis else redact(redis_url)}")
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput")
        seed_output = manage(env, "seed_demo", capture=True)
        return serve(args.port, env, seed_output, redis)
    except ServiceError as exc:
        print(f"deploy.run: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"deploy.run: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("\ndeploy.run: interrupted", file=sys.stderr)
        return 130
    finally:
        if redis is not None:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not skip this
                signal.signal(signum, signal.SIG_IGN)
            redis.stop()
            say("private redis-server stopped")


if __name__ == "__main__":
    sys.exit(main())

"""Run the whole system on one machine: ``python -m deploy.run [--port 8000]`` (``make run``).

* Database: ``DATABASE_URL`` if set (environment or ``.env``), else the SQLite file
  ``var/db.sqlite3`` that ``config.settings.dev`` defaults to.
* Redis: ``REDIS_URL`` if set, else 127.0.0.1:6379 if it answers, else a private
  ``redis-server`` that is stopped again on exit.
* Prepares the database (migrate, seed_demo; static files are served from the apps by WhiteNoise).
* Starts three Triton inference sites (real ``tritonserver`` processes from the
  nvidia-pytriton wheel, see :mod:`deploy.triton`) on free loopback ports, logging to
  ``var/triton/site-N.log``: each serves the small test models (echo, classifier,
  text_upper, counter_int64, slow), ``site-1`` also the MiniLM embedding model. Each
  is registered with ``manage.py triton_register`` under its region and power price
  (:data:`SITES`); registering again updates the server's URLs, so re-running on the
  same database works although the ports change every run.
* Then supervises the web server, the Celery worker of the ``default`` queue (health
  checks, the job reaper, webhooks), one Celery worker per site queue
  (``site.<slug>``, with ``CANGO_WORKER_SITE=<slug>``) and Celery beat, and prints a
  banner with the logins, the demo API key, the sites and example requests.
* The web server's processes share ``var/prometheus`` (emptied at each start) as
  ``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics`` on any of them reports all of them.
* Stops on Ctrl-C, SIGTERM, or when any of these processes (a Triton site included)
  exits: first the web server and the Celery processes, then the Triton sites (so no
  client holds a connection open that would delay their shutdown), then a private
  ``redis-server``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from deploy import procs
from deploy.services import (
    BASE_DIR,
    VAR_DIR,
    PrivateRedis,
    ServiceError,
    Supervisor,
    exit_code_of,
    http_status,
    load_dotenv,
    port_free,
    raise_keyboard_interrupt,
    redact,
    redis_ensure,
    tcp_reachable,
)
from deploy.triton import (
    LIGHT_MODELS,
    SiteProcess,
    TritonError,
    sites_start,
    sites_stop,
    tritonserver_env,
)

HOST = "127.0.0.1"
HEALTH_TIMEOUT_SECONDS = 90.0
BIN = Path(sys.executable).parent  # the venv's bin/, not resolved: it may be a symlink
# The variables of the commands in deploy/procs.py (the Procfile's and the systemd
# units' too) for one machine. A site worker's job is mostly waiting on its Triton
# server's HTTP reply, so its processes cost memory rather than CPU; two let a job on
# the ``slow`` model run while another job at the same site goes ahead, and 3 sites x
# 3 processes stay small.
PROC_VARS = {
    "CANGO_WEB_HOST": HOST,
    "CANGO_WEB_WORKERS": "1",
    "CANGO_WEB_THREADS": "4",
    "CANGO_WORKER_CONCURRENCY": "2",
    "CANGO_BEAT_SCHEDULE": str(VAR_DIR / "celerybeat-schedule"),
}
SITE_SLUG_PREFIX = "site"
TRITON_DIR = VAR_DIR / "triton"
PROMETHEUS_DIR = VAR_DIR / "prometheus"
CATALOG_DEFAULTS = "deploy/catalog.json"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class SitePlan:
    """One Triton site to start: where it is said to be, its power price, its models."""

    region: str
    power_price: str  # USD per MWh
    models: tuple[str, ...]


# site-1, site-2, site-3 in this order. MiniLM (real weights, about 5 s to load) only
# on the first: one copy is enough to try /v1/embeddings.
SITES = (
    SitePlan("us-tx", "28", (*LIGHT_MODELS, "minilm")),
    SitePlan("us-tx", "35", LIGHT_MODELS),
    SitePlan("ca-qc", "22", LIGHT_MODELS),
)


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


def prometheus_dir_reset() -> Path:
    """An empty directory for the web processes' metric files (prometheus_client's
    multi-process mode); files left by an earlier run would add to this run's counts."""
    shutil.rmtree(PROMETHEUS_DIR, ignore_errors=True)
    PROMETHEUS_DIR.mkdir(parents=True)
    return PROMETHEUS_DIR


def sites_launch(env: dict[str, str]) -> list[SiteProcess]:
    """Start the Triton sites of :data:`SITES` and wait until all are ready.

    ``sites_start`` runs in a helper thread, so Ctrl-C or SIGTERM (a KeyboardInterrupt
    in the main thread) interrupts only the wait here: the sites finish starting and are
    stopped at once. Interrupted inside ``sites_start`` itself, the site whose start it
    was waiting for would never be handed back and would keep running.
    """
    say(f"starting {len(SITES)} Triton sites (logs in {TRITON_DIR.relative_to(BASE_DIR)}/)")
    started = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-start")
    future = pool.submit(
        sites_start,
        len(SITES),
        [list(plan.models) for plan in SITES],
        TRITON_DIR,
        slug_prefix=SITE_SLUG_PREFIX,
        env=tritonserver_env(env),
    )
    try:
        sites = future.result()
    except KeyboardInterrupt:
        for signum in SIGNALS:  # the wait below must not be cut short
            signal.signal(signum, signal.SIG_IGN)
        say("interrupted; stopping the Triton sites once they have started")
        with contextlib.suppress(Exception):
            sites_stop(future.result())
        raise
    finally:
        pool.shutdown(wait=False)
    say(f"{len(sites)} Triton sites ready in {time.monotonic() - started:.1f} s")
    return sites


def sites_register(env: dict[str, str], sites: Sequence[SiteProcess]) -> None:
    """``manage.py triton_register`` for each site (creates or updates site and server)."""
    for site, plan in zip(sites, SITES, strict=True):
        manage(
            env,
            "triton_register",
            "--site", site.slug,
            "--url", site.http_url,
            "--grpc-url", site.grpc_url,
            "--metrics-url", site.metrics_url,
            "--region", plan.region,
            "--power-price", plan.power_price,
            "--defaults", CATALOG_DEFAULTS,
        )  # fmt: skip


def sites_report_deaths(sites: Sequence[SiteProcess]) -> None:
    """Before stopping the sites: point at the log of any that exited by itself."""
    for site in sites:
        if site.terminated or site.running():
            continue
        code = exit_code_of(site.popen.returncode)
        try:
            tail = site.log_path.read_text(errors="replace").splitlines()[-10:]
        except OSError:
            tail = []
        print(
            f"deploy.run: Triton site {site.slug} exited (status {code}); end of {site.log_path}:",
            *(f"    {line}" for line in tail),
            sep="\n",
            file=sys.stderr,
            flush=True,
        )


def demo_key(seed_output: str) -> str:
    """The API key ``seed_demo`` printed, or a placeholder if it printed none."""
    match = re.search(r"^Demo API key\s*:\s*(\S+)", seed_output, re.MULTILINE)
    return match[1] if match else "$CANGO_API_KEY"


def banner(
    base: str, seed_output: str, sites: Sequence[SiteProcess], *, stripe_standin: bool
) -> str:
    """The lines shown once the web server answers."""
    rule = "=" * 72
    key = demo_key(seed_output)
    auth = f'-H "Authorization: Bearer {key}" -H "Content-Type: application/json"'
    tensor = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}'
    embed = '{"model":"minilm","input":"hello world"}'
    lines = [
        rule,
        "Cango is running.",
        f"  Portal   : {base}/",
        f"  Admin    : {base}/admin/",
        f"  API docs : {base}/api/docs/",
        *(f"  {line.strip()}" for line in seed_output.splitlines() if line.strip()),
        "Triton sites (logs in var/triton/<site>.log):",
        *(
            f"  {site.slug:<7} {plan.region:<6} ${plan.power_price}/MWh  {site.http_url:<22}  "
            + ",".join(site.models)
            for site, plan in zip(sites, SITES, strict=True)
        ),
        "Inference (KServe v2) and embeddings (OpenAI-style):",
        f"  curl -i {auth} -d '{tensor}' {base}/v2/models/echo/infer",
        f"  curl {auth} -d '{embed}' {base}/v1/embeddings",
        "Payments: Billing → Buy credits opens the Stripe stand-in's checkout page"
        if stripe_standin
        else "Payments: Stripe (STRIPE_SECRET_KEY is set)",
        "Ctrl-C stops everything.",
        rule,
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m deploy.run", description="Run Cango.")
    parser.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
    return parser.parse_args(argv)


def serve(
    port: int,
    env: dict[str, str],
    seed_output: str,
    redis: PrivateRedis | None,
    sites: Sequence[SiteProcess],
) -> int:
    """Start and supervise the long-running processes; return the exit code.

    The Triton sites and a private Redis are only watched (their exit stops everything);
    ``main`` stops them after the supervisor has stopped the processes that use them.
    """
    base = env["SITE_URL"]
    for program in ("granian", "celery"):
        venv_executable(program)
    with Supervisor(cwd=BASE_DIR, env=env) as sup:
        if redis is not None:
            sup.watch("redis", redis.process)
        for site in sites:
            sup.watch(f"triton-{site.slug}", site.popen)
        stripe_port = env.get("CANGO_STRIPE_STANDIN_PORT")
        if stripe_port:
            sup.start(
                "stripe",
                [
                    sys.executable, "-m", "deploy.stripe_server",
                    "--host", HOST, "--port", stripe_port,
                    "--webhook-url", f"{base}/billing/stripe/webhook",
                    "--webhook-secret", env["STRIPE_WEBHOOK_SECRET"],
                ],
            )  # fmt: skip
        variables = {**PROC_VARS, "PORT": str(port)}
        sup.start(
            "web",
            procs.argv("web", variables, BIN),
            env={"PROMETHEUS_MULTIPROC_DIR": str(prometheus_dir_reset())},
        )
        sup.start("worker", procs.argv("worker", variables, BIN))
        for site in sites:
            site_vars = {**variables, "CANGO_WORKER_SITE": site.slug}
            sup.start(
                f"worker-{site.slug}",
                procs.argv("site_worker", site_vars, BIN),
                env={"CANGO_WORKER_SITE": site.slug},
            )
        sup.start("beat", procs.argv("beat", variables, BIN))

        health = f"{base}/v1/health"
        last: list[int | None] = [None]

        def healthy() -> bool:
            last[0] = http_status(health)
            return last[0] == 200

        if sup.wait_until(healthy, timeout=HEALTH_TIMEOUT_SECONDS):
            sup.say(banner(base, seed_output, sites, stripe_standin=bool(stripe_port)))
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
    sites: list[SiteProcess] = []
    try:
        redis_url, redis = redis_ensure(os.environ.get("REDIS_URL") or None, VAR_DIR)
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings.dev",
            REDIS_URL=redis_url,
            SITE_URL=f"http://{HOST}:{args.port}",
            PYTHONUNBUFFERED="1",
        )
        if not os.environ.get("STRIPE_SECRET_KEY"):
            # No Stripe account configured: payments go to the project's Stripe-compatible
            # server, in test mode, so the demo can buy credits end to end.
            stripe_port = str(port_free())
            env.update(
                CANGO_STRIPE_STANDIN_PORT=stripe_port,
                STRIPE_API_BASE=f"http://{HOST}:{stripe_port}",
                STRIPE_SECRET_KEY="sk_test_cango_demo",  # noqa: S106 - the local stand-in's key
                STRIPE_WEBHOOK_SECRET="whsec_" + secrets.token_hex(16),
            )
            say(f"Payments: Stripe stand-in on {env['STRIPE_API_BASE']} (test mode)")
        database = os.environ.get("DATABASE_URL")
        say(f"Database: {redact(database) if database else 'SQLite var/db.sqlite3'}")
        say(f"Redis   : {redis.describe() if redis else redact(redis_url)}")
        manage(env, "migrate", "--noinput")
        seed_output = manage(env, "seed_demo", capture=True)
        sites = sites_launch(env)
        sites_register(env, sites)
        return serve(args.port, env, seed_output, redis, sites)
    except (ServiceError, TritonError) as exc:
        print(f"deploy.run: {exc}", file=sys.stderr)
        return 2
    except StepFailed as exc:
        print(f"deploy.run: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("\ndeploy.run: interrupted", file=sys.stderr)
        return 130
    finally:
        # A second Ctrl-C must not skip this; the handlers come back afterwards.
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in SIGNALS}
        if sites:
            sites_report_deaths(sites)
            started = time.monotonic()
            sites_stop(sites)
            say(f"Triton sites stopped ({time.monotonic() - started:.1f} s)")
        if redis is not None:
            redis.stop()
            say("private redis-server stopped")
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())

"""The deployment across machines, run from the committed process files.

The central group (granian, beat, the ``default`` worker) and one worker group per
site are started from the ``ExecStart=`` lines of ``deploy/systemd/`` with the
variables of the example env files (the Procfile's lines must expand to the same
commands), each in its own process session as if on its own machine, against the
test PostgreSQL and Redis and two real tritonserver sites. Jobs pinned to each
site's region must run there and be taken by that site's group; a stopped group's
queued work must wait for it (the other group does not take it) and run when it is
back.
"""

import json
import os
import re
import shlex
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from config.redis_client import redis_client
from deploy import procs
from deploy import triton as triton_launcher
from deploy.triton import SiteProcess
from marketplace.models import Job
from tests.integration.conftest import (
    ROOT,
    STRIPE_KEY,
    STRIPE_WEBHOOK_SECRET,
    WORKER_ENV,
    _database_url,
    catalog_defaults,
    funded_tenant,
    wait_for,
)
from workers import health, routing, services
from workers.models import Site

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

BIN = Path(sys.executable).parent
EXAMPLES = ROOT / "deploy" / "examples"
# Site slugs of their own, so a session-wide cluster of other modules (which
# consumes site.it-1 and site.it-2) cannot take these queues' work.
SITE_A, SITE_B = "dep-a", "dep-b"
REGION_A, REGION_B = "us-tx", "ca-qc"
ECHO = {
    "model": "echo",
    "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}],
}
JOBS_PER_SITE = 3


def env_file_read(path: Path) -> dict[str, str]:
    """``KEY=value`` lines as systemd's ``EnvironmentFile=`` reads them (no quotes used)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def unit_read(path: Path) -> dict[str, list[str]]:
    """The ``Key=value`` lines of a unit file, every value of each key in order."""
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


def unit_line(unit: str, key: str, env: Mapping[str, str], instance: str = "") -> list[str]:
    """A unit's one ``key=`` command line as systemd would run it: specifiers, then variables."""
    values = unit_read(procs.SYSTEMD_DIR / unit)[key]
    assert len(values) == 1
    specifiers = {"%": "%", "i": instance}
    line = re.sub(r"%(.)", lambda m: specifiers[m[1]], values[0])
    return [string.Template(token).substitute(env) for token in shlex.split(line)]


def unit_command(unit: str, env: Mapping[str, str], instance: str = "") -> list[str]:
    """A unit's ``ExecStart=``, its program taken from this virtualenv."""
    tokens = unit_line(unit, "ExecStart", env, instance)
    assert tokens[0].startswith(f"{procs.INSTALL_DIR}/.venv/bin/")
    return [str(BIN / Path(tokens[0]).name), *tokens[1:]]


def procfile_command(name: str, env: Mapping[str, str]) -> list[str]:
    """A Procfile line as a runner's shell would expand it."""
    lines = dict(
        line.split(":", 1)
        for line in procs.PROCFILE.read_text().splitlines()
        if line and not line.startswith("#")
    )
    program, *args = shlex.split(lines[name])
    return [str(BIN / program), *(string.Template(arg).substitute(env) for arg in args)]


@dataclass
class Group:
    """Processes of one 'machine': each in its own session, stopped as a whole."""

    name: str
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)  # runs of each process

    def log(self, proc: str) -> Path:
        return self.workdir / f"{self.name}-{proc}.log"

    def start(self, proc: str, argv: list[str], env: Mapping[str, str]) -> None:
        self.starts[proc] = self.starts.get(proc, 0) + 1
        # Appending: a restarted process adds to the log its first run wrote.
        with self.log(proc).open("ab") as log:
            self.processes[proc] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_worker_ready(self, proc: str, timeout: float = 45.0) -> None:
        """Until Celery prints ``ready.`` for the current run of ``proc``."""
        popen = self.processes[proc]

        def ready() -> bool:
            if popen.poll() is not None:
                raise AssertionError(f"{proc} exited: {self.log(proc).read_text()[-3000:]}")
            return self.log(proc).read_text(errors="replace").count(" ready.") >= self.starts[proc]

        wait_for(ready, timeout=timeout, interval=0.2)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group (Celery's warm shutdown), SIGKILL what lingers."""
        for popen in self.processes.values():
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGTERM)
        for popen in self.processes.values():
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        self.processes.clear()

    def kill(self) -> None:
        """The machine is lost: SIGKILL, nothing gets to say goodbye."""
        for popen in self.processes.values():
            if popen.poll() is None:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=10)
        self.processes.clear()


@dataclass
class Deployment:
    """What the fixture started: the web tier's URL and one group per machine."""

    web_port: int
    workdir: Path
    groups: dict[str, Group]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def site_env(self, slug: str) -> dict[str, str]:
        return _machine_env(self.workdir, self.web_port, _site_env_file(self.workdir, slug))

    def site_start(self, slug: str, *, wait: bool = True) -> None:
        """Start a site's worker from ``cango-worker@<slug>.service`` and its env files."""
        env = self.site_env(slug)
        check = unit_line("cango-worker@.service", "ExecStartPre", env, instance=slug)
        assert subprocess.run(check, check=False, timeout=10).returncode == 0
        command = unit_command("cango-worker@.service", env, instance=slug)
        assert command == procfile_command("site_worker", env)
        assert command[command.index("-Q") + 1] == f"site.{slug}"
        self.groups[slug].start("worker", command, env)
        if wait:
            self.groups[slug].wait_worker_ready("worker")


def _machine_env(workdir: Path, web_port: int, site_env: Path | None = None) -> dict[str, str]:
    """The example env files, with only what points at this test's services replaced."""
    env = env_file_read(EXAMPLES / "cango.env.example")
    if site_env is not None:
        env.update(env_file_read(site_env))
    env.update(
        DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL,
        SECRET_KEY="deploy-test-" + "k" * 40,
        STRIPE_SECRET_KEY=STRIPE_KEY,
        STRIPE_WEBHOOK_SECRET=STRIPE_WEBHOOK_SECRET,
        ALLOWED_HOSTS="127.0.0.1",
        SITE_URL=f"http://127.0.0.1:{web_port}",
        SECURE_SSL_REDIRECT="false",  # plain HTTP on loopback; TLS ends at the proxy
        PORT=str(web_port),
        CANGO_BEAT_SCHEDULE=str(workdir / "celerybeat-schedule"),
        **WORKER_ENV,
    )
    if site_env is not None:
        # As the site example says: a site machine holds no Stripe keys.
        for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
            env.pop(name)
    # What systemd gives a service: its env files and a plain PATH, not this shell's.
    return {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", **env}


def _site_env_file(workdir: Path, slug: str) -> Path:
    """A site's env file made from the example the way docs/operations.md says."""
    example = (EXAMPLES / "site-tx1.env.example").read_text()
    path = workdir / f"site-{slug}.env"
    path.write_text(example.replace("CANGO_WORKER_SITE=tx1", f"CANGO_WORKER_SITE={slug}"))
    return path


def _register(site: SiteProcess, slug: str, region: str, power: str) -> None:
    services.server_register(
        site_slug=slug,
        http_url=site.http_url,
        grpc_url=site.grpc_url,
        metrics_url=site.metrics_url,
        region=region,
        power_price_usd_per_mwh=Decimal(power),
        defaults=catalog_defaults(),
    )


def _post(url: str, token: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


JOB_RUN_DONE = re.compile(r"Task workers\.job_run\[[0-9a-f-]+\] succeeded in \S+: '(\w+)'")


def job_outcomes(log: Path) -> Counter[str]:
    """How the ``job_run`` tasks a worker's log shows ended (``succeeded``, ``not_claimed``...).

    Celery's own line for each task it ran; the job's id is not in it, so the tests
    pair these counts with the sites recorded on the job rows.
    """
    return Counter(JOB_RUN_DONE.findall(log.read_text(errors="replace")))


def jobs_run(log: Path) -> int:
    """Jobs a worker ran to completion. Any outcome but a duplicate message's
    ``not_claimed`` (the reaper may enqueue a slow-to-start job twice) fails: a
    ``rerouted`` would mean the worker took another site's job."""
    outcomes = job_outcomes(log)
    assert set(outcomes) <= {"succeeded", "not_claimed"}, outcomes
    return outcomes["succeeded"]


def jobs_run_reach(log: Path, count: int) -> None:
    """Wait for Celery's line of a task that has already committed its job (it is
    written just after), then insist the count is exact."""
    wait_for(lambda: jobs_run(log) >= count, timeout=10, interval=0.2)
    assert jobs_run(log) == count


@pytest.fixture
def deployment(
    sites: list[SiteProcess], transactional_db: None, tmp_path: Path
) -> Iterator[Deployment]:
    """Central group and two site groups, all from the process files; stopped after."""
    _register(sites[0], SITE_A, REGION_A, "30")
    _register(sites[1], SITE_B, REGION_B, "40")
    redis_client().delete("default", f"site.{SITE_A}", f"site.{SITE_B}", routing.HEALTH_KEY)
    routing.reset()
    health.servers_check()
    groups = {name: Group(name, tmp_path) for name in ("central", SITE_A, SITE_B)}
    deployed = Deployment(triton_launcher.port_free(), tmp_path, groups)
    try:
        central_env = _machine_env(tmp_path, deployed.web_port)
        for proc in ("web", "beat", "worker"):
            unit = procs.proc(proc).unit
            command = unit_command(unit, central_env)
            assert command == procfile_command(proc, central_env), unit
            groups["central"].start(proc, command, central_env)
        deployed.site_start(SITE_A, wait=False)
        deployed.site_start(SITE_B, wait=False)
        for group in groups.values():
            group.wait_worker_ready("worker")

        def web_live() -> bool:
            return triton_launcher.http_get(f"{deployed.base}/v1/health/live") is not None

        wait_for(web_live, timeout=30, interval=0.2)
        yield deployed
    finally:
        for group in groups.values():
            group.stop()


def _submit(base: str, token: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        status, body = _post(f"{base}/v1/jobs", token, ECHO)
        assert status == 202, body
        ids.append(body["id"])
    return ids


def _all_finished(ids: list[str]) -> bool:
    return all(
        status in ("succeeded", "failed", "expired", "canceled")
        for status in Job.objects.filter(public_id__in=ids).values_list("status", flat=True)
    )


def test_two_site_worker_groups_each_run_their_sites_jobs_and_wait_for_their_own(
    deployment: Deployment,
):
    started = time.monotonic()
    base = deployment.base
    tenant_a, _, token_a, _ = funded_tenant(10_000_000)
    tenant_b, _, token_b, _ = funded_tenant(10_000_000)
    tenant_a.region_pin, tenant_b.region_pin = REGION_A, REGION_B
    tenant_a.save(update_fields=["region_pin"])
    tenant_b.save(update_fields=["region_pin"])
    group_a, group_b = deployment.groups[SITE_A], deployment.groups[SITE_B]
    log_a, log_b = group_a.log("worker"), group_b.log("worker")

    # Both groups up: each site's jobs run at that site, taken by that site's group.
    first_a, first_b = _submit(base, token_a, JOBS_PER_SITE), _submit(base, token_b, JOBS_PER_SITE)
    wait_for(lambda: _all_finished(first_a + first_b), timeout=60, interval=0.3)
    jobs = {j.public_id: j for j in Job.objects.filter(public_id__in=first_a + first_b)}
    assert {j.status for j in jobs.values()} == {Job.Status.SUCCEEDED}
    assert {jobs[i].site_slug for i in first_a} == {SITE_A}
    assert {jobs[i].site_slug for i in first_b} == {SITE_B}
    # Each group's worker took exactly its own site's jobs (its node name is slug@host).
    jobs_run_reach(log_a, JOBS_PER_SITE)
    jobs_run_reach(log_b, JOBS_PER_SITE)
    assert f"{SITE_A}@" in log_a.read_text()
    assert f"{SITE_B}@" in log_b.read_text()

    # Site A's machine goes away: its jobs wait in site.dep-a, B does not take them,
    # and the reaper (every 5 s; JOB_REQUEUE_SECONDS=4 here) keeps them queued for A
    # because A's Triton servers are still healthy and the tenant is pinned to A's region.
    group_a.stop()
    waiting = _submit(base, token_a, JOBS_PER_SITE)
    time.sleep(3 * int(WORKER_ENV["JOB_REQUEUE_SECONDS"]))
    held = Job.objects.filter(public_id__in=waiting)
    assert {j.status for j in held} == {Job.Status.QUEUED}
    assert {j.site_slug for j in held} == {SITE_A}
    # The reaper put them on A's queue again (copies beside the first messages).
    assert redis_client().llen(f"site.{SITE_A}") > JOBS_PER_SITE
    # B took none of them (not even to hand back), and still runs its own work.
    assert jobs_run(log_b) == JOBS_PER_SITE
    during_b = _submit(base, token_b, 1)
    wait_for(lambda: _all_finished(during_b), timeout=30, interval=0.3)
    assert Job.objects.get(public_id=during_b[0]).site_slug == SITE_B
    jobs_run_reach(log_b, JOBS_PER_SITE + 1)

    # A is back (same unit, same env): it drains its queue; each job runs once, at A.
    deployment.site_start(SITE_A)
    wait_for(lambda: _all_finished(waiting), timeout=60, interval=0.3)
    done = Job.objects.filter(public_id__in=waiting)
    assert {(j.status, j.site_slug, j.attempts) for j in done} == {
        (Job.Status.SUCCEEDED, SITE_A, 1)
    }
    # A ran them (attempts 1: no other worker ever claimed them, the copies find them taken).
    jobs_run_reach(log_a, 2 * JOBS_PER_SITE)
    assert jobs_run(log_b) == JOBS_PER_SITE + 1
    assert time.monotonic() - started < 150


def _site_status(slug: str, status: str) -> None:
    """The operator's switch (``/ops/`` or the admin); other processes see it within
    their routing table's lifetime, so wait that out."""
    services.site_status_set(site=Site.objects.get(slug=slug), status=status, actor=None)
    time.sleep(routing.TABLE_SECONDS + 0.5)


def _live_sites() -> frozenset[str]:
    return routing.snapshot_load().live_sites


def test_jobs_leave_a_site_whose_workers_are_gone_though_its_triton_is_healthy(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
):
    """A is routing's first choice by health and price, until its worker machine is
    lost: Triton at A stays healthy, but its workers stop beating. Jobs queued at A
    meanwhile move to B on the reaper's next pass, new ones go to B at once, and A
    is first again when its workers are back. Each job runs once."""
    started = time.monotonic()
    # This process reads the beats as the machines write them.
    monkeypatch.setattr(
        settings, "WORKER_HEARTBEAT_SECONDS", float(WORKER_ENV["WORKER_HEARTBEAT_SECONDS"])
    )
    _, _, token, _ = funded_tenant(10_000_000)  # not pinned: any site may serve it
    group_a, group_b = deployment.groups[SITE_A], deployment.groups[SITE_B]
    # B's power costs 900 points of score: far more than any latency difference.
    Site.objects.filter(slug=SITE_B).update(power_price_usd_per_mwh=Decimal("90000"))
    time.sleep(routing.TABLE_SECONDS + 0.5)
    wait_for(lambda: _live_sites() >= {SITE_A, SITE_B}, timeout=10, interval=0.2)
    first = _submit(deployment.base, token, JOBS_PER_SITE)
    wait_for(lambda: _all_finished(first), timeout=30, interval=0.3)
    assert {j.site_slug for j in Job.objects.filter(public_id__in=first)} == {SITE_A}

    # A's machine is lost. For a few seconds A still looks live: jobs go there...
    group_a.kill()
    stranded = _submit(deployment.base, token, JOBS_PER_SITE)
    assert {j.site_slug for j in Job.objects.filter(public_id__in=stranded)} == {SITE_A}
    # ...until its beats are late. New jobs then go to B, though A is healthy and cheaper.
    wait_for(lambda: SITE_A not in _live_sites(), timeout=10, interval=0.2)
    time.sleep(routing.SNAPSHOT_SECONDS + 0.2)  # the web tier's snapshot is as fresh
    fresh = _submit(deployment.base, token, JOBS_PER_SITE)
    assert {j.site_slug for j in Job.objects.filter(public_id__in=fresh)} == {SITE_B}
    # The reaper (every 5 s; JOB_REQUEUE_SECONDS=4 here) moves the stranded ones to B.
    wait_for(lambda: _all_finished(stranded + fresh), timeout=45, interval=0.3)
    done = Job.objects.filter(public_id__in=stranded + fresh)
    assert {(j.status, j.site_slug, j.attempts) for j in done} == {
        (Job.Status.SUCCEEDED, SITE_B, 1)
    }
    jobs_run_reach(group_b.log("worker"), 2 * JOBS_PER_SITE)

    # A's workers are back: A is live, and first again.
    deployment.site_start(SITE_A)
    wait_for(lambda: SITE_A in _live_sites(), timeout=10, interval=0.2)
    time.sleep(routing.SNAPSHOT_SECONDS + 0.2)
    back = _submit(deployment.base, token, 1)
    wait_for(lambda: _all_finished(back), timeout=30, interval=0.3)
    assert Job.objects.get(public_id=back[0]).site_slug == SITE_A
    assert time.monotonic() - started < 120


def test_draining_a_site_whose_workers_are_gone_moves_its_queued_jobs_to_an_active_one(
    deployment: Deployment,
):
    """When no candidate site has live workers, jobs wait at the best site by health:
    here A's workers are gone and B is drained, so they wait at A. The operator
    drains A and reactivates B; the reaper hands them to B, where each runs once."""
    started = time.monotonic()
    _, _, token, _ = funded_tenant(10_000_000)  # not pinned: any site may serve it
    group_a, group_b = deployment.groups[SITE_A], deployment.groups[SITE_B]
    _site_status(SITE_B, Site.Status.DRAINING)  # so that the jobs go to A, deterministically
    group_a.stop()
    stranded = _submit(deployment.base, token, JOBS_PER_SITE)
    assert set(Job.objects.filter(public_id__in=stranded).values_list("site_slug", flat=True)) == {
        SITE_A
    }
    # Drained too, A takes no new work; no site is active, so the jobs wait in PostgreSQL.
    _site_status(SITE_A, Site.Status.DRAINING)
    assert set(Job.objects.filter(public_id__in=stranded).values_list("status", flat=True)) == {
        Job.Status.QUEUED
    }
    # B active again: the reaper enqueues the stranded jobs at B, whose worker runs them.
    _site_status(SITE_B, Site.Status.ACTIVE)
    wait_for(lambda: _all_finished(stranded), timeout=45, interval=0.3)
    moved = Job.objects.filter(public_id__in=stranded)
    assert {(j.status, j.site_slug, j.attempts) for j in moved} == {
        (Job.Status.SUCCEEDED, SITE_B, 1)
    }
    jobs_run_reach(group_b.log("worker"), JOBS_PER_SITE)
    assert job_outcomes(group_a.log("worker")) == {}
    assert time.monotonic() - started < 90


def test_systemd_units_verify(tmp_path: Path):
    """``systemd-analyze verify`` accepts the units (installed here, not in /opt/cango)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for unit in sorted(procs.SYSTEMD_DIR.glob("*.service")):
        text = unit.read_text().replace(procs.INSTALL_DIR, str(ROOT))
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(path) for path in tmp_path.glob("*.service"))
    assert len(units) == len(procs.PROCS)
    result = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_site_worker_unit_refuses_an_env_file_for_another_site():
    """``cango-worker@tx2`` with tx1's env file stops at ``ExecStartPre`` (exit 1)."""
    env = {"CANGO_WORKER_SITE": "tx1"}
    same = unit_line("cango-worker@.service", "ExecStartPre", env, instance="tx1")
    other = unit_line("cango-worker@.service", "ExecStartPre", env, instance="tx2")
    assert subprocess.run(same, check=False, timeout=10).returncode == 0
    assert subprocess.run(other, check=False, timeout=10).returncode == 1

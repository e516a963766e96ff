"""Benchmark: what the marketplace adds to inference, sync and async.

In one run, against one real tritonserver site and the marketplace under granian:

* sync: the same small request sent direct to Triton and through the marketplace
  (``POST /v2/models/{model}/infer`` with an API key), sequential p50/p99 over
  alternating rounds, and requests/s with 8 concurrent keep-alive clients;
* async: ``POST /v1/jobs`` through real Celery workers — submit-to-complete p50
  (the job's own ``created_at`` → ``finished_at``) at a low rate, and jobs/s when
  8 clients submit as fast as they can.

    .venv/bin/python -m bench.inference --model echo
    .venv/bin/python -m bench.inference --model minilm

Targets (issue 3, before billing): +1.5 ms p50 and +4 ms p99 sequential; with 8
clients at least 15 % (echo) / 80 % (minilm) of direct throughput; async p50 at
most 30 ms and at least 150 jobs/s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.harness import (
    ROOT,
    Request,
    database_prepare,
    granian,
    limits_lift,
    median,
    percentile,
    sequential,
    throughput,
)

BODIES = {
    "echo": {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]
    },
    "minilm": {
        "inputs": [
            {
                "name": "text",
                "datatype": "BYTES",
                "shape": [1, 1],
                "data": ["a cat sits on the mat"],
            }
        ]
    },
}


def _setup(workdir: Path, model: str) -> tuple[dict[str, str], str, object]:
    env = database_prepare()
    from billing import ledger
    from billing.models import LedgerEntry
    from deploy import triton as launcher
    from marketplace import services as marketplace_services
    from marketplace.models import User
    from workers import health, services

    site = launcher.site_start("bench-1", [model], workdir)
    services.server_register(
        site_slug=site.slug,
        http_url=site.http_url,
        metrics_url=site.metrics_url,
        defaults=services.defaults_load(str(ROOT / "deploy" / "catalog.json")),
    )
    health.servers_check()
    owner, _ = User.objects.get_or_create(email="bench@cango.local")
    tenant = marketplace_services.tenant_create(name="Bench", owner=owner)
    limits_lift(tenant)
    ledger.entry_book(
        tenant_id=tenant.pk, kind=LedgerEntry.Kind.GRANT, source="bench", amount_micros=10**12
    )
    _, token = marketplace_services.api_key_create(tenant=tenant, actor=owner, name="bench")
    return env, token, site


def _celery(
    env: dict[str, str], site_slug: str, concurrency: int, logdir: Path, pool: str
) -> list[subprocess.Popen[bytes]]:
    celery = str(Path(sys.executable).with_name("celery"))
    common = [
        "-A",
        "config",
        "worker",
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
    ]
    procs = [
        subprocess.Popen(
            [
                celery,
                *common,
                "-Q",
                f"site.{site_slug}",
                "-n",
                f"{site_slug}@%h",
                "--pool",
                pool,
                "--concurrency",
                str(concurrency),
            ],
            cwd=ROOT,
            env={**env, "CANGO_WORKER_SITE": site_slug},
            stdout=(logdir / "site-worker.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                celery,
                "-A",
                "config",
                "beat",
                "--loglevel",
                "WARNING",
                "--schedule",
                str(logdir / "beat-schedule"),
            ],
            cwd=ROOT,
            env=env,
            stdout=(logdir / "beat.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [celery, *common, "-Q", "default", "-n", "default@%h", "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stdout=(logdir / "default-worker.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]
    time.sleep(4)
    return procs


def _async_latency(port: int, token: str, model: str, count: int) -> list[float]:
    """Submit jobs one at a time, waiting for each; latency from the job's own timestamps."""
    import http.client

    from marketplace.models import Job

    conn = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"model": model, **BODIES[model]})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ids = []
    for _ in range(count):
        conn.request("POST", "/v1/jobs", body=body, headers=headers)
        response = conn.getresponse()
        job_id = json.loads(response.read())["id"]
        deadline = time.monotonic() + 30
        while not Job.objects.filter(public_id=job_id, status="succeeded").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish")
            time.sleep(0.002)
        ids.append(job_id)
    jobs = Job.objects.filter(public_id__in=ids)
    return [(j.finished_at - j.created_at).total_seconds() * 1000 for j in jobs if j.finished_at]


def _async_throughput(port: int, token: str, model: str, clients: int, per_client: int) -> float:
    """Jobs/s from the first submission to the last completion, 8 clients submitting."""
    import http.client

    from django.db.models import Max, Min

    from marketplace.models import Job

    body = json.dumps({"model": model, **BODIES[model]})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ids: list[str] = []
    lock = threading.Lock()

    def submit() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        for _ in range(per_client):
            conn.request("POST", "/v1/jobs", body=body, headers=headers)
            response = conn.getresponse()
            mine.append(json.loads(response.read())["id"])
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=submit) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = clients * per_client
    print(f"async: {total} jobs submitted in {time.monotonic() - started:.2f} s")
    deadline = time.monotonic() + 300
    while Job.objects.filter(public_id__in=ids, status="succeeded").count() < total:
        if time.monotonic() > deadline:
            raise RuntimeError("jobs did not all finish")
        time.sleep(0.2)
    span = Job.objects.filter(public_id__in=ids).aggregate(
        first=Min("created_at"), last=Max("finished_at")
    )
    return total / (span["last"] - span["first"]).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(BODIES), default="echo")
    parser.add_argument("--requests", type=int, default=2000, help="sequential, per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--async-jobs", type=int, default=1600, help="0 skips the async part")
    parser.add_argument("--worker-concurrency", type=int, default=4)
    parser.add_argument("--worker-pool", choices=["prefork", "threads"], default="prefork")
    parser.add_argument(
        "--no-billing",
        action="store_true",
        help="serve bench.nobilling_wsgi (no hold, no charge) for the sync part",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    env, token, site = _setup(workdir, args.model)
    body = json.dumps(BODIES[args.model]).encode()
    requests_per_round = args.requests if args.model == "echo" else max(200, args.requests // 10)
    direct = Request(
        "POST", f"/v2/models/{args.model}/infer", {"Content-Type": "application/json"}, body
    )
    via = Request(
        "POST",
        f"/v2/models/{args.model}/infer",
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        body,
    )
    triton_port = int(site.http_url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    results: dict[str, dict[str, list[float]]] = {
        name: {"p50": [], "p99": [], "rps": []} for name in ("direct", "marketplace")
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        app = "bench.nobilling_wsgi:application" if args.no_billing else "config.wsgi:application"
        with granian(env, workers=args.web_workers, threads=4, app=app) as web_port:
            targets = {"direct": (triton_port, direct), "marketplace": (web_port, via)}
            for round_no in range(args.rounds):
                order = (
                    ["direct", "marketplace"] if round_no % 2 == 0 else ["marketplace", "direct"]
                )
                for name in order:
                    port, request = targets[name]
                    samples = sequential(port, request, requests_per_round)
                    results[name]["p50"].append(percentile(samples, 50))
                    results[name]["p99"].append(percentile(samples, 99))
                for name in order:
                    port, request = targets[name]
                    results[name]["rps"].append(
                        throughput(port, request, args.clients, args.seconds)
                    )
            async_p50 = async_rate = None
            if args.async_jobs:
                procs = _celery(env, site.slug, args.worker_concurrency, workdir, args.worker_pool)  # type: ignore[attr-defined]
                latencies = _async_latency(web_port, token, args.model, 200)
                async_p50 = percentile(latencies, 50)
                async_p99 = percentile(latencies, 99)
                async_rate = _async_throughput(
                    web_port, token, args.model, args.clients, args.async_jobs // args.clients
                )
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=20)
        site.stop()  # type: ignore[attr-defined]

    print(
        f"model={args.model} rounds={args.rounds} sequential={requests_per_round}/round "
        f"clients={args.clients} web workers={args.web_workers} "
        f"billing={not args.no_billing}"
    )
    print("| path | p50 ms | p99 ms | req/s (8 clients) |")
    print("| --- | --- | --- | --- |")
    for name in ("direct", "marketplace"):
        r = results[name]
        print(
            f"| {name} | {median(r['p50']):.3f} | {median(r['p99']):.3f} | {median(r['rps']):.0f} |"
        )
    added_p50 = median(
        [
            m - d
            for m, d in zip(results["marketplace"]["p50"], results["direct"]["p50"], strict=True)
        ]
    )
    added_p99 = median(
        [
            m - d
            for m, d in zip(results["marketplace"]["p99"], results["direct"]["p99"], strict=True)
        ]
    )
    ratio = median(results["marketplace"]["rps"]) / median(results["direct"]["rps"])
    print(f"added: p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms; throughput ratio {ratio:.3f}")
    print("per-round p50 ms:", {k: [round(v, 3) for v in r["p50"]] for k, r in results.items()})
    print("per-round req/s:", {k: [round(v) for v in r["rps"]] for k, r in results.items()})
    if async_p50 is not None:
        print(
            f"async: submit-to-complete p50 {async_p50:.1f} ms, p99 {async_p99:.1f} ms; "
            f"{async_rate:.0f} jobs/s with {args.clients} submitting clients"
        )


if __name__ == "__main__":
    main()

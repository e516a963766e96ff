"""Run real Triton inference servers ("sites") from the ``nvidia-pytriton`` wheel, CPU only.

The wheel bundles a ``tritonserver`` binary (server 2.51), the Python backend and one
backend stub per Python version. This module serves the on-disk model repository in
``deploy/model_repository`` with that binary, one server per site:

* :func:`backend_dir_prepare` lays out the ``--backend-directory`` the server needs
  (``python/`` with ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the
  stub for the running interpreter's Python X.Y), as symlinks into the installed wheel.
* :func:`tritonserver_env` is the environment that makes the stub load *this*
  interpreter's ``libpython`` and packages (see ``shared/notes/triton.md``).
* :func:`site_start` starts one server on free loopback ports, in its own process
  group, logging to a file, and (by default) waits until it is ready; a lost port race
  ("already in use") is retried on new ports. :class:`SiteProcess` is its handle.
* :func:`sites_start` starts several in parallel; :func:`sites_stop` stops them together.

CLI (keeps the sites running until Ctrl-C or SIGTERM, then stops them cleanly)::

    python -m deploy.triton --sites 3 --models echo,classifier,text_upper --json
    python -m deploy.triton --sites 3 --add 1:minilm --json   # minilm on the first site only

Nothing here imports Django, tritonclient or pytriton itself: only the wheel's files are used.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

HOST = "127.0.0.1"
MODEL_REPOSITORY = Path(__file__).resolve().parent / "model_repository"
ALL_MODELS = ("echo", "classifier", "text_upper", "counter_int64", "slow", "minilm")
LIGHT_MODELS = ("echo", "classifier", "text_upper", "counter_int64", "slow")
SHM_DIR = Path("/dev/shm")  # noqa: S108 - only read, to remove our own regions
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
EXIT_TIMEOUT_SECS = 5
PORT_IN_USE = re.compile(r"already in use|Address already in use|failed to start .* service")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class TritonError(RuntimeError):
    """A Triton site could not be set up, started or made ready."""


# --------------------------------------------------------------------------- the wheel


def pytriton_dir() -> Path:
    """The installed ``pytriton`` package folder (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError(
            "the nvidia-pytriton package is not installed; "
            "install it with: pip install nvidia-pytriton==0.7.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def tritonserver_binary() -> Path:
    """The ``tritonserver`` executable bundled in the wheel."""
    path = pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not path.is_file():
        raise TritonError(f"no tritonserver binary at {path}")
    return path


def pytriton_libs_dir() -> Path:
    """``site-packages/nvidia_pytriton.libs``: the shared libraries the wheel's binaries use."""
    return pytriton_dir().parent / "nvidia_pytriton.libs"


def python_version_tag() -> str:
    """``X.Y`` of the running interpreter, which picks the backend stub."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _backend_sources() -> dict[str, Path]:
    """File name under ``python/`` -> the wheel's file it must point to."""
    server_dir = pytriton_dir() / "tritonserver"
    python_backend = server_dir / "backends" / "python"
    sources = {
        "libtriton_python.so": python_backend / "libtriton_python.so",
        "triton_python_backend_utils.py": python_backend / "triton_python_backend_utils.py",
        "triton_python_backend_stub": server_dir
        / "python_backend_stubs"
        / python_version_tag()
        / "triton_python_backend_stub",
    }
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise TritonError(f"the nvidia-pytriton wheel lacks {', '.join(missing)}")
    return sources


def backend_dir_prepare(workdir: Path) -> Path:
    """Lay out ``workdir/backends/python/`` (the ``--backend-directory``); return ``backends``.

    ``python/`` gets symlinks to the wheel's ``libtriton_python.so`` and
    ``triton_python_backend_utils.py`` and to the ``triton_python_backend_stub`` built for
    the running Python X.Y. Idempotent and safe to call from several threads or processes:
    a link that already points at the right file is kept, any other entry is replaced
    atomically. The stub finds the wheel's libraries through its RPATH (the kernel
    resolves the symlink); ``libtriton_python.so`` does not, so :func:`tritonserver_env`
    puts ``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``.
    """
    backends = workdir / "backends"
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name, source in _backend_sources().items():
        target = python_dir / name
        if target.is_symlink() and Path(os.readlink(target)) == source:
            continue
        temporary = python_dir / f".{name}.{uuid.uuid4().hex}"
        temporary.symlink_to(source)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(temporary, target)
    return backends


def _path_join(first: Iterable[str], existing: str | None) -> str:
    """``first`` then the entries of ``existing``, without duplicates or empty entries."""
    entries: list[str] = []
    for entry in [*first, *(existing or "").split(os.pathsep)]:
        if entry and entry not in entries:
            entries.append(entry)
    return os.pathsep.join(entries)


def tritonserver_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``tritonserver`` and the Python-backend stubs it spawns.

    * ``LD_LIBRARY_PATH``: the interpreter's ``LIBDIR`` first, so the stub loads the same
      ``libpython3.X.so`` as this interpreter and not a system build of another patch
      level (which fails with ``'_thread.RLock' object has no attribute
      '_recursion_count'``); then ``nvidia_pytriton.libs`` (without it stubs die and the
      server hangs "loading"); then whatever was there.
    * ``PATH``: this environment's ``bin/`` first, so the embedded interpreter finds the
      venv (``pyvenv.cfg``) and its numpy, torch, ...
    * ``PYTHONNOUSERSITE``: keep ``~/.local`` packages out of the models' imports.
    """
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = _path_join(
        [str(libdir) if libdir else "", str(pytriton_libs_dir())], env.get("LD_LIBRARY_PATH")
    )
    env["PATH"] = _path_join(
        [str(Path(sys.prefix) / "bin"), str(Path(sys.executable).parent)], env.get("PATH")
    )
    env.setdefault("PYTHONNOUSERSITE", "1")
    env.pop("PYTHONHOME", None)
    # PyTorch's OpenMP threads spin for a while after each batch by default, taking
    # the CPU from PostgreSQL and the web process on a small machine; make them sleep.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Sites started here share the machine with the web tier and the database, so the
    # real model computes on one thread instead of competing for every core.
    env.setdefault("CANGO_TORCH_THREADS", "1")
    return env


# --------------------------------------------------------------------------- processes


def port_free(host: str = HOST) -> int:
    """A TCP port nothing listens on at this moment (the caller may still lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ports_free(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct free ports, all held open together while they are chosen."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """GET a plain-http ``url``; ``(status, body)``, or None when nothing answered."""
    match = re.match(r"^http://([^/:]+):(\d+)(/.*)?$", url)
    if match is None:
        raise ValueError(f"not a plain http URL with a port: {url}")
    conn = http.client.HTTPConnection(match[1], int(match[2]), timeout=timeout)
    try:
        conn.request("GET", match[3] or "/")
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``: a server and its stubs."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return sorted(pids)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 if it is gone)."""
    try:
        resident = int((Path("/proc") / str(pid) / "statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class SiteProcess:
    """A running ``tritonserver`` for one site: its ports, process and log.

    The server leads its own process group (``start_new_session``), and the Python
    backend stubs it spawns stay in that group, so signalling the group reaches them all.
    """

    slug: str
    http_port: int
    grpc_port: int
    metrics_port: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    models: list[str]
    shm_prefix: str
    started_at: float = field(default_factory=time.monotonic)
    ready_after: float | None = None
    terminated: bool = False

    @property
    def pid(self) -> int:
        """The server's pid, which is also its process group id."""
        return self.popen.pid

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``, for plain HTTP clients (see :attr:`http_hostport`)."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def http_hostport(self) -> str:
        """``127.0.0.1:PORT``: the form ``tritonclient.http.InferenceServerClient`` takes."""
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:PORT``: the form ``tritonclient.grpc.InferenceServerClient`` takes."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus text endpoint, ``http://127.0.0.1:PORT/metrics``."""
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def running(self) -> bool:
        """Whether the server process has not exited."""
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """The server and its stubs still alive."""
        return group_pids(self.pid)

    def memory_bytes(self) -> int:
        """Resident memory of the server and its stubs together."""
        return sum(rss_bytes(pid) for pid in self.pids())

    def describe(self) -> dict[str, object]:
        """A JSON-able summary: slug, URLs, pid, models, log."""
        return {
            "slug": self.slug,
            "http_url": self.http_url,
            "grpc_url": self.grpc_url,
            "metrics_url": self.metrics_url,
            "pid": self.pid,
            "models": self.models,
            "log": str(self.log_path),
        }

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll ``/v2/health/ready`` until 200; return seconds since start.

        Raises :class:`TritonError` with the end of the log if the server exits first
        or is not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        url = f"{self.http_url}/v2/health/ready"
        while True:
            answer = http_get(url, timeout=1.0)
            if answer is not None and answer[0] == 200:
                self.ready_after = time.monotonic() - self.started_at
                return self.ready_after
            code = self.popen.poll()
            if code is not None:
                raise TritonError(
                    f"tritonserver for site {self.slug} exited with {code} before it was "
                    f"ready; end of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if time.monotonic() >= deadline:
                raise TritonError(
                    f"tritonserver for site {self.slug} not ready after {timeout:.0f} s; "
                    f"end of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def terminate(self) -> None:
        """SIGTERM the process group, without waiting.

        The server then unloads its models (finalising them in their stubs, which frees
        their ``/dev/shm`` regions) and exits within about 3 s; the stubs ignore the
        SIGTERM themselves and end when their model is unloaded.
        """
        if self.running() and not self.terminated:
            self.terminated = True
            _signal_group(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL it; idempotent.

        A server stuck loading ignores SIGTERM/SIGINT, hence the SIGKILL. Anything of the
        group still alive after the server is gone is killed too, and this site's leftover
        ``/dev/shm`` regions are removed. Returns the server's exit code.
        """
        self.terminate()
        deadline = time.monotonic() + timeout
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(self.pid, signal.SIGKILL)
            self.popen.wait()
        self._reap_group(max(1.0, deadline - time.monotonic()))
        return self.popen.returncode

    def kill(self, *, server_only: bool = False) -> None:
        """SIGKILL, as a crash would; for failure tests.

        By default the whole process group (server and stubs) dies at once and the
        site's ``/dev/shm`` regions are removed. With ``server_only`` only the server
        is killed: its orphaned stubs notice and exit by themselves (about 10 s later),
        and :meth:`stop` or :meth:`cleanup` finishes the job.
        """
        if server_only:
            if self.running():
                self.popen.kill()
            self.popen.wait()
            return
        _signal_group(self.pid, signal.SIGKILL)
        self.popen.wait()
        self._reap_group(2.0)

    def cleanup(self, timeout: float = 2.0) -> None:
        """After the server is gone: kill stubs left in its group and remove its shared memory."""
        self.popen.wait()
        self._reap_group(timeout)

    def _reap_group(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pids():
            _signal_group(self.pid, signal.SIGKILL)
            while self.pids() and time.monotonic() < deadline + 2.0:
                time.sleep(0.05)
        for path in shm_regions(self.shm_prefix):
            with contextlib.suppress(OSError):
                path.unlink()


def shm_regions(prefix: str) -> list[Path]:
    """``/dev/shm`` entries whose names start with ``prefix``."""
    if not SHM_DIR.is_dir():
        return []
    return sorted(path for path in SHM_DIR.iterdir() if path.name.startswith(prefix))


def model_names_check(models: Sequence[str], model_repository: Path) -> list[str]:
    """``models`` as a list, each checked to be a model of ``model_repository``."""
    names = list(dict.fromkeys(models))
    missing = [name for name in names if not (model_repository / name / "config.pbtxt").is_file()]
    if missing:
        available = sorted(p.parent.name for p in model_repository.glob("*/config.pbtxt"))
        raise TritonError(
            f"no model {', '.join(missing)} in {model_repository} (it has {', '.join(available)})"
        )
    return names


def tritonserver_argv(
    slug: str,
    models: Sequence[str],
    ports: Sequence[int],
    backends: Path,
    model_repository: Path,
    shm_prefix: str,
) -> list[str]:
    """The command line for one site's server."""
    http_port, grpc_port, metrics_port = ports
    argv = [
        str(tritonserver_binary()),
        f"--id={slug}",
        f"--model-repository={model_repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in models),
        "--disable-auto-complete-config",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--exit-timeout-secs={EXIT_TIMEOUT_SECS}",
        f"--http-address={HOST}",
        f"--http-port={http_port}",
        f"--grpc-address={HOST}",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=true",
        f"--metrics-address={HOST}",
        f"--metrics-port={metrics_port}",
        "--metrics-config=summary_latencies=true",
        "--pinned-memory-pool-byte-size=0",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--log-info=true",
    ]
    return argv


def _port_race_lost(site: SiteProcess) -> bool:
    return site.popen.poll() is not None and bool(PORT_IN_USE.search(_log_tail(site.log_path)))


def site_start(
    slug: str,
    models: Sequence[str],
    workdir: Path,
    *,
    model_repository: Path = MODEL_REPOSITORY,
    wait: bool = True,
    timeout: float = READY_TIMEOUT,
    attempts: int = 4,
    env: dict[str, str] | None = None,
    ports: Sequence[int] | None = None,
) -> SiteProcess:
    """Start a ``tritonserver`` for site ``slug`` serving ``models``; return its handle.

    The three ports (HTTP, gRPC, metrics) are free loopback ports bound on 127.0.0.1.
    The server gets ``--id=<slug>``, explicit model control with one ``--load-model`` per
    model, summary latencies in its metrics and a 5 s exit timeout; it runs in its own
    process group and logs to ``workdir/<slug>.log``. ``env`` defaults to
    :func:`tritonserver_env` (pass one built on it to add e.g. ``CANGO_SLOW_DELAY_MS``).

    With ``wait`` (the default) this returns once the server is ready and retries on new
    ports when it lost a port race (the server binds its ports only after loading its
    models, so a lost race shows only then). Without ``wait`` it returns at once and the
    caller calls :meth:`SiteProcess.wait_ready`. ``ports`` (HTTP, gRPC, metrics) restarts
    a site at the address it had; then a port in use is an error, not retried.
    """
    if not SLUG.match(slug):
        raise TritonError(f"bad site slug {slug!r}: letters, digits, '.', '_', '-' only")
    names = model_names_check(models, model_repository)
    workdir.mkdir(parents=True, exist_ok=True)
    backends = backend_dir_prepare(workdir)
    run_env = tritonserver_env() if env is None else env
    log_path = workdir / f"{slug}.log"
    fixed_ports = list(ports) if ports is not None else None
    for attempt in range(1, attempts + 1):
        ports = fixed_ports or ports_free(3)
        shm_prefix = f"cango_{slug}_{uuid.uuid4().hex[:8]}_"
        argv = tritonserver_argv(
            slug, names, ports, backends, model_repository.resolve(), shm_prefix
        )
        with log_path.open("ab") as log:
            log.write(f"--- attempt {attempt}: {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=run_env,
                cwd=workdir,
                start_new_session=True,
            )
        site = SiteProcess(
            slug=slug,
            http_port=ports[0],
            grpc_port=ports[1],
            metrics_port=ports[2],
            popen=popen,
            log_path=log_path,
            models=names,
            shm_prefix=shm_prefix,
        )
        if not wait:
            return site
        try:
            site.wait_ready(timeout)
        except TritonError:
            lost_race = _port_race_lost(site)
            site.stop(timeout=5.0)
            if lost_race and attempt < attempts and fixed_ports is None:
                continue
            raise
        except BaseException:
            site.stop(timeout=5.0)
            raise
        return site
    raise TritonError(f"site {slug}: no free ports after {attempts} attempts")  # pragma: no cover


def _models_for_sites(
    n: int, models_per_site: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    if not models_per_site or isinstance(models_per_site[0], str):
        return [[str(name) for name in models_per_site] for _ in range(n)]
    if len(models_per_site) != n:
        raise TritonError(f"{n} sites but {len(models_per_site)} model lists")
    return [[str(name) for name in site_models] for site_models in models_per_site]


def sites_start(
    n: int,
    models_per_site: Sequence[str] | Sequence[Sequence[str]],
    workdir: Path,
    *,
    slug_prefix: str = "site",
    model_repository: Path = MODEL_REPOSITORY,
    timeout: float = READY_TIMEOUT,
    env: dict[str, str] | None = None,
) -> list[SiteProcess]:
    """Start ``n`` sites in parallel (slugs ``site-1`` ...) and wait until all are ready.

    ``models_per_site`` is either one list of model names for every site or one list per
    site. If any site fails, those that started are stopped and the first error raised.
    """
    if n < 1:
        raise TritonError("at least one site")
    plans = _models_for_sites(n, models_per_site)
    for plan in plans:
        model_names_check(plan, model_repository)
    workdir.mkdir(parents=True, exist_ok=True)
    backend_dir_prepare(workdir)
    run_env = tritonserver_env() if env is None else env
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="triton-site") as pool:
        futures = [
            pool.submit(
                site_start,
                f"{slug_prefix}-{index}",
                plan,
                workdir,
                model_repository=model_repository,
                timeout=timeout,
                env=run_env,
            )
            for index, plan in enumerate(plans, start=1)
        ]
        sites: list[SiteProcess] = []
        errors: list[BaseException] = []
        for future in futures:
            try:
                sites.append(future.result())
            except BaseException as exc:
                errors.append(exc)
    if errors:
        sites_stop(sites)
        raise errors[0]
    return sites


def sites_stop(sites: Sequence[SiteProcess], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every site at once, then :meth:`SiteProcess.stop` each (SIGKILL on timeout)."""
    for site in sites:
        site.terminate()
    threads = [threading.Thread(target=site.stop, args=(timeout,)) for site in sites]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@contextlib.contextmanager
def sites_running(
    n: int, models_per_site: Sequence[str] | Sequence[Sequence[str]], workdir: Path
) -> Iterator[list[SiteProcess]]:
    """``with sites_running(3, ["echo"], tmp) as sites:``; stops them on the way out."""
    sites = sites_start(n, models_per_site, workdir)
    try:
        yield sites
    finally:
        sites_stop(sites)


# --------------------------------------------------------------------------- CLI


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The CLI's options."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.triton",
        description="Start Triton sites from the nvidia-pytriton wheel and keep them running.",
    )
    parser.add_argument("--sites", type=int, default=1, help="how many sites (default 1)")
    parser.add_argument(
        "--models",
        default=",".join(LIGHT_MODELS),
        help=f"comma-separated models for every site (default {','.join(LIGHT_MODELS)})",
    )
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="N:MODELS",
        help="also load MODELS (comma-separated) on site N (1-based); repeatable",
    )
    parser.add_argument("--slug-prefix", default="site", help="sites are PREFIX-1, PREFIX-2, ...")
    parser.add_argument("--workdir", type=Path, help="backend dir and logs (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT, help="readiness timeout")
    parser.add_argument("--json", action="store_true", help="print the sites as one JSON list")
    return parser.parse_args(argv)


def _plans(args: argparse.Namespace) -> list[list[str]]:
    base = [name for name in args.models.split(",") if name]
    plans = [list(base) for _ in range(args.sites)]
    for item in args.add:
        index, _, names = item.partition(":")
        if not index.isdigit() or not 1 <= int(index) <= args.sites:
            raise SystemExit(f"--add {item}: N must be a site number from 1 to {args.sites}")
        plans[int(index) - 1].extend(name for name in names.split(",") if name)
    return [list(dict.fromkeys(plan)) for plan in plans]


def main(argv: Sequence[str] | None = None) -> int:
    """Start the sites, print them, wait for Ctrl-C/SIGTERM, stop them."""
    args = parse_args(argv)
    plans = _plans(args)
    own_workdir = args.workdir is None
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="cango-triton-"))
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    sites: list[SiteProcess] = []
    try:
        started = time.monotonic()
        sites = sites_start(
            args.sites, plans, workdir, slug_prefix=args.slug_prefix, timeout=args.timeout
        )
        elapsed = time.monotonic() - started
        if args.json:
            print(json.dumps([site.describe() for site in sites]), flush=True)
        else:
            for site in sites:
                print(
                    f"{site.slug}: http {site.http_url} grpc {site.grpc_url} "
                    f"metrics {site.metrics_url} pid {site.pid} models {','.join(site.models)}",
                    flush=True,
                )
            print(f"{len(sites)} site(s) ready in {elapsed:.1f} s; Ctrl-C stops them", flush=True)
        while any(site.running() for site in sites):
            time.sleep(0.5)
            for site in sites:
                if site.popen.returncode is not None and site.ready_after is not None:
                    print(
                        f"site {site.slug} exited with {site.popen.returncode}; "
                        f"see {site.log_path}",
                        file=sys.stderr,
                        flush=True,
                    )
                    site.ready_after = None
        return 1
    except KeyboardInterrupt:
        return 0
    except TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sites_stop(sites)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

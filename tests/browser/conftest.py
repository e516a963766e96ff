"""Browser fixtures: the portal under granian, driven by Debian's headless Chromium.

The system under test is the one ``tests/integration`` uses (real tritonserver
sites, real Celery workers and beat, the Stripe-compatible server, granian), built
from that package's helpers. The fixtures are package-scoped and the sites use their
own slugs (``br-*``), so when the whole suite runs they are gone before the
integration tests start their own, and no worker of one set consumes the other's
site queues.

E-mail: granian has its own memory, so Django's ``locmem`` outbox is out of reach.
Its processes use the console backend instead, whose messages land in granian's log
file (``PortalServer.mail_text``); the test reads the confirmation link there.
"""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Playwright,
    ViewportSize,
)

from deploy import triton as triton_launcher
from deploy.triton import SiteProcess
from tests.integration.conftest import (
    ROOT,
    SMALL_MODELS,
    STRIPE_KEY,
    STRIPE_WEBHOOK_SECRET,
    CeleryCluster,
    _purge_queues,
    register,
    wait_for,
)
from workers import health, routing

CHROMIUM = "/usr/bin/chromium"
# Without the networking flags Chromium keeps trying to reach the internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
PHONE_VIEWPORT: ViewportSize = {"width": 390, "height": 844}
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments, on the system Chromium (never a download)."""
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [*browser_type_launch_args.get("args", []), *CHROMIUM_ARGS],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "viewport": VIEWPORT}


@pytest.fixture(scope="session", autouse=True)
def _orm_beside_playwright(playwright: Playwright) -> Iterator[None]:
    """Playwright's sync API keeps its event loop running in this thread until the
    session ends, and Django's ORM refuses to run in a thread with a running loop
    (though nothing here is async). Allowed for exactly as long as that loop lives."""
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


# ---- The system under test -------------------------------------------------------


@pytest.fixture(scope="package")
def browser_stripe() -> Iterator[Any]:
    """The Stripe-compatible server; this process and the children started below use it."""
    from billing import stripe_gateway
    from deploy.stripe_server import StripeServer

    saved = (settings.STRIPE_API_BASE, settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET)
    server = StripeServer(webhook_secret=STRIPE_WEBHOOK_SECRET).start()
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_SECRET_KEY = STRIPE_KEY
    settings.STRIPE_WEBHOOK_SECRET = STRIPE_WEBHOOK_SECRET
    stripe_gateway.client.cache_clear()
    try:
        yield server
    finally:
        server.stop()
        settings.STRIPE_API_BASE, settings.STRIPE_SECRET_KEY, settings.STRIPE_WEBHOOK_SECRET = saved
        stripe_gateway.client.cache_clear()


@pytest.fixture(scope="package")
def browser_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SiteProcess]]:
    """One tritonserver site with the small models (the flow needs ``echo`` only)."""
    started = triton_launcher.sites_start(
        1,
        [SMALL_MODELS],
        tmp_path_factory.mktemp("browser-triton"),
        slug_prefix="br",
        env=triton_launcher.tritonserver_env(),
    )
    yield started
    triton_launcher.sites_stop(started)


@pytest.fixture(scope="package")
def browser_cluster(
    browser_sites: list[SiteProcess],
    browser_stripe: Any,
    django_db_setup: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CeleryCluster]:
    """A worker for ``default``, one per site queue, and beat."""
    _purge_queues(["default", *(f"site.{s.slug}" for s in browser_sites)])
    cluster = CeleryCluster(tmp_path_factory.mktemp("browser-celery"))
    try:
        cluster.start_for_sites(browser_sites)
        yield cluster
    finally:
        cluster.stop()


@dataclass
class PortalServer:
    netloc: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.netloc}"

    def mail_text(self) -> str:
        """Everything the console e-mail backend (and granian) wrote so far."""
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="package")
def portal_server(
    browser_cluster: CeleryCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PortalServer]:
    """The marketplace under granian, as ``tests.integration``'s ``web_server`` runs it,
    plus the console e-mail backend so the test can read the mail it sends."""
    # The test settings serve static files from STATIC_ROOT (var/static) only, which
    # may be missing or stale (an old compressed app.js.br is served before a fresh
    # app.js): the browser must get this checkout's CSS, JS and icon.
    call_command("collectstatic", interactive=False, clear=True, verbosity=0)
    port = triton_launcher.port_free()
    log = tmp_path_factory.mktemp("browser-web") / "granian.log"
    argv = [
        str(Path(sys.executable).with_name("granian")),
        *("--interface", "wsgi", "config.wsgi:application"),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "2", "--blocking-threads", "8", "--no-ws", "--log-level", "warning"),
    ]
    env = {
        **browser_cluster.env,
        "CATALOG_CACHE_SECONDS": "0",
        "ALLOWED_HOSTS": "*",
        "EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend",
    }
    popen = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = PortalServer(f"127.0.0.1:{port}", log)
    try:
        wait_for(lambda: triton_launcher.http_get(f"{server.url}/v1/health/live"), timeout=30)
        yield server
    finally:
        os.killpg(popen.pid, signal.SIGTERM)
        popen.wait(timeout=15)


@pytest.fixture
def portal(
    portal_server: PortalServer, browser_stripe: Any, browser_sites: list[SiteProcess], db: None
) -> PortalServer:
    """The portal with the site registered in the (flushed) database, in rotation, and
    Stripe's webhooks pointed at it."""
    for site in browser_sites:
        register(site)
    routing.reset()
    health.servers_check()
    routing.refresh(force=True)
    browser_stripe.configure_webhooks(f"{portal_server.url}/billing/stripe/webhook")
    return portal_server


# ---- Pages that fail the test on any console or page error -------------------------


class BrowserErrors:
    """Console errors and uncaught exceptions of every watched page."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.allowed: list[tuple[str, str]] = []

    def allow(self, url: str, text: str = "") -> None:
        """Ignore console errors located at exactly ``url`` whose text contains ``text``."""
        self.allowed.append((url, text))

    def watch(self, page: Page) -> Page:
        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                location = message.location.get("url", "")
                if any(location == url and text in message.text for url, text in self.allowed):
                    return
                self.seen.append(f"console: {message.text} ({location} on {page.url})")

        def on_pageerror(error: Error) -> None:
            self.seen.append(f"pageerror: {error} (on {page.url})")

        page.on("console", on_console)
        page.on("pageerror", on_pageerror)
        return page


@pytest.fixture
def browser_errors() -> Iterator[BrowserErrors]:
    errors = BrowserErrors()
    yield errors
    assert not errors.seen, "browser errors:\n" + "\n".join(errors.seen)


@pytest.fixture
def new_page(
    browser: Browser, browser_context_args: dict[str, Any], browser_errors: BrowserErrors
) -> Iterator[Any]:
    """Open a watched page in a fresh context (its own cookies): ``new_page()``."""
    contexts: list[BrowserContext] = []

    def make() -> Page:
        context = browser.new_context(**browser_context_args)
        context.set_default_timeout(15_000)
        contexts.append(context)
        return browser_errors.watch(context.new_page())

    yield make
    for context in contexts:
        context.close()


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot to docs/screenshots/<name>.png (overwritten each run)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


def confirmation_link(server: PortalServer, email: str) -> str:
    """The newest e-mail confirmation link sent to ``email``, from granian's log."""

    def find() -> str | None:
        text = server.mail_text()
        start = text.rfind(f"To: {email}")
        if start < 0:
            return None
        match = re.search(r"https?://\S+/accounts/confirm-email/\S+/", text[start:])
        return match.group(0) if match else None

    try:
        link: str = wait_for(find, timeout=10)
    except AssertionError:
        raise AssertionError(f"no confirmation e-mail in:\n{server.mail_text()[-3000:]}") from None
    return link

"""The Celery application. Settings live in Django settings under ``CELERY_*``."""

import os
from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_ready,
    worker_shutting_down,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = Celery("cango")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _database_connections_tidy(**kwargs: Any) -> None:
    """Drop connections that are broken or too old, keep the rest (like a request does)."""
    from django.db import close_old_connections

    close_old_connections()


@setup_logging.connect
def _logging_from_django_settings(**kwargs: Any) -> None:
    """Workers and beat log like the web tier: JSON lines, ids attached, secrets
    redacted (``settings.LOGGING``), instead of Celery's own text format."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@worker_ready.connect
def _site_heartbeat_start(sender: Any = None, **kwargs: Any) -> None:
    """A site's worker says it is there to take jobs (``workers.liveness``)."""
    site_slug = os.environ.get("CANGO_WORKER_SITE", "")
    if site_slug:
        from workers import liveness

        liveness.heartbeat_start(site_slug, node=str(getattr(sender, "hostname", os.getpid())))


@worker_shutting_down.connect
def _site_heartbeat_stop(**kwargs: Any) -> None:
    from workers import liveness

    liveness.heartbeat_stop()

"""The Celery application. Settings live in Django settings under ``CELERY_*``."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")

app = Celery("cango")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

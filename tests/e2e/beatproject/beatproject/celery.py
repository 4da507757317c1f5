"""The Celery app: every ``CELERY_*`` Django setting configures it (beat scheduler, broker, sync_every)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beatproject.settings")

app = Celery("beatproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["beatproject"])

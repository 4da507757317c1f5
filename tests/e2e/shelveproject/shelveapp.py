"""A stock celery app whose beat uses celery's default scheduler (PersistentScheduler: the celerybeat-schedule
shelve given with -s). No Django: beat_schedule in the app's configuration, as most celery projects have it.

Environment: ``TG_BEAT_BROKER_URL`` (Redis, the shelve tests' own db 13), ``TG_BEAT_KEYPREFIX`` and
``TG_BEAT_QUEUE`` (keep one test's messages apart), ``TG_BEAT_TIME_ZONE`` (celery's timezone, default UTC).
``beat_sync_every = 1``: beat writes the shelve after every sent task (otherwise every 3 minutes and at exit).
"""

import os

from celery import Celery

app = Celery("shelveapp", broker=os.environ.get("TG_BEAT_BROKER_URL", "redis://127.0.0.1:6379/13"))
app.conf.update(
    broker_transport_options={"global_keyprefix": os.environ["TG_BEAT_KEYPREFIX"]}
    if os.environ.get("TG_BEAT_KEYPREFIX") else {},
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("TG_BEAT_QUEUE", "celery"),
    timezone=os.environ.get("TG_BEAT_TIME_ZONE", "UTC"),
    enable_utc=True,
    beat_sync_every=1,
    beat_schedule={
        "every-1s": {"task": "shelveapp.tick", "schedule": 1.0},
        "every-2s": {"task": "shelveapp.tick", "schedule": 2.0},
        "every-3s": {"task": "shelveapp.tick", "schedule": 3.0},
        "hourly": {"task": "shelveapp.tick", "schedule": 3600.0},  # never due in a test: what undo can restore
    },
)


@app.task
def tick() -> None:
    """Never run (no worker): beat only sends it."""

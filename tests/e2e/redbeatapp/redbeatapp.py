"""A tiny celery app scheduled by RedBeat (tests/support/redbeat.py runs it under libfaketime).

Redis db 11 only (broker and RedBeat), from the environment: ``TG_REDBEAT_URL``, ``TG_REDBEAT_PREFIX``. No worker:
the sent tasks pile up in the queue, beat's log says what it sent.
"""

import os

from celery import Celery
from celery.schedules import crontab

URL = os.environ.get("TG_REDBEAT_URL", "redis://127.0.0.1:6379/11")

app = Celery("redbeatapp", broker=URL)
app.conf.update(
    redbeat_redis_url=URL,
    redbeat_key_prefix=os.environ.get("TG_REDBEAT_PREFIX", "redbeat:"),
    beat_max_loop_interval=1,
    timezone="UTC",
    beat_schedule={
        "every-1s": {"task": "redbeatapp.tick", "schedule": 1.0},
        "every-2s": {"task": "redbeatapp.tick", "schedule": 2.0},
        "every-minute": {"task": "redbeatapp.tick", "schedule": crontab(minute="*")},
    },
)


@app.task(name="redbeatapp.tick")
def tick() -> None:
    return None

"""A small application with a real APScheduler 3.x ``BackgroundScheduler`` and a persistent job store, the way
users run one: jobs added at run time (``add_job`` without ``replace_existing`` when the store does not hold them
yet — the case a restart does not recompute, research/celery_beat.md §4).

::

    APSAPP_LOG=RUNS.jsonl PYTHONPATH=tests/e2e/apsapp python -c 'import apsapp; apsapp.main()' sql URL
    APSAPP_LOG=RUNS.jsonl PYTHONPATH=tests/e2e/apsapp python -c 'import apsapp; apsapp.main()' redis URL
    APSAPP_JOBSTORE_URL=URL … apsapp.main()' sql      (the URL from the environment, as twelve-factor apps do)

(imported, not run as ``__main__``: the jobs' reference ``apsapp:tick`` and the pickled ``apsapp.Recipient`` name
this module).

Jobs: ``every-1s`` and ``every-2s`` (interval) and ``cron-every-2s`` (cron, ``second='*/2'``); each run appends a
JSON line {job, wall, mono} to the log. ``every-2s`` carries a :class:`Recipient` (this module's class) in its
kwargs: only an interpreter that imports this module can unpickle its state. SIGTERM shuts the scheduler down
(it writes nothing more) and exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

LOG = os.environ.get("APSAPP_LOG", "")


@dataclass
class Recipient:
    """An application object in a job's kwargs (pickled with the job)."""

    name: str


def tick(job: str, recipient: Recipient | None = None) -> None:
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"job": job, "wall": time.time(), "mono": time.monotonic(),
                            "recipient": recipient.name if recipient else None}) + "\n")


def main() -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    kind = sys.argv[1]
    url = sys.argv[2] if len(sys.argv) > 2 else os.environ["APSAPP_JOBSTORE_URL"]
    if kind == "sql":
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        store = SQLAlchemyJobStore(url=url)
    else:
        from apscheduler.jobstores.redis import RedisJobStore
        from redis.connection import parse_url

        store = RedisJobStore(**parse_url(url))
    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone="UTC",
                                    job_defaults={"coalesce": True, "misfire_grace_time": 30})
    scheduler.start()
    # Run time, not start-up: the store keeps what it holds (a restart recomputes nothing).
    if scheduler.get_job("every-1s") is None:
        scheduler.add_job("apsapp:tick", "interval", seconds=1, id="every-1s", args=["every-1s"])
    if scheduler.get_job("every-2s") is None:
        scheduler.add_job("apsapp:tick", "interval", seconds=2, id="every-2s", args=["every-2s"],
                          kwargs={"recipient": Recipient("ops")})
    if scheduler.get_job("cron-every-2s") is None:
        scheduler.add_job("apsapp:tick", "cron", second="*/2", id="cron-every-2s", args=["cron-every-2s"])
    print("apsapp: started", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    while not done.wait(0.2):
        pass
    scheduler.shutdown(wait=False)
    print("apsapp: stopped", flush=True)

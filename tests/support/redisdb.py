"""Redis database numbers a test may flush: each pytest-xdist worker has its own pair.

The suite runs on two workers (README: ``-n 2``); the RedBeat and APScheduler harnesses flush their database before
and after each test, so two workers on one database would wipe each other's schedules. Worker ``gwN`` (or a run
without xdist, as ``gw0``) owns databases ``11 - 2N`` and ``12 - 2N``: 11/12, 9/10, 7/8, 5/6. Beat's broker (db 0)
and the shelve broker (db 13) are shared: each beat there has its own key prefix and nothing flushes them.
"""

from __future__ import annotations

import os

#: The slots a worker owns: ``REDBEAT`` for tests/support/redbeat.py, ``APS`` for tests/support/aps.py and the
#: APScheduler store rules (tests/integration/test_apscheduler_rules.py).
REDBEAT, APS = 0, 1
_WORKERS = 4  # 16 databases: 0 and 13 shared, 4 workers × 2 flushed


def worker_index() -> int:
    """This pytest-xdist worker's number (0 without xdist)."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    try:
        index = int(name.removeprefix("gw"))
    except ValueError:
        return 0
    if not 0 <= index < _WORKERS:
        raise RuntimeError(f"PYTEST_XDIST_WORKER={name}: the suite has Redis databases for {_WORKERS} workers")
    return index


def flushable_db(slot: int) -> int:
    """The Redis database number of ``slot`` for this worker."""
    return 11 + slot - 2 * worker_index()


def url(slot: int) -> str:
    return f"redis://127.0.0.1:6379/{flushable_db(slot)}"

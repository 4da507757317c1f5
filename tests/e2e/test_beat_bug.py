"""The seed bug with real programs: django-celery-beat stops sending tasks after the clock came back from the future.

A real Django project (tests/e2e/beatproject) with django-celery-beat's DatabaseScheduler and a real
``celery beat --max-interval 1`` under libfaketime (tests/support/beat.py), broker Redis on 127.0.0.1, on SQLite,
PostgreSQL and MariaDB:

1. the seed schedule is created at real time (every-1s, every-2s, every-minute crontab, a clocked one-off due in
   one day);
2. beat starts with its wall clock at +180 days: every task is due at once, then every-1s/every-2s are sent at
   their rates, and (``beat_sync_every=1``) ``last_run_at`` ≈ +180 days is written back after every send;
3. the clock steps back to +0: beat keeps ticking every second but sends **no** custom task for 8 s, and the
   database still holds ``last_run_at`` ≈ 180 days ahead (``test_beat_stops_after_backward_step``);
4. control: the same beat without the step keeps sending for those 8 s (SQLite)
   (``test_beat_keeps_sending_without_step``).

What a repair test does on top (``beat.drive_into_bug`` brings a running beat to the asserted bug state):

* run the repair (the timeguard daemon under the same FakeClock with honest sources, or
  ``timeguard repair celery-beat --database-url db.url``) while ``beat`` keeps running;
* then ``t = time.monotonic()``; ``beat.wait_sent("every-1s", count=3, since=t, timeout_s=...)`` and
  ``beat.wait_sent("every-2s", count=2, since=t, ...)``, and assert the rates over a window after the first
  send again (``beat.rate(name, t0, t1)``: ≈1/s and ≈0.5/s, ``beat.assert_rates``);
  a reload shows up in the log as "DatabaseScheduler: Schedule changed." (``beat.wait_log``);
* assert ``db.state().future()`` is empty (no ``last_run_at``/``date_changed``/``last_update`` ahead of real
  time) — read it *after* beat has synced again (it writes stale in-memory values back, research §1.5);
* ``clocked-once`` fired early at +180 d: the repair must report it, not re-enable it (``state().tasks``).

Notes: the database servers (PostgreSQL, MariaDB) run at real time; every timestamp in these tables is written
by Django in beat's (faked) process, so only beat needs the fake clock. SQLite is in-process and follows it too.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.support import beat as beatlib
from tests.support.beat import BeatDatabase, running_beat
from tests.support.realprogs import FakeClock

pytestmark = pytest.mark.real

FUTURE_S = beatlib.FUTURE_S
QUIET_S = beatlib.QUIET_S


def test_beat_stops_after_backward_step(beat_db: BeatDatabase, beat_clock: FakeClock) -> None:
    kind = beat_db.kind
    beat_clock.set(FUTURE_S)
    with running_beat(beat_db, beat_clock, max_interval=1) as beat:
        bug = beatlib.drive_into_bug(beat_db, beat_clock, beat, quiet_s=QUIET_S)

        # The state that keeps it silent for 180 days.
        state = bug.state
        now = dt.datetime.now(dt.UTC)
        for name in ("every-1s", "every-2s", "every-minute"):
            row = state.tasks[name]
            assert row.last_run_at is not None
            ahead_days = (row.last_run_at - now).total_seconds() / 86400
            print(f"[{kind}] {name}: last_run_at {ahead_days:.3f} d ahead, date_changed "
                  f"{((row.date_changed or now) - now).total_seconds() / 86400:.3f} d ahead")
            assert 179.9 < ahead_days < 180.1, (name, row)
        assert {"every-1s.last_run_at", "every-2s.last_run_at", "last_update"} <= set(state.future())


def test_beat_keeps_sending_without_step(sqlite_db: BeatDatabase, beat_clock: FakeClock) -> None:
    """The control, on one database: what stops beat is the step, not the database (the bug itself is shown on
    all three above, and again before every repair test)."""
    beat_db = sqlite_db
    kind = beat_db.kind
    beat_clock.set(FUTURE_S)
    with running_beat(beat_db, beat_clock, max_interval=1) as beat:
        # One window as long as the quiet window of the bug test, starting after the start-up burst.
        t0 = beat.wait_sent("every-1s", count=1, timeout_s=30)[0].mono + 0.5
        while time.monotonic() < t0 + QUIET_S:
            beat.check_alive()
            time.sleep(0.1)
        later = {name: beat.rate(name, t0, t0 + QUIET_S) for name in ("every-1s", "every-2s")}
        beatlib.assert_rates(kind, later, f"control, {QUIET_S:.0f} s at +180 d without a step")

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
4. control: the same beat on the same database kind, without the step, keeps sending for those 8 s
   (``test_beat_keeps_sending_without_step``).

What a repair test must do on top (copy ``test_beat_stops_after_backward_step`` up to the "bug shown" point, with
the same running beat):

* run the repair (the timeguard daemon under the same FakeClock with honest sources, or
  ``timeguard repair celery-beat --database-url db.url``) while ``beat`` keeps running;
* then ``t = time.monotonic()``; ``beat.wait_sent("every-1s", count=3, since=t, timeout_s=...)`` and
  ``beat.wait_sent("every-2s", count=2, since=t, ...)``, and assert the rates over a window after the first
  send again (``beat.rate(name, t0, t1)``: ≈1/s and ≈0.5/s, same bounds as ``_assert_rates``);
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import beat as beatlib
from tests.support.beat import BeatDatabase, BeatProcess, running_beat
from tests.support.realprogs import FakeClock, find_libfaketime, scratch_dir
from tests.support.require import need, need_program

pytestmark = pytest.mark.real

FUTURE_S = 180 * 86400
WINDOW_S = 5.0  # how long the rates are measured at +180 d
QUIET_S = 8.0  # how long beat must send nothing after the backward step
GRACE_S = 0.5  # a send already in flight when the clock steps may still be logged just after it
CUSTOM = ("every-1s", "every-2s", "every-minute", "clocked-once")


@pytest.fixture(params=beatlib.KINDS)
def beat_db(request: pytest.FixtureRequest) -> Iterator[BeatDatabase]:
    kind: str = request.param
    need(beatlib.packages_problem() is None, f"{beatlib.packages_problem()}")
    need(beatlib.service_problem(kind) is None, f"{beatlib.service_problem(kind)}")
    db = BeatDatabase(kind)
    try:
        db.create()
        db.create_tasks()
        yield db
    finally:
        db.drop()


@pytest.fixture
def beat_clock(ftshim: Path) -> FakeClock:
    """NO_CACHE (the default FakeClock): beat is a single, mostly idle thread, so re-reading the rc file on every
    clock call costs nothing, and a step is seen at the very next tick (CACHE_DURATION=1 would add 1–2 s)."""
    need(find_libfaketime(), "libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    need_program("setpriv", "util-linux")
    return FakeClock(scratch_dir("beatclock"), ftshim=ftshim)


def _run_at_future(beat: BeatProcess) -> tuple[float, dict[str, float]]:
    """Wait for the first sends at +180 d, measure the rates over WINDOW_S; returns (first send, rates)."""
    first = beat.wait_sent("every-1s", count=1, timeout_s=30)[0].mono
    t0 = first + 0.5  # past the start-up burst (every task is due at once)
    t1 = t0 + WINDOW_S
    beat.wait_sent("every-1s", count=3, timeout_s=30)
    while time.monotonic() < t1:
        beat.check_alive()
        time.sleep(0.1)
    rates = {name: beat.rate(name, t0, t1) for name in ("every-1s", "every-2s")}
    return first, rates


def _assert_rates(kind: str, rates: dict[str, float], what: str) -> None:
    print(f"[{kind}] {what}: every-1s {rates['every-1s']:.2f}/s, every-2s {rates['every-2s']:.2f}/s")
    assert 0.6 <= rates["every-1s"] <= 1.4, rates
    assert 0.2 <= rates["every-2s"] <= 0.8, rates


def test_beat_stops_after_backward_step(beat_db: BeatDatabase, beat_clock: FakeClock) -> None:
    kind = beat_db.kind
    beat_clock.set(FUTURE_S)
    with running_beat(beat_db, beat_clock, max_interval=1) as beat:
        first, rates = _run_at_future(beat)
        print(f"[{kind}] first send {first - (beat.started_mono or first):.2f} s after start")
        _assert_rates(kind, rates, "+180 d")
        names = {s.name for s in beat.sent()}
        assert {"every-minute", "clocked-once"} <= names, names  # due at once: their last run is 180 d "ago"

        # beat_sync_every=1: every send is written back at once. Wait until the last one is in the database.
        deadline = time.monotonic() + 10
        while True:
            state = beat_db.state()
            ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=179)
            persisted = [n for n in ("every-1s", "every-2s", "every-minute")
                         if (v := state.tasks[n].last_run_at) is not None and v > ahead]
            if len(persisted) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert len(persisted) == 3, state
        assert state.last_update is not None and state.last_update > ahead, state.last_update

        # The correction: back to real time.
        beat_clock.set(0)
        t_step = time.monotonic()
        while time.monotonic() < t_step + QUIET_S:
            beat.check_alive()
            time.sleep(0.1)
        late = [s for s in beat.sent_since(t_step + GRACE_S) if s.name in CUSTOM]
        wakeups = beat.wakeups_since(t_step + GRACE_S)
        print(f"[{kind}] after the step back: {len(late)} custom sends and {wakeups} wake-ups in "
              f"{QUIET_S - GRACE_S:.1f} s; queue holds {beat.queued()} messages")
        assert late == [], f"beat still sent after the backward step: {late}"
        assert beat.alive()
        assert wakeups >= QUIET_S - GRACE_S - 2, f"beat's loop stopped ticking ({wakeups} wake-ups):\n{beat.log_tail()}"

        # The state that keeps it silent for 180 days.
        state = beat_db.state()
        now = dt.datetime.now(dt.UTC)
        for name in ("every-1s", "every-2s", "every-minute"):
            row = state.tasks[name]
            assert row.last_run_at is not None
            ahead_days = (row.last_run_at - now).total_seconds() / 86400
            print(f"[{kind}] {name}: last_run_at {ahead_days:.3f} d ahead, date_changed "
                  f"{((row.date_changed or now) - now).total_seconds() / 86400:.3f} d ahead")
            assert 179.9 < ahead_days < 180.1, (name, row)
        assert {"every-1s.last_run_at", "every-2s.last_run_at", "last_update"} <= set(state.future())


def test_beat_keeps_sending_without_step(beat_db: BeatDatabase, beat_clock: FakeClock) -> None:
    kind = beat_db.kind
    beat_clock.set(FUTURE_S)
    with running_beat(beat_db, beat_clock, max_interval=1) as beat:
        # One window as long as the quiet window of the bug test, starting after the start-up burst.
        t0 = beat.wait_sent("every-1s", count=1, timeout_s=30)[0].mono + 0.5
        while time.monotonic() < t0 + QUIET_S:
            beat.check_alive()
            time.sleep(0.1)
        later = {name: beat.rate(name, t0, t0 + QUIET_S) for name in ("every-1s", "every-2s")}
        _assert_rates(kind, later, f"control, {QUIET_S:.0f} s at +180 d without a step")

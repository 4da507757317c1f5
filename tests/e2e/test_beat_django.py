"""End to end: the celery_beat repair configured as a Django user would — by naming the project's settings, nothing
translated by hand.

The project is the stock variant of tests/e2e/beatproject (``beatproject.settings_dburl``): its database comes from
a dj-database-url ``DATABASE_URL`` (``postgres://…``, ``mysql://…``, ``sqlite:////…``) and beat's poll from
``CELERY_BEAT_MAX_LOOP_INTERVAL`` (1 s, through ``BEAT_MAX_LOOP_INTERVAL``); beat runs without ``--max-interval``.

1. ``test_daemon_with_only_django_settings_repairs_running_beat``: the daemon's hook is only
   ``django: {settings, python, path}`` (the venv's interpreter, the project directory; ``DATABASE_URL`` in the
   daemon's environment, as a unit's ``EnvironmentFile=`` gives it). After the rollback the running beat sends
   again and nothing is left in the future — PostgreSQL and MariaDB (SQLite: the CLI test, and the daemon's repair in
   test_beat_repair_daemon.py).
2. ``test_cli_reuses_the_configured_hook_and_dry_runs_without_a_verdict``: ``timeguard repair celery-beat --hook
   NAME`` with the hook's ``django:`` (``environment_file`` this time): first a dry run under a configuration whose
   sources give no usable verdict (it shows the plan with the local clock, says what the real run lacks, writes
   nothing), then the real repair with honest sources; beat resumes; ``repair undo INCIDENT --hook NAME`` finds the
   database through the same hook (SQLite).

Every process is started by the test and stopped by PID; only beat and the daemon follow the FakeClock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from tests.support import beat as beatlib
from tests.support import beatdaemon
from tests.support.beat import PROJECT_DIR, STOCK_SETTINGS, BeatDatabase, drive_into_bug, running_beat
from tests.support.daemon import write_config
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, scratch_dir
from tests.support.repaircli import run_cli
from timeguard.events import EventKind

pytestmark = pytest.mark.real

POLL = {"BEAT_MAX_LOOP_INTERVAL": "1"}  # the project's CELERY_BEAT_MAX_LOOP_INTERVAL: beat polls every second
DJANGO = {"settings": STOCK_SETTINGS, "python": sys.executable, "path": [str(PROJECT_DIR)]}
QUIET_S = 2.0  # the full 8-s bug check runs in test_beat_bug.py


# The URL forms of the servers (postgres://, mysql://); sqlite:////… is the CLI test's below, and the daemon's repair
# on SQLite is test_beat_repair_daemon.py's.
@pytest.fixture(params=("postgresql", "mariadb"))
def stock_db(request: pytest.FixtureRequest) -> Iterator[BeatDatabase]:
    with beatlib.seeded_database(request.param, POLL, stock=True) as db:
        yield db


@pytest.fixture
def stock_sqlite() -> Iterator[BeatDatabase]:
    with beatlib.seeded_database("sqlite", POLL, stock=True) as db:
        yield db


def test_daemon_with_only_django_settings_repairs_running_beat(stock_db: BeatDatabase, beat_clock: FakeClock,
                                                               honest_ntp: list[FakeNTPServer]) -> None:
    db, kind = stock_db, stock_db.kind
    env = {"DATABASE_URL": db.url, **POLL}  # what the project's unit gives its processes; timeguard's too
    with running() as http, beatdaemon.running_daemon(db, beat_clock, honest_ntp, http, env=env,
                                                      hook={"django": DJANGO, "timeout_s": 60}) as daemon:
        audit = daemon.audit()
        assert audit is not None and audit["outcome"] == "clean", audit  # the settings were read: it looked
        t_jump = time.monotonic()
        beat_clock.set(beatlib.FUTURE_S)
        daemon.wait_event(EventKind.OFFSET_CRITICAL, 15, since_mono=t_jump)
        with running_beat(db, beat_clock, max_interval=None) as beat:  # beat's poll from the settings
            # the daemon may repair within 2 s of the step (PostgreSQL: the repair sees beat's poll): the bug is
            # asserted as "no custom send before beat's reload" (resumed.quiet_before_reload), as in the other
            # daemon tests, not by a fixed quiet window the repair may end early
            resumed = beatdaemon.rollback_and_resume(db, beat_clock, beat, daemon)
            print(f"[{kind}] django-only hook: step → rollback {resumed.step_to_detect_s:.2f} s, → reload "
                  f"{resumed.step_to_reload_s:.2f} s, → first custom task again {resumed.step_to_resend_s:.2f} s")
            assert resumed.quiet_before_reload == [], resumed.quiet_before_reload
            run = daemon.wait_hook_run(resumed.rollback, 60)
            beatdaemon.assert_changed(run)
            assert run.details["clean"] is True and run.details["rows_changed"]["last_run_at"] >= 3, run.details
            # the waits are the settings' 1-s poll + the 2-s margin: one round is two of them, not the default 7 s
            first = run.details["rounds"][0]
            assert first["now_b_s"] - first["now_a_s"] < 5.0, run.details["rounds"]
            beat.wait_sent("every-1s", count=3, since=resumed.bug.step_mono, timeout_s=15)
            t = time.monotonic()
            beat.wait_sent("every-1s", count=2, since=t, timeout_s=10)  # synced back (beat_sync_every=1)
            state = db.state()
        assert state.future() == [], state


def test_cli_reuses_the_configured_hook_and_dry_runs_without_a_verdict(stock_sqlite: BeatDatabase,
                                                                       beat_clock: FakeClock,
                                                                       sources: dict[str, object]) -> None:
    db = stock_sqlite
    env_file = scratch_dir("djenv") / "beat.env"
    env_file.write_text(f"# the project's EnvironmentFile\nDATABASE_URL='{db.url}'\nBEAT_MAX_LOOP_INTERVAL=1\n")
    hook = {"type": "celery_beat", "name": "beat", "django": {**DJANGO, "environment_file": str(env_file)}}
    honest = write_config(scratch_dir("django-cli"), sources, hooks=[hook])
    # sources that give no verdict: NTP on a port nobody answers, no HTTPS
    deaf = write_config(scratch_dir("django-cli-deaf"), {"ntp": [_Port(1)], "http": None}, hooks=[hook])
    with running_beat(db, beat_clock, max_interval=None) as beat:
        beat_clock.set(beatlib.FUTURE_S)
        bug = drive_into_bug(db, beat_clock, beat, quiet_s=QUIET_S)
        future = set(bug.state.future())
        assert future, bug.state

        dry = run_cli(deaf, "celery-beat", "--hook", "beat", "--dry-run", "--json")
        assert dry.rc == 0, dry
        shown = dry.json()
        assert shown["clock"] == "local" and "no usable verdict" in shown["verdict_problem"], shown
        assert len(shown["changes"]) >= len(future) - 1, (shown["changes"], future)  # last_update may be None
        assert "dry run with this host's clock: the real run needs a usable verdict" in dry.stderr, dry
        assert set(db.state().future()) == future  # nothing written
        refused = run_cli(deaf, "celery-beat", "--hook", "beat", "--json")
        assert refused.rc == 1 and "no usable verdict" in refused.stderr, refused

        t = time.monotonic()
        done = run_cli(honest, "celery-beat", "--hook", "beat", "--json")
        assert done.rc == 0, done
        result = done.json()
        assert result["changed"] is True and result["clean"] is True, result
        # beat's poll came from the settings (1 s): each wait is 1 + 2 s, not the default 5 + 2 s
        assert result["rounds"][0]["now_b_s"] - result["rounds"][0]["now_a_s"] < 5.0, result["rounds"]
        beat.wait_sent("every-1s", count=3, since=t, timeout_s=20)
        t = time.monotonic()
        beat.wait_sent("every-1s", count=2, since=t, timeout_s=10)
        assert db.state().future() == []
        # the undo finds the database through the same hook (a dry run: it would bring the outage back)
        undo = run_cli(honest, "undo", result["incident_id"], "--hook", "beat", "--dry-run")
        assert undo.rc == 0 and ("would restore:" in undo.stdout or "left alone:" in undo.stdout), undo
    missing = run_cli(honest, "celery-beat", "--json", "--trust-local-clock")
    assert missing.rc == 2 and "has one celery_beat hook: --hook beat uses it" in missing.stderr, missing


class _Port:
    """A source address for write_config: a loopback port with nothing behind it."""

    def __init__(self, port: int) -> None:
        self.port = port

"""The audit and the retry, end to end with the real daemon (issue 5).

* Damage done before timeguard ran: a real beat stamped +180 d, the clock was corrected, beat is silent — then
  the daemon is installed and started. It never sees a step; its audit (once NTP and HTTPS agree that the clock
  is right) finds the future rows, raises ``future_state_found`` and the repair makes the running beat resume.
* The database locked while the rollback's repair runs (a real beat, PostgreSQL, a row lock held by another
  transaction): the run fails with "locked" in the journal, the daemon keeps checking, and once the lock is gone
  the audit's retry repairs and beat resumes.
* The database unreachable (PostgreSQL behind a loopback port that refuses, then forwards) or missing its tables
  (a SQLite file not yet migrated): the audit's error is in the journal and in ``timeguard status``, the daemon
  is unaffected, and the repair happens once the database is there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import beat as beatlib
from tests.support.beat import BeatDatabase, running_beat
from tests.support.beatdaemon import REPAIR_HOOK, Daemon, repair_hook
from tests.support.daemon import checks, events, hook_runs, meta, start, wait_for, write_config
from tests.support.dcb_schema import BeatDB, beat_database, migrate, server_problem
from tests.support.realprogs import FakeClock, scratch_dir
from tests.support.require import need
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus

pytestmark = pytest.mark.real

DAY = 86400.0
#: A fast retry for the tests: 1 s, doubling up to 10 s (the defaults are 30 s and 600 s).
FAST_AUDIT = {"audit_retry_s": 1, "audit_interval_s": 10}


def assert_resumed(db: BeatDatabase, beat: beatlib.BeatProcess, first: float) -> None:
    """every-1s and every-2s sent at their rates after ``first``; then no future timestamp once beat synced."""
    t0 = first + 0.5
    beat.wait_sent("every-1s", count=4, since=t0, timeout_s=20)
    beat.wait_sent("every-2s", count=2, since=t0, timeout_s=20)
    while time.monotonic() < t0 + 6:
        beat.check_alive()
        time.sleep(0.1)
    beatlib.assert_rates(db.kind, {n: beat.rate(n, t0, t0 + 6) for n in ("every-1s", "every-2s")}, "resumed")
    time.sleep(1.5)  # beat_sync_every=1: the sends' last_run_at are written back; none may be in the future
    state = db.state()
    assert state.future() == [], state
    # the one-off that fired at +180 d: never sent again (beat disables it at its first look after the reload)
    assert beat.sent_since(first - 0.5, "clocked-once") == [], "the one-off that fired early ran a second time"
    assert state.tasks["clocked-once"].total_run_count >= 1


def changed_run_after(config: Path, since_wall: float, timeout_s: float, proc: Any) -> Any:
    def probe() -> Any:
        return next((r for r in hook_runs(config, REPAIR_HOOK)
                     if r.status is HookStatus.CHANGED and r.wall_s >= since_wall), None)

    return wait_for("a repair that changed rows", probe, timeout_s, proc)


# --------------------------------------------------------------------------------------------------------


def test_audit_repairs_damage_done_before_timeguard_started(beat_clock: FakeClock, sources: dict[str, Any]) -> None:
    with beatlib.seeded_database("mariadb") as db:
        beat_clock.set(beatlib.FUTURE_S)
        with running_beat(db, beat_clock, max_interval=1) as beat:
            beatlib.drive_into_bug(db, beat_clock, beat, quiet_s=4)
            # timeguard is installed now, at the corrected time: its first start, a fresh journal, no step to see
            directory = scratch_dir("audit-daemon")
            config = write_config(directory, sources, daemon=FAST_AUDIT,
                                  hooks=[repair_hook(db, beat_max_interval_s=1, wait_margin_s=1)])
            started = time.monotonic()
            with start(config, None, directory / "daemon.log") as proc:
                daemon = Daemon(config, directory / "daemon.log", proc)
                found = daemon.wait_event(EventKind.FUTURE_STATE_FOUND, 30)
                run = daemon.wait_hook_run(found, 40)
                assert run.status is HookStatus.CHANGED, run.summary
                first = beat.wait_custom_sent(started, 20, daemon.log_tail).mono
                print(f"[{db.kind}] daemon started → future_state_found {found.monotonic_s - started:.2f} s → first "
                      f"custom task sent {first - started:.2f} s")
                assert_resumed(db, beat, first)
                assert proc.alive()
    assert found.detail["hook"] == REPAIR_HOOK and found.detail["counts"]["last_run_at"] >= 3
    assert {"every-1s", "every-2s", "every-minute"} <= set(found.detail["tasks"])
    assert found.verdict is not None and found.verdict["ntp_http_agree"] is True
    assert not events(config, EventKind.ROLLBACK) and not events(config, EventKind.ROLLBACK_WHILE_DOWN)
    report = {item["name"]: item["kind"] for item in run.details["report"]}
    assert report.get("clocked-once") == "fired_early", run.details["report"]


def _lock_periodictasks(db: BeatDatabase) -> Any:
    """Another transaction holds the row every repair locks first (periodictasks ident=1)."""
    import psycopg

    conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=db.name)
    conn.execute("SELECT * FROM django_celery_beat_periodictasks WHERE ident = 1 FOR UPDATE")
    return conn


def test_locked_database_fails_the_repair_then_the_audit_retries(beat_clock: FakeClock,
                                                                  sources: dict[str, Any]) -> None:
    with beatlib.seeded_database("postgresql") as db:
        directory = scratch_dir("locked-daemon")
        config = write_config(directory, sources, daemon=FAST_AUDIT, hooks=[
            repair_hook(db, beat_max_interval_s=1, wait_margin_s=1, lock_timeout_s=1)])
        log = directory / "daemon.log"
        with start(config, beat_clock.sharing(1), log) as proc:
            daemon = Daemon(config, log, proc)
            wait_for("the first checks", lambda: checks(config) >= 2, 20, proc)
            t_jump = time.monotonic()
            beat_clock.set(beatlib.FUTURE_S)
            # Beat starts once the daemon has seen the clock jump ahead: on a real host they read one clock, but
            # the daemon's libfaketime cache (1 s) lags the file, and an audit in that second would find beat's
            # first future rows with a clock it still trusts — and rightly repair them, before the rollback.
            daemon.wait_event(EventKind.FORWARD_JUMP, 10, since_mono=t_jump)
            held: dict[str, Any] = {}
            with running_beat(db, beat_clock, max_interval=1) as beat:
                try:
                    # the lock is taken right after the step, before the daemon (1-s cache) sees it
                    bug = beatlib.drive_into_bug(db, beat_clock, beat, quiet_s=5,
                                                 after_step=lambda: held.update(conn=_lock_periodictasks(db)))
                    rollback = daemon.wait_event(EventKind.ROLLBACK, 10, since_mono=bug.step_mono - 1)
                    failed = daemon.wait_hook_run(rollback, 20)
                    assert failed.status is HookStatus.FAILED and "locked" in failed.summary, failed.summary
                    checked = checks(config)
                    wait_for("checks go on", lambda: checks(config) > checked, 40, proc)
                    assert beat.sent_since(bug.step_mono + beatlib.GRACE_S) == [] or all(
                        s.name not in beatlib.CUSTOM for s in beat.sent_since(bug.step_mono + beatlib.GRACE_S))
                finally:
                    if "conn" in held:
                        held["conn"].rollback()
                        held["conn"].close()
                released_wall, released = time.time(), time.monotonic()
                run = changed_run_after(config, released_wall, 40, proc)
                first = beat.wait_custom_sent(released, 30, daemon.log_tail).mono
                print(f"[{db.kind}] lock released → repaired by a retry ({run.event_kind}) → first custom task "
                      f"{first - released:.2f} s later")
                assert_resumed(db, beat, first)
                assert proc.alive()
    # every attempt while the lock was held is in the journal with its reason
    runs = hook_runs(config, REPAIR_HOOK)
    assert all("locked" in r.summary for r in runs if r.status is HookStatus.FAILED), [r.summary for r in runs]
    assert run.event_kind in (EventKind.FUTURE_STATE_FOUND.value, EventKind.ROLLBACK.value)


# --------------------------------------------------------------------------------------------------------


class Forwarder:
    """A loopback TCP port that refuses connections until :meth:`open`, then forwards to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for s in [self._server, *self._sockets]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


def _damage(db: BeatDB) -> None:
    future = time.time() + 180 * DAY
    db.add_task("interval-future", last_run_at=future, date_changed=future)
    db.add_task("crontab-future", kind="crontab", last_run_at=future + 60, date_changed=future + 60)
    db.add_task("past", kind="crontab", last_run_at=time.time() - 3 * DAY, date_changed=time.time() - 3 * DAY)
    db.set_last_update(future)


def _assert_clean(db: BeatDB) -> None:
    limit = time.time() + 600
    for name, row in db.tasks().items():
        assert row["last_run_at"] is None or row["last_run_at"] <= limit, name
        assert row["date_changed"] <= limit, name
    assert (db.last_update() or 0) <= limit


@pytest.mark.parametrize("problem", ["unreachable", "missing_tables"])
def test_database_problem_is_a_clear_error_and_the_repair_happens_once_it_is_gone(
    problem: str, sources: dict[str, Any], tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        if problem == "unreachable":
            need(server_problem("postgresql") is None, f"{server_problem('postgresql')}")
            db = stack.enter_context(beat_database("postgresql", tmp_path))
            _damage(db)
            forwarder = Forwarder(5432)
            stack.callback(forwarder.close)
            url = db.url.replace("127.0.0.1:5432", f"127.0.0.1:{forwarder.port}")
            expected, fix = "cannot connect", forwarder.open
        else:
            path = tmp_path / "not-yet-migrated.sqlite3"
            path.touch()  # an empty database (a file that does not exist is "no such database": never created)
            db = BeatDB("sqlite", f"sqlite:///{path}", {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)})
            url = db.url
            expected = "missing"

            def fix() -> None:
                migrate(db.django, tmp_path)
                _damage(db)

        directory = scratch_dir("dbproblem-daemon")
        config = write_config(directory, sources, daemon=FAST_AUDIT, hooks=[
            {"type": "celery_beat", "name": REPAIR_HOOK, "database_url": url, "beat_max_interval_s": 0,
             "wait_margin_s": 0.5}])
        log = directory / "daemon.log"
        with start(config, None, log) as proc:

            def audit() -> dict[str, Any] | None:
                return meta(config).get(f"audit:{REPAIR_HOOK}")

            error = wait_for("the audit's error", lambda: (a := audit()) and a["outcome"] == "error" and a, 30, proc)
            assert expected in error["summary"], error
            assert "127.0.0.1" in error["summary"] or "sqlite" in error["summary"], error  # says where
            status = subprocess.run([sys.executable, "-m", "timeguard", "status", "--config", str(config)],
                                    capture_output=True, text=True, timeout=30, check=False,
                                    env={k: v for k, v in os.environ.items() if k != "TIMEGUARD_CONFIG"})
            assert f"Audit {REPAIR_HOOK}" in status.stdout and "error" in status.stdout, status.stdout
            checked = checks(config)
            wait_for("checks go on", lambda: checks(config) > checked, 40, proc)  # the daemon is unaffected

            fix()
            fixed_wall = time.time()
            found = wait_for("future_state_found", lambda: events(config, EventKind.FUTURE_STATE_FOUND), 30, proc)
            run = changed_run_after(config, fixed_wall, 30, proc)
            assert run.event_id == found[0].id or run.event_kind == EventKind.FUTURE_STATE_FOUND.value
            assert run.details["rows_changed"]["last_run_at"] == 2, run.details
            assert proc.alive()
        _assert_clean(db)
        found_at = dt.datetime.fromtimestamp(found[0].wall_time_s, dt.UTC)
        print(f"[{problem}] {error['summary']!r}; repaired after the fix (found at {found_at:%H:%M:%S})")

"""End to end: the forward-jump guard (``guard: stop|alert``) with a real, running celery beat.

Real programs only: ``timeguard run`` and ``celery beat`` (django-celery-beat on SQLite, broker Redis) under one
libfaketime clock (tests/support/beatdaemon.py), the daemon's hook stopping and starting beat through
tests/support/beatctl.py (a pidfile, as ``supervisorctl`` would), three FakeNTPServers and an HTTP Date server on
loopback at real time.

1. ``test_guard_stops_beat_while_ahead_and_starts_it_repaired``: beat runs at real time; the clock jumps +180 d →
   the daemon stops beat (measured: how soon, and how many future stamps beat wrote first); nothing more is
   written while it is stopped; the daemon restarts and still knows; the clock goes back → the daemon repairs and
   starts beat, which runs every task at its rate with nothing left in the future.
2. ``test_guard_alert_names_the_store_and_stops_nothing``: ``guard: alert``: the webhook gets
   ``future_state_accruing`` naming the store; beat keeps running.
3. ``test_spoofed_ntp_majority_stops_nothing``: three NTP servers say the host (at real time) is 180 days ahead,
   HTTPS says it is right: the sources disagree, so no evidence — beat is not stopped.
"""

from __future__ import annotations

import base64
import datetime as dt
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support import beat as beatlib
from tests.support import beatdaemon
from tests.support import daemon as daemonlib
from tests.support.beat import BeatDatabase, running_beat
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.guardbeat import Controlled
from tests.support.realprogs import FakeClock
from tests.support.receiver import Receiver
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus

pytestmark = pytest.mark.real

FUTURE_S = beatlib.FUTURE_S
DAY = 86400.0
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _future_values(state: beatlib.BeatState) -> dict[str, dt.datetime]:
    return {f"{r.name}.last_run_at": r.last_run_at for r in state.tasks.values()
            if r.last_run_at is not None and r.last_run_at > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)}


def test_guard_stops_beat_while_ahead_and_starts_it_repaired(sqlite_db: BeatDatabase, beat_clock: FakeClock,
                                                             honest_ntp: list[FakeNTPServer]) -> None:
    db = sqlite_db
    ctl = Controlled(db, beat_clock)
    try:
        with running() as http, running_beat(db, beat_clock, max_interval=1) as beat:
            assert beat.process is not None
            ctl.pidfile.write_text(f"{beat.process.pid}\n")
            beat.wait_sent("every-1s", count=2, timeout_s=30)
            with beatdaemon.running_daemon(db, beat_clock, honest_ntp, http, hook=ctl.hook("stop")) as daemon:
                assert db.state().future() == []
                t_jump = time.monotonic()
                beat_clock.set(FUTURE_S)
                accruing = daemon.wait_event(EventKind.FUTURE_STATE_ACCRUING, 20, since_mono=t_jump)
                [store] = accruing.detail["stores"]
                assert store["action"] == "stopped" and store["hook"] == beatdaemon.REPAIR_HOOK, accruing.detail
                assert accruing.detail["ahead_s"] > 179 * DAY, accruing.detail
                stop = next(op for op in ctl.ops() if op["op"] == "stop")
                assert not beat.alive()
                damage = [s for s in beat.sent_since(t_jump + beatlib.GRACE_S) if s.name in beatlib.CUSTOM]
                at_stop = db.state()
                print(f"[guard] +180 d → beat stopped in {stop['done'] - t_jump:.2f} s (stop command began "
                      f"{stop['began'] - t_jump:.2f} s after the step); {len(damage)} task(s) sent at +180 d first; "
                      f"future last_run_at persisted: {sorted(_future_values(at_stop))}")
                assert stop["done"] - t_jump < 10, stop
                with daemonlib.journal_of(daemon.config) as journal:
                    assert list(journal.guards()) == [beatdaemon.REPAIR_HOOK]
                status = subprocess.run([sys.executable, "-m", "timeguard", "status", "--config", str(daemon.config)],
                                        capture_output=True, text=True, timeout=60, check=False)
                assert "STOPPED by the guard: beat-repair" in status.stdout, status.stdout
                checks_before = daemonlib.checks(daemon.config)

            # the daemon restarts while beat is stopped and the clock still +180 d
            with beatdaemon.restarted(daemon.config, beat_clock) as again:
                daemonlib.wait_for("two checks of the restarted daemon",
                                   lambda: daemonlib.checks(again.config) >= checks_before + 2, 40, again.proc)
                # still stopped: not started at +180 d (the restarted daemon made sure: a second, idempotent stop)
                assert [op["op"] for op in ctl.ops()] in (["stop"], ["stop", "stop"]), ctl.ops()
                assert _future_values(db.state()) == _future_values(at_stop)  # no future stamp since the stop

                t_back = time.monotonic()
                beat_clock.set(0)
                started = ctl.adopt(60)
                new = ctl.next
                new.wait_sent("every-1s", count=3, since=t_back, timeout_s=30)
                first = new.wait_custom_sent(t_back, 30)
                print(f"[guard] back to +0 → beat started {started['done'] - t_back:.2f} s after the step, first "
                      f"task sent {first.mono - t_back:.2f} s after it")
                t0 = max(first.mono + 0.5, time.monotonic())
                t1 = t0 + beatlib.RATE_WINDOW_S
                while time.monotonic() < t1:
                    new.check_alive()
                    time.sleep(0.1)
                beatlib.assert_rates(db.kind, {n: new.rate(n, t0, t1) for n in ("every-1s", "every-2s")},
                                     "after the guard's repair")
                runs = [(r.status, r.summary) for r in again.hook_runs()]
                if _future_values(at_stop):
                    changed = [r for r in again.hook_runs() if r.status is HookStatus.CHANGED]
                    assert changed and changed[-1].details.get("guard"), runs
                else:  # the guard stopped beat before it persisted a future stamp (CI: in 0.48 s): nothing to repair
                    assert any(st is HookStatus.OK and "nothing to repair" in summary for st, summary in runs), runs
                with daemonlib.journal_of(again.config) as journal:
                    assert journal.guards() == {}
                time.sleep(1.5)  # beat_sync_every=1: the last send is in the database
                assert db.state().future() == [], db.state()
                assert [op["op"] for op in ctl.ops()][-1:] == ["start"], ctl.ops()
                assert [op["op"] for op in ctl.ops()].count("start") == 1, ctl.ops()
    finally:
        ctl.next.stop()


def test_guard_alert_names_the_store_and_stops_nothing(sqlite_db: BeatDatabase, beat_clock: FakeClock,
                                                       honest_ntp: list[FakeNTPServer]) -> None:
    db = sqlite_db
    ctl = Controlled(db, beat_clock)
    ops_hook = {"type": "webhook", "name": "ops", "url": "", "allow_plain_http": True,
                "secret_env": "TG_WEBHOOK_SECRET"}
    try:
        with running() as http, Receiver(SECRET) as ops, running_beat(db, beat_clock, max_interval=1) as beat:
            ops_hook["url"] = ops.url
            assert beat.process is not None
            ctl.pidfile.write_text(f"{beat.process.pid}\n")
            with beatdaemon.running_daemon(db, beat_clock, honest_ntp, http, hook=ctl.hook("alert"),
                                           extra_hooks=[ops_hook], env={"TG_WEBHOOK_SECRET": SECRET}) as daemon:
                t_jump = time.monotonic()
                beat_clock.set(FUTURE_S)
                accruing = daemon.wait_event(EventKind.FUTURE_STATE_ACCRUING, 20, since_mono=t_jump)
                assert [s["action"] for s in accruing.detail["stores"]] == ["alerting"], accruing.detail
                deadline = time.monotonic() + 15
                bodies: list[dict[str, Any]] = []
                while time.monotonic() < deadline and not any(
                        b["type"] == "timeguard.future_state_accruing" for b in bodies):
                    bodies = [r.json() for r in ops.accepted()]
                    time.sleep(0.2)
                body = next(b for b in bodies if b["type"] == "timeguard.future_state_accruing")
                print(f"[guard alert] webhook: {body['data']['detail']['stores']}")
                assert body["data"]["detail"]["stores"][0]["where"].startswith("sqlite"), body["data"]["detail"]
                beat.wait_sent("every-1s", count=3, since=t_jump + 1, timeout_s=15)  # still running at +180 d
                assert beat.alive() and ctl.ops() == []
                assert len(daemon.events(EventKind.FUTURE_STATE_ACCRUING)) == 1  # once per episode
    finally:
        ctl.next.stop()


def test_spoofed_ntp_majority_stops_nothing(sqlite_db: BeatDatabase, beat_clock: FakeClock) -> None:
    db = sqlite_db
    ctl = Controlled(db, beat_clock)
    spoofed = [FakeNTPServer(offset_s=-FUTURE_S) for _ in range(3)]  # "the host is 180 days ahead"
    try:
        with running() as http, running_beat(db, beat_clock, max_interval=1) as beat:
            assert beat.process is not None
            ctl.pidfile.write_text(f"{beat.process.pid}\n")
            with beatdaemon.running_daemon(db, beat_clock, spoofed, http, hook=ctl.hook("stop")) as daemon:
                inconsistent = daemon.wait_event(EventKind.SOURCES_INCONSISTENT, 15)
                assert inconsistent.verdict is not None and inconsistent.verdict["ntp_http_agree"] is False
                t0 = time.monotonic()
                daemonlib.wait_for("two more checks", lambda: (c := daemon.last_check()) is not None
                                   and c.monotonic_s > t0 + 1 and c, 30, daemon.proc)
                time.sleep(6.0)  # the guard looks every 5 s without a poke
                assert beat.alive() and ctl.ops() == []
                assert daemon.events(EventKind.FUTURE_STATE_ACCRUING) == []
                beat.wait_sent("every-1s", count=2, since=time.monotonic() - 0.5, timeout_s=10)
    finally:
        ctl.next.stop()
        for server in spoofed:
            server.close()

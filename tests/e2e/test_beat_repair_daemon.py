"""End to end: the timeguard daemon repairs a real, running celery beat after a rollback — and refuses to when the
evidence does not hold.

Real programs only: ``timeguard run`` and ``celery beat`` (django-celery-beat's DatabaseScheduler, broker Redis)
both under one libfaketime clock (tests/support/beatdaemon.py), the beat database on SQLite, PostgreSQL or
MariaDB, three FakeNTPServers and an HTTP Date server on loopback at real time.

1. ``test_daemon_repairs_running_beat``: the bug of tests/e2e/test_beat_bug.py (+180 d, back to +0: beat sends
   nothing), then the daemon's ``celery_beat`` hook repairs the database on the rollback and the *running* beat
   reloads and sends again at its normal rates, with nothing left in the future.
2. ``test_no_repair_when_rolled_back_into_the_past``: +180 d, then "corrected" to −3 d: the sources say the host is
   3 days behind, so the hook refuses (the repair's now would be wrong) and the alert goes out.
3. ``test_no_repair_when_spoofed_ntp_majority_disagrees_with_https``: an attacker who controls NTP rolls the host
   back; the NTP majority confirms the false clock, HTTPS does not: no repair.
"""

from __future__ import annotations

import base64
import datetime as dt
import time

import pytest

from tests.support import beat as beatlib
from tests.support import beatdaemon
from tests.support.beat import BeatDatabase, BeatState, running_beat
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock
from tests.support.receiver import Receiver
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus

pytestmark = pytest.mark.real

FUTURE_S = beatlib.FUTURE_S
DAY = 86400.0
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
# beat runs with --max-interval 1; the hook waits 1 s + the default 2 s margin between its phases.
FAST_HOOK = {"beat_max_interval_s": 1, "timeout_s": 60}


def _timestamps(state: BeatState) -> dict[str, dt.datetime]:
    out = {f"{row.name}.{col}": value for row in state.tasks.values() for col in ("last_run_at", "date_changed")
           if (value := getattr(row, col)) is not None}
    if state.last_update is not None:
        out["last_update"] = state.last_update
    return out


def _assert_nothing_moved_back(before: BeatState, after: BeatState) -> None:
    """No timestamp the database held before is lower now (a repair would have clamped it to its now)."""
    old, new = _timestamps(before), _timestamps(after)
    lowered = {k: (old[k], new.get(k)) for k in old if new.get(k) is None or new[k] < old[k]}
    assert lowered == {}, f"the database was changed: {lowered}"


# --------------------------------------------------------------------------------------------------------
# 1. The daemon repairs a running beat
# --------------------------------------------------------------------------------------------------------


# PostgreSQL at a 1-s poll with the daemon: test_beat_django.py (the same repair, configured from the settings)
@pytest.mark.parametrize(("beat_db", "pace"), [("sqlite", "short"), ("mariadb", "short"), ("postgresql", "default")],
                         indirect=["beat_db"])
def test_daemon_repairs_running_beat(beat_db: BeatDatabase, beat_clock: FakeClock, honest_ntp: list[FakeNTPServer],
                                     pace: str) -> None:
    """``short``: beat polls every 1 s and the hook is told so; ``default``: beat's own 5-s poll and the hook's
    defaults, as a user installs them (the benchmark measures this one's time to resume)."""
    kind = beat_db.kind
    hook, max_interval = (FAST_HOOK, 1) if pace == "short" else ({}, None)
    with running() as http, beatdaemon.running_daemon(beat_db, beat_clock, honest_ntp, http,
                                                      hook=hook) as daemon:
        assert daemon.audit()["outcome"] == "clean", daemon.audit()  # at real time: nothing in the future yet
        t_jump = time.monotonic()
        beat_clock.set(FUTURE_S)
        daemon.wait_event(EventKind.FORWARD_JUMP, 10, since_mono=t_jump)
        daemon.wait_event(EventKind.OFFSET_CRITICAL, 15, since_mono=t_jump)
        with running_beat(beat_db, beat_clock, max_interval=max_interval) as beat:
            resumed = beatdaemon.rollback_and_resume(beat_db, beat_clock, beat, daemon, quiet_s=1.0)
            t_step = resumed.bug.step_mono
            print(f"[{kind}] step → rollback event {resumed.step_to_detect_s:.2f} s, → beat reload "
                  f"{resumed.step_to_reload_s:.2f} s, → first custom task sent again "
                  f"{resumed.step_to_resend_s:.2f} s ({resumed.first_resend.name})")
            # the bug held until the repair: nothing custom between the step (+ grace) and beat's reload
            assert resumed.quiet_before_reload == [], resumed.quiet_before_reload

            # beat resumed at its normal rates
            beat.wait_sent("every-1s", count=3, since=t_step, timeout_s=15)
            beat.wait_sent("every-2s", count=2, since=t_step, timeout_s=15)
            t0 = resumed.first_resend.mono + 0.5  # past the catch-up: every interval task is due at once
            t1 = t0 + beatlib.RATE_WINDOW_S
            while time.monotonic() < t1:
                beat.check_alive()
                time.sleep(0.1)
            rates = {name: beat.rate(name, t0, t1) for name in ("every-1s", "every-2s")}
            beatlib.assert_rates(kind, rates, "after the daemon's repair")

            # the hook's run for this rollback: CHANGED, clean, clocked-once reported (checked below)
            run = daemon.wait_hook_run(resumed.rollback, 60)
            beatdaemon.assert_changed(run)
            print(f"[{kind}] hook run {run.duration_s:.2f} s: {run.summary}")
            assert run.details["clean"] is True, run.details
            assert run.details["rows_changed"]["last_run_at"] >= 3, run.details
            report = {item["name"]: item["kind"] for item in run.details["report"]}

            time.sleep(2.0)  # beat syncs after every send (beat_sync_every=1): its values are in the DB by now
            state = beat_db.state()
            beat.check_alive()
            # clocked-once fired early (at +180 d, clocked for real + 1 d): it must not run a second time
            assert beat.sent_since(t_step, "clocked-once") == [], beat.sent_since(t_step, "clocked-once")
        assert state.future() == [], state
        # ... and will not: the repair leaves its run count alone, so it stays disabled, or — still enabled because
        # beat only disables a fired one-off when it next checks it, and a clocked entry more than 5 min ahead is
        # not even loaded — beat disables it without running it when its time comes (schedulers.py, ONE OFF TASK).
        once_before, once = resumed.bug.state.tasks["clocked-once"], state.tasks["clocked-once"]
        print(f"[{kind}] clocked-once before the repair: enabled={once_before.enabled} "
              f"total_run_count={once_before.total_run_count}; after: enabled={once.enabled} "
              f"total_run_count={once.total_run_count}")
        assert once_before.total_run_count >= 1 or not once_before.enabled, once_before
        assert (once.enabled, once.total_run_count) == (once_before.enabled, once_before.total_run_count), once
        assert daemon.proc.alive(), daemon.log_tail()
    assert len(daemon.events(EventKind.ROLLBACK)) == 1
    # reported, not re-enabled or re-armed: beat disables a fired one-off only when it next checks it, and a
    # clocked entry is not checked again until a reload (nor loaded while its time is > 5 min away), so after the
    # false period clocked-once is still enabled with total_run_count 1 — the report must still name it.
    assert report.get("clocked-once") == "fired_early", run.details["report"]
    assert "reported" in run.summary, run.summary


# --------------------------------------------------------------------------------------------------------
# 2. Rolled back too far: the host clock is now in the past
# --------------------------------------------------------------------------------------------------------


def test_no_repair_when_rolled_back_into_the_past(sqlite_db: BeatDatabase, beat_clock: FakeClock,
                                                  honest_ntp: list[FakeNTPServer]) -> None:
    """+180 d, then the "correction" overshoots to −3 days. The repair would write the host's now (3 days ago)
    as every task's last run: it must refuse, say why, and the rollback alert must still go out."""
    db = sqlite_db
    ops_hook = {"type": "webhook", "name": "ops", "on": ["rollback"], "url": "", "allow_plain_http": True,
                "secret_env": "TG_WEBHOOK_SECRET"}
    with running() as http, Receiver(SECRET) as ops:
        ops_hook["url"] = ops.url
        with beatdaemon.running_daemon(db, beat_clock, honest_ntp, http, hook=FAST_HOOK, extra_hooks=[ops_hook],
                                       env={"TG_WEBHOOK_SECRET": SECRET}) as daemon:
            t_jump = time.monotonic()
            beat_clock.set(FUTURE_S)
            daemon.wait_event(EventKind.OFFSET_CRITICAL, 15, since_mono=t_jump)
            with running_beat(db, beat_clock, max_interval=1) as beat:
                beat.wait_sent("every-1s", count=2, timeout_s=30)
                before = beatlib.wait_persisted(db)

                t_step = time.monotonic()
                beat_clock.set(-3 * DAY)
                rollback = daemon.wait_event(EventKind.ROLLBACK, 10, since_mono=t_step)
                run = daemon.wait_hook_run(rollback, 30)
                print(f"[{db.kind}] hook run: {run.status.value}: {run.summary}")
                assert run.status is HookStatus.SKIPPED, (run.status, run.summary)
                assert "behind" in run.summary and "into the past" in run.summary, run.summary
                verdict = run.details.get("verdict") or {}
                assert verdict.get("offset_s") is not None and abs(verdict["offset_s"] - 3 * DAY) < 60, verdict

                # the alert: the rollback reached the webhook, with the sources' view (host 3 days behind)
                assert ops.wait_received(1, 10.0), daemon.log_tail()
                body = ops.accepted()[0].json()
                assert body["type"] == "timeguard.rollback", body
                assert abs(body["data"]["step_s"] + FUTURE_S + 3 * DAY) < 60, body["data"]["step_s"]
                current = body["data"]["current_verdict"]
                assert current["status"] == "CRITICAL" and abs(current["offset_s"] - 3 * DAY) < 60, current
                # and the daemon keeps reporting the host clock critical, 3 days behind, after fresh checks
                check = beatdaemon.daemonlib.wait_for(
                    "a check after the step",
                    lambda: (c := daemon.last_check()) is not None and c.monotonic_s > t_step and c, 20, daemon.proc)
                assert check.status == "CRITICAL" and abs(check.offset_s - 3 * DAY) < 60, check

                time.sleep(1.0)
                after = db.state()
                beat.check_alive()
        _assert_nothing_moved_back(before, after)
        assert {"every-1s.last_run_at", "every-2s.last_run_at", "last_update"} <= set(after.future()), after
        assert [r.status for r in daemon.hook_runs()] == [HookStatus.SKIPPED] * len(daemon.hook_runs())


# --------------------------------------------------------------------------------------------------------
# 3. A spoofed NTP majority that agrees with a false clock
# --------------------------------------------------------------------------------------------------------


def test_no_repair_when_spoofed_ntp_majority_disagrees_with_https(sqlite_db: BeatDatabase, beat_clock: FakeClock
                                                                  ) -> None:
    """The attack the NTP/HTTPS cross-check is for.

    An attacker answers for all three NTP servers (spoofed on path) with a time 3 days in the past, and the host's
    NTP client follows them: the clock steps from real time to −3 d. Beat wrote its schedule at real time, so at
    −3 d every ``last_run_at`` looks 3 days in the future — exactly the state a rollback repair clamps. Right
    after the step the three NTP servers agree with the host clock (they tell −3 d too); only HTTPS says the host
    is 3 days behind. A vote over all sources would follow the 3-of-4 NTP majority (offset ≈ 0, within
    ``max_offset_s``) and "repair" correct data to the attacker's time. The hook must refuse: NTP and HTTPS
    disagree (verdict SOURCES_INCONSISTENT), so there is no evidence that the host clock is right.

    (The brief's variant — NTP lying +180 d while the host sits at +180 d — is refused by the offset gate alone
    once the host is back at real time; this one makes the agreement check the only thing standing.)
    """
    db = sqlite_db
    spoofed = [FakeNTPServer(offset_s=-3 * DAY) for _ in range(3)]
    try:
        with running() as http, beatdaemon.running_daemon(db, beat_clock, spoofed, http, hook=FAST_HOOK) as daemon:
            # the daemon notices at once: NTP says 3 days ago, HTTPS says now
            inconsistent = daemon.wait_event(EventKind.SOURCES_INCONSISTENT, 15)
            assert inconsistent.verdict is not None and inconsistent.verdict["ntp_http_agree"] is False
            assert daemon.audit()["outcome"] == "skipped", daemon.audit()  # the audit does not trust this clock
            with running_beat(db, beat_clock, max_interval=1) as beat:
                beat.wait_sent("every-1s", count=3, timeout_s=30)
                time.sleep(1.0)  # beat_sync_every=1: the last send's last_run_at is in the DB
                before = db.state()
                now = dt.datetime.now(dt.UTC)
                assert abs((before.tasks["every-1s"].last_run_at - now).total_seconds()) < 30, before

                t_step = time.monotonic()
                beat_clock.set(-3 * DAY)  # the host follows the spoofed NTP servers
                rollback = daemon.wait_event(EventKind.ROLLBACK, 10, since_mono=t_step)
                run = daemon.wait_hook_run(rollback, 30)
                print(f"[{db.kind}] hook run: {run.status.value}: {run.summary}")
                assert run.status is HookStatus.SKIPPED, (run.status, run.summary)
                assert "the classes of sources do not agree (NTP sources (" in run.summary, run.summary
                verdict = run.details.get("verdict") or {}
                assert verdict.get("status") == "SOURCES_INCONSISTENT", verdict
                assert verdict.get("ntp_http_agree") is False, verdict

                # fresh checks after the step: every NTP source confirms the false clock, HTTPS does not
                check = beatdaemon.daemonlib.wait_for(
                    "a check of both classes after the step",
                    lambda: (c := daemon.last_check()) is not None and c.monotonic_s > t_step
                    and {s["kind"] for s in c.sources if s["offset_s"] is not None} == {"ntp", "http"} and c,
                    25, daemon.proc)
                offsets = {s["name"]: (s["kind"], s["offset_s"]) for s in check.sources}
                print(f"[{db.kind}] after the step: {check.status}, sources {offsets}")
                assert check.status == "SOURCES_INCONSISTENT", check
                assert all(abs(o) < 5 for k, o in offsets.values() if k == "ntp"), offsets
                assert all(abs(o - 3 * DAY) < 60 for k, o in offsets.values() if k == "http"), offsets

                time.sleep(1.0)
                after = db.state()
                beat.check_alive()
        _assert_nothing_moved_back(before, after)
        # still real time: nothing was brought back to the attacker's −3 d
        limit = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
        for name in ("every-1s.last_run_at", "every-2s.last_run_at", "last_update"):
            assert _timestamps(after)[name] > limit, (name, after)
        assert all(r.status is HookStatus.SKIPPED for r in daemon.hook_runs()), daemon.hook_runs()
    finally:
        for server in spoofed:
            server.close()

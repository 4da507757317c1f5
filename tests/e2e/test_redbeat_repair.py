"""End to end: a real RedBeat beat (``celery beat -S redbeat.RedBeatScheduler``, Redis db 11) under libfaketime,
poisoned by a clock 180 days ahead, repaired live by the timeguard daemon's ``type: redbeat`` hook.

1. ``test_bug_then_audit_repairs_live``: +180 d → beat runs → back to +0: beat is silent, and a restart does not help
   (the future is in Redis). The CLI's dry run lists it; the daemon, started afterwards, finds it in its first audit
   (future_state_found) and repairs it while beat runs: every task runs again at its rate, Redis holds no future
   time, the repair is idempotent, and ``timeguard repair undo`` puts the future values back exactly.
2. ``test_daemon_repairs_on_rollback``: the daemon watches the step itself and repairs on the rollback.
3. ``test_no_repair_when_rolled_back_into_the_past``: +180 d, then −3 d: the sources say the host is behind, so the
   hook refuses and Redis keeps what it had.
4. ``test_no_repair_when_spoofed_ntp_majority_disagrees_with_https``: NTP spoofed to −3 d, the host follows; HTTPS
   disagrees: no repair, every hash as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support import beat as beatlib
from tests.support import redbeat as rb
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus

pytestmark = pytest.mark.real

FUTURE_S = beatlib.FUTURE_S
DAY = 86400.0
#: After the repair a score may lie one period ahead (every-minute, once beat ran it again): no further.
NEXT_RUN_S = 65.0


def _run_at_future(clock: FakeClock, beat: rb.RedBeatProcess) -> None:
    """+180 d: beat sends every task, stamping meta.last_run_at and the scores at +180 d."""
    clock.set(FUTURE_S)
    beat.wait_sent("every-1s", count=3, timeout_s=20)
    beat.wait_sent("every-2s", count=2, timeout_s=20)


def _assert_resumed(beat: rb.RedBeatProcess, since: float) -> None:
    beat.wait_sent("every-1s", count=2, since=since, timeout_s=20)
    beat.wait_sent("every-2s", count=1, since=since, timeout_s=20)
    rates = rb.interval_rates(beat, time.monotonic())
    assert 0.6 <= rates["every-1s"] <= 1.5, rates
    assert 0.25 <= rates["every-2s"] <= 0.75, rates


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))}
    return subprocess.run([sys.executable, "-m", "timeguard", "repair", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_bug_then_audit_repairs_live(beat_clock: FakeClock, honest_ntp: list[FakeNTPServer]) -> None:
    with rb.fresh_db() as redis:
        with rb.running_redbeat(beat_clock) as beat:
            _run_at_future(beat_clock, beat)
            t_step = time.monotonic()
            beat_clock.set(0)
            assert rb.quiet_for(beat, 4.0, t_step + beatlib.GRACE_S) == [], beat.log_tail()
            assert beat.wakeups_since(t_step + 1) >= 2  # beat ticks, it just loads nothing
        future = rb.future_times(redis, time.time())
        assert {f"{rb.PREFIX}{n} meta" for n in rb.TASKS} <= set(future), future
        # a plain restart does not help: RedBeat keeps last_run_at of static entries (update_from_dict)
        with rb.running_redbeat(beat_clock) as beat:
            t_restart = time.monotonic()
            beat.wait_log(r"beat: Starting", timeout_s=20)
            assert rb.quiet_for(beat, 3.0, t_restart) == [], beat.log_tail()
            assert rb.future_times(redis, time.time()).keys() == future.keys()

            dry = _cli("redbeat", "--redis-url", rb.REDIS_URL, "--dry-run", "--trust-local-clock", "--json")
            assert dry.returncode == 0, dry.stderr
            planned = json.loads(dry.stdout)
            assert {c["field"] for c in planned["changes"]} == {"meta.last_run_at", "score"}, planned
            # a dry run writes nothing (the restart rewrote the scores: save() recomputes due_at from the future meta)
            before = rb.future_times(redis, time.time())
            assert before.keys() == future.keys()

            with running() as http, rb.running_daemon(beat_clock, honest_ntp, http, wait_audit=False) as daemon:
                found = daemon.wait_event(EventKind.FUTURE_STATE_FOUND, 30)
                run = daemon.wait_hook_run(found, 60)
                assert run.status is HookStatus.CHANGED, f"{run.status.value}: {run.summary}\n{run.details}"
                assert run.details["clean"] is True, run.details
                _assert_resumed(beat, time.monotonic())
                assert rb.future_times(redis, time.time(), tolerance_s=NEXT_RUN_S) == {}
                incident = run.details["incident_id"]
        # idempotent: a second repair finds nothing
        again = _cli("redbeat", "--redis-url", rb.REDIS_URL, "--trust-local-clock", "--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["changes_total"] == 0, again.stdout
        # undo: what beat has not rewritten since (every-minute's next run is up to a minute away) gets its future
        # values back; the interval tasks beat ran since are left alone, and said so
        # (the undo log names the Redis: its URL has no password, so the command needs nothing more)
        undo = _cli("undo", incident, "--config", str(daemon.config))
        assert undo.returncode == 0, undo.stdout + undo.stderr
        back = rb.future_times(redis, time.time())
        assert {k: before[k] for k in back} == back, undo.stdout
        for name in rb.INTERVALS:
            assert f"left alone: {name} meta.last_run_at: meta.last_run_at changed since the repair" in undo.stdout
            assert f"{rb.PREFIX}{name} meta" not in back
        restored = {line.split()[1] for line in undo.stdout.splitlines() if line.startswith("restored:")}
        assert restored, undo.stdout
        assert {f"{rb.PREFIX}{name} meta" for name in restored} <= set(back), undo.stdout


def test_daemon_repairs_on_rollback(beat_clock: FakeClock, honest_ntp: list[FakeNTPServer]) -> None:
    with rb.fresh_db() as redis, running() as http, rb.running_daemon(beat_clock, honest_ntp, http) as daemon:
        assert daemon.audit()["outcome"] == "clean", daemon.audit()
        with rb.rolled_back(beat_clock, daemon) as step:
            first = step.beat.wait_custom_sent(step.step_mono + beatlib.GRACE_S, 40, daemon.log_tail)
            print(f"[redbeat] step → rollback {step.rollback.monotonic_s - step.step_mono:.2f} s → first task sent "
                  f"again {first.mono - step.step_mono:.2f} s ({first.name})")
            run = daemon.wait_hook_run(step.rollback, 60)
            assert run.status is HookStatus.CHANGED, f"{run.status.value}: {run.summary}\n{run.details}"
            _assert_resumed(step.beat, time.monotonic())
            assert rb.future_times(redis, time.time(), tolerance_s=NEXT_RUN_S) == {}


def test_no_repair_when_rolled_back_into_the_past(beat_clock: FakeClock,
                                                  honest_ntp: list[FakeNTPServer]) -> None:
    with rb.fresh_db() as redis, running() as http, rb.running_daemon(beat_clock, honest_ntp, http) as daemon:
        with rb.rolled_back(beat_clock, daemon, to_s=-3 * DAY) as step:
            run = daemon.wait_hook_run(step.rollback, 60)
        assert run.status is HookStatus.SKIPPED, f"{run.status.value}: {run.summary}"
        assert "behind" in run.summary, run.summary
        assert rb.future_times(redis, time.time() + 30), "the future values were changed"


def test_no_repair_when_spoofed_ntp_majority_disagrees_with_https(beat_clock: FakeClock) -> None:
    """An attacker answers for every NTP server with −3 d and the host follows: beat's real-time stamps now look
    3 days in the future, the state a repair clamps. NTP agrees with the false clock, HTTPS does not: the hook must
    refuse, and Redis keeps its (correct) real-time values."""
    spoofed = [FakeNTPServer(offset_s=-3 * DAY) for _ in range(3)]
    try:
        with rb.fresh_db() as redis, running() as http, \
                rb.running_daemon(beat_clock, spoofed, http, wait_audit=False) as daemon:
            daemon.wait_event(EventKind.SOURCES_INCONSISTENT, 15)
            with rb.running_redbeat(beat_clock) as beat:
                beat.wait_sent("every-1s", count=3, timeout_s=30)
                before = {k: redis.dump(k) for k in redis.keys(rb.PREFIX + "every*")}
                t_step = time.monotonic()
                beat_clock.set(-3 * DAY)
                rollback = daemon.wait_event(EventKind.ROLLBACK, 10, since_mono=t_step)
                run = daemon.wait_hook_run(rollback, 30)
                assert run.status is HookStatus.SKIPPED, (run.status, run.summary)
                assert "the classes of sources do not agree (NTP sources (" in run.summary, run.summary
            # beat sent nothing since (its clock is 3 days back), and the repair wrote nothing: every hash as it was
            assert {k: redis.dump(k) for k in before} == before
            assert all(r.status is HookStatus.SKIPPED for r in daemon.hook_runs()), daemon.hook_runs()
    finally:
        for server in spoofed:
            server.close()

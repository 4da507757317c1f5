"""celery's default scheduler (the celerybeat-schedule shelve) repaired end to end, against a real ``celery beat``.

1. The bug and the daemon's repair: beat runs at +180 days under libfaketime and stamps every entry +180 d; the
   clock steps back to +0 and beat goes silent; a plain restart does not help (``merge_inplace`` keeps
   ``last_run_at``). timeguard is started now, at the right time: its first audit finds the future entries
   (``future_state_found``), and the ``type: celery_shelve`` hook stops beat (tests/support/beatctl.py, by PID),
   repairs the shelve and starts beat again: every entry runs at its rate, the shelve holds no future time and the
   run counts are kept. Then ``timeguard repair undo`` (beat stopped and started again) restores the +180 d value
   where the shelve still holds what the repair wrote (an hourly entry) and leaves the entries beat ran since.
2. The evidence rule: with the host clock 3 days behind the sources, the hook refuses and never stops beat; a
   shelve it cannot parse fails the repair with the file named, left byte for byte, and beat is started again.

The time sources are honest FakeNTPServer/fake_http on loopback. Every process is started by this test and
stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.beat import GRACE_S, LogTail
from tests.support.beatdaemon import Daemon
from tests.support.daemon import start, write_config
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, scratch_dir
from tests.support.shelve import snapshot
from tests.support.shelvebeat import (
    EVERY_S,
    HOURLY,
    NAMES,
    ShelveBeat,
    adopt,
    ahead_s,
    beatctl_commands,
    ctl_events,
    schedule_entries,
)
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus

pytestmark = pytest.mark.real

DAY = 86400.0
FUTURE_S = 180 * DAY
QUIET_S = 3.0
HOOK = "shelve-repair"
FAST_AUDIT = {"audit_retry_s": 1, "audit_interval_s": 10}


def assert_silent(beat: ShelveBeat, since: float, what: str) -> None:
    time.sleep(QUIET_S)
    sent = [s.name for s in beat.sent_since(since) if s.name in NAMES]
    assert sent == [], f"{what}: beat sent {sent}:\n{beat.log_tail()}"
    assert beat.wakeups_since(since) >= 2, f"{what}: beat's loop is not ticking:\n{beat.log_tail()}"
    beat.check_alive()


def assert_rates(beat: ShelveBeat, since: float, what: str) -> None:
    """Every entry runs again at its rate (a 6-s window after its first send)."""
    for name in NAMES:
        beat.wait_sent(name, 1, timeout_s=15, since=since)
    t0 = time.monotonic()
    time.sleep(6.0)
    for name in NAMES:
        count = beat.count(name, t0, t0 + 6.0)
        expected = 6.0 / EVERY_S[name]
        assert expected - 2 <= count <= expected + 2, f"{what}: {name} sent {count} in 6 s:\n{beat.log_tail()}"


def drive_into_bug(clock: FakeClock, schedule_dir: Path) -> tuple[ShelveBeat, dict[str, int]]:
    """Beat at +180 d stamps the future; back to +0 it is silent, and after a plain restart still silent. Returns
    the restarted beat and each entry's run count."""
    clock.set(FUTURE_S)
    first = ShelveBeat(clock, schedule_dir).start()
    try:
        for name in NAMES:
            first.wait_sent(name, 2, timeout_s=20)
        time.sleep(0.5)  # beat_sync_every=1: the last send is in the shelve
        ahead = ahead_s(first.schedule)
        assert all(FUTURE_S - 60 < a < FUTURE_S + 60 for a in ahead.values()), ahead
        t_step = time.monotonic()
        clock.set(0)
        assert_silent(first, t_step + GRACE_S, "after the step back")
    finally:
        first.stop()
    restarted = ShelveBeat(clock, schedule_dir, keyprefix=first.keyprefix).start()
    restarted.wait_log(r"beat: Starting", timeout_s=15)
    assert_silent(restarted, restarted.started_mono or 0.0, "after a plain restart")
    ahead = ahead_s(restarted.schedule)
    assert all(a > FUTURE_S - 60 for a in ahead.values()), f"a restart changed the shelve: {ahead}"
    counts = {n: e.total_run_count for n, e in schedule_entries(restarted.schedule).items() if n in NAMES}
    return restarted, counts


def test_the_daemon_s_audit_finds_the_future_shelve_and_the_hook_repairs_it(
        beat_clock: FakeClock, sources: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from timeguard.cli.main import main

    schedule_dir, work = scratch_dir("shelve"), scratch_dir("shelvectl")
    restarted, counts = drive_into_bug(beat_clock, schedule_dir)
    repaired = ShelveBeat(beat_clock, schedule_dir, keyprefix=restarted.keyprefix)
    undone = ShelveBeat(beat_clock, schedule_dir, keyprefix=restarted.keyprefix)
    try:
        assert restarted.process is not None
        (work / "beat.pid").write_text(f"{restarted.process.pid}\n")
        commands = beatctl_commands(work, repaired)
        hook = {"type": "celery_shelve", "name": HOOK, "schedule_file": str(restarted.schedule),
                "python": sys.executable, "tolerance_s": 600, **commands}
        directory = scratch_dir("shelve-daemon")
        config = write_config(directory, sources, daemon=FAST_AUDIT, hooks=[hook])
        repaired.log_path.touch()
        repaired.tail = LogTail(repaired.log_path)
        started = time.monotonic()
        with start(config, None, directory / "daemon.log") as proc:
            daemon = Daemon(config, directory / "daemon.log", proc)
            found = daemon.wait_event(EventKind.FUTURE_STATE_FOUND, 30)
            run = daemon.wait_hook_run(found, 40, hook=HOOK)
            assert run.status is HookStatus.CHANGED, f"{run.status.value}: {run.summary}\n{daemon.log_tail()}"
            adopt(repaired, work, started)
            first = min(s.mono for s in repaired.wait_sent("every-1s", 1, timeout_s=20, since=started))
            print(f"[shelve] daemon started → future_state_found {found.monotonic_s - started:.2f} s → "
                  f"first send {first - started:.2f} s; {run.summary}")
            assert not restarted.alive(), "the hook did not stop the running beat"
            assert [e["op"] for e in ctl_events(work)] == ["stop", "start"]
            assert_rates(repaired, started, "after the repair")
            assert proc.alive()
        assert found.detail["hook"] == HOOK and {e["name"] for e in found.detail["entries"]} >= set(NAMES)
        assert found.verdict is not None and found.verdict["ntp_http_agree"] is True
        assert run.details["rounds"][0]["backup"] == f"{restarted.schedule}.timeguard-{found.incident_id}"
        ahead = ahead_s(repaired.schedule)
        assert all(a < 60 for a in ahead.values()) and HOURLY in ahead, f"future times left: {ahead}"
        entries = schedule_entries(repaired.schedule)
        assert all(entries[n].total_run_count > counts[n] for n in NAMES), (counts, entries)

        # undo, with beat stopped and started again: only what still holds the repair's value goes back (beat
        # has run the others since): "hourly", not due for an hour, gets its +180 d back
        (work / "spec.json").write_text(json.dumps(undone.spec(work / "beat.pid")))
        undone.log_path.touch()
        undone.tail = LogTail(undone.log_path)
        t_undo = time.monotonic()
        capsys.readouterr()
        assert main(["repair", "undo", found.incident_id, "--config", str(config), "--shelve-python", sys.executable,
                     "--shelve-stop-command", " ".join(commands["stop_command"]),
                     "--shelve-start-command", " ".join(commands["start_command"])]) == 0
        out = capsys.readouterr().out
        adopt(undone, work, t_undo)
        assert not repaired.alive() and [e["op"] for e in ctl_events(work)] == ["stop", "start"] * 2
        assert f"restored: {HOURLY} last_run_at" in out, out
        assert all(f"left alone: {n} last_run_at: changed since the repair" in out for n in NAMES), out
        undone.wait_sent("every-1s", 1, timeout_s=15, since=t_undo)
        ahead = ahead_s(undone.schedule)
        assert ahead[HOURLY] > FUTURE_S - 120 and all(ahead[n] < 60 for n in NAMES), ahead
    finally:
        for beat in (undone, repaired, restarted):
            beat.stop()


def test_no_repair_with_the_host_clock_behind_and_none_of_an_unreadable_shelve(tmp_path: Path) -> None:
    """In-process hooks with the verdict of a real check: sources 3 days ahead of the host → refused, beat never
    stopped; honest sources and a truncated shelve → failed, the file named, untouched, beat started again."""
    from tests.support.shelve import entry, write_shelve
    from timeguard import config as tg_config
    from timeguard.events import Event, new_id
    from timeguard.hooks.api import HookContext
    from timeguard.measure.check import run_check
    from timeguard.model import verdict_summary
    from timeguard.repair.hook import bound_to
    from timeguard.repair.undo import UndoLog
    from timeguard.store.journal import Journal
    from timeguard.watch.clockwatch import read_boot_id

    base = tmp_path / "app" / "celerybeat-schedule"
    base.parent.mkdir()
    now = time.time()
    write_shelve(base, {n: entry(n, now + FUTURE_S, 5) for n in NAMES})
    log = tmp_path / "owner.log"
    hook = bound_to("celery_shelve").from_config(HOOK, {
        "schedule_file": str(base), "python": sys.executable,
        "stop_command": ["sh", "-c", f"echo stop >> {log}"], "start_command": ["sh", "-c", f"echo start >> {log}"]})

    def handle(offset_s: float) -> Any:
        ntp = [FakeNTPServer(offset_s=offset_s) for _ in range(3)]
        try:
            with running(offset_s=offset_s) as http:
                cfg = tg_config.load(write_config(scratch_dir("shelve-evidence"), {"ntp": ntp, "http": http}))
                verdict = verdict_summary(run_check(cfg).verdict)
                offset = float(verdict.get("offset_s") or 0.0)
                event = Event(kind=EventKind.ROLLBACK, incident_id=new_id(), wall_time_s=time.time(),
                              monotonic_s=time.monotonic(), boot_id=read_boot_id(), step_s=-FUTURE_S,
                              trusted_time_s=time.time() + offset, verdict=verdict)
                with contextlib.closing(Journal.in_state_dir(cfg.state_dir)) as journal:
                    ctx = HookContext(dry_run=False, trusted_now=lambda: time.time() + offset, verdict=verdict,
                                      undo_log=UndoLog(journal), hostname=socket.gethostname())
                    return hook.handle(event, ctx)
        finally:
            for server in ntp:
                server.close()

    before = snapshot(base.parent)
    behind = handle(3 * DAY)
    assert behind.status is HookStatus.SKIPPED and "behind" in behind.summary, behind.summary
    assert not log.exists() and snapshot(base.parent) == before

    dat = Path(f"{base}.dat")
    dat.write_bytes(dat.read_bytes()[:-40])
    before = snapshot(base.parent)
    broken = handle(0.0)
    assert broken.status is HookStatus.FAILED, broken.summary
    assert broken.summary.startswith(f"{base}: cannot unpickle it"), broken.summary
    assert log.read_text().split() == ["stop", "start"] and snapshot(base.parent) == before


def test_a_beat_still_running_on_the_shelve_stops_the_repair(beat_clock: FakeClock, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A stop command that does not stop beat (here ``true``): dumb dbm holds no file open between writes, so the
    repair finds the running beat by its command line and schedule, and changes nothing."""
    from tests.support.shelve import entry, write_shelve
    from timeguard.cli.main import main

    schedule_dir = scratch_dir("shelve-running")
    now = time.time()
    write_shelve(schedule_dir / "celerybeat-schedule", {n: entry(n, now + FUTURE_S, 3) for n in NAMES})
    beat_clock.set(0)
    beat = ShelveBeat(beat_clock, schedule_dir).start()
    try:
        beat.wait_log(r"beat: Starting", timeout_s=15)
        time.sleep(1.0)
        before = snapshot(schedule_dir)
        config = tmp_path / "timeguard.yaml"
        config.write_text(f"state_dir: {tmp_path / 'state'}\n")
        assert main(["repair", "celery-shelve", "--config", str(config), "--trust-local-clock", "--schedule-file",
                     str(beat.schedule), "--python", sys.executable, "--stop-command", "true",
                     "--start-command", "true"]) == 1
        err = capsys.readouterr().err
        assert beat.process is not None and f"still in use by {beat.process.pid} (" in err, err
        assert "celery beat is still running; nothing was changed" in err
        assert snapshot(schedule_dir) == before
        beat.check_alive()
    finally:
        beat.stop()

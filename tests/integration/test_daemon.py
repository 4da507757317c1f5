"""The daemon as a real process: libfaketime steps, restarts, kill -9, SIGHUP, sd_notify.

The daemon runs under libfaketime (its wall clock jumps; its monotonic clock stays real), the honest NTP and
HTTP sources run in this test process on loopback with the real clock. Latencies are measured on
CLOCK_MONOTONIC, which the daemon and the test share.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time

import pytest

from tests.support.daemon import (
    checks,
    events,
    hook_runs,
    journal_of,
    log_event,
    ntp_requests,
    start,
    wait_for,
    write_config,
)
from tests.support.realprogs import scratch_dir
from timeguard import logs
from timeguard.events import EventKind

DAYS_180 = 180 * 86400


def test_forward_jump_then_rollback_under_libfaketime(fake_clock, sources):
    directory = scratch_dir("daemon")
    config = write_config(directory, sources)
    with start(config, fake_clock, directory / "daemon.log") as proc:
        wait_for("the first checks", lambda: checks(config) >= 2, 15, proc)

        stepped = time.monotonic()
        fake_clock.set(DAYS_180)
        forward = wait_for("the forward_jump event", lambda: events(config, EventKind.FORWARD_JUMP), 5, proc)[0]
        forward_latency = forward.monotonic_s - stepped

        # the cross-check runs at once after the step and sees the host 180 days ahead
        wait_for("offset_critical", lambda: events(config, EventKind.OFFSET_CRITICAL), 5, proc)
        stepped = time.monotonic()
        fake_clock.set(0)
        rollback = wait_for("the rollback event", lambda: events(config, EventKind.ROLLBACK), 5, proc)[0]
        rollback_latency = rollback.monotonic_s - stepped
        polled_at_rollback = ntp_requests(sources)

        # APScheduler would sleep until the wall clock caught up (180 days); re-armed, it polls within seconds.
        wait_for("NTP polls after the rollback", lambda: ntp_requests(sources) > polled_at_rollback, 20, proc)
        resumed = time.monotonic() - stepped
        recovered = wait_for("the recovered event", lambda: events(config, EventKind.RECOVERED), 20, proc)
    print(f"forward_jump seen after {forward_latency * 1000:.0f} ms, rollback after {rollback_latency * 1000:.0f} ms, "
          f"NTP polled again {resumed:.1f} s after the rollback")

    assert forward.step_s == pytest.approx(DAYS_180, abs=0.1)
    assert rollback.step_s == pytest.approx(-DAYS_180, abs=0.1)
    assert forward_latency <= 1.5 and rollback_latency <= 1.5
    assert rollback.incident_id == forward.incident_id  # one flapping incident with its transitions
    assert rollback.detail["transition"] == 2
    assert rollback.wall_before_s - rollback.wall_time_s == pytest.approx(DAYS_180, abs=0.1)
    # the trusted time comes from the sources, re-based across both steps: the real time
    assert rollback.trusted_time_s == pytest.approx(time.time(), abs=60)
    assert abs(rollback.trusted_time_s - rollback.monotonic_s - (time.time() - time.monotonic())) < 1.0
    all_events = events(config)
    kinds = [e.kind for e in all_events]
    assert kinds.count(EventKind.FORWARD_JUMP) == 1 and kinds.count(EventKind.ROLLBACK) == 1
    assert EventKind.OFFSET_CRITICAL in kinds  # while the clock was 180 days ahead
    assert recovered[0].incident_id == next(e for e in all_events if e.kind is EventKind.OFFSET_CRITICAL).incident_id
    with journal_of(config) as j:
        floor = j.floor()
    assert floor.wall_s < time.time() + 60  # lowered from 180 days ahead once the rollback was recorded


def test_no_spurious_condition_at_start_up_with_a_slow_journal(sources):
    """Issue 9 item 2: with ``http: []`` the HTTP round at start-up has nothing to poll and forms its verdict from
    no sample at all ("only 0 of 0 sources usable"). The race is made deterministic with a journal whose write of
    that check is slow (a trigger: a slow disk does the same): the NTP round finishes meanwhile, and the stale
    verdict must not become ``sources_unavailable`` (then ``recovered``), each paging the hooks."""
    import sqlite3

    from timeguard.store.journal import Journal

    directory = scratch_dir("daemon")
    config = write_config(directory, {"ntp": sources["ntp"], "http": None},
                          hooks=[{"type": "command", "name": "page", "command": ["/bin/true"],
                                  "on": ["sources_unavailable", "recovered", "offset_warning", "offset_critical"]}])
    Journal.in_state_dir(directory / "state").close()  # created and migrated as the daemon would
    with sqlite3.connect(directory / "state" / "journal.sqlite") as db:
        db.execute("CREATE TABLE pad (x)")
        db.executemany("INSERT INTO pad VALUES (?)", [(i,) for i in range(8000)])
        db.execute("CREATE TRIGGER slow_empty_check BEFORE INSERT ON checks WHEN NEW.usable = 0 "
                   "BEGIN SELECT count(*) FROM pad a, pad b; END")
    log = directory / "daemon.log"
    with start(config, None, log) as proc:
        wait_for("the NTP round's check", lambda: log_event(log, "checked") and checks(config) >= 2, 30, proc)
        time.sleep(0.5)  # a condition event would follow its check at once
    with journal_of(config) as j:
        last = j.last_check()  # the NTP round's: its monotonic_s is read when its verdict is formed
    http_line = next(e for e in _log_entries(log) if e.get("event") == "checked" and e.get("kind") == "http")
    assert http_line["usable"] == 0 and last is not None and last.usable == 3 and last.status == "OK"
    # the race happened: the NTP round formed its verdict while the empty HTTP check was still being written
    assert last.monotonic_s < http_line["monotonic_s"], (last, http_line)
    assert [e.kind.value for e in events(config)] == []
    assert hook_runs(config) == []
    assert proc.returncode == 0


def _log_entries(log):
    for line in log.read_text(errors="replace").splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


def test_rollback_while_down_same_boot(fake_clock, sources):
    directory = scratch_dir("daemon")
    config = write_config(directory, sources)
    with start(config, fake_clock, directory / "daemon.log") as proc:
        wait_for("the first check", lambda: checks(config) >= 1, 15, proc)
    assert proc.returncode == 0  # SIGTERM stops cleanly
    fake_clock.set(-3600)
    with start(config, fake_clock, directory / "daemon2.log") as proc:
        found = wait_for("rollback_while_down", lambda: events(config, EventKind.ROLLBACK_WHILE_DOWN), 10, proc)
    event = found[0]
    assert event.step_s == pytest.approx(-3600, abs=0.5)
    assert event.detail["same_boot"] is True and event.detail["exact"] is True
    with journal_of(config) as j:
        assert "lowered after rollback_while_down" in j.floor().reason or j.floor().reason == "shutdown"


def test_kill_minus_9_then_clean_start(sources):
    directory = scratch_dir("daemon")
    config = write_config(directory, sources)
    proc = start(config, None, directory / "daemon.log")
    try:
        wait_for("the first check", lambda: checks(config) >= 1, 15, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(5)
    finally:
        proc.stop()
    before = checks(config)
    status = _cli("status", "--json", "--config", str(config))
    assert status.returncode == 3 and json.loads(status.stdout)["why"].startswith("process ")
    with start(config, None, directory / "daemon2.log") as proc:
        wait_for("a check after the restart", lambda: checks(config) > before, 15, proc)
        status = _cli("status", "--json", "--config", str(config))
        data = json.loads(status.stdout)
        assert status.returncode == 0 and data["running"] is True and data["pid"] == proc.pid
        assert data["journal"]["ok"] and data["last_check"]["status"] == "OK"
        human = _cli("status", "--config", str(config)).stdout
        assert human.startswith(f"timeguard: running (pid {proc.pid}") and "Last verdict" in human
    with journal_of(config) as j:
        assert j.health()["ok"]
        assert not j.events(kinds=[EventKind.ROLLBACK_WHILE_DOWN, EventKind.ROLLBACK])


def test_sighup_with_a_broken_config_keeps_the_old_one_and_usr_signals_do_not_kill(sources):
    directory = scratch_dir("daemon")
    config = write_config(directory, sources)
    good = config.read_text()
    log = directory / "daemon.log"
    with start(config, None, log) as proc:
        wait_for("the first check", lambda: checks(config) >= 1, 15, proc)
        config.write_text(good + "\nthresholds: {warning_s: oops}\n")
        os.kill(proc.pid, signal.SIGHUP)
        line = wait_for("reload_refused", lambda: log_event(log, "reload_refused"), 5, proc)
        assert "thresholds.warning_s: must be a number of seconds" in json.dumps(line)
        time.sleep(1.5)
        assert proc.alive()
        config.write_text(good.replace("level: debug", "level: info"))
        os.kill(proc.pid, signal.SIGHUP)
        wait_for("reloaded", lambda: log_event(log, "reloaded"), 5, proc)
        assert proc.alive()
        # signals whose default action would kill it: USR1 logs the state, USR2 is ignored (and says so)
        os.kill(proc.pid, signal.SIGUSR1)
        state = wait_for("state", lambda: log_event(log, "state"), 5, proc)
        assert state["verdict"]["status"] == "OK" and state["timerfd"] is True
        os.kill(proc.pid, signal.SIGUSR2)
        wait_for("signal_ignored", lambda: log_event(log, "signal_ignored"), 5, proc)
        assert proc.alive()


def test_log_lines_carry_journald_priorities_when_stderr_is_the_journal(sources):
    """Under systemd with ``StandardError=journal``, ``$JOURNAL_STREAM`` names stderr's device:inode; every line
    then starts with its sd-daemon priority, so ``journalctl -p warning`` finds the warnings and errors."""
    directory = scratch_dir("daemon")
    config = write_config(directory, sources)
    good = config.read_text()
    log = directory / "daemon.log"
    log.touch()
    st = log.stat()
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with start(config, None, log, env=env) as proc:
        wait_for("the first check", lambda: log_event(log, "checked"), 15, proc)
        config.write_text(good.replace(str(directory / "state"), str(directory / "elsewhere")))
        os.kill(proc.pid, signal.SIGHUP)
        wait_for("reloaded", lambda: log_event(log, "reloaded"), 15, proc)
        config.write_text(good + "\nthresholds: {warning_s: oops}\n")
        os.kill(proc.pid, signal.SIGHUP)
        wait_for("reload_refused", lambda: log_event(log, "reload_refused"), 15, proc)
    lines = log.read_text().splitlines()
    ours = [line for line in lines if line.startswith("<") and line[3:4] == "{"]
    # the rest: what libraries log through the stdlib (apscheduler's "skipped" warnings after each re-arm)
    others = [line for line in lines if line not in ours]
    assert all(re.match(r"<4>WARNING |<3>(ERROR|CRITICAL) ", line) for line in others), others
    priority = {json.loads(line[3:])["event"]: int(line[1]) for line in reversed(ours)}
    assert priority["checked"] == 6 and priority["state_dir_change_needs_restart"] == 4
    assert priority["reload_refused"] == 3 and priority["stopped"] == 6
    assert all(int(line[1]) == logs.PRIORITIES[json.loads(line[3:])["level"]] for line in ours)


@pytest.mark.parametrize("journal", [True, False], ids=["stderr-is-the-journal", "variable-inherited-only"])
def test_why_the_daemon_does_not_start_is_an_error_in_the_journal(journal):
    """Printed before the logs are set up: each line still carries ``<3>`` when stderr is the journal, and none
    when the variable was only inherited (stderr redirected elsewhere)."""
    import subprocess

    directory = scratch_dir("daemon")
    config = directory / "timeguard.yaml"
    config.write_text("thresholds: {warning_s: oops, critical_s: []}\n")
    err = directory / "stderr"
    err.touch()
    st = (err if journal else config).stat()
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with err.open("a") as f:
        proc = subprocess.run([sys.executable, "-m", "timeguard", "run", "--config", str(config)], stderr=f,
                              env=env, timeout=60, check=False)
    lines = err.read_text().splitlines()
    assert proc.returncode == 78 and len(lines) >= 3 and "invalid configuration, not starting" in lines[0]
    assert all(line.startswith("<3>") for line in lines) if journal else not any("<3>" in x for x in lines)


def test_sd_notify_ready_status_watchdog_stopping(sources):
    directory = scratch_dir("daemon")
    config = write_config(directory, sources)
    sock_path = directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    messages: list[tuple[float, str]] = []

    def drain(until: float) -> None:
        while time.monotonic() < until:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), sock.recv(4096).decode()))

    try:
        started = time.monotonic()
        with start(config, None, directory / "daemon.log", env=env) as proc:
            drain(started + 4.0)
            proc.stop()
            drain(time.monotonic() + 0.5)
    finally:
        sock.close()
    texts = [m for _, m in messages]
    ready = [t for t, m in messages if "READY=1" in m]
    assert ready and ready[0] - started < 3.0
    assert any(m.startswith("STATUS=") and ("OK" in m or "WARNING" in m or "CRITICAL" in m) for m in texts)
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    assert len(pings) >= 4  # every 0.5 s (half of WATCHDOG_USEC)
    assert any("STOPPING=1" in m for m in texts)


def _cli(*args: str):
    import subprocess

    return subprocess.run([sys.executable, "-m", "timeguard", *args], capture_output=True, text=True, timeout=30,
                          check=False)

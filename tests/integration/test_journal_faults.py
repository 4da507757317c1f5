"""Issue 9 items 3 and 4 with the real program: a locked journal, a damaged one, an unusable state directory, and
``status``/``events`` as a non-root user beside a DynamicUser service's private state. Run as root, each case that
is about permissions runs the command as ``nobody`` (setpriv), the way the service's dynamic user would be."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import checks, events, log_event, start, wait_for, write_config
from tests.support.realprogs import SETPRIV_NO_SYS_TIME, scratch_dir
from tests.support.require import need, need_program
from timeguard.events import Event, EventKind
from timeguard.hooks.outbox import OutboxStore
from timeguard.store.journal import FILENAME, Journal

EX_CONFIG = 78
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "timeguard.service"
AS_NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--bounding-set", "-sys_time",
             "--inh-caps", "-sys_time", "--")


def _config(directory: Path, state_dir: Path) -> Path:
    """Sources on loopback ports nothing answers: these cases end before any network use."""
    path = directory / "timeguard.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(state_dir), "hooks": [],
                                    "sources": {"ntp": [{"host": "127.0.0.1", "port": 9}, {"host": "127.0.0.1",
                                                                                           "port": 7}],
                                                "http": []}}))
    return path


def _timeguard(args: list[str], *, nobody: bool = False, code: str | None = None,
               timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    prefix = AS_NOBODY if nobody else SETPRIV_NO_SYS_TIME
    program = ["-c", code] if code else ["-m", "timeguard"]
    return subprocess.run([*prefix, sys.executable, *program, *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False, cwd="/")


def _one_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def _nobody() -> tuple[int, int]:
    import pwd

    need_program("setpriv", "util-linux")
    need(os.geteuid() == 0, "root (to run the command as nobody)")
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def _journal_with_events(path: Path, count: int = 3, floor_s: float = 5e9) -> None:
    with Journal(path) as journal:
        for n in range(count):
            journal.record_event(Event(kind=EventKind.ROLLBACK, incident_id=f"i{n}", wall_time_s=1e9 + n,
                                       monotonic_s=1.0, boot_id="b", detail={"pad": "x" * 300}))
        journal.raise_floor(floor_s, "b", 1.0)


# ------------------------------------------------------------------------------- item 4: the state directory


def _a_regular_file(state: Path, uid: int) -> Path:
    state.write_text("not a directory\n")
    return state


def _a_file_in_its_path(state: Path, uid: int) -> Path:
    state.write_text("not a directory\n")
    return state  # state_dir is set to state/sub below


def _read_only(state: Path, uid: int) -> Path:
    state.mkdir(mode=0o555)
    os.chown(state, uid, -1)
    return state


def _unreadable(state: Path, uid: int) -> Path:
    state.mkdir(mode=0o000)
    os.chown(state, uid, -1)
    return state


def _journal_0444(state: Path, uid: int) -> Path:
    state.mkdir(mode=0o700)
    _journal_with_events(state / FILENAME)
    for path in (state, state / FILENAME):
        os.chown(path, uid, -1)
    (state / FILENAME).chmod(0o444)
    return state / FILENAME


@pytest.mark.parametrize(("make", "nobody", "sub"), [
    (_a_regular_file, False, False), (_a_file_in_its_path, False, True), (_read_only, True, False),
    (_unreadable, True, False), (_journal_0444, True, False),
], ids=["regular-file", "file-in-path", "read-only-dir", "unreadable-dir", "journal-0444"])
def test_run_exits_78_with_one_line_naming_an_unusable_state_dir(make, nobody, sub):
    """Exit 78 (EX_CONFIG, which the unit does not restart) with one line saying what and where: no traceback,
    no 5 restarts; the journal (when there is one) is left exactly as it was."""
    uid, _ = _nobody()
    directory = scratch_dir("statedir")
    state = directory / "state"
    culprit = make(state, uid)
    before = culprit.read_bytes() if culprit.is_file() else None
    result = _timeguard(["run", "--config", str(_config(directory, state / "sub" if sub else state))],
                        nobody=nobody, timeout_s=30)
    assert result.returncode == EX_CONFIG, result
    line = _one_line(result.stderr)
    assert line.startswith("timeguard run: cannot use the journal, not starting: ") and f"{culprit}:" in line
    if before is not None:
        assert culprit.read_bytes() == before
    assert not list(directory.rglob("*.corrupt-*"))


def test_the_unit_does_not_restart_a_configuration_exit():
    text = UNIT.read_text()
    assert "Restart=on-failure" in text
    assert any(line.startswith("RestartPreventExitStatus=") and "78" in line.split("=", 1)[1].split()
               for line in text.splitlines())


def test_status_and_events_as_a_non_root_user_beside_a_dynamic_user_service():
    """/var/lib/timeguard → /var/lib/private/timeguard, /var/lib/private 0700: a user's `timeguard status` gets
    one line saying permission denied and what to do, not a traceback."""
    _nobody()
    directory = scratch_dir("dynuser")
    private = directory / "private"
    private.mkdir(mode=0o700)
    (private / "timeguard").mkdir(mode=0o700)
    _journal_with_events(private / "timeguard" / FILENAME)
    (directory / "timeguard").symlink_to(private / "timeguard")
    config = _config(directory, directory / "timeguard")
    for command, code in (("status", 3), ("events", 1)):
        result = _timeguard([command, "--config", str(config)], nobody=True)
        assert result.returncode == code, result
        line = _one_line(result.stderr)
        assert f"{directory / 'timeguard' / FILENAME}: permission denied: run as root" in line
    as_root = _timeguard(["events", "--config", str(config)])
    assert as_root.returncode == 0 and as_root.stdout.count("rollback") == 3


# ------------------------------------------------------------------------------------- item 3: a lock


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""

RUN_WITH_SHORT_WAIT = """
import sys
import timeguard.store.journal
timeguard.store.journal.OPEN_LOCK_WAIT_S = 1.0
from timeguard.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_run_waits_for_a_lock_then_exits_1_and_never_starts_a_new_journal():
    directory = scratch_dir("locked")
    state = directory / "state"
    state.mkdir()
    path = state / FILENAME
    _journal_with_events(path, floor_s=time.time() + 3600)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        result = _timeguard(["run", "--config", str(_config(directory, state))], code=RUN_WITH_SHORT_WAIT)
        waited = time.monotonic() - started
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert result.returncode == 1, result
    line = _one_line(result.stderr)
    assert f"{path}: cannot open the journal: still locked by another process after 1 s" in line
    assert waited >= 1.0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in state.iterdir()) == [FILENAME]
    with Journal(path, readonly=True) as journal:
        assert len(journal.events()) == 3


# ------------------------------------------------------------------------------- item 3: a damaged page


def test_run_salvages_a_damaged_page_alerts_and_keeps_detecting(sources):
    """A journal with a bad page in its middle (2,000 events, a floor an hour ahead): the daemon logs
    journal_damaged at error, starts on the salvaged journal — the floor survived, so it finds the rollback while
    down — and keeps checking; `timeguard status` names the damage and where the old file went."""
    directory = scratch_dir("damaged")
    config = write_config(directory, sources)
    state = Path(yaml.safe_load(config.read_text())["state_dir"])
    state.mkdir()
    _journal_with_events(state / FILENAME, count=2000, floor_s=time.time() + 3600)
    data = bytearray((state / FILENAME).read_bytes())
    middle = len(data) // 4096 // 2 * 4096
    data[middle:middle + 4096] = bytes(range(256)) * 16
    (state / FILENAME).write_bytes(bytes(data))
    log = directory / "daemon.log"
    with start(config, None, log) as proc:
        damaged = wait_for("journal_damaged", lambda: log_event(log, "journal_damaged"), 20, proc)
        wait_for("a check in the new journal", lambda: checks(config) >= 1, 30, proc)
        found = wait_for("rollback_while_down", lambda: events(config, EventKind.ROLLBACK_WHILE_DOWN), 10, proc)
        status = _timeguard(["status", "--config", str(config), "--events", "0"])
        assert proc.alive()
        os.kill(proc.popen.pid, signal.SIGUSR1)  # the loop's state line: the salvage is counted as a journal error
        reported = wait_for("the loop's state line", lambda: log_event(log, "state"), 10, proc)
    assert reported["journal_errors"] == 1
    assert damaged["level"] == "error" and damaged["moved_to"].startswith(str(state / f"{FILENAME}.corrupt-"))
    assert 1900 <= damaged["salvaged"]["events"] < 2000 and damaged["salvaged"]["floor"] == 1
    assert found[0].step_s < -3000  # measured against the salvaged floor
    assert status.returncode == 0, status
    assert "journal found damaged at" in status.stdout and f"moved aside to {damaged['moved_to']}" in status.stdout
    assert "Traceback" not in status.stderr


RUN_WITH_SHORT_UPKEEP = """
import sys
import timeguard.agent
timeguard.agent.PRUNE_INTERVAL_S = 1.0
from timeguard.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_damage_that_appears_while_running_is_reported_and_detection_goes_on(sources):
    """A page goes bad under the running daemon (20,000 events: more than SQLite's page cache holds). The hourly
    upkeep (here every second) finds it: journal_damaged at error, timeguard_journal_errors counts it, the loop
    still answers (SIGUSR1 → its state line), and `timeguard status` shows the problem."""
    from tests.support.realprogs import ManagedProcess

    directory = scratch_dir("damaged-live")
    config = write_config(directory, sources)
    state = Path(yaml.safe_load(config.read_text())["state_dir"])
    state.mkdir()
    path = state / FILENAME
    with Journal(path) as journal, journal.transaction() as db:
        db.executemany("INSERT INTO events (id, incident_id, kind, wall_time_s, monotonic_s, boot_id, body) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(e.id, e.incident_id, e.kind.value, e.wall_time_s, e.monotonic_s, e.boot_id, e.to_json())
                        for e in (Event(kind=EventKind.ROLLBACK, incident_id=f"i{n}", wall_time_s=time.time(),
                                        monotonic_s=1.0, boot_id="b", detail={"pad": "x" * 600})
                                  for n in range(20_000))])
    log = directory / "daemon.log"
    cmd = [sys.executable, "-c", RUN_WITH_SHORT_UPKEEP, "run", "--config", str(config)]
    with ManagedProcess.start(cmd, log_path=log) as proc:
        wait_for("the first check", lambda: checks(config) >= 1, 30, proc)
        size = path.stat().st_size
        with path.open("r+b") as file:
            file.seek(size // 4096 // 2 * 4096)
            file.write(bytes(range(256)) * 16)
        damaged = wait_for("journal_damaged", lambda: log_event(log, "journal_damaged"), 20, proc)
        os.kill(proc.popen.pid, signal.SIGUSR1)
        reported = wait_for("the loop's state line", lambda: log_event(log, "state"), 10, proc)
        status = _timeguard(["status", "--config", str(config), "--events", "0"])
    assert damaged["level"] == "error" and damaged["path"] == str(path)
    assert reported["journal_errors"] >= 1
    assert "PROBLEMS: " in status.stdout and "Traceback" not in status.stderr


def test_the_daemon_prunes_to_events_max_and_keeps_an_incident_with_an_undelivered_alert(sources):
    """Item 5, in the real daemon: its upkeep runs at start (then hourly) and deletes the oldest events beyond
    daemon.events_max in batches, except those of an incident whose alert is still pending."""
    directory = scratch_dir("retention")
    config = write_config(directory, sources, daemon={"events_max": 1000})
    state = Path(yaml.safe_load(config.read_text())["state_dir"])
    state.mkdir()
    path = state / FILENAME
    # Recent events: the age rule (which needs a trusted time, so it may or may not apply in the first upkeep,
    # depending on whether the first verdict came before it) deletes none of them; the count rule decides.
    recent = time.time() - 3600
    made = [Event(kind=EventKind.ROLLBACK, incident_id=f"i{n}", wall_time_s=recent + n, monotonic_s=1.0, boot_id="b",
                  id=f"e{n}") for n in range(3000)]
    with Journal(path) as journal:
        with journal.transaction() as db:
            db.executemany("INSERT INTO events (id, incident_id, kind, wall_time_s, monotonic_s, boot_id, body) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(e.id, e.incident_id, e.kind.value, e.wall_time_s, e.monotonic_s, e.boot_id, e.to_json())
                            for e in made])
        OutboxStore(journal).enqueue("gone-hook", made[5], {"x": 1}, epoch="old-boot", now_mono=1.0, now_wall=1.0,
                               min_interval_s=0)
    log = directory / "daemon.log"
    with start(config, None, log) as proc:
        pruned = wait_for("journal_pruned", lambda: log_event(log, "journal_pruned"), 30, proc)
    assert pruned["events"] == 1999
    with Journal(path, readonly=True) as journal:
        kept = [e.id for e in journal.events()]
    assert kept[0] == "e5" and kept[1:1001] == [f"e{n}" for n in range(2000, 3000)]

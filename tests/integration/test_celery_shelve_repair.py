"""The celery_shelve target on real shelves written with celery's classes, read and written through a real
interpreter with celery installed (this venv's: the beat's own in production): repair, idempotence, undo, what it
leaves alone, and every class of bad input left byte for byte as it was."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import subprocess
import sys
import time
import uuid
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.shelve import entry, open_shelve, read_entries, snapshot, write_shelve
from timeguard.hooks.api import HookConfigError
from timeguard.repair.celery_shelve import CeleryShelveKind, CeleryShelveTarget
from timeguard.repair.target import RepairError
from timeguard.repair.undo import UndoLog
from timeguard.store.journal import Journal

DAY = 86400.0
PYTHON = sys.executable  # has celery (the test extra), as the beat's interpreter has


def target(base: Path, **options) -> CeleryShelveTarget:
    values = {"schedule_file": str(base), "python": PYTHON, "stop_command": ["true"], "start_command": ["true"],
              **options}
    return CeleryShelveKind.from_options(values).open()


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, float]:
    now = time.time()
    base = tmp_path / "beat" / "celerybeat-schedule"
    base.parent.mkdir()
    write_shelve(base, {"every-minute": entry("every-minute", now + 180 * DAY, 41),
                        "hourly": entry("hourly", now + 180 * DAY + 5, 2, every_s=3600),
                        "recent": entry("recent", now - 30, 7)})
    return base, now


def test_future_entries_come_back_to_now_keeping_their_counts_and_the_store_s_keys(store, tmp_path: Path) -> None:
    base, now = store
    t = target(base)
    plan = t.plan(now)
    assert sorted(c.item for c in plan.changes) == ["every-minute", "hourly"]
    with Journal.in_state_dir(tmp_path / "state") as journal:
        outcome = t.apply(lambda: now, undo_log=UndoLog(journal), incident_id="inc-1")
        records = UndoLog(journal).records("inc-1")
    assert outcome.clean and outcome.rounds[0]["changed"] == 2
    entries = read_entries(base)
    assert entries["every-minute"].last_run_at.timestamp() == pytest.approx(now, abs=1e-5)
    assert entries["every-minute"].last_run_at.tzinfo is not None
    assert entries["every-minute"].total_run_count == 41 and entries["hourly"].total_run_count == 2
    assert entries["recent"].last_run_at.timestamp() == pytest.approx(now - 30, abs=1e-5)
    with open_shelve(base, "r") as db:  # tz/utc_enabled changed would make beat clear the store
        assert (db["tz"], db["utc_enabled"]) == ("UTC", True)
    assert {r["item"]: r["old_value"] for r in records} == {
        "every-minute": pytest.approx(now + 180 * DAY, abs=1e-5),
        "hourly": pytest.approx(now + 180 * DAY + 5, abs=1e-5)}
    backup = base.parent / "celerybeat-schedule.timeguard-inc-1"
    assert read_entries(backup / base.name)["every-minute"].last_run_at.timestamp() > now + 179 * DAY
    # idempotent: a second run finds nothing and writes nothing
    before = snapshot(base.parent)
    again = t.apply(lambda: now + 1, undo_log=None, incident_id="inc-2")
    assert again.clean and not again.changed and snapshot(base.parent) == before


def test_the_files_keep_their_mode_and_a_backup_is_kept_per_incident(store) -> None:
    base, now = store
    for f in base.parent.iterdir():
        f.chmod(0o600)
    originals = snapshot(base.parent)
    assert target(base).apply(lambda: now, undo_log=None, incident_id="inc-7").clean
    files = [f for f in base.parent.iterdir() if f.is_file()]
    assert files and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    backup = base.parent / "celerybeat-schedule.timeguard-inc-7"
    assert {f"{backup.name}/{name}": data for name, data in originals.items()} == \
        {k: v for k, v in snapshot(base.parent).items() if k.startswith(backup.name)}
    assert not [p for p in base.parent.iterdir() if p.name.startswith(".")]  # the working copy is gone


def test_an_entry_keeps_the_app_s_time_zone(tmp_path: Path) -> None:
    now = time.time()
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    base = tmp_path / "celerybeat-schedule"
    write_shelve(base, {"a": entry("a", now + 30 * DAY, 1, tz=berlin)}, tz="Europe/Berlin")
    assert target(base).apply(lambda: now, undo_log=None, incident_id="i").clean
    at = read_entries(base)["a"].last_run_at
    assert at.tzinfo == berlin and at.timestamp() == pytest.approx(now, abs=1e-5)


def test_undo_restores_what_the_repair_wrote_and_leaves_what_changed_since(store, tmp_path: Path) -> None:
    base, now = store
    t = target(base)
    with Journal.in_state_dir(tmp_path / "state") as journal:
        log = UndoLog(journal)
        t.apply(lambda: now, undo_log=log, incident_id="inc-1")
        entries = read_entries(base)  # beat ran "hourly" once since the repair
        entries["hourly"].last_run_at = dt.datetime.fromtimestamp(now + 60, dt.UTC)
        write_shelve(base, entries)
        dry = t.undo(log, "inc-1", time.time, dry_run=True)
        assert [r["name"] for r in dry.restored] == ["every-minute"] and read_entries(base)["every-minute"]\
            .last_run_at.timestamp() == pytest.approx(now, abs=1e-5)
        undone = t.undo(log, "inc-1", time.time)
        assert [r["name"] for r in undone.restored] == ["every-minute"]
        assert [r["name"] for r in undone.skipped] == ["hourly"]
        assert t.undo(log, "inc-1", time.time).restored == ()  # nothing left to undo
    entries = read_entries(base)
    assert entries["every-minute"].last_run_at.timestamp() == pytest.approx(now + 180 * DAY, abs=1e-5)
    assert entries["hourly"].last_run_at.timestamp() == pytest.approx(now + 60, abs=1e-5)


class NotAnEntry:
    last_run_at = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)


def test_entries_it_cannot_read_are_named_and_left_the_others_repaired(tmp_path: Path) -> None:
    now = time.time()
    base = tmp_path / "celerybeat-schedule"
    naive = entry("naive", now + 9 * DAY)
    naive.last_run_at = naive.last_run_at.replace(tzinfo=None)
    text = entry("text", now)
    text.last_run_at = "tomorrow"
    write_shelve(base, {"good": entry("good", now + 9 * DAY), 7: entry("seven", now + 9 * DAY),
                        "dict": {"last_run_at": now + 9 * DAY}, "naive": naive, "text": text})
    plan = target(base).plan(now)
    assert [c.item for c in plan.changes] == ["good"]
    why = {u.item: u.why for u in plan.unreadable}
    assert why == {"7": "the entry's key is not a string", "dict": "not a celery.beat.ScheduleEntry",
                   "naive": "a naive datetime (no time zone): beat's meaning of it depends on its settings",
                   "text": "not a datetime"}
    assert target(base).apply(lambda: now, undo_log=None, incident_id="i").clean
    assert read_entries(base)["naive"].last_run_at.tzinfo is None


def _truncate(base: Path) -> None:
    dat = Path(f"{base}.dat")
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 2])


def _garbage_dir(base: Path) -> None:
    Path(f"{base}.dir").write_bytes(b"\x00\xffnot an index\n")


def _garbage_dat(base: Path) -> None:
    dat = Path(f"{base}.dat")
    dat.write_bytes(b"\x80\x04garbage" * (dat.stat().st_size // 9 + 1))


def _not_a_shelve(base: Path) -> None:
    for p in base.parent.iterdir():
        p.unlink()
    base.write_text("celery beat was here\n")


def _gdbm_header(base: Path) -> None:
    for p in base.parent.iterdir():
        p.unlink()
    base.write_bytes(b"\xce\x9a\x57\x13" + b"\0" * 512)  # a gdbm file this Python has no module for


def _no_entries(base: Path) -> None:
    for p in base.parent.iterdir():
        p.unlink()
    with open_shelve(base) as db:
        db["tz"] = "UTC"


def _entries_a_list(base: Path) -> None:
    with open_shelve(base) as db:
        db["entries"] = ["a", "b"]


def _class_that_does_not_import(base: Path) -> None:
    module = base.parent.parent / "gone_tasks.py"
    module.write_text("class Schedule:\n    pass\n")
    sys.path.insert(0, str(module.parent))
    try:
        import gone_tasks  # type: ignore[import-not-found]

        write_shelve(base, {"a": gone_tasks.Schedule()})
    finally:
        sys.path.remove(str(module.parent))
        sys.modules.pop("gone_tasks", None)
        module.unlink()


BAD = {"truncated .dat": (_truncate, "cannot unpickle it"),
       "garbage .dir": (_garbage_dir, "not a shelve this Python can open"),
       "garbage .dat": (_garbage_dat, "cannot unpickle it"),
       "not a shelve": (_not_a_shelve, "not a shelve this Python can open"),
       "a gdbm file, no gdbm here": (_gdbm_header, "cannot open it as a shelve"),
       "no entries key": (_no_entries, "not a celery beat schedule"),
       "entries not a dict": (_entries_a_list, "not a celery beat schedule"),
       "a class that does not import": (_class_that_does_not_import, "cannot unpickle it")}


@pytest.mark.parametrize("damage", list(BAD), ids=list(BAD))
def test_a_store_it_cannot_parse_is_left_byte_for_byte(store, damage: str) -> None:
    base, now = store
    spoil, why = BAD[damage]
    spoil(base)
    before = snapshot(base.parent)
    t = target(base)
    for attempt in (lambda: t.plan(now), lambda: t.audit(now),
                    lambda: t.apply(lambda: now, undo_log=None, incident_id="i")):
        with pytest.raises(RepairError) as err:
            attempt()
        assert str(err.value).startswith(f"{base}: {why}")
        assert str(err.value).endswith("the schedule was left as it is (byte for byte)")
        assert snapshot(base.parent) == before


def test_a_missing_store_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(RepairError, match=r"no such schedule \(none of celerybeat-schedule, celerybeat-schedule.db"):
        target(tmp_path / "celerybeat-schedule").plan(time.time())


def test_a_store_still_held_open_is_not_written_but_audited_from_a_copy(store) -> None:
    base, now = store
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'rb'); "
                               "print('open', flush=True); time.sleep(60)", f"{base}.dat"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        before = snapshot(base.parent)
        t = target(base)
        assert t.audit(now).found  # a copy: never the file beat holds
        with pytest.raises(RepairError, match=rf"still in use by {holder.pid} \(.*celery beat is still running"):
            t.apply(lambda: now, undo_log=None, incident_id="i")
        assert snapshot(base.parent) == before
    finally:
        holder.kill()
        holder.wait()


def test_the_hook_is_refused_without_a_way_to_stop_beat_and_checks_its_options() -> None:
    from timeguard.repair.hook import bound_to

    hook = bound_to("celery_shelve")
    with pytest.raises(HookConfigError) as err:
        hook.from_config("s", {"schedule_file": "/srv/app/celerybeat-schedule", "python": "/srv/app/bin/python"})
    assert "repaired only with its owner stopped: give beat_service" in str(err.value)
    with pytest.raises(HookConfigError) as err:
        hook.from_config("s", {"schedule_file": "celerybeat-schedule.db", "python": "python",
                               "beat_service": "beat.service", "tolerance_s": float("nan")})
    assert {p[0] for p in err.value.problems} == {"schedule_file", "python", "tolerance_s"}
    ok = hook.from_config("s", {"schedule_file": "/srv/app/celerybeat-schedule", "python": "/srv/app/bin/python",
                                "beat_service": "beat.service"})
    assert ok.stop_command == ["systemctl", "stop", "beat.service"]
    assert ok.target().stop_command == ["systemctl", "stop", "beat.service"]  # the undo stops beat too


def test_the_command_line_refuses_without_a_way_to_stop_beat_then_repairs_and_undoes(store, tmp_path: Path,
                                                                                    capsys) -> None:
    from timeguard.cli.main import main

    base, now = store
    log = tmp_path / "owner.log"
    cfg = tmp_path / "timeguard.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    common = ["repair", "celery-shelve", "--config", str(cfg), "--trust-local-clock", "--schedule-file", str(base),
              "--python", PYTHON]
    assert main([*common, "--dry-run", "--json"]) == 0  # a dry run reads a copy: beat may run
    assert '"changes_total": 2' in capsys.readouterr().out
    assert main(common) == 1
    assert "celery beat must be stopped for this repair" in capsys.readouterr().err
    owner = ["--stop-command", f"sh -c 'echo stop >> {log}'", "--start-command", f"sh -c 'echo start >> {log}'"]
    assert main([*common, *owner]) == 0
    out = capsys.readouterr().out
    assert "repaired: 2 value(s)" in out and log.read_text().split() == ["stop", "start"]
    incident = out.rsplit("timeguard repair undo ", 1)[1].split()[0]
    assert read_entries(base)["hourly"].last_run_at.timestamp() < time.time() + 1
    assert main(["repair", "undo", incident, "--config", str(cfg), "--shelve-python", PYTHON,
                 "--shelve-stop-command", f"sh -c 'echo stop >> {log}'",
                 "--shelve-start-command", f"sh -c 'echo start >> {log}'"]) == 0
    assert "restored: hourly last_run_at" in capsys.readouterr().out
    assert log.read_text().split() == ["stop", "start", "stop", "start"]
    assert read_entries(base)["hourly"].last_run_at.timestamp() == pytest.approx(now + 180 * DAY + 5, abs=1e-5)


# --------------------------------------------------------------------------- Python 3.13's dbm.sqlite3 flavour

WRITE_313 = """
import datetime, shelve, sys, time
from celery.beat import ScheduleEntry
from celery.schedules import schedule
now = float(sys.argv[2])
with shelve.open(sys.argv[1], writeback=True) as db:
    db["entries"] = {n: ScheduleEntry(n, "t." + n, datetime.datetime.fromtimestamp(now + s, datetime.UTC), 4,
                                      schedule(60)) for n, s in (("ahead", 90 * 86400), ("fine", -30))}
    db["tz"], db["utc_enabled"], db["__version__"] = "UTC", True, "5"
"""
READ_313 = """
import dbm, json, shelve, sys
with shelve.open(sys.argv[1], flag="r") as db:
    print(dbm.whichdb(sys.argv[1]), json.dumps({n: e.last_run_at.timestamp() for n, e in db["entries"].items()}))
"""


def celery_python(factory: pytest.TempPathFactory, candidates: list[str], module: str, what: str) -> str:
    """A venv of the first of ``candidates`` that has ``module`` (a dbm flavour), with this celery installed."""
    import celery

    from tests.support.require import need

    found = next((c for c in candidates if subprocess.run([c, "-c", f"import {module}"], capture_output=True,
                                                          check=False).returncode == 0), None)
    need(found, what)
    assert found is not None
    venv = factory.mktemp(module.replace(".", "-"))
    subprocess.run([found, "-m", "venv", str(venv)], check=True, timeout=60)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                          f"celery=={celery.__version__}"], capture_output=True, text=True, timeout=240,
                         check=False)
    need(pip.returncode == 0, f"celery {celery.__version__} for {found}: {pip.stderr.strip()[-200:]}")
    return str(venv / "bin" / "python")


@pytest.fixture(scope="module")
def python313(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Python 3.13 (new shelves are dbm.sqlite3 there) with this celery."""
    import shutil

    candidates = [*map(str, sorted(Path.home().glob(".pyenv/versions/3.13*/bin/python3.13"))),
                  shutil.which("python3.13") or "python3.13"]  # a pyenv shim may exist without the version
    return celery_python(tmp_path_factory, candidates, "dbm.sqlite3", "Python 3.13 (dbm.sqlite3)")


@pytest.fixture(scope="module")
def python_gdbm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Python with dbm.gnu (Debian: python3-gdbm) with this celery: its shelves are gdbm files, locked by beat."""
    return celery_python(tmp_path_factory, ["/usr/bin/python3", sys.executable], "dbm.gnu",
                         "a Python with dbm.gnu (apt-get install python3-gdbm)")


def test_a_dbm_sqlite3_shelve_of_python_3_13_is_repaired_with_that_interpreter(python313: str,
                                                                              tmp_path: Path) -> None:
    now = time.time()
    base = tmp_path / "celerybeat-schedule"
    subprocess.run([python313, "-c", WRITE_313, str(base), repr(now)], check=True, timeout=60)
    assert [p.name for p in tmp_path.iterdir()] == ["celerybeat-schedule"]  # one file: the bare name
    t = target(base, python=python313)
    assert [c.item for c in t.plan(now).changes] == ["ahead"]
    with Journal.in_state_dir(tmp_path / "state") as journal:
        assert t.apply(lambda: now, undo_log=UndoLog(journal), incident_id="inc-13").clean
        # the originals were replaced, never opened: no write-ahead log left beside them (a reader leaves one)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("celerybeat")) == [
            "celerybeat-schedule", "celerybeat-schedule.timeguard-inc-13"]
        out = subprocess.run([python313, "-c", READ_313, str(base)], capture_output=True, text=True, check=True)
        flavour, _, values = out.stdout.partition(" ")
        assert flavour == "dbm.sqlite3" and json.loads(values) == {"ahead": pytest.approx(now, abs=1e-5),
                                                                    "fine": pytest.approx(now - 30, abs=1e-5)}
        assert [r["name"] for r in t.undo(UndoLog(journal), "inc-13", time.time).restored] == ["ahead"]
    assert t.plan(now).total == 1
    # the 3.11 interpreter has no dbm.sqlite3: a clear error, the file untouched
    before = snapshot(tmp_path)
    with pytest.raises(RepairError, match="not a shelve this Python can open"):
        target(base).plan(now)
    assert snapshot(tmp_path) == before
    # a truncated or overwritten dbm.sqlite3 file: refused by its own interpreter, left as it was
    for spoil in (lambda data: data[: len(data) // 2], lambda data: data[:100] + b"\xff" * (len(data) - 100)):
        for leftover in tmp_path.glob("celerybeat-schedule-*"):
            leftover.unlink()
        base.write_bytes(spoil(base.read_bytes()))
        before = snapshot(tmp_path)
        with pytest.raises(RepairError, match=rf"^{base}: (cannot|not a)"):
            target(base, python=python313).apply(lambda: now, undo_log=None, incident_id="i")
        assert snapshot(tmp_path) == before


def test_the_command_line_uses_a_configured_hook_with_its_owner_commands(store, tmp_path: Path, capsys) -> None:
    from timeguard.cli.main import main

    base, _ = store
    log = tmp_path / "owner.log"
    cfg = tmp_path / "timeguard.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "hooks": [
        {"type": "celery_shelve", "name": "shelve", "schedule_file": str(base), "python": PYTHON,
         "tolerance_s": 10 * DAY, "stop_command": ["sh", "-c", f"echo stop >> {log}"],
         "start_command": ["sh", "-c", f"echo start >> {log}"]}]}))
    common = ["repair", "celery-shelve", "--config", str(cfg), "--trust-local-clock", "--hook", "shelve"]
    # the command line's tolerance overrides the hook's: nothing is 200 days ahead
    assert main([*common, "--tolerance-s", str(200 * DAY)]) == 0
    assert "nothing to repair" in capsys.readouterr().out and not log.exists()
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "repaired: 2 value(s)" in out and log.read_text().split() == ["stop", "start"]
    incident = out.rsplit("timeguard repair undo ", 1)[1].split()[0]
    assert main(["repair", "undo", incident, "--config", str(cfg), "--hook", "shelve"]) == 0
    assert "restored: every-minute last_run_at" in capsys.readouterr().out
    assert log.read_text().split() == ["stop", "start", "stop", "start"]


HOLD_GDBM = """
import shelve, sys, time
db = shelve.open(sys.argv[1], writeback=True)  # as beat holds it: gdbm locks the file
print("open", flush=True)
time.sleep(60)
"""


def test_a_gdbm_shelve_is_repaired_and_refused_while_beat_holds_its_lock(python_gdbm: str, tmp_path: Path) -> None:
    now = time.time()
    base = tmp_path / "celerybeat-schedule"
    subprocess.run([python_gdbm, "-c", WRITE_313.replace("datetime.UTC", "datetime.timezone.utc"), str(base),
                    repr(now)], check=True, timeout=60)
    assert [p.name for p in tmp_path.iterdir()] == ["celerybeat-schedule"]
    t = target(base, python=python_gdbm)
    holder = subprocess.Popen([python_gdbm, "-c", HOLD_GDBM, str(base)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        before = snapshot(tmp_path)
        assert [c["item"] for c in t.audit(now).details["entries"]] == ["ahead"]  # a copy: the lock is not in the way
        with pytest.raises(RepairError, match=rf"still in use by {holder.pid} \("):
            t.apply(lambda: now, undo_log=None, incident_id="i")
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    assert t.apply(lambda: now, undo_log=None, incident_id="inc-g").clean
    out = subprocess.run([python_gdbm, "-c", READ_313, str(base)], capture_output=True, text=True, check=True)
    flavour, _, values = out.stdout.partition(" ")
    assert flavour == "dbm.gnu" and json.loads(values)["ahead"] == pytest.approx(now, abs=1e-5)
    base.write_bytes(base.read_bytes()[:200])  # truncated
    before = snapshot(tmp_path)
    with pytest.raises(RepairError, match=rf"^{base}: (cannot|not a)"):
        t.plan(now)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------- the ndbm flavour, and user: (another user's beat)

SYSTEM_PYTHON = "/usr/bin/python3"
WRITE_NDBM = """
import datetime, dbm.ndbm, shelve, sys
sys.path[:0] = [sys.argv[3]]
from celery.beat import ScheduleEntry
from celery.schedules import schedule
now = float(sys.argv[2])
with shelve.Shelf(dbm.ndbm.open(sys.argv[1], "c"), writeback=True) as db:  # as a Python whose default is ndbm
    db["entries"] = {n: ScheduleEntry(n, "t." + n, datetime.datetime.fromtimestamp(now + s, datetime.timezone.utc),
                                      4, schedule(60)) for n, s in (("ahead", 90 * 86400), ("fine", -30))}
    db["tz"], db["utc_enabled"], db["__version__"] = "UTC", True, "5"
"""


def celery_site() -> str:
    """This venv's site-packages (celery): put on the system Python's path, as a beat's ``path:`` would (the two
    are the same CPython minor version, so the compiled packages load)."""
    import celery

    return str(Path(celery.__file__).parents[1])


@pytest.fixture(scope="module")
def system_python() -> str:
    """Debian's /usr/bin/python3, which has dbm.ndbm (Berkeley DB), with this venv's celery on its path."""
    from tests.support.require import need

    probe = subprocess.run([SYSTEM_PYTHON, "-c", f"import sys; sys.path[:0] = [{celery_site()!r}]; import "
                            "dbm.ndbm, celery.beat"], capture_output=True, check=False) if Path(
                                SYSTEM_PYTHON).exists() else None
    need(probe is not None and probe.returncode == 0 and sys.version_info[:2] == (3, 11),
         f"{SYSTEM_PYTHON} with dbm.ndbm that loads this venv's celery (Debian 12's python3)")
    return SYSTEM_PYTHON


def test_an_ndbm_shelve_is_repaired_through_the_interpreter_that_has_ndbm(system_python: str) -> None:
    from tests.support.realprogs import scratch_dir

    now = time.time()
    directory = scratch_dir("shelve-ndbm")
    base = directory / "celerybeat-schedule"
    subprocess.run([system_python, "-c", WRITE_NDBM, str(base), repr(now), celery_site()], check=True, timeout=60)
    assert [p.name for p in directory.iterdir()] == ["celerybeat-schedule.db"]  # Berkeley DB's ndbm: NAME.db
    # this venv's Python has no _dbm: it cannot open the file — a clear error, nothing touched
    before = snapshot(directory)
    with pytest.raises(RepairError, match="not a shelve this Python can open"):
        target(base).plan(now)
    assert snapshot(directory) == before
    t = target(base, python=system_python, path=[celery_site()])
    assert [c.item for c in t.plan(now).changes] == ["ahead"]
    with Journal.in_state_dir(directory / "state") as journal:
        assert t.apply(lambda: now, undo_log=UndoLog(journal), incident_id="inc-n").clean
        out = subprocess.run([system_python, "-c", f"import sys; sys.path[:0] = [{celery_site()!r}]\n" + READ_313,
                              str(base)], capture_output=True, text=True, check=True)
        flavour, _, values = out.stdout.partition(" ")
        assert flavour == "dbm.ndbm" and json.loads(values) == {"ahead": pytest.approx(now, abs=1e-5),
                                                                 "fine": pytest.approx(now - 30, abs=1e-5)}
        assert sorted(p.name for p in directory.iterdir() if p.name.startswith("celerybeat")) == [
            "celerybeat-schedule.db", "celerybeat-schedule.timeguard-inc-n"]
        assert [r["name"] for r in t.undo(UndoLog(journal), "inc-n", time.time).restored] == ["ahead"]
    assert t.plan(now).total == 1


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    """A system user made for this test (no home, no shell), removed after."""
    from tests.support.require import need, need_program

    need(os.geteuid() == 0, "root (useradd; user: runs the beat's interpreter as another user)")
    need_program("useradd", "passwd")
    name = f"tg-shelve-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
                    "/usr/sbin/nologin", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, timeout=30)


def test_user_runs_the_beats_interpreter_as_that_user_and_the_files_stay_roots(system_python: str,
                                                                               throwaway_user: str) -> None:
    from tests.support.realprogs import scratch_dir

    now = time.time()
    directory = scratch_dir("shelve-user")
    base = directory / "celerybeat-schedule"
    write_shelve(base, {"ahead": entry("ahead", now + 90 * DAY, 3), "fine": entry("fine", now - 30, 1)})
    for f in directory.iterdir():
        f.chmod(0o640)
    # this venv's interpreter lives under root's 0700 home: as the user it cannot even start — proof the user applies
    with pytest.raises(RepairError, match="python"):
        target(base, user=throwaway_user).plan(now)
    t = target(base, python=system_python, path=[celery_site()], user=throwaway_user)
    assert [c.item for c in t.plan(now).changes] == ["ahead"]
    assert t.apply(lambda: now, undo_log=None, incident_id="inc-u").clean
    assert read_entries(base)["ahead"].last_run_at.timestamp() == pytest.approx(now, abs=1e-5)
    files = [f for f in directory.iterdir() if f.is_file()]
    uid = pwd.getpwnam(throwaway_user).pw_uid
    assert files and all(os.stat(f).st_uid == 0 and f.stat().st_mode & 0o777 == 0o640 for f in files), [
        (f.name, os.stat(f).st_uid, oct(f.stat().st_mode)) for f in files]
    assert all(os.stat(p).st_uid != uid for p in directory.rglob("*"))  # nothing left owned by the user
    with pytest.raises(RepairError, match="no such user"):
        target(base, python=system_python, path=[celery_site()], user="tg-no-such-user").plan(now)

"""celery's default PersistentScheduler store (``celerybeat-schedule``, a :mod:`shelve`) as a repair target.

Research: /work/shared/research/celery_beat.md §2 and "Repair specification" §2 (Fix B). Upstream, celery 5.x
``celery/beat.py``: ``PersistentScheduler`` opens ``shelve.open(schedule_filename, writeback=True)`` and keeps it open
for the whole process (``_open_schedule``, l. 583), rewrites ``entries`` at every ``sync()`` and at ``close()``
(l. 665–669), and deletes a store it cannot open (``_destroy_open_corrupted_schedule``, l. 586). A restart does not
help: ``merge_inplace`` keeps ``last_run_at`` (``ScheduleEntry.update``, l. 155). A changed ``tz`` or ``utc_enabled``
key makes it clear the store (``setup_schedule``, l. 606–617), so the repair writes ``entries`` only.

So the repair runs with beat STOPPED (``needs_owner_stopped``): it backs up every file of the shelve (the suffixes
``''``, ``.db``, ``.dat``, ``.bak``, ``.dir`` of ``known_suffixes``, l. 570, and ``-wal``/``-shm`` of Python 3.13's
``dbm.sqlite3``), rewrites a copy in beat's own interpreter (:mod:`timeguard.repair.apprun`: only it can unpickle
``celery.beat.ScheduleEntry``; timeguard never imports celery), reads the copy back, records the old values in the
undo log and only then renames the copy's files over the originals. An audit reads a copy in a temporary directory:
beat holds the original open (gdbm locks it; dumb dbm has no lock at all). A store the application's interpreter
cannot read is left byte for byte as it was, with an error naming the file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from timeguard.config import option
from timeguard.repair.apprun import AppInterpreter
from timeguard.repair.target import (
    BaseTarget,
    Change,
    Outcome,
    Plan,
    RepairError,
    TargetKind,
    UndoOutcome,
    Unreadable,
    checked_now,
    range_problem,
    run_owner_command,
)
from timeguard.repair.undo import UndoLog
from timeguard.timefmt import fmt_duration

NAME = "celery_shelve"
FIELD = "last_run_at"
DEFAULT_TOLERANCE_S = 600.0
TOLERANCE_RANGE_S = (0.0, 366 * 86400.0)
#: every file a shelve may be: celery's known_suffixes (gdbm '', ndbm '.db', dumb '.dat/.dir/.bak') and the
#: write-ahead log of dbm.sqlite3 (Python 3.13+, the bare name), while or if it was not checkpointed
SUFFIXES = ("", ".db", ".dat", ".bak", ".dir", "-wal", "-shm")
OWNER_TIMEOUT_S = 120.0
#: compare-and-set: a stored time equals the expected one within this (a float epoch round trip of microseconds)
SAME_S = 2e-6

#: Run by the application's interpreter (after apprun.PRELUDE). ``read``: every entry of the shelve at ``base``
#: (a copy); ``write``: compare-and-set of last_run_at per entry. Answers errors as ``error``/``detail``.
APP_SCRIPT = r'''
import datetime, dbm, shelve
base = args["base"]
try:
    flavour = dbm.whichdb(base)
except Exception:
    flavour = None
if not flavour:
    answer(error="not_a_shelve", detail="dbm.whichdb: " + ("an unknown format" if flavour == "" else "unreadable"))
try:
    from celery.beat import ScheduleEntry
except Exception:
    failed("no_celery")
try:
    db = shelve.open(base, flag=args.get("flag", "w"), writeback=False)
except Exception:
    failed("cannot_open")
try:
    try:
        keys = sorted(str(k) for k in db.keys())
    except Exception:
        failed("cannot_list")
    if "entries" not in keys:
        answer(error="no_entries", detail="keys " + repr(keys[:10]) + ": not a celery beat schedule")
    try:
        entries = db["entries"]
    except Exception:
        failed("cannot_unpickle")
    if not isinstance(entries, dict):
        answer(error="no_entries", detail="'entries' is a " + type(entries).__name__ + ", not a dict")
    meta = {}
    for key in keys:  # every value must read: a truncated file loses the last ones written
        if key == "entries":
            continue
        try:
            value = db[key]
        except Exception as exc:
            answer(error="cannot_unpickle", detail="key " + repr(key) + ": " + type(exc).__name__ + ": " + str(exc))
        meta[key] = repr(value)[:80]
    def stamp(entry):
        at = getattr(entry, "last_run_at", None)
        if not isinstance(at, datetime.datetime):
            return None, "not a datetime"
        if at.tzinfo is None or at.utcoffset() is None:
            return None, "a naive datetime (no time zone): beat's meaning of it depends on its settings"
        return at.timestamp(), None
    if args["op"] == "read":
        rows = []
        for name, entry in entries.items():
            row = {"name": name if isinstance(name, str) else None, "key": repr(name)[:80],
                   "cls": type(entry).__module__ + "." + type(entry).__qualname__}
            if not isinstance(name, str):
                row["why"] = "the entry's key is not a string"
            elif not isinstance(entry, ScheduleEntry):
                row["why"] = "not a celery.beat.ScheduleEntry"
            else:
                row["at"], row["why"] = stamp(entry)
                if row["why"]:
                    row["raw"] = repr(entry.last_run_at)[:80]
            rows.append(row)
        answer(flavour=flavour, meta=meta, entries=rows)
    changed, skipped = [], []
    for name, expected, new in args["changes"]:
        entry = entries.get(name)
        at, why = stamp(entry) if isinstance(entry, ScheduleEntry) else (None, "no such entry")
        if at is None or abs(at - expected) > args["same_s"]:
            skipped.append([name, at, why or "changed since it was read"])
            continue
        entry.last_run_at = datetime.datetime.fromtimestamp(new, entry.last_run_at.tzinfo)
        changed.append(name)
    if changed:
        db["entries"] = entries
    db.close()
    answer(flavour=flavour, changed=changed, skipped=skipped)
except SystemExit:
    raise
except Exception:
    failed("failed")
'''

_ERRORS = {
    "not_a_shelve": "not a shelve this Python can open",
    "no_celery": "celery does not import in this interpreter (give python: the beat's own)",
    "cannot_open": "cannot open it as a shelve (corrupt, truncated, or made by another dbm module)",
    "cannot_list": "cannot read its keys (corrupt or truncated)",
    "no_entries": "not a celery beat schedule",
    "cannot_unpickle": "cannot unpickle it (corrupt, truncated, or classes that do not import here)",
    "failed": "failed",
}


def shelve_files(base: Path) -> list[Path]:
    """The files the shelve at ``base`` consists of, as they exist now."""
    return [p for p in (Path(f"{base}{s}") for s in SUFFIXES) if p.is_file()]


def holders(files: Sequence[Path]) -> list[str]:
    """``pid (command)`` of every process holding one of ``files`` open (those this process may look at)."""
    wanted = set()
    for f in files:
        with contextlib.suppress(OSError):
            st = f.stat()
            wanted.add((st.st_dev, st.st_ino))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                st = fd.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in wanted:
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    cmd = "?"
                found.append(f"{proc.name} ({cmd[:100]})")
                break
    return found


def running_beats(base: Path) -> list[str]:
    """``pid (command)`` of every celery beat (or worker -B) running on the schedule ``base``: dumb dbm, the usual
    flavour, opens its files only while it reads or writes them, so an open file alone does not show a running
    beat (timeguard.discover reads its -s, $CELERY_BEAT_SCHEDULE or default against its working directory)."""
    from timeguard.host.argv import SHELVE
    from timeguard.host.beat import find_beats

    path = os.path.realpath(base)
    return [f"{b.pid} ({' '.join(b.command)[:100]})" for b in find_beats()
            if b.scheduler == SHELVE and b.schedule_file and os.path.realpath(b.schedule_file) == path]


class CeleryShelveTarget(BaseTarget):
    """One celerybeat-schedule shelve, read and written through the beat's own interpreter."""

    where_key = "schedule_file"
    what = "celery beat schedule"
    not_clean_message = "future times remain in the schedule after the repair: run it again"

    def __init__(self, schedule_file: str | Path, app: AppInterpreter, *, tolerance_s: float = DEFAULT_TOLERANCE_S,
                 stop_command: Sequence[str] | None = None, start_command: Sequence[str] | None = None,
                 owner_timeout_s: float = OWNER_TIMEOUT_S) -> None:
        self.base = Path(schedule_file).absolute()
        self.app = app
        self.tolerance_s = float(tolerance_s)
        self.stop_command = list(stop_command) if stop_command else None
        self.start_command = list(start_command) if start_command else None
        self.owner_timeout_s = owner_timeout_s
        self.where = str(self.base)
        self.fingerprint = f"shelve:{self.base}"
        #: where the last apply or undo kept the backup of the original files
        self.backup_dir: Path | None = None

    # ------------------------------------------------------------------------------------------ files

    def _files(self) -> list[Path]:
        files = shelve_files(self.base)
        if not files:
            names = ", ".join(self.base.name + s for s in SUFFIXES[:5])
            raise RepairError(f"{self.where}: no such schedule (none of {names} exists; beat's -s/--schedule, "
                              "default celerybeat-schedule in its working directory)")
        return files

    def _copy(self, files: Sequence[Path], into: Path) -> Path:
        """Copy the shelve's files into ``into`` (same base name, same modes); the copy's base path."""
        for f in files:
            shutil.copy2(f, into / f.name)
        return into / self.base.name

    def _give_to_user(self, directory: Path) -> None:
        """When the application's code runs as another user (root only), it must read and write the copy."""
        if self.app.user is None or os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam(self.app.user)
        except KeyError:
            raise RepairError(f"{self.where}: user {self.app.user!r}: no such user; the schedule was left as it "
                              "is") from None
        for p in (directory, *directory.iterdir()):
            os.chown(p, entry.pw_uid, entry.pw_gid)

    def _run(self, base: Path, payload: dict[str, Any], doing: str) -> dict[str, Any]:
        answer = self.app.run(APP_SCRIPT, {**payload, "base": str(base)}, doing=doing)
        if "error" in answer:
            what = _ERRORS.get(answer["error"], answer["error"])
            raise RepairError(f"{self.where}: {what}: {answer.get('detail') or '-'}; the schedule was left as it "
                              "is (byte for byte)")
        return answer

    def _read(self, base: Path, flag: str = "r") -> dict[str, Any]:
        """Read a copy at ``base``. ``flag="w"``: a read-write open, so that dbm.sqlite3 closes its write-ahead log
        (a read-only reader leaves ``-wal``/``-shm`` files behind); for a copy that replaces the originals."""
        return self._run(base, {"op": "read", "flag": flag}, f"reading the schedule {self.where}")

    def _read_copy(self) -> dict[str, Any]:
        """The schedule, read from a copy in a temporary directory: beat may hold the original open."""
        files = self._files()
        with tempfile.TemporaryDirectory(prefix="timeguard-shelve-") as tmp:
            self._give_to_user(Path(self._copy(files, Path(tmp)).parent))
            return self._read(Path(tmp) / self.base.name)

    def _plan(self, read: dict[str, Any], now_s: float) -> Plan:
        changes: list[Change] = []
        unreadable: list[Unreadable] = []
        for row in read["entries"]:
            name = row["name"] if row["name"] is not None else row["key"]
            if row.get("at") is None:
                unreadable.append(Unreadable(name, name, FIELD, row.get("raw", row["cls"]), row["why"]))
                continue
            if row["at"] > now_s + self.tolerance_s:
                changes.append(Change(name, name, FIELD, float(row["at"]), now_s,
                                      f"{fmt_duration(row['at'] - now_s)} in the future: beat sends it no sooner"))
        return Plan(now_s, self.tolerance_s, tuple(changes), (), tuple(unreadable))

    # ------------------------------------------------------------------------------------- the protocol

    def plan(self, now_s: float) -> Plan:
        return self._plan(self._read_copy(), checked_now(now_s))

    def audit(self, now_s: float) -> Any:
        now_s = checked_now(now_s)
        plan = self.plan(now_s)
        found = self.audit_of(plan, now_s)
        if found.found:  # per entry (the first 100)
            found.details["entries"] = [c.to_dict() for c in plan.changes[:100]]
        return found

    @contextlib.contextmanager
    def _owner_stopped(self, owner_stopped: bool, doing: str):  # type: ignore[no-untyped-def]
        """Beat stopped for the block: already (the hook stopped it), or with this target's own commands."""
        stopped = False
        if not owner_stopped:
            if self.stop_command is None:
                raise RepairError(f"{self.where}: {doing} needs celery beat stopped (it rewrites the schedule from "
                                  "memory): configure beat_service (a systemd unit) or stop_command and "
                                  "start_command in a celery_shelve hook (--hook NAME), or give --beat-service / "
                                  "--stop-command and --start-command")
            run_owner_command(self.stop_command, "stop_command", timeout_s=self.owner_timeout_s)
            stopped = True
        try:
            held = holders(shelve_files(self.base)) or running_beats(self.base)
            if held:
                raise RepairError(f"{self.where}: still in use by {', '.join(held)}: celery beat is still "
                                  "running; nothing was changed")
            yield
        finally:
            if stopped and self.start_command:
                run_owner_command(self.start_command, "start_command", timeout_s=self.owner_timeout_s)

    def _rewrite(self, changes: Sequence[tuple[str, float, float]], label: str,
                 before_replace: Callable[[list[str]], None]) -> dict[str, Any]:
        """Back up the shelve's files (``<base>.timeguard-<label>/``, beside it), compare-and-set ``changes`` in a
        copy beside it, read the copy back, call ``before_replace(changed names)`` and rename the copy's files over
        the originals (their owner kept). The write's answer."""
        files = self._files()
        backup = self.base.parent / f"{self.base.name}.timeguard-{label}"
        backup.mkdir(mode=0o700, exist_ok=True)
        for f in files:
            if not (backup / f.name).exists():  # a second round keeps the first originals
                shutil.copy2(f, backup / f.name)
        self.backup_dir = backup
        owner = files[0].stat()
        work = Path(tempfile.mkdtemp(prefix=f".{self.base.name}.timeguard-", dir=self.base.parent))
        try:
            copy = self._copy(files, work)
            self._give_to_user(work)
            answer = self._run(copy, {"op": "write", "changes": [list(c) for c in changes], "same_s": SAME_S},
                               f"rewriting a copy of the schedule {self.where}")
            self._read(copy, "w")  # the copy reads back whole, or the originals stay
            before_replace(answer["changed"])
            modes = {f.name: f.stat().st_mode & 0o7777 for f in files}
            written = sorted(work.iterdir())
            for f in written:
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(f, modes.get(f.name, owner.st_mode & 0o7777))  # dbm creates files with 0o666 & ~umask
                if os.geteuid() == 0:
                    os.chown(f, owner.st_uid, owner.st_gid)
                os.replace(f, self.base.parent / f.name)
            for f in files:  # a file the write did away with (dbm.sqlite3's -wal after its checkpoint): stale now
                if f.name not in {w.name for w in written}:
                    f.unlink(missing_ok=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return answer

    def apply(self, now_fn: Callable[[], float], *, undo_log: UndoLog | None, incident_id: str,
              cancelled: Callable[[], bool] = lambda: False, owner_stopped: bool = False) -> Outcome:
        """One round with beat stopped (beat rereads the file when it starts). Idempotent: a second run finds
        nothing in the future."""
        repair_id = uuid.uuid4().hex
        with self._owner_stopped(owner_stopped, "the repair"):
            now_s = checked_now(now_fn())
            plan = self._plan(self._read_copy(), now_s)  # the originals are only ever replaced, never opened
            if plan.empty or cancelled():
                return Outcome(incident_id, repair_id, plan, (), plan.empty)
            by_name = {c.item: c for c in plan.changes}

            def record(changed: list[str]) -> None:
                if undo_log is not None:  # before the originals are replaced: a failed record changes nothing
                    undo_log.record(NAME, incident_id, repair_id, self.fingerprint,
                                    [(n, n, FIELD, by_name[n].old_s, by_name[n].new_s) for n in changed],
                                    applied_wall_s=now_s, applied_mono_s=time.monotonic())

            answer = self._rewrite([(c.item, c.old_s, c.new_s) for c in plan.changes], incident_id, record)
            clean = self._plan(self._read_copy(), now_s).empty
        rounds = ({"number": 1, "changed": len(answer["changed"]), "now_s": now_s, "backup": str(self.backup_dir),
                   "skipped": answer["skipped"]},)
        return Outcome(incident_id, repair_id, plan, rounds, clean)

    def applying_note(self, incident_id: str) -> str:
        return (f"applying (incident {incident_id}) with celery beat stopped; the original files are kept in "
                f"{self.base.name}.timeguard-{incident_id}/ beside them …")

    def outcome_summary(self, outcome: Any) -> tuple[str, str]:
        status, summary = super().outcome_summary(outcome)
        if outcome.rounds:
            summary += f" (the original files: {outcome.rounds[0]['backup']})"
        return status, summary

    def undo(self, undo_log: UndoLog, incident_id: str, now_fn: Callable[[], float], *,
             dry_run: bool = False) -> UndoOutcome:
        """Restore the old last_run_at of every entry the incident's repairs changed and that still holds the
        value they wrote, with beat stopped again (its own commands) — or, for a dry run, say what it would."""
        records = [r for r in undo_log.records(incident_id, target=NAME, undone=False)
                   if self.same_store(r["fingerprint"])]
        with contextlib.ExitStack() as stack:
            if not dry_run:
                stack.enter_context(self._owner_stopped(False, "the undo"))
            read = self._read_copy()
            now = {row["name"]: row.get("at") for row in read["entries"] if row["name"] is not None}
            restored: list[dict[str, Any]] = []
            skipped: list[dict[str, Any]] = []
            todo = []
            for r in records:
                entry = {"name": r["name"], "field": FIELD, "from_s": now.get(r["item"]), "to_s": r["old_value"]}
                if r["item"] not in now:
                    skipped.append({**entry, "why": "the entry no longer exists"})
                elif now[r["item"]] is None or abs(now[r["item"]] - r["new_value"]) > SAME_S:
                    skipped.append({**entry, "why": "changed since the repair (not the value it wrote)"})
                else:
                    todo.append((r, entry))
            if todo and not dry_run:
                by_item = {r["item"]: (r, entry) for r, entry in todo}
                answer = self._rewrite([(r["item"], r["new_value"], r["old_value"]) for r, _ in todo],
                                       f"{incident_id}-undo", lambda changed: None)
                done = set(answer["changed"])
                for item, (_r, entry) in by_item.items():
                    if item in done:
                        restored.append(entry)
                    else:
                        skipped.append({**entry, "why": "changed since it was read"})
                undo_log.mark_undone(incident_id, [by_item[i][0]["key"] for i in done])
            else:
                restored = [entry for _, entry in todo]
        return UndoOutcome(incident_id, tuple(restored), tuple(skipped), dry_run)


# ------------------------------------------------------------------------------------------------ the kind


@dataclass(frozen=True, slots=True)
class CeleryShelveOptions:
    """The celery_shelve target's options (``type: celery_shelve``)."""

    schedule_file: str = option(doc="beat's schedule (-s/--schedule; default celerybeat-schedule in beat's working "
                                "directory): the base name, without a dbm suffix (.db, .dat, .dir, .bak)")
    python: str = option(doc="the beat's own interpreter (celery installed): it unpickles the entries")
    path: Any = option(None, doc="directories put first on that interpreter's sys.path (the first is its working "
                       "directory)", schema={"type": "array", "items": {"type": "string"}})
    environment_file: str | None = option(None, doc="an environment file (systemd EnvironmentFile= syntax) for it")
    user: str | None = option(None, doc="run it as this user (timeguard as root only)")
    tolerance_s: Any = option(DEFAULT_TOLERANCE_S, doc="future means more than this far ahead (seconds)",
                              schema={"type": "number", "minimum": TOLERANCE_RANGE_S[0],
                                      "maximum": TOLERANCE_RANGE_S[1]})


#: the owner's commands: the hook checks and uses them (stop → repair → start); the target uses them for undo
OWNER_KEYS = frozenset({"beat_service", "stop_command", "start_command"})


def _problems(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for key in ("schedule_file", "python"):
        value = options.get(key)
        if not isinstance(value, str) or not os.path.isabs(value):
            problems.append((key, f"must be an absolute path, not {value!r}"))
    schedule = options.get("schedule_file")
    if isinstance(schedule, str) and schedule.endswith((".db", ".dat", ".dir", ".bak")):
        problems.append(("schedule_file", f"give the base name beat was given ({schedule.rsplit('.', 1)[0]}), not "
                         "one of its dbm files"))
    path = options.get("path")
    if path is not None and (not isinstance(path, list) or not all(isinstance(p, str) for p in path)):
        problems.append(("path", "must be a list of directories"))
    for key in ("environment_file", "user"):
        if options.get(key) is not None and not isinstance(options[key], str):
            problems.append((key, "must be a string"))
    if "tolerance_s" in options:
        problem = range_problem(options["tolerance_s"], *TOLERANCE_RANGE_S)
        if problem is not None:
            problems.append(("tolerance_s", problem))
    return problems


def owner_commands(options: Mapping[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    service = options.get("beat_service")
    if isinstance(service, str) and service:
        return ["systemctl", "stop", service], ["systemctl", "start", service]
    return options.get("stop_command"), options.get("start_command")


class CeleryShelveKind(TargetKind):
    """celery's default scheduler store (``type: celery_shelve``, ``timeguard repair celery-shelve``)."""

    name = NAME
    cli_name = "celery-shelve"
    help = "bring future last_run_at in celery beat's default schedule (celerybeat-schedule) back to now"
    description = ("Stop celery beat, back up every file of its celerybeat-schedule shelve, set each entry's "
                   "last_run_at that lies ahead of the trusted now to now (total_run_count kept), using the beat's "
                   "own interpreter to unpickle the entries, and start beat again. Without --trust-local-clock the "
                   "time sources of the configuration are asked first.")
    Options: ClassVar[type[CeleryShelveOptions]] = CeleryShelveOptions
    options = frozenset(f.name for f in fields(CeleryShelveOptions)) | OWNER_KEYS
    service_option = "beat_service"
    needs_owner_stopped = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CeleryShelveKind:
        from timeguard.hooks.api import HookConfigError

        problems = _problems(options)
        if problems:
            raise HookConfigError(problems)
        return cls(options)

    def check_max_offset(self, max_offset_s: float) -> str | None:
        tolerance = self.values.get("tolerance_s", DEFAULT_TOLERANCE_S)
        return f"must not exceed tolerance_s ({tolerance:g})" if max_offset_s > tolerance else None

    def open(self) -> CeleryShelveTarget:
        v = self.values
        stop, start = owner_commands(v)
        app = AppInterpreter(v["python"], tuple(v.get("path") or ()), v.get("environment_file"), v.get("user"),
                             key=NAME)
        return CeleryShelveTarget(v["schedule_file"], app, tolerance_s=v.get("tolerance_s", DEFAULT_TOLERANCE_S),
                                  stop_command=stop, start_command=start)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--schedule-file", metavar="PATH", help="beat's schedule (its -s; default "
                            "celerybeat-schedule in its working directory), without a dbm suffix")
        parser.add_argument("--python", metavar="PATH", help="the beat's own interpreter (celery installed)")
        parser.add_argument("--path", action="append", metavar="DIR", help="put DIR first on its sys.path "
                            "(repeatable; the first is its working directory)")
        parser.add_argument("--environment-file", metavar="PATH", help="its environment file")
        parser.add_argument("--user", metavar="NAME", help="run it as this user (as root)")
        parser.add_argument("--tolerance-s", type=float, metavar="N",
                            help=f"future means more than N s ahead (default {DEFAULT_TOLERANCE_S:g})")
        cls._owner_arguments(parser, "")

    @classmethod
    def _owner_arguments(cls, parser: argparse.ArgumentParser, prefix: str) -> None:
        parser.add_argument(f"--{prefix}beat-service", metavar="UNIT", help="beat's systemd unit: stopped for the "
                            "repair, started after")
        parser.add_argument(f"--{prefix}stop-command", metavar="CMD", help="the command that stops beat (split into "
                            "words as a shell would; no shell runs it); with --start-command")
        parser.add_argument(f"--{prefix}start-command", metavar="CMD", help="the command that starts beat again")

    @classmethod
    def add_undo_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--shelve-python", metavar="PATH", help="celery_shelve: the beat's own interpreter")
        parser.add_argument("--shelve-path", action="append", metavar="DIR", help="celery_shelve: its sys.path")
        cls._owner_arguments(parser, "shelve-")

    @classmethod
    def _from(cls, schedule_file: Any, python: Any, path: Any, args: argparse.Namespace, prefix: str,
              **more: Any) -> CeleryShelveTarget:
        get = lambda key: getattr(args, prefix + key, None)  # noqa: E731
        options: dict[str, Any] = {"schedule_file": schedule_file, "python": python, "path": path,
                                   **{k: v for k, v in more.items() if v is not None}}
        stop, start = get("stop_command"), get("start_command")
        dash = "--" + prefix.replace("_", "-")
        if (stop is None) != (start is None):
            raise RepairError(f"give both {dash}stop-command and {dash}start-command, or neither")
        if get("beat_service") and stop:
            raise RepairError(f"give {dash}beat-service or {dash}stop-command/{dash}start-command, not both")
        if not get("beat_service") and stop is None and not getattr(args, "dry_run", False):  # a dry run reads a copy
            raise RepairError("celery beat must be stopped for this repair (it rewrites the schedule from memory): "
                              f"give {dash}beat-service UNIT, or {dash}stop-command and {dash}start-command, or "
                              "--hook NAME of a celery_shelve hook with beat_service or stop_command/start_command")
        options["beat_service"] = get("beat_service")
        options["stop_command"] = shlex.split(stop) if stop else None
        options["start_command"] = shlex.split(start) if start else None
        problems = [p for p in _problems(options) if p[0] not in ("path",)]
        if problems:
            error = RepairError("; ".join(f"{dash}{k.replace('_', '-')}: {why}" for k, why in problems))
            error.usage = True  # type: ignore[attr-defined]
            raise error
        return cls(options).open()

    @classmethod
    def cli_options(cls, args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """With ``--hook NAME``: the hook's options (``base``) with the command line's on top; beat's stop/start
        given here replaces the hook's."""
        options = dict(base or {})
        for key in ("schedule_file", "python", "path", "environment_file", "user", "tolerance_s"):
            if getattr(args, key, None) is not None:
                options[key] = getattr(args, key)
        owner = {key: getattr(args, key, None) for key in ("beat_service", "stop_command", "start_command")}
        if any(value is not None for value in owner.values()):
            for key in OWNER_KEYS:
                options.pop(key, None)
            if owner["beat_service"] is not None:
                options["beat_service"] = owner["beat_service"]
            for key in ("stop_command", "start_command"):
                if owner[key] is not None:
                    options[key] = shlex.split(owner[key])
        return options

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CeleryShelveTarget:
        return cls._from(args.schedule_file, args.python, args.path, args, "",
                         environment_file=args.environment_file, user=args.user, tolerance_s=args.tolerance_s)

    @classmethod
    def undo_target(cls, args: argparse.Namespace, fingerprints: Sequence[str]) -> CeleryShelveTarget:
        # The undo record names the schedule; the interpreter and beat's stop/start come from the command line.
        return cls._from(fingerprints[0].removeprefix("shelve:"), args.shelve_python, args.shelve_path, args,
                         "shelve_")

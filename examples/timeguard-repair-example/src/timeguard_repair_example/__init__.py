"""Example repair target: a JSON file ``{"jobs": {NAME: {"last_run": EPOCH_S, …}, …}}`` of last-run stamps.

Everything timeguard needs is here: a :class:`JsonScheduleKind` (options, command line) and a
:class:`JsonScheduleTarget` (audit, plan, apply, undo). The file is rewritten atomically (a temporary file renamed
over it); a file it cannot parse is never written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from timeguard.hooks.api import HookConfigError
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
    fmt_duration,
    range_problem,
)
from timeguard.repair.undo import UndoLog

NAME = "example"
DEFAULT_TOLERANCE_S = 600.0
FIELD = "last_run"


class JsonScheduleTarget(BaseTarget):
    where_key = "schedule_file"
    what = "schedule file"

    def __init__(self, path: str | Path, tolerance_s: float = DEFAULT_TOLERANCE_S) -> None:
        self.path = Path(path).absolute()
        self.tolerance_s = float(tolerance_s)
        self.where = str(self.path)
        self.fingerprint = f"file:{self.path}"

    # ------------------------------------------------------------------------------------------ reading

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RepairError(f"{self.where}: no such file") from None
        except OSError as exc:
            raise RepairError(f"{self.where}: {exc.strerror}") from None
        except ValueError as exc:
            raise RepairError(f"{self.where}: not JSON ({exc}); left as it is") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            raise RepairError(f'{self.where}: no "jobs" object; left as it is')
        return data

    def _save(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _plan(self, data: dict[str, Any], now_s: float) -> Plan:
        changes: list[Change] = []
        unreadable: list[Unreadable] = []
        for name, job in data["jobs"].items():
            value = job.get(FIELD) if isinstance(job, dict) else None
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                if value is not None or not isinstance(job, dict):
                    unreadable.append(Unreadable(name, name, FIELD, repr(value)[:80], "not a finite epoch time"))
                continue
            if value > now_s + self.tolerance_s:
                changes.append(Change(name, name, FIELD, float(value), now_s,
                                      f"{fmt_duration(value - now_s)} in the future: the job would not run before "
                                      "then"))
        return Plan(now_s, self.tolerance_s, tuple(changes), (), tuple(unreadable))

    # ------------------------------------------------------------------------------------- the protocol

    def plan(self, now_s: float) -> Plan:
        return self._plan(self._load(), checked_now(now_s))

    def audit(self, now_s: float) -> Any:
        now_s = checked_now(now_s)
        return self.audit_of(self.plan(now_s), now_s)

    def apply(self, now_fn: Callable[[], float], *, undo_log: UndoLog | None, incident_id: str,
              cancelled: Callable[[], bool] = lambda: False, owner_stopped: bool = False) -> Outcome:
        """One round: the owner rereads the file, so nothing needs a reload signal."""
        repair_id = uuid.uuid4().hex
        now_s = checked_now(now_fn())
        data = self._load()
        plan = self._plan(data, now_s)
        if plan.empty or cancelled():
            return Outcome(incident_id, repair_id, plan, (), plan.empty)
        if undo_log is not None:  # recorded before the file changes: a failed record changes nothing
            undo_log.record(NAME, incident_id, repair_id, self.fingerprint,
                            [(c.item, c.name, c.field, c.old_s, c.new_s) for c in plan.changes],
                            applied_wall_s=now_s, applied_mono_s=time.monotonic())
        for change in plan.changes:
            data["jobs"][change.item][FIELD] = change.new_s
        self._save(data)
        clean = self._plan(self._load(), now_s).empty
        return Outcome(incident_id, repair_id, plan, ({"number": 1, "changed": len(plan.changes), "now_s": now_s},),
                       clean)

    def undo(self, undo_log: UndoLog, incident_id: str, now_fn: Callable[[], float], *,
             dry_run: bool = False) -> UndoOutcome:
        data = self._load()
        restored: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        done = []
        for r in undo_log.records(incident_id, target=NAME, undone=False):
            if not self.same_store(r["fingerprint"]):
                continue
            job = data["jobs"].get(r["item"])
            entry = {"name": r["name"], "field": r["field"], "from_s": None, "to_s": r["old_value"]}
            if not isinstance(job, dict):
                skipped.append({**entry, "why": "the job no longer exists"})
                continue
            entry["from_s"] = job.get(FIELD)
            if job.get(FIELD) != r["new_value"]:
                skipped.append({**entry, "why": "changed since the repair (not the value it wrote)"})
                continue
            restored.append(entry)
            done.append(r["key"])
            job[FIELD] = r["old_value"]
        if restored and not dry_run:
            self._save(data)
            undo_log.mark_undone(incident_id, done)
        return UndoOutcome(incident_id, tuple(restored), tuple(skipped), dry_run)

    def undo_hint(self, incident_id: str) -> str:
        return f"undo: timeguard repair undo {incident_id}"


class JsonScheduleKind(TargetKind):
    name = NAME
    cli_name = NAME
    help = "bring future last_run stamps in a JSON schedule file back to now (example plugin)"
    description = "Find every last_run in the JSON schedule file more than the tolerance ahead of the trusted now "\
        "and bring it back to now."
    options: ClassVar[frozenset[str]] = frozenset({"schedule_file", "tolerance_s"})

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> JsonScheduleKind:
        problems = []
        path = options.get("schedule_file")
        if not isinstance(path, str) or not os.path.isabs(path):
            problems.append(("schedule_file", f"must be an absolute file path, not {path!r}"))
        if "tolerance_s" in options:
            problem = range_problem(options["tolerance_s"], 0.0, 366 * 86400.0)
            if problem is not None:
                problems.append(("tolerance_s", problem))
        if problems:
            raise HookConfigError(problems)
        return cls(options)

    def check_max_offset(self, max_offset_s: float) -> str | None:
        tolerance = self.values.get("tolerance_s", DEFAULT_TOLERANCE_S)
        return f"must not exceed tolerance_s ({tolerance:g})" if max_offset_s > tolerance else None

    def open(self) -> JsonScheduleTarget:
        return JsonScheduleTarget(self.values["schedule_file"], self.values.get("tolerance_s", DEFAULT_TOLERANCE_S))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--schedule-file", required=True, metavar="PATH", help="the JSON schedule file")
        parser.add_argument("--tolerance-s", type=float, default=DEFAULT_TOLERANCE_S, metavar="N",
                            help="future means more than N s ahead (default 600)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> JsonScheduleTarget:
        return JsonScheduleTarget(args.schedule_file, args.tolerance_s)

    @classmethod
    def undo_target(cls, args: argparse.Namespace, fingerprints: Sequence[str]) -> JsonScheduleTarget:
        # The undo record names the file: nothing to give on the command line.
        return JsonScheduleTarget(fingerprints[0].removeprefix("file:"))

"""RepairTarget: one protocol for application state that a wrong wall clock poisoned (issue 10).

A target is a store — a database, a file, a Redis key space — that holds wall times a scheduler compares with its
now. While the clock was ahead it stamped the future there; once the clock is right again nothing is due before
that future date. Every target answers the same five questions, so one hook (:mod:`timeguard.repair.hook`), one
command line (``timeguard repair TARGET``) and one undo log (:mod:`timeguard.repair.undo`) serve them all:

* ``audit(now_s)`` — what lies in the future, changing nothing (:class:`Audit`, with the plan as its detail);
* ``plan(now_s)`` — the report rows: item, field, old → new, why; what is left alone and why; unreadable values;
* ``apply(now_fn, undo_log=…, incident_id=…, cancelled=…, owner_stopped=…)`` — repair in rounds until one finds
  nothing, recording every old value in the undo log *before* it is overwritten; ``cancelled()`` ends it early;
* ``undo(undo_log, incident_id, now_fn, dry_run=…)`` — restore what the repair replaced, where it still holds;
* ``close()``.

A target that cannot repair under its running owner (a file the owner rewrites from memory) says so with
``needs_owner_stopped``; the hook then refuses without stop/start commands. Targets are found through the
entry-point group ``timeguard.repair_targets`` (the built-in ones too): the entry point names a :class:`TargetKind`.
The trusted now is always passed in: no target reads the host clock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from timeguard.secrets import credential_path
from timeguard.timefmt import fmt_duration, iso

if TYPE_CHECKING:
    from timeguard.repair.undo import UndoLog

GROUP = "timeguard.repair_targets"
UTC = dt.UTC
#: Timestamps a target reads: from year 2 up to (not into) year 9999. Outside it no clock error put it there.
READABLE_FROM = dt.datetime(2, 1, 1, tzinfo=UTC)
READABLE_BEFORE = dt.datetime(9999, 1, 1, tzinfo=UTC)


class RepairError(Exception):
    """The repair could not run: what went wrong and where (without a password)."""


def url_from_options(values: Mapping[str, Any], key: str, *, credentials: bool = False) -> tuple[str, str] | None:
    """A URL given as ``key``, ``<key>_env`` (an environment variable) or ``<key>_file`` (a file), read now — where
    the repair runs, since it may hold a password — with the option it came from; None when none is given. With
    ``credentials`` the file follows systemd's credentials rule (:func:`timeguard.secrets.credential_path`)."""
    env, file = f"{key}_env", f"{key}_file"
    if values.get(key):
        return values[key], key
    if values.get(env):
        value = os.environ.get(values[env], "")
        if not value:
            raise RepairError(f"{env}: ${values[env]} is not set")
        return value, f"{env} (${values[env]})"
    if not values.get(file):
        return None
    path: Path | None = Path(values[file])
    if credentials:
        path, problem = credential_path(values[file])
        if path is None:
            raise RepairError(f"{file} {values[file]}: {problem}")
    assert path is not None
    try:
        return path.read_text(encoding="utf-8").strip(), f"{file} ({path})"
    except OSError as exc:
        raise RepairError(f"{file} {path}: {exc.strerror}") from None


def checked_now(now_s: Any) -> float:
    """The trusted now, or a RepairError: a NaN or out-of-range now would make every comparison False."""
    try:
        value = float(now_s)
        dt.datetime.fromtimestamp(value, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise RepairError(f"the trusted now ({now_s!r}) is not a usable time: nothing was read or changed") from None
    if not READABLE_FROM.timestamp() < value < READABLE_BEFORE.timestamp():
        raise RepairError(f"the trusted now ({now_s!r}) is not a usable time: nothing was read or changed")
    return value


def range_problem(value: Any, low: float, high: float, *, whole: bool = False) -> str | None:
    """None when ``value`` is a number from ``low`` to ``high`` (a whole one if ``whole``), else why not, for a
    person. Booleans, strings, NaN and ±inf are refused: a NaN would compare False and switch a check off."""
    kind = "a whole number" if whole else "a finite number"
    wanted = f"must be {kind} from {low:.15g} to {high:.15g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{wanted} (got {value!r})"
    if not math.isfinite(value) or not low <= value <= high or (whole and value != int(value)):
        return f"{wanted} (got {value!r})"
    return None


def fmt_utc(epoch_s: float | None) -> str:
    """``2026-11-23 20:46:32Z``, ``-`` for None (the repair's reports)."""
    return iso(epoch_s, "seconds", sep=" ")


def cancellable_sleep(cancelled: Callable[[], bool], slice_s: float = 0.2) -> Callable[[float], None]:
    """time.sleep that returns early (within ``slice_s``) once ``cancelled()`` is true."""

    def sleep(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not cancelled():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(slice_s, remaining))

    return sleep


# ------------------------------------------------------------------------------------------------ value types


@dataclass(frozen=True, slots=True)
class Change:
    """One report row: ``item`` (the target's key for it, e.g. ``periodictask:7``), its name for a person, the
    field, old → new (epoch s; old None when it could not be read) and why."""

    item: str
    name: str
    field: str
    old_s: float | None
    new_s: float
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Note:
    """Something the false period left behind that the repair deliberately leaves as it is."""

    item: str
    name: str
    kind: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored time the target cannot read: its item is left as it is, and said so."""

    item: str
    name: str
    field: str
    raw: str  # repr of the stored value
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.name} {self.field} {self.raw}: {self.why}"


class ChangeRow(Protocol):
    """What the hook and the command line read from a plan's change (celery_beat's PlannedChange is one too)."""

    @property
    def name(self) -> str: ...
    @property
    def old_s(self) -> float | None: ...
    @property
    def new_s(self) -> float: ...
    @property
    def why(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """What a repair would change. A target whose store can hold more changes than a person reads (or a hook result
    in the journal should carry) lists only the first ones in ``changes`` and counts every one in ``totals``
    (field → count); ``total`` and ``counts()`` always speak for the whole plan."""

    now_s: float
    tolerance_s: float
    changes: tuple[Any, ...]  # ChangeRow
    report: tuple[Any, ...] = ()  # .name, .detail
    unreadable: tuple[Any, ...] = ()  # .describe(), .to_dict()
    totals: Mapping[str, int] | None = None  # every change counted by field, when ``changes`` lists only the first

    @property
    def total(self) -> int:
        """How many values the repair would change (listed or not)."""
        return len(self.changes) if self.totals is None else sum(self.totals.values())

    @property
    def empty(self) -> bool:
        return not self.total

    def counts(self) -> dict[str, int]:
        if self.totals is not None:
            return dict(self.totals)
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.field] = counts.get(change.field, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"now_s": self.now_s, "tolerance_s": self.tolerance_s, "counts": self.counts(),
                "changes_total": self.total, "changes": [c.to_dict() for c in self.changes],
                "report": [r.to_dict() for r in self.report], "unreadable": [u.to_dict() for u in self.unreadable]}


@dataclass(frozen=True, slots=True)
class Outcome:
    """A generic apply's result: what was future before the first round, the rounds, and whether the last look
    found nothing."""

    incident_id: str
    repair_id: str
    plan: Any  # Plan
    rounds: tuple[dict[str, Any], ...]
    clean: bool

    @property
    def changed(self) -> bool:
        return bool(self.rounds)

    def to_dict(self) -> dict[str, Any]:
        return {"incident_id": self.incident_id, "repair_id": self.repair_id, "clean": self.clean,
                "rounds": list(self.rounds), "report": [r.to_dict() for r in self.plan.report],
                "unreadable": [u.to_dict() for u in self.plan.unreadable], "plan": self.plan.to_dict()}


@dataclass(frozen=True, slots=True)
class UndoOutcome:
    incident_id: str
    restored: tuple[dict[str, Any], ...]  # name, column/field, from_s, to_s
    skipped: tuple[dict[str, Any], ...] = field(default=())  # changed since: left alone, with why
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"incident_id": self.incident_id, "dry_run": self.dry_run, "restored": list(self.restored),
                "skipped": list(self.skipped)}


@dataclass(frozen=True, slots=True)
class Audit:
    """An audit's finding, for the hook's AuditResult: ``found`` future state, a summary for a person, details."""

    found: bool
    summary: str
    details: dict[str, Any]


def unreadable_note(unreadable: Sequence[Any]) -> str:
    """The summary's note on values the repair could not read (their items are left as they are)."""
    if not unreadable:
        return ""
    shown = "; ".join(u.describe() for u in unreadable[:3])
    more = f"; and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
    return f"; {len(unreadable)} value(s) it cannot read, left as they are: {shown}{more}"


def format_table(changes: Sequence[Any], *, item_heading: str = "ITEM", field_heading: str = "FIELD",
                 field_attr: str = "field", empty: str = "nothing to repair: no stored time lies in the future") -> str:
    """The human table of planned changes: item, field, old → new, why."""
    if not changes:
        return f"{empty}\n"
    width = min(max(len(c.name) for c in changes), 40)
    fwidth = max(12, len(field_heading))
    lines = [f"{item_heading:<{width}}  {field_heading:<{fwidth}}  {'OLD':<20} → {'NEW':<20}  WHY"]
    for c in changes:
        old, new = fmt_utc(c.old_s), fmt_utc(c.new_s)
        lines.append(f"{c.name[:width]:<{width}}  {getattr(c, field_attr):<{fwidth}}  {old:<20} → {new:<20}  {c.why}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the protocol


@runtime_checkable
class RepairTarget(Protocol):
    """One store of one kind, opened (see the module docstring for the contract)."""

    where: str  # names the store for a person, without a password
    fingerprint: str  # names it in the undo log: the same text every time

    def audit(self, now_s: float) -> Audit: ...
    def plan(self, now_s: float) -> Any: ...
    def apply(self, now_fn: Callable[[], float], *, undo_log: UndoLog | None, incident_id: str,
              cancelled: Callable[[], bool] = ..., owner_stopped: bool = ...) -> Any: ...
    def undo(self, undo_log: UndoLog, incident_id: str, now_fn: Callable[[], float], *,
             dry_run: bool = False) -> UndoOutcome: ...
    def same_store(self, fingerprint: str) -> bool: ...
    def close(self) -> None: ...

    # What a person reads (the hook's summaries and the command line's lines)
    def format_plan(self, changes: Sequence[Any]) -> str: ...
    def applying_note(self, incident_id: str) -> str: ...
    def outcome_line(self, outcome: Any) -> str: ...
    def outcome_summary(self, outcome: Any) -> tuple[str, str]: ...
    def undo_hint(self, incident_id: str) -> str: ...


class BaseTarget:
    """Defaults for what a person reads, so a third-party target writes only the five methods and its names."""

    where: str
    fingerprint: str
    where_key: ClassVar[str] = "store"  # names ``where`` in the command line's JSON
    what: ClassVar[str] = "store"  # "--trust-local-clock: … this writes wrong times into the {what}"
    report_heading: ClassVar[str] = "left as they are:"
    unreadable_heading: ClassVar[str] = "values it cannot read (left as they are; fix them by hand):"
    not_clean_message: ClassVar[str] = "future times remain after the last round: run the repair again"

    def same_store(self, fingerprint: str) -> bool:
        return fingerprint == self.fingerprint

    def close(self) -> None:
        return None

    def format_plan(self, changes: Sequence[Any]) -> str:
        return format_table(changes)

    def applying_note(self, incident_id: str) -> str:
        return f"applying (incident {incident_id}) …"

    def outcome_line(self, outcome: Any) -> str:
        return (f"{'repaired' if outcome.clean else 'NOT CLEAN'}: {outcome.plan.total} value(s), "
                f"{len(outcome.rounds)} round(s)")

    def outcome_summary(self, outcome: Any) -> tuple[str, str]:
        """(``failed`` | ``ok`` | ``changed``, the hook's summary)."""
        note = unreadable_note(outcome.plan.unreadable)
        if not outcome.clean:
            return "failed", f"future times remain after {len(outcome.rounds)} round(s) in {self.where}{note}"
        if not outcome.changed:
            return "ok", f"nothing to repair in {self.where}{note}"
        return "changed", (f"repaired {self.where}: {outcome.plan.total} value(s) in "
                           f"{len(outcome.rounds)} round(s){note}")

    def undo_hint(self, incident_id: str) -> str:
        return f"undo: timeguard repair undo {incident_id}"

    def audit_of(self, plan: Any, now_s: float) -> Audit:
        """The audit of a plan: found when it changes anything, how far ahead the furthest value is."""
        note = unreadable_note(plan.unreadable)
        details = {self.where_key: self.where, "unreadable": [u.to_dict() for u in plan.unreadable]}
        if plan.empty:
            return Audit(False, f"no future time in {self.where}{note}", details)
        known = [c.old_s for c in plan.changes if c.old_s is not None]
        ahead = max(known) - now_s if known else 0.0
        return Audit(True, f"{len(plan.changes)} value(s) in the future in {self.where}, up to "
                     f"{fmt_duration(ahead)} ahead{note}",
                     {**details, "counts": plan.counts(), "max_ahead_s": ahead})


class TargetKind:
    """What the entry point names: how to open a target from hook options or from the command line.

    Subclass it; the defaults suit a target that needs no owner stopped and takes its options as given."""

    name: ClassVar[str]  # the hook's ``target:`` and the undo log's key, e.g. "celery_beat"
    cli_name: ClassVar[str]  # ``timeguard repair CLI_NAME``, e.g. "celery-beat"
    help: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: the hook options the kind reads (the hook's own — name, on, timeout_s, max_offset_s, stop/start
    #: commands, the owner's service — are handled by the hook)
    options: ClassVar[frozenset[str]] = frozenset()
    #: the hook option naming the owner's systemd unit (stop → repair → start), e.g. "beat_service"
    service_option: ClassVar[str] = "service"
    needs_owner_stopped: ClassVar[bool] = False
    #: evidence options: the hook's max_offset_s must not exceed this kind's tolerance (None: no such check)
    report_heading: ClassVar[str] = "left as they are:"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.values = dict(options)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TargetKind:
        """Validate the hook's target options; raise HookConfigError([(key, problem), …]). Must not connect."""
        return cls(options)

    def open(self) -> RepairTarget:
        """The target, opened with the options (a secret read now, at use)."""
        raise NotImplementedError

    def check_max_offset(self, max_offset_s: float) -> str | None:
        """Why ``max_offset_s`` is too large for this store, or None."""
        return None

    def max_run_s(self) -> float:
        """How long the dispatcher waits for a repair."""
        return 120.0

    # the command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The options of ``timeguard repair CLI_NAME`` (and of undo, through :meth:`add_undo_arguments`)."""

    @classmethod
    def add_undo_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The options ``timeguard repair undo`` needs to reopen this kind's store (shared with other kinds:
        argparse refuses one given twice, so use names of your own)."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RepairTarget:
        raise NotImplementedError

    @classmethod
    def undo_target(cls, args: argparse.Namespace, fingerprints: Sequence[str]) -> RepairTarget:
        """The store an undo restores, from the command line (and the fingerprints the undo log recorded)."""
        raise NotImplementedError


def run_owner_command(argv: Sequence[str], what: str, *, timeout_s: float) -> None:
    """Run the owner's stop or start command under the command hook's supervisor (its own process group, killed
    at ``timeout_s`` — the hook's — with SIGTERM then SIGKILL); a failure is a RepairError naming it."""
    from timeguard.hooks.command import run_supervised

    try:
        run = run_supervised(argv, timeout_s=timeout_s)
    except OSError as exc:
        raise RepairError(f"{what} {argv[0]}: {exc.strerror or exc}") from None
    if run.timed_out:
        raise RepairError(f"{what} {' '.join(argv)}: timed out after {timeout_s:g} s (its process group was "
                          f"killed: {', '.join(run.killed) or 'it had ended'})")
    if run.returncode != 0:
        raise RepairError(f"{what} {' '.join(argv)} exited {run.returncode}: {run.output.text().strip()[-300:]}")


@dataclass(frozen=True, slots=True)
class KindEntry:
    name: str
    kind: type[TargetKind] | None
    error: str | None


_kinds: dict[str, KindEntry] | None = None


def kinds() -> dict[str, KindEntry]:
    """Every repair target kind registered in ``timeguard.repair_targets``, by name (loaded, or why not)."""
    global _kinds  # noqa: PLW0603 - discovered once per process
    if _kinds is None:
        found: dict[str, KindEntry] = {}
        for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in found:
                found[ep.name] = KindEntry(ep.name, None, f"repair target {ep.name!r} is registered twice")
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal to the others
                found[ep.name] = KindEntry(ep.name, None, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
                continue
            if not (isinstance(obj, type) and issubclass(obj, TargetKind)):
                found[ep.name] = KindEntry(ep.name, None, f"{ep.value} is not a timeguard repair target (a "
                                           "timeguard.repair.target.TargetKind subclass)")
                continue
            found[ep.name] = KindEntry(ep.name, obj, None)
        _kinds = found
    return _kinds


def find_kind(name: str) -> type[TargetKind]:
    entries = kinds()
    entry = entries.get(name)
    if entry is None:
        known = ", ".join(n for n, e in entries.items() if e.kind is not None) or "none"
        raise RepairError(f"unknown repair target {name!r} (installed: {known})")
    if entry.kind is None:
        raise RepairError(f"repair target {name!r} is unusable: {entry.error}")
    return entry.kind

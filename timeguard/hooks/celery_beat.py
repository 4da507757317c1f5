"""The celery_beat hook (``type: celery_beat``): repair a django-celery-beat database after a rollback.

::

    hooks:
      - type: celery_beat
        name: beat-repair
        on: [rollback, rollback_while_down, future_state_found]   # the default
        timeout_s: 120                  # a repair round waits 2 × (beat_max_interval_s + 2 s)
        database_url_env: BEAT_DATABASE_URL   # or database_url / database_url_file (it holds a password)
        table_prefix: django_celery_beat_     # default
        # schema: public
        use_tz: true                    # Django USE_TZ (default true)
        tz_aware: true                  # DJANGO_CELERY_BEAT_TZ_AWARE (default true)
        time_zone: UTC                  # Django TIME_ZONE, used only with use_tz: false
        # tolerance_s: 600              # default 600; 93600 (26 h) with use_tz: false
        beat_max_interval_s: 5          # beat's max_interval (beat_max_loop_interval)
        max_rounds: 3
        max_offset_s: 1.0               # the host clock must agree with the sources this closely (≤ tolerance_s)
        # beat_service: celery-beat.service   # stop → repair → start with systemctl; or, for anything else,
        # stop_command: [supervisorctl, stop, beat]      # both or neither
        # start_command: [supervisorctl, start, beat]

Every number must be finite and in range (timeguard.repair.celery_beat.NUMERIC_OPTIONS): a NaN would compare False
with everything and so switch off the check it feeds. A URL without a driver (``mysql://``, ``postgres://``) gets
the one the extra installs.

Repair only with evidence (DESIGN.md): the hook writes only when the latest verdict is usable (OK, WARNING
or CRITICAL with an offset), NTP and HTTPS agree, and the host clock now agrees with the sources within
``max_offset_s``; the repair's now is ``ctx.trusted_now()``. Otherwise the result is ``skipped`` and says why.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from timeguard.events import Event, EventKind
from timeguard.hooks.api import AuditOutcome, AuditResult, HookConfigError, HookContext, HookResult
from timeguard.repair.celery_beat import (
    DEFAULT_BEAT_MAX_INTERVAL_S,
    DEFAULT_MAX_ROUNDS,
    DEFAULT_TABLE_PREFIX,
    DEFAULT_TOLERANCE_NAIVE_S,
    DEFAULT_TOLERANCE_S,
    DEFAULT_WAIT_MARGIN_S,
    CeleryBeatRepair,
    RepairError,
    UnreadableValue,
    checked_now,
    fmt_duration,
    number_problem,
)

DEFAULT_MAX_OFFSET_S = 1.0
USABLE_STATUSES = frozenset({"OK", "WARNING", "CRITICAL"})
_OPTIONS = frozenset({
    "database_url", "database_url_env", "database_url_file", "table_prefix", "schema", "use_tz", "tz_aware",
    "time_zone", "tolerance_s", "beat_max_interval_s", "wait_margin_s", "max_rounds", "max_offset_s",
    "lock_timeout_s", "stop_command", "start_command", "beat_service",
})


def evidence_problem(verdict: Mapping[str, Any] | None, max_offset_s: float = DEFAULT_MAX_OFFSET_S) -> str | None:
    """None when the verdict justifies a repair with the host clock's now; else the reason, for a person."""
    if verdict is None:
        return "no repair: no verdict from the time sources yet"
    status = str(verdict.get("status"))
    offset = verdict.get("offset_s")
    if verdict.get("ntp_http_agree") is False:  # first: SOURCES_INCONSISTENT says less to a person
        return f"no repair: NTP and HTTPS do not agree ({verdict.get('summary') or status})"
    if status not in USABLE_STATUSES or offset is None:
        return f"no repair: the time sources give no usable verdict ({status})"
    try:
        offset = float(offset)
    except (TypeError, ValueError):
        offset = math.nan
    if not math.isfinite(offset):  # a NaN offset would pass every "too far off?" comparison below
        return f"no repair: the verdict's offset ({verdict.get('offset_s')!r}) is not a finite number"
    if number_problem("max_offset_s", max_offset_s) is not None:
        return f"no repair: max_offset_s ({max_offset_s!r}) is not a usable bound"
    agree = verdict.get("ntp_http_agree")
    if agree is not True:
        if agree is None:
            return "no repair: NTP and HTTPS did not both answer, so neither confirms the other"
        return "no repair: NTP and HTTPS do not agree"
    if not abs(offset) <= max_offset_s:
        # offset = sources − host: positive means the host is behind
        if offset > 0:
            return (f"no repair: the host clock is {fmt_duration(offset)} behind the sources — it was rolled "
                    "back into the past; fix the clock first")
        return f"no repair: the host clock is {fmt_duration(offset)} ahead of the sources; fix the clock first"
    # The estimate is one point; the true offset may be anywhere in the majority's interval (the hull of its
    # regions when the majority is split). Every point of it must be within max_offset_s, as every point must be
    # within the thresholds for an OK.
    bounds = []
    for key in ("offset_lo_s", "offset_hi_s"):
        try:
            bounds.append(float(verdict.get(key)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            bounds.append(math.nan)
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= offset <= hi):
        return (f"no repair: the verdict has no usable error bound (true offset in "
                f"[{verdict.get('offset_lo_s')!r}, {verdict.get('offset_hi_s')!r}])")
    worst = max(abs(lo), abs(hi))
    if not worst <= max_offset_s:
        return (f"no repair: the sources place the true offset in [{lo:+.6f} s, {hi:+.6f} s], up to "
                f"{fmt_duration(worst)} off, more than max_offset_s ({max_offset_s:g} s): they do not pin the "
                "clock down closely enough to repair with it")
    return None


@dataclass
class CeleryBeatHook:
    name: str
    database_url: str | None
    database_url_env: str | None
    database_url_file: str | None
    repair_options: dict[str, Any]
    max_offset_s: float
    stop_command: list[str] | None
    start_command: list[str] | None

    default_on: ClassVar[frozenset[EventKind]] = frozenset(
        {EventKind.ROLLBACK, EventKind.ROLLBACK_WHILE_DOWN, EventKind.FUTURE_STATE_FOUND}
    )

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> CeleryBeatHook:
        problems: list[tuple[str, str]] = []
        for key in sorted(set(options) - _OPTIONS):
            problems.append((key, f"unknown option (known: {', '.join(sorted(_OPTIONS))})"))
        sources = [k for k in ("database_url", "database_url_env", "database_url_file") if options.get(k)]
        if len(sources) != 1:
            problems.append(("database_url", "give exactly one of database_url, database_url_env, database_url_file"))
        for key in sources:
            if not isinstance(options[key], str):
                problems.append((key, "must be a string"))
        for key in ("use_tz", "tz_aware"):
            if key in options and not isinstance(options[key], bool):
                problems.append((key, "must be true or false"))
        for key in ("table_prefix", "schema", "time_zone"):
            if key in options and not isinstance(options[key], str):
                problems.append((key, "must be a string"))
        numbers: dict[str, float] = {}
        for key in ("tolerance_s", "beat_max_interval_s", "wait_margin_s", "max_offset_s", "lock_timeout_s",
                    "max_rounds"):
            if key in options:
                problem = number_problem(key, options[key])
                if problem is not None:  # NaN compares False with everything: it would switch a check off
                    problems.append((key, problem))
                else:
                    numbers[key] = options[key]
        if "max_offset_s" in numbers:
            use_tz = options.get("use_tz", True) is not False
            tolerance = numbers.get("tolerance_s", DEFAULT_TOLERANCE_S if use_tz else DEFAULT_TOLERANCE_NAIVE_S)
            if numbers["max_offset_s"] > tolerance:
                problems.append(("max_offset_s", f"must not exceed tolerance_s ({tolerance:g}): a host clock that "
                                 "far off would make beat see the repaired times as future or past again"))
        commands: dict[str, list[str] | None] = {"stop_command": None, "start_command": None}
        for key in commands:
            value = options.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
                problems.append((key, "must be a non-empty list of strings (argv, no shell)"))
            else:
                commands[key] = list(value)
        if (options.get("stop_command") is None) != (options.get("start_command") is None):
            problems.append(("stop_command", "give both stop_command and start_command, or neither"))
        service = options.get("beat_service")
        if service is not None:
            if not isinstance(service, str) or not service.strip() or service.startswith("-"):
                problems.append(("beat_service", "must be a systemd unit name, e.g. celery-beat.service"))
            elif options.get("stop_command") is not None:
                problems.append(("beat_service", "give beat_service or stop_command/start_command, not both"))
            else:
                commands = {"stop_command": ["systemctl", "stop", service],
                            "start_command": ["systemctl", "start", service]}
        if problems:
            raise HookConfigError(problems)
        repair_options: dict[str, Any] = {
            "table_prefix": options.get("table_prefix", DEFAULT_TABLE_PREFIX),
            "schema": options.get("schema"),
            "use_tz": options.get("use_tz", True),
            "tz_aware": options.get("tz_aware", True),
            "time_zone": options.get("time_zone", "UTC"),
            "tolerance_s": numbers.get("tolerance_s"),
            "beat_max_interval_s": numbers.get("beat_max_interval_s", DEFAULT_BEAT_MAX_INTERVAL_S),
            "wait_margin_s": numbers.get("wait_margin_s", DEFAULT_WAIT_MARGIN_S),
            "max_rounds": int(numbers.get("max_rounds", DEFAULT_MAX_ROUNDS)),
        }
        if "lock_timeout_s" in numbers:
            repair_options["lock_timeout_s"] = numbers["lock_timeout_s"]
        if options.get("database_url"):
            try:  # validate the URL and the time zone now, without connecting
                CeleryBeatRepair(options["database_url"], **repair_options)
            except RepairError as exc:
                raise HookConfigError([("database_url", str(exc))]) from None
        return cls(
            name=name,
            database_url=options.get("database_url"),
            database_url_env=options.get("database_url_env"),
            database_url_file=options.get("database_url_file"),
            repair_options=repair_options,
            max_offset_s=float(numbers.get("max_offset_s", DEFAULT_MAX_OFFSET_S)),
            stop_command=commands["stop_command"],
            start_command=commands["start_command"],
        )

    @property
    def max_run_s(self) -> float:
        """Rounds × two waits, plus slack for the statements: the dispatcher waits this long for the result."""
        wait = self.repair_options["beat_max_interval_s"] + self.repair_options["wait_margin_s"]
        return self.repair_options["max_rounds"] * (2 * wait + 30) + 30

    def _url(self) -> str:
        if self.database_url:
            return self.database_url
        if self.database_url_env:
            value = os.environ.get(self.database_url_env, "")
            if not value:
                raise RepairError(f"database_url_env: ${self.database_url_env} is not set")
            return value
        assert self.database_url_file is not None
        try:
            return Path(self.database_url_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RepairError(f"database_url_file {self.database_url_file}: {exc.strerror}") from None

    def engine(self) -> CeleryBeatRepair:
        return CeleryBeatRepair(self._url(), **self.repair_options)

    def audit(self, ctx: HookContext) -> AuditResult:
        """Look for future timestamps with the trusted now, without changing anything (the daemon's audit, at
        start-up and on a schedule). A RepairError (database unreachable, locked, tables missing) propagates."""
        problem = evidence_problem(ctx.verdict, self.max_offset_s)
        trusted = _usable(ctx.trusted_now()) if problem is None else None
        if trusted is None:
            return AuditResult(AuditOutcome.SKIPPED, problem or "no trusted time (no usable verdict offset)")
        engine = self.engine()
        try:
            plan = engine.plan(trusted)
        finally:
            engine.close()
        unreadable = _unreadable_note(plan.unreadable)
        details = {"hook": self.name, "database": engine.where, "unreadable": [u.to_dict() for u in plan.unreadable]}
        if plan.empty:
            return AuditResult(AuditOutcome.CLEAN, f"no future timestamp in {engine.where}{unreadable}", details)
        known = [c.old_s for c in plan.changes if c.old_s is not None]
        ahead = max(known) - trusted if known else 0.0
        tasks = sorted({c.name for c in plan.changes if c.table == "periodictask"})
        return AuditResult(
            AuditOutcome.FOUND,
            f"{len(plan.changes)} timestamp(s) in the future in {engine.where}, up to {fmt_duration(ahead)} ahead"
            f" ({len(tasks)} task(s): beat will not run them before then){unreadable}",
            {**details, "counts": plan.counts(), "max_ahead_s": ahead, "tasks": tasks[:50],
             "tasks_total": len(tasks)},
        )

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        problem = evidence_problem(ctx.verdict, self.max_offset_s)
        if problem is not None:
            return HookResult.skipped(problem, verdict=dict(ctx.verdict) if ctx.verdict else None)
        trusted = _usable(ctx.trusted_now())
        if trusted is None:
            return HookResult.skipped("no repair: no trusted time (no usable verdict offset)")

        def now_fn() -> float:
            value = ctx.trusted_now()
            return trusted if value is None else value

        try:
            engine = self.engine()
            try:
                if ctx.dry_run:
                    plan = engine.plan(trusted)
                    return HookResult.skipped(
                        f"dry run: would change {len(plan.changes)} timestamp(s) in {engine.where}"
                        f"{_unreadable_note(plan.unreadable)}",
                        **plan.to_dict(),
                    )
                stopped = False
                if self.stop_command:
                    self._run(self.stop_command, "stop_command")
                    stopped = True
                try:
                    outcome = engine.apply(now_fn, journal=ctx.journal, incident_id=event.incident_id,
                                           cancelled=ctx.cancelled, beat_stopped=stopped)
                finally:
                    if stopped and self.start_command:
                        self._run(self.start_command, "start_command")
            finally:
                engine.close()
        except RepairError as exc:
            return HookResult.failed(str(exc))
        details = outcome.to_dict()
        details.pop("plan", None)
        details["changes"] = len(outcome.plan.changes)
        counts = outcome.rows_changed()
        report = (f"; {len(outcome.plan.report)} task(s) ran early or expired during the false period (reported, "
                  "left as they are)") \
            if outcome.plan.report else ""
        report += _unreadable_note(outcome.plan.unreadable)
        if not outcome.clean:
            return HookResult.failed(
                f"future timestamps remain after {len(outcome.rounds)} round(s) in {engine.where}: "
                f"restart celery beat, then run the repair again{report}", **details)
        if not outcome.changed:
            return HookResult.ok(f"nothing to repair in {engine.where}{report}", **details)
        return HookResult.changed(
            f"repaired {engine.where}: last_run_at {counts['last_run_at']}, date_changed {counts['date_changed']} "
            f"row(s) in {len(outcome.rounds)} round(s){report}",
            **details,
        )

    @staticmethod
    def _run(argv: Sequence[str], what: str) -> None:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RepairError(f"{what} {argv[0]}: {exc}") from None
        if proc.returncode != 0:
            raise RepairError(f"{what} {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")


def _usable(now_s: float | None) -> float | None:
    """The trusted now, or None when there is none or it is no time at all (NaN, ±inf, beyond the calendar)."""
    if now_s is None:
        return None
    try:
        return checked_now(now_s)
    except RepairError:
        return None


def _unreadable_note(unreadable: Sequence[UnreadableValue]) -> str:
    """The summary's note on values the repair could not read (their rows are left as they are)."""
    if not unreadable:
        return ""
    shown = "; ".join(u.describe() for u in unreadable[:3])
    more = f"; and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
    return f"; {len(unreadable)} value(s) it cannot read, left as they are: {shown}{more}"

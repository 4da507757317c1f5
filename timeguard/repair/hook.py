"""The repair hook: one hook type for every repair target.

::

    hooks:
      - type: repair
        target: example            # a kind registered in timeguard.repair_targets
        name: schedule-repair
        on: [rollback, rollback_while_down, future_state_found]   # the default
        max_offset_s: 1.0          # the host clock must agree with the sources this closely
        # service: app.service     # stop → repair → start with systemctl; or, for anything else,
        # stop_command: [supervisorctl, stop, app]       # both or neither
        # start_command: [supervisorctl, start, app]
        ...                        # the target's own options

``type: celery_beat`` is this hook bound to the celery_beat target (its owner's unit is ``beat_service``).

Repair only with evidence (:mod:`timeguard.repair.evidence`): the hook writes only when the latest verdict is usable,
NTP and HTTPS agree, and the host clock now agrees with the sources within ``max_offset_s``; the repair's now is
``ctx.trusted_now()``. Otherwise the result is ``skipped`` and says why. A target that needs its owner stopped
(``needs_owner_stopped``) is refused at configuration time without a way to stop it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from timeguard.events import Event, EventKind
from timeguard.hooks.api import AuditOutcome, AuditResult, HookConfigError, HookContext, HookResult
from timeguard.repair.evidence import DEFAULT_MAX_OFFSET_S, evidence_problem, max_offset_problem, usable_now
from timeguard.repair.target import (
    RepairError,
    RepairTarget,
    TargetKind,
    find_kind,
    run_owner_command,
    unreadable_note,
)

DEFAULT_ON = frozenset({EventKind.ROLLBACK, EventKind.ROLLBACK_WHILE_DOWN, EventKind.FUTURE_STATE_FOUND})
_HOOK_OPTIONS = frozenset({"max_offset_s", "stop_command", "start_command"})


@dataclass
class RepairHook:
    name: str
    kind: TargetKind
    max_offset_s: float
    stop_command: list[str] | None
    start_command: list[str] | None

    default_on: ClassVar[frozenset[EventKind]] = DEFAULT_ON
    target_name: ClassVar[str | None] = None  # set by a hook type bound to one target (celery_beat)

    @classmethod
    def _kind_type(cls, options: Mapping[str, Any]) -> tuple[type[TargetKind], frozenset[str]]:
        if cls.target_name is not None:
            return find_kind(cls.target_name), frozenset()
        target = options.get("target")
        if not isinstance(target, str) or not target:
            raise HookConfigError([("target", "name the repair target (an entry point in timeguard.repair_targets)")])
        try:
            return find_kind(target), frozenset({"target"})
        except RepairError as exc:
            raise HookConfigError([("target", str(exc))]) from None

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> RepairHook:
        kind_type, own = cls._kind_type(options)
        known = kind_type.options | _HOOK_OPTIONS | {kind_type.service_option} | own
        problems: list[tuple[str, str]] = [
            (key, f"unknown option (known: {', '.join(sorted(known))})") for key in sorted(set(options) - known)]
        kind_options = {k: v for k, v in options.items() if k in kind_type.options}
        kind: TargetKind | None = None
        validate = getattr(kind_type, "validate", None)
        if validate is not None:
            found, kind = validate(kind_options)
            problems += found
        else:
            try:
                kind = kind_type.from_options(kind_options)
            except HookConfigError as exc:
                problems += exc.problems
        max_offset = DEFAULT_MAX_OFFSET_S
        if "max_offset_s" in options:
            problem = max_offset_problem(options["max_offset_s"])
            if problem is not None:  # NaN compares False with everything: it would switch the check off
                problems.append(("max_offset_s", problem))
            else:
                max_offset = float(options["max_offset_s"])
                too_far = kind.check_max_offset(max_offset) if kind is not None else None
                if too_far is not None:
                    problems.append(("max_offset_s", too_far))
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
        service_key = kind_type.service_option
        service = options.get(service_key)
        if service is not None:
            if not isinstance(service, str) or not service.strip() or service.startswith("-"):
                problems.append((service_key, "must be a systemd unit name, e.g. celery-beat.service"))
            elif options.get("stop_command") is not None:
                problems.append((service_key, f"give {service_key} or stop_command/start_command, not both"))
            else:
                commands = {"stop_command": ["systemctl", "stop", service],
                            "start_command": ["systemctl", "start", service]}
        if kind_type.needs_owner_stopped and commands["stop_command"] is None and not problems:
            problems.append((service_key, f"the {kind_type.name} target is repaired only with its owner stopped: "
                             f"give {service_key} (a systemd unit) or stop_command and start_command"))
        if problems:
            raise HookConfigError(problems)
        assert kind is not None
        if validate is not None:
            kind = kind_type.from_options(kind_options)  # the checks that need valid options (URL, time zone)
        return cls(name=name, kind=kind, max_offset_s=max_offset, stop_command=commands["stop_command"],
                   start_command=commands["start_command"])

    @property
    def max_run_s(self) -> float:
        return self.kind.max_run_s()

    def target(self) -> RepairTarget:
        return self.kind.open()

    def audit(self, ctx: HookContext) -> AuditResult:
        """Look for future state with the trusted now, without changing anything (the daemon's audit, at start-up
        and on a schedule). A RepairError (store unreachable, locked, missing) propagates."""
        problem = evidence_problem(ctx.verdict, self.max_offset_s)
        trusted = usable_now(ctx.trusted_now()) if problem is None else None
        if trusted is None:
            return AuditResult(AuditOutcome.SKIPPED, problem or "no trusted time (no usable verdict offset)")
        target = self.target()
        try:
            found = target.audit(trusted)
        finally:
            target.close()
        details = {"hook": self.name, **found.details}
        return AuditResult(AuditOutcome.FOUND if found.found else AuditOutcome.CLEAN, found.summary, details)

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        problem = evidence_problem(ctx.verdict, self.max_offset_s)
        if problem is not None:
            return HookResult.skipped(problem, verdict=dict(ctx.verdict) if ctx.verdict else None)
        trusted = usable_now(ctx.trusted_now())
        if trusted is None:
            return HookResult.skipped("no repair: no trusted time (no usable verdict offset)")

        def now_fn() -> float:
            value = ctx.trusted_now()
            return trusted if value is None else value

        from timeguard.repair.undo import UndoLog

        try:
            target = self.target()
            try:
                if ctx.dry_run:
                    plan = target.plan(trusted)
                    return HookResult.skipped(f"dry run: would change {len(plan.changes)} timestamp(s) in "
                                              f"{target.where}{unreadable_note(plan.unreadable)}", **plan.to_dict())
                stopped = False
                if self.stop_command:
                    run_owner_command(self.stop_command, "stop_command")
                    stopped = True
                try:
                    outcome = target.apply(now_fn, undo_log=UndoLog(ctx.journal) if ctx.journal else None,
                                           incident_id=event.incident_id, cancelled=ctx.cancelled,
                                           owner_stopped=stopped)
                finally:
                    if stopped and self.start_command:
                        run_owner_command(self.start_command, "start_command")
            finally:
                target.close()
        except RepairError as exc:
            return HookResult.failed(str(exc))
        details = outcome.to_dict()
        details.pop("plan", None)
        details["changes"] = len(outcome.plan.changes)
        status, summary = target.outcome_summary(outcome)
        return getattr(HookResult, status)(summary, **details)


class CeleryBeatHook(RepairHook):
    """``type: celery_beat``: the repair hook bound to django-celery-beat (research/celery_beat.md)."""

    target_name = "celery_beat"
    OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {"database_url", "database_url_env", "database_url_file", "table_prefix", "schema", "use_tz", "tz_aware",
         "time_zone", "tolerance_s", "beat_max_interval_s", "wait_margin_s", "max_rounds", "max_offset_s",
         "lock_timeout_s", "stop_command", "start_command", "beat_service"})

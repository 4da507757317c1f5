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

``type: <target>`` is this hook bound to that target, for every target in ``timeguard.repair_targets``
(:meth:`RepairHook.family`): ``type: celery_beat`` (its owner's unit is ``beat_service``), or a plugin's
``type: example`` — the same as ``type: repair`` with ``target: example``.

Repair only with evidence (:mod:`timeguard.repair.evidence`): the hook writes only when the latest verdict is usable,
NTP and HTTPS agree, and the host clock now agrees with the sources within ``max_offset_s``; the repair's now is
``ctx.trusted_now()``. Otherwise the result is ``skipped`` and says why. A target that needs its owner stopped
(``needs_owner_stopped``) is refused at configuration time without a way to stop it.

A step can arrive before the evidence: the host boots with a wrong RTC, services start, then the NTP client steps
the clock — a few seconds after the daemon started, before every source class has answered. The rule is the same
then; only its moment moves: while the verdict is *pending* (none yet, or NTP and HTTPS not both answered) the hook
waits for it — at most its ``timeout_s``, looking every :data:`VERDICT_POLL_S` — and decides when it arrives,
rather than skipping until the next audit. A verdict that refuses (the clock is off, the sources disagree) is final
at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from timeguard.events import Event, EventKind
from timeguard.hooks.api import (
    DEFAULT_TIMEOUT_S,
    AuditOutcome,
    AuditResult,
    HookConfigError,
    HookContext,
    HookResult,
    convert_options,
    option,
)
from timeguard.repair.evidence import (
    DEFAULT_MAX_OFFSET_S,
    MAX_OFFSET_RANGE_S,
    evidence_problem,
    max_offset_problem,
    usable_now,
)
from timeguard.repair.target import (
    RepairError,
    RepairTarget,
    TargetKind,
    find_kind,
    kinds,
    run_owner_command,
    unreadable_note,
)

DEFAULT_ON = frozenset({EventKind.ROLLBACK, EventKind.ROLLBACK_WHILE_DOWN, EventKind.FUTURE_STATE_FOUND})
VERDICT_POLL_S = 0.1  # how often a hook waiting for its first usable verdict looks again
_ARGV_SCHEMA = {"type": "array", "minItems": 1, "items": {"type": "string"}}


@dataclass(frozen=True, slots=True)
class RepairOptions:
    """The repair hook's own options (besides ``target``, the owner's unit and the target's own options)."""

    max_offset_s: Any = option(DEFAULT_MAX_OFFSET_S, doc="the host clock must agree with the sources this closely "
                               "(seconds)", schema={"type": "number", "minimum": MAX_OFFSET_RANGE_S[0],
                                                    "maximum": MAX_OFFSET_RANGE_S[1]})
    stop_command: Any = option(None, doc="argv (no shell) that stops the target's owner; with start_command",
                               schema=_ARGV_SCHEMA)
    start_command: Any = option(None, doc="argv (no shell) that starts the target's owner again",
                                schema=_ARGV_SCHEMA)


@dataclass
class RepairHook:
    name: str
    kind: TargetKind
    max_offset_s: float
    stop_command: list[str] | None
    start_command: list[str] | None
    #: Set by the dispatcher from the hook's ``timeout_s``: the owner's stop and start each get this long.
    timeout_s: float = DEFAULT_TIMEOUT_S

    default_on: ClassVar[frozenset[EventKind]] = DEFAULT_ON
    Options: ClassVar[type[RepairOptions]] = RepairOptions
    target_name: ClassVar[str | None] = None  # set by a hook type bound to one target (celery_beat)

    @classmethod
    def family(cls) -> dict[str, tuple[type[RepairHook] | None, str | None]]:
        """A hook type per repair target, by the target's name (the hook registry lists them beside its entry
        points): ``type: <target>`` is this hook bound to it. Unusable targets are listed with the reason."""
        if cls.target_name is not None:
            return {}
        return {name: (bound_to(name), None) if entry.kind is not None else (None, entry.error)
                for name, entry in kinds().items()}

    @classmethod
    def options_schema(cls) -> dict[str, Any]:
        """The JSON Schema ``properties``/``required`` of this type's options (``config schema``): its own, the
        owner's unit, and the bound target's options (open for ``type: repair``, whose target is named in the
        file)."""
        from timeguard.config import options_schema

        schema = options_schema(RepairOptions)
        service = "service"
        if cls.target_name is None:
            schema["properties"]["target"] = {"type": "string", "description": "the repair target (an entry "
                                              "point in timeguard.repair_targets)"}
            schema["required"] = [*schema["required"], "target"]
            schema["additionalProperties"] = True  # the target's own options
        else:
            kind_type = find_kind(cls.target_name)
            service = kind_type.service_option
            typed = getattr(kind_type, "Options", None)  # a kind may declare its options as a dataclass of option()
            if typed is not None:
                schema["properties"].update(options_schema(typed)["properties"])
            for key in sorted(kind_type.options):
                schema["properties"].setdefault(key, {"description": f"an option of the {cls.target_name} target"})
        schema["properties"][service] = {"type": "string", "pattern": r"^[^-]", "description": "the systemd unit "
                                         "of the target's owner: stopped for the repair, started after"}
        return schema

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
        extra = sorted(kind_type.options | {kind_type.service_option} | own)
        _, problems = convert_options(RepairOptions, options, hook=cls.target_name or "repair", extra=extra)
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
        """The wait for a pending verdict (≤ ``timeout_s``) and then the repair itself."""
        return self.timeout_s + self.kind.max_run_s()

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

    def _evidence(self, ctx: HookContext) -> tuple[Mapping[str, Any] | None, str | None, float]:
        """The verdict to decide with, the evidence rule's objection to it (None: repair), and how long the hook
        waited for it: while the verdict is pending and ``ctx`` can give a newer one, it waits (module docstring)."""
        verdict = ctx.verdict
        problem = evidence_problem(verdict, self.max_offset_s)
        if problem is None or not verdict_pending(verdict) or ctx.current_verdict is None:
            return verdict, problem, 0.0
        started = time.monotonic()
        deadline = started + self.timeout_s
        while problem is not None and verdict_pending(verdict) and not ctx.cancelled():
            if time.monotonic() >= deadline:
                break
            time.sleep(VERDICT_POLL_S)
            verdict = ctx.current_verdict()
            problem = evidence_problem(verdict, self.max_offset_s)
        return verdict, problem, time.monotonic() - started

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        verdict, problem, waited = self._evidence(ctx)
        if problem is not None:
            if waited:
                problem += f" (waited {waited:.1f} s for the time sources)"
            return HookResult.skipped(problem, verdict=dict(verdict) if verdict else None)
        trusted = usable_now(ctx.trusted_now())
        if trusted is None:
            return HookResult.skipped("no repair: no trusted time (no usable verdict offset)")

        def now_fn() -> float:
            value = ctx.trusted_now()
            return trusted if value is None else value

        try:
            target = self.target()
            try:
                if ctx.dry_run:
                    plan = target.plan(trusted)
                    return HookResult.skipped(f"dry run: would change {plan.total} timestamp(s) in "
                                              f"{target.where}{unreadable_note(plan.unreadable)}", **plan.to_dict())
                stopped = False
                if self.stop_command:
                    run_owner_command(self.stop_command, "stop_command", timeout_s=self.timeout_s)
                    stopped = True
                try:
                    outcome = target.apply(now_fn, undo_log=ctx.undo_log,
                                           incident_id=event.incident_id, cancelled=ctx.cancelled,
                                           owner_stopped=stopped)
                finally:
                    if stopped and self.start_command:
                        run_owner_command(self.start_command, "start_command", timeout_s=self.timeout_s)
            finally:
                target.close()
        except RepairError as exc:
            return HookResult.failed(str(exc))
        details = outcome.to_dict()
        details.pop("plan", None)
        details["changes"] = outcome.plan.total  # the plan's first changes are listed in the CLI, not here
        if waited:
            details["waited_for_verdict_s"] = round(waited, 3)
        status, summary = target.outcome_summary(outcome)
        return getattr(HookResult, status)(summary, **details)


def verdict_pending(verdict: Mapping[str, Any] | None) -> bool:
    """The evidence is not in yet — no verdict, or NTP and HTTPS have not both answered — as opposed to a verdict
    that refuses. Waiting for it changes when the rule is applied, never the rule."""
    return verdict is None or verdict.get("ntp_http_agree") is None


class CeleryBeatHook(RepairHook):
    """``type: celery_beat``: the repair hook bound to django-celery-beat (research/celery_beat.md)."""

    target_name = "celery_beat"


_bound: dict[str, type[RepairHook]] = {"celery_beat": CeleryBeatHook}


def bound_to(target: str) -> type[RepairHook]:
    """The repair hook type bound to ``target`` (``type: <target>``), made once per target."""
    if target not in _bound:
        title = "".join(part.title() for part in target.replace("-", "_").split("_"))
        _bound[target] = type(f"{title}RepairHook", (RepairHook,), {
            "target_name": target, "__module__": __name__,
            "__doc__": f"``type: {target}``: the repair hook bound to the {target} repair target."})
    return _bound[target]

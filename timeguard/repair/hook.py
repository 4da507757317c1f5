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
        guard: alert               # or stop: while the host clock is ahead, stop the owner (timeguard.repair.guard)
        ...                        # the target's own options

``type: <target>`` is this hook bound to that target, for every target in ``timeguard.repair_targets``
(:meth:`RepairHook.family`): ``type: celery_beat`` (its owner's unit is ``beat_service``), or a plugin's
``type: example`` — the same as ``type: repair`` with ``target: example``.

Repair only with evidence (:mod:`timeguard.repair.evidence`): the hook writes only when the latest verdict is usable,
two independent witnesses vouch for it (one authenticated), and the host clock now agrees with the sources within
``max_offset_s``; the repair's now is ``ctx.trusted_now()``. Otherwise the result is ``skipped`` and says why. A
target that needs its owner stopped (``needs_owner_stopped``) is refused at configuration time without a way to stop
it.

A step can arrive before the evidence: the host boots with a wrong RTC, services start, then the NTP client steps
the clock — a few seconds after the daemon started, before every source class has answered. The rule is the same
then; only its moment moves: while the verdict is *pending* (none yet, or NTP and HTTPS not both answered) the hook
waits for it — at most its ``timeout_s``, looking every :data:`VERDICT_POLL_S` — and decides when it arrives,
rather than skipping until the next audit. A verdict that refuses (the clock is off, the sources disagree) is final
at once.

The forward-jump guard (``guard``, :mod:`timeguard.repair.guard`; the daemon's side is
:mod:`timeguard.daemon.guard`) stops the owner while the host is ahead (:meth:`RepairHook.guard_stop`) and sets
:attr:`RepairHook.guard_held`: the next repair — the guard's own once the clock is right, or a rollback's, whichever
comes first — then repairs with the owner already stopped and starts it. One lock per hook name serialises the
guard's stop/start and the repairs, across a reload's new hook objects too.
"""

from __future__ import annotations

import threading
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
from timeguard.repair.guard import DEFAULT_GUARD, GuardMode
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
    guard: Any = option(DEFAULT_GUARD.value, doc="while the host clock is proven ahead (it stamps the future): "
                        "alert (future_state_accruing), or stop the owner until the clock is right, then repair "
                        "and start it", schema={"type": "string", "enum": [m.value for m in GuardMode]})


@dataclass
class RepairHook:
    name: str
    kind: TargetKind
    max_offset_s: float
    stop_command: list[str] | None
    start_command: list[str] | None
    #: Set by the dispatcher from the hook's ``timeout_s``: the owner's stop and start each get this long.
    timeout_s: float = DEFAULT_TIMEOUT_S
    guard: GuardMode = DEFAULT_GUARD
    #: The guard stopped the owner (set by the daemon's guard, from its journal note): the next repair runs with
    #: the owner stopped and starts it, whatever the event.
    guard_held: bool = False

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
                own = options_schema(typed)
                schema["properties"].update(own["properties"])
                # the kind's required keys (celery_shelve's schedule_file and python): an editor flags them missing
                schema["required"] = [*schema["required"], *(k for k in own["required"]
                                                              if k not in schema["required"])]
            if kind_type.needs_owner_stopped:  # refused without a way to stop the owner (from_config below)
                schema["anyOf"] = [{"required": [kind_type.service_option]},
                                   {"required": ["stop_command", "start_command"]}]
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
        guard = options.get("guard", DEFAULT_GUARD.value)
        if guard not in set(GuardMode):
            problems.append(("guard", f"must be one of {', '.join(m.value for m in GuardMode)}, not {guard!r}"))
        elif guard == GuardMode.STOP and commands["stop_command"] is None and not problems:
            problems.append(("guard", f"guard: stop stops the scheduler while the host clock is ahead, so it needs "
                             f"a way to stop and start it: give {service_key} (a systemd unit) or stop_command "
                             "and start_command"))
        if kind_type.needs_owner_stopped and commands["stop_command"] is None and not problems:
            problems.append((service_key, f"the {kind_type.name} target is repaired only with its owner stopped: "
                             f"give {service_key} (a systemd unit) or stop_command and start_command"))
        if problems:
            raise HookConfigError(problems)
        assert kind is not None
        if validate is not None:
            kind = kind_type.from_options(kind_options)  # the checks that need valid options (URL, time zone)
        return cls(name=name, kind=kind, max_offset_s=max_offset, stop_command=commands["stop_command"],
                   start_command=commands["start_command"], guard=GuardMode(guard))

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

    @property
    def owner_lock(self) -> threading.Lock:
        """Serialises the owner's stop/start and the repairs of this hook name (kept across reloads)."""
        with _owner_locks_lock:
            return _owner_locks.setdefault(self.name, threading.Lock())

    def guard_stop(self) -> None:
        """Stop the owner for the guard (RepairError when the command fails); the next repair starts it."""
        assert self.stop_command is not None, "guard: stop is refused at configuration time without a stop"
        with self.owner_lock:
            self.guard_held = True
            run_owner_command(self.stop_command, "stop_command", timeout_s=self.timeout_s)

    def guard_release(self) -> None:
        """Start the owner the guard stopped, unrepaired (the hook no longer stops it; RepairError on failure)."""
        with self.owner_lock:
            if self.guard_held and self.start_command:
                run_owner_command(self.start_command, "start_command", timeout_s=self.timeout_s)
            self.guard_held = False

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        with self.owner_lock:
            return self._handle(event, ctx)

    def _handle(self, event: Event, ctx: HookContext) -> HookResult:
        held = self.guard_held and not ctx.dry_run
        if event.detail.get("guard_action") == "restore" and not held:
            return HookResult.ok("the scheduler the guard stopped was already repaired and started by an earlier "
                                 "repair run")
        verdict, problem, waited = self._evidence(ctx)
        if problem is not None:
            if waited:
                problem += f" (waited {waited:.1f} s for the time sources)"
            if held:
                problem += "; the guard keeps the scheduler stopped until the clock is right"
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
                stopped = held
                if self.stop_command and not held:
                    run_owner_command(self.stop_command, "stop_command", timeout_s=self.timeout_s)
                    stopped = True
                try:
                    outcome = target.apply(now_fn, undo_log=ctx.undo_log,
                                           incident_id=event.incident_id, cancelled=ctx.cancelled,
                                           owner_stopped=stopped)
                finally:
                    # The clock is right (the evidence held): a scheduler the guard stopped starts even when the
                    # repair failed — it no longer stamps the future, and the audit retries the repair.
                    if stopped and self.start_command:
                        run_owner_command(self.start_command, "start_command", timeout_s=self.timeout_s)
                        self.guard_held = False
            finally:
                target.close()
        except RepairError as exc:
            return HookResult.failed(str(exc))
        details = outcome.to_dict()
        details.pop("plan", None)
        details["changes"] = outcome.plan.total  # the plan's first changes are listed in the CLI, not here
        if waited:
            details["waited_for_verdict_s"] = round(waited, 3)
        if held:
            details["guard"] = "started the scheduler the guard had stopped"
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
_owner_locks: dict[str, threading.Lock] = {}
_owner_locks_lock = threading.Lock()


def bound_to(target: str) -> type[RepairHook]:
    """The repair hook type bound to ``target`` (``type: <target>``), made once per target."""
    if target not in _bound:
        title = "".join(part.title() for part in target.replace("-", "_").split("_"))
        _bound[target] = type(f"{title}RepairHook", (RepairHook,), {
            "target_name": target, "__module__": __name__,
            "__doc__": f"``type: {target}``: the repair hook bound to the {target} repair target."})
    return _bound[target]

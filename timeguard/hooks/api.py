"""The hook contract: what every hook — built-in or third-party — implements and receives.

A hook *type* is a class registered under the entry-point group ``timeguard.hooks`` (the built-ins are
registered the same way, in timeguard's own pyproject). The daemon builds one instance per configured hook
with :meth:`HookType.from_config`, then calls :meth:`Hook.handle` for every event whose kind the hook wants,
in its own thread, under its own timeout. A hook never raises into timeguard: an exception becomes a FAILED
result, recorded in the journal like every run.

Hook configuration (one item of the ``hooks:`` list)::

    - type: webhook            # the entry-point name
      name: ops-webhook        # unique; shown in logs, the journal, `timeguard hooks list`
      on: [rollback, rollback_while_down, sources_inconsistent]
      timeout_s: 10            # per run (default 10)
      dry_run: false           # the hook says what it would do, and does nothing
      ...                      # the type's own options, validated by its from_config()

A type declares its own options as a dataclass, ``Options`` (fields made with :func:`option`: a default, bounds,
choices, a one-line ``doc``, ``secret=True``), and checks them in ``from_config`` with
``opts, problems = convert_options(cls.Options, options, hook="mytype")`` — the converter the rest of the
configuration goes through (types, ranges, "did you mean"), so ``config validate`` gives every error with its path
and line and ``timeguard config schema`` describes the type's options for editors. A type without ``Options``
(written before it) still works: its ``from_config`` checks its options alone, and the schema leaves them open.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

# HookStatus and HookRun are values the journal stores too, so they are defined below the plugin API, in events;
# this module is where plugins import them from (the contract names them).
# Options every hook has (handled by timeguard), and the converter a type's own typed options go through.
from timeguard.config import COMMON_OPTIONS, DEFAULT_TIMEOUT_S, convert_options, option
from timeguard.events import Event, EventKind, HookRun, HookStatus

__all__ = [
    "ALL_REAL_KINDS", "API_VERSION", "COMMON_OPTIONS", "DEFAULT_TIMEOUT_S", "AuditOutcome", "AuditResult", "Auditor",
    "Deliverer", "Delivery", "DeliveryResult", "Hook", "HookConfigError", "HookContext", "HookResult", "HookRun",
    "HookStatus", "HookType", "IncidentHistory", "UndoRecords", "convert_options", "option",
]

#: Increment when Hook/HookType/HookContext change incompatibly; a plugin may check it.
#: 2: HookContext.journal is gone; a hook gets ``history`` (an incident's events, who was alerted) and
#: ``undo_log`` (a repair's undo records), the narrow interfaces of what it used the journal for.
API_VERSION = 2



@dataclass(frozen=True, slots=True)
class HookResult:
    status: HookStatus
    summary: str  # one line a person reads
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable
    output: str = ""  # captured output (command hooks), truncated by the dispatcher

    @classmethod
    def ok(cls, summary: str, **details: Any) -> HookResult:
        return cls(HookStatus.OK, summary, details)

    @classmethod
    def skipped(cls, summary: str, **details: Any) -> HookResult:
        return cls(HookStatus.SKIPPED, summary, details)

    @classmethod
    def failed(cls, summary: str, **details: Any) -> HookResult:
        return cls(HookStatus.FAILED, summary, details)

    @classmethod
    def changed(cls, summary: str, **details: Any) -> HookResult:
        return cls(HookStatus.CHANGED, summary, details)


class IncidentHistory(Protocol):
    """What a hook may ask of the daemon's records about an incident (the journal behind them stays timeguard's)."""

    def incident_events(self, incident_id: str) -> list[Event]:
        """The incident's events, oldest first."""
        ...

    def alerted(self, hook: str, incident_id: str) -> bool:
        """Did ``hook`` queue anything for this incident (a ``recovered`` is only news to those who heard the
        alarm)?"""
        ...


class UndoRecords(Protocol):
    """Where a repair writes the values it replaces before it writes, and reads them back to undo
    (:class:`timeguard.repair.undo.UndoLog`; ``records`` are (item, name, field, old, new) tuples)."""

    def record(self, target: str, incident_id: str, repair_id: str, fingerprint: str,
               records: Iterable[tuple[Any, ...]], *, applied_wall_s: float, applied_mono_s: float) -> None: ...

    def records(self, incident_id: str, *, target: str | None = None, fingerprint: str | None = None,
                undone: bool | None = None) -> list[dict[str, Any]]: ...

    def mark_undone(self, incident_id: str, keys: Iterable[tuple[Any, ...]]) -> None: ...


@dataclass(frozen=True, slots=True)
class HookContext:
    """What a run gets besides the event."""

    dry_run: bool
    #: The trusted time now (host clock + the latest consensus offset), or None without a verdict. Use it,
    #: not time.time(), for anything a receiver checks against real time (webhook signatures).
    trusted_now: Callable[[], float | None]
    #: The latest verdict summary (status, offset_s, offset_lo_s, offset_hi_s, ntp_http_agree, summary,
    #: agreeing_classes, witnesses: model.verdict_summary).
    verdict: Mapping[str, Any] | None
    hostname: str
    #: Set when the run has timed out or the daemon stops: long-running hooks should check it and return.
    cancelled: Callable[[], bool] = lambda: False
    #: Queue a message for at-least-once delivery by the outbox: ``enqueue(hook_name, event, payload)`` returns
    #: the delivery id (stable across retries: the receiver's idempotency key). None where there is no outbox.
    enqueue: Callable[[str, Event, Mapping[str, Any]], str] | None = None
    #: The incident's earlier events and who was alerted; None outside the daemon (``hooks test`` without a journal).
    history: IncidentHistory | None = None
    #: Where a repair records what it replaces (undo); None where nothing can be recorded.
    undo_log: UndoRecords | None = None
    #: The verdict summary *now* (``verdict`` is the one when the run started): a hook that needs evidence which
    #: has not arrived yet (a step right after start-up) can wait for it. None where nothing forms verdicts.
    current_verdict: Callable[[], Mapping[str, Any] | None] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One queued outbox message."""

    id: str  # stable across retries and restarts: webhook-id / idempotency key
    hook: str
    incident_id: str
    event_id: str
    payload: Mapping[str, Any]
    attempts: int  # delivery attempts made before this one


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    ok: bool
    error: str = ""
    retry_after_s: float | None = None  # the receiver asked us to wait (429/503 Retry-After)
    permanent: bool = False  # retrying cannot help (400, 401, 404, 410): dead-letter at once


@runtime_checkable
class Deliverer(Protocol):
    """A hook whose messages go through the outbox implements this too (webhook, slack)."""

    name: str

    def deliver(self, delivery: Delivery, *, trusted_now: Callable[[], float | None]) -> DeliveryResult: ...


class HookConfigError(Exception):
    """Invalid options for one hook. ``problems`` are (key, message) pairs, the key relative to the hook's
    mapping (e.g. ``"url"``, ``"headers.Authorization"``), so config validate can give path and line."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in problems))


@runtime_checkable
class Hook(Protocol):
    name: str

    def handle(self, event: Event, ctx: HookContext) -> HookResult: ...


class AuditOutcome(enum.StrEnum):
    CLEAN = "clean"  # looked, found nothing wrong
    FOUND = "found"  # found state written under a wrong clock: the agent raises future_state_found
    SKIPPED = "skipped"  # did not look (e.g. the clock is not trusted now): says why; the agent retries soon


@dataclass(frozen=True, slots=True)
class AuditResult:
    outcome: AuditOutcome
    summary: str  # one line a person reads
    details: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable; goes into the event's detail


@runtime_checkable
class Auditor(Protocol):
    """A hook that can also look for damage on its own, without an event: at start-up and on a schedule the
    daemon calls :meth:`audit` (in the scheduler's thread, never while the hook has a run queued or running);
    FOUND becomes a ``future_state_found`` event, which the hook then handles like any other. This is how a
    repair that was skipped or failed is retried, and how damage done before timeguard ran is found.
    An exception is an audit error: logged, shown by ``timeguard status``, retried with back-off."""

    name: str

    def audit(self, ctx: HookContext) -> AuditResult: ...


class HookType(Protocol):
    """What an entry point in the group ``timeguard.hooks`` must point at (usually a class)."""

    #: Default event kinds when the config gives no ``on:`` (the built-in alerts: every non-test kind).
    default_on: ClassVar[frozenset[EventKind]]
    # Optional (so not declared here, a Protocol would demand it): ``Options``, the type's own options as a
    # dataclass of option() fields (see the module documentation).

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> Hook:
        """Build a hook from its own options (``COMMON_OPTIONS`` removed); raise HookConfigError listing
        every problem. Must not do I/O beyond reading files the options name (secrets, CA bundles)."""
        ...


ALL_REAL_KINDS = frozenset(k for k in EventKind if k is not EventKind.TEST)

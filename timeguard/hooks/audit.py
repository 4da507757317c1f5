"""The audit scheduler: when each auditing hook (:class:`timeguard.hooks.api.Auditor`) is looked at.

Research: the operator who installs timeguard *after* the damage finds nothing in the event stream; only an
audit of the state a wrong clock poisoned shows it. So every auditing hook is audited once every source class
has answered after start-up (until then no verdict can trust the clock), then every ``daemon.audit_interval_s``.
An audit that fails, is skipped (clock not trusted) or finds something is retried after ``audit_retry_s``,
doubling up to the interval; a repair run that fails or is skipped brings its audit forward to that back-off.

Findings become ``future_state_found`` events: the first of an incident goes to every hook that wants it (alerts,
repairs), a repeated one only to the hook whose audit found it (a retry of the repair, not another alert); a
clean audit closes the incident. The last audit of each hook is kept in the journal (``audit:NAME``) for
``timeguard status``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from timeguard.events import Event, EventKind, new_id
from timeguard.hooks.api import HookRun, HookStatus
from timeguard.store.journal import AuditNote, JournalError
from timeguard.watch.clockwatch import ClockReading

if TYPE_CHECKING:
    from timeguard.hooks.dispatch import Dispatcher
    from timeguard.store.journal import Journal


@dataclasses.dataclass(slots=True)
class AuditState:
    """When one auditing hook is next looked at, and the future_state_found incident it has open."""

    next_due_s: float  # monotonic
    backoff_s: float  # the next retry delay after a failure, a skip or a finding
    incident: str | None = None  # open while audits keep finding: one incident, one alert
    found: int = 0  # findings in the open incident


class AuditScheduler:
    """Thread-safe: ticked by a scheduler thread, told of hook runs by the hooks' worker threads."""

    def __init__(self, *, retry_s: float, interval_s: float, clock: Callable[[], ClockReading], boot_id: str,
                 trusted_now: Callable[[], float | None], verdict: Callable[[], Mapping[str, Any] | None],
                 record: Callable[[Event, str | None], None], journal: Journal,
                 journal_failed: Callable[[JournalError, str], None], log: Any) -> None:
        self.retry_s, self.interval_s = retry_s, interval_s  # reloadable
        self._clock, self._boot_id, self._log = clock, boot_id, log
        self._trusted_now, self._verdict = trusted_now, verdict
        self._record, self._journal, self._journal_failed = record, journal, journal_failed
        self._lock = threading.Lock()
        self.states: dict[str, AuditState] = {}
        self.future_state_found: dict[tuple[str, str], int] = {}  # (hook, target) → audit findings (metrics)

    def configure(self, auditors: list[str]) -> None:
        """The auditing hooks now (start-up, reload): a new one is due at once, one kept keeps its state."""
        with self._lock:
            due = self._clock().monotonic_s
            self.states = {n: self.states.get(n) or AuditState(due, self.retry_s) for n in auditors}

    def tick(self, dispatcher: Dispatcher, *, sources_answered: bool) -> None:
        """Audit every hook that is due, in the calling thread; nothing before ``sources_answered``."""
        if not sources_answered:
            return
        for name in dispatcher.auditors():
            with self._lock:
                state = self.states.get(name)
            if state is None or self._clock().monotonic_s < state.next_due_s or dispatcher.busy(name):
                continue  # a run queued or in progress: look once it is over
            try:
                result = dispatcher.audit(name)
            except Exception as exc:  # noqa: BLE001 - an audit error is logged and retried, never fatal
                self._done(name, state, "error", str(exc) or type(exc).__name__, {})
                continue
            self._done(name, state, result.outcome.value, result.summary, dict(result.details))

    def hook_ran(self, run: HookRun) -> None:
        """A repair that failed or was skipped (database down, clock not trusted yet) is retried by an audit
        after the back-off rather than at the next regular audit."""
        if run.dry_run or run.test or run.status not in (HookStatus.FAILED, HookStatus.SKIPPED):
            return
        with self._lock:
            state = self.states.get(run.hook)
            if state is not None:
                state.next_due_s = min(state.next_due_s, self._clock().monotonic_s + state.backoff_s)

    def _done(self, name: str, state: AuditState, outcome: str, summary: str, details: dict[str, Any]) -> None:
        now = self._clock()
        event: Event | None = None
        first = False
        with self._lock:
            if outcome == "clean":
                state.incident, state.found, state.backoff_s = None, 0, self.retry_s
                delay = self.interval_s
            else:
                delay = state.backoff_s
                state.backoff_s = min(state.backoff_s * 2, self.interval_s)
            if outcome == "found":
                key = (name, str(details.get("target") or details.get("database") or ""))
                self.future_state_found[key] = self.future_state_found.get(key, 0) + 1
                state.found += 1
                first = state.found == 1
                state.incident = state.incident or new_id()
                event = Event(kind=EventKind.FUTURE_STATE_FOUND, incident_id=state.incident,
                              wall_time_s=now.realtime_s, monotonic_s=now.monotonic_s, boot_id=self._boot_id,
                              trusted_time_s=self._trusted_now(), verdict=self._verdict(),
                              detail={**details, "hook": name, "summary": summary, "finding": state.found})
            state.next_due_s = now.monotonic_s + delay
        log = self._log.warning if outcome in ("found", "error") else self._log.info
        log("audit", hook=name, outcome=outcome, summary=summary, next_in_s=round(delay, 1))
        try:
            self._journal.set_audit(name, AuditNote(wall_s=now.realtime_s, outcome=outcome, summary=summary,
                                                    next_in_s=delay))
        except JournalError as exc:
            self._journal_failed(exc, "audit")
        if event is not None:
            self._record(event, None if first else name)

"""Run hooks in isolation: each hook has its own queue and worker, each run its own thread and timeout.

A hook that raises is a FAILED run; one that hangs is abandoned at its timeout (FAILED, "timed out") and
its worker moves on — the thread cannot be killed, so while it is still stuck the hook's later runs are
recorded as FAILED "not run: a previous run is still stuck" rather than piling up threads. Detection and the
other hooks never wait for any of it. Every run (hook, event, incident, result, duration, output) goes to the
dispatcher's :class:`HookRunRecorder` — in the daemon, the journal.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from timeguard.config import HookSpec
from timeguard.events import Event, EventKind
from timeguard.hooks.api import (
    ALL_REAL_KINDS,
    Auditor,
    AuditResult,
    Hook,
    HookContext,
    HookResult,
    HookRun,
    HookStatus,
    IncidentHistory,
    UndoRecords,
)
from timeguard.hooks.registry import UnknownHookType, find_type
from timeguard.store.journal import JournalError

MAX_OUTPUT = 64 * 1024


class HookRunRecorder(Protocol):
    """Where the dispatcher records every run: all it needs of the journal (:meth:`Journal.record_hook_run`)."""

    def record_hook_run(self, run: HookRun) -> None:
        """Keep ``run``; raise JournalError when it cannot be written (the dispatcher logs it and goes on)."""


@dataclass
class ConfiguredHook:
    spec: HookSpec
    hook: Hook | None
    kinds: frozenset[EventKind]
    error: str | None = None  # why it cannot run (its type failed to load or rejected its options)
    stuck_since: float | None = None  # monotonic time a run timed out and is still running
    stuck_event: str | None = None
    pending: int = 0  # runs queued or running
    _queue: queue.Queue[tuple[Event, threading.Event] | None] = field(default_factory=queue.Queue)
    _worker: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def wants(self, event: Event) -> bool:
        return event.kind in self.kinds or (event.test and event.kind is EventKind.TEST)


def build(spec: HookSpec) -> ConfiguredHook:
    """Instantiate one configured hook; failure is recorded on it, never raised (config validation already ran,
    but a plugin may behave differently at run time)."""
    # An unusable hook still "wants" its events, so every one it misses is recorded as a failed run.
    wanted = frozenset(EventKind(k) for k in spec.on) if spec.on is not None else ALL_REAL_KINDS
    try:
        hook_type = find_type(spec.type)
        hook = hook_type.from_config(spec.name, spec.options)
        default_on = getattr(hook_type, "default_on", frozenset())
    except UnknownHookType as exc:
        return ConfiguredHook(spec, None, wanted, error=str(exc))
    except Exception as exc:  # noqa: BLE001 — a plugin's bug makes that hook unusable, nothing else
        return ConfiguredHook(spec, None, wanted, error=f"{type(exc).__name__}: {exc}")
    if hasattr(hook, "timeout_s"):
        hook.timeout_s = spec.timeout_s  # hooks that run children enforce the timeout on them too
    kinds = frozenset(EventKind(k) for k in spec.on) if spec.on is not None else frozenset(default_on)
    return ConfiguredHook(spec, hook, kinds)


class Dispatcher:
    def __init__(
        self,
        specs: Sequence[HookSpec],
        *,
        recorder: HookRunRecorder | None = None,
        history: IncidentHistory | None = None,
        undo_log: UndoRecords | None = None,
        trusted_now: Callable[[], float | None],
        verdict: Callable[[], Mapping[str, Any] | None],
        hostname: str,
        enqueue: Callable[[str, Event, Mapping[str, Any]], str] | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
        on_run: Callable[[HookRun], None] | None = None,
    ) -> None:
        self.hooks = [build(spec) for spec in specs]
        self._on_run = on_run
        self._history, self._undo_log = history, undo_log  # handed to the hooks (HookContext)
        self._recorder = recorder
        self._trusted_now = trusted_now
        self._verdict = verdict
        self._hostname = hostname
        self._enqueue = enqueue
        self._log = log
        self._clock = clock
        self._stopping = threading.Event()
        self._pending_lock = threading.Lock()
        for hook in self.hooks:
            if hook.error and log is not None:
                log.error("hook_unusable", hook=hook.name, type=hook.spec.type, error=hook.error)

    # ------------------------------------------------------------------------------------------- public

    def dispatch(self, event: Event, *, only: str | None = None) -> list[threading.Event]:
        """Queue ``event`` for every hook that wants it (``only``: just that hook, if it wants it); returns one
        "done" flag per queued run (for tests)."""
        done_flags = []
        for hook in self.hooks:
            if hook.wants(event) and (only is None or hook.name == only):
                done = threading.Event()
                self._start_worker(hook)
                with self._pending_lock:
                    hook.pending += 1
                hook._queue.put((event, done))
                done_flags.append(done)
        return done_flags

    def auditors(self) -> list[str]:
        """Names of the usable hooks that can audit on their own (:class:`Auditor`)."""
        return [h.name for h in self.hooks if h.hook is not None and isinstance(h.hook, Auditor)]

    def busy(self, name: str) -> bool:
        """True while the hook has a run queued or running, or is stuck."""
        hook = self._named(name)
        return hook.pending > 0 or hook.stuck_since is not None

    def audit(self, name: str) -> AuditResult:
        """Run one hook's audit in the calling thread (the agent's scheduler); its exceptions propagate."""
        hook = self._named(name)
        assert hook.hook is not None and isinstance(hook.hook, Auditor)
        return hook.hook.audit(self._context(hook.spec.dry_run, self._stopping.is_set))

    def run_now(self, name: str, event: Event, *, dry_run: bool | None = None) -> HookRun:
        """Run one hook for one event and wait for it (``timeguard hooks test``); still isolated and timed."""
        return self._run(self._named(name), event, dry_run)

    def _named(self, name: str) -> ConfiguredHook:
        hook = next((h for h in self.hooks if h.name == name), None)
        if hook is None:
            known = ", ".join(h.name for h in self.hooks) or "none configured"
            raise KeyError(f"no hook named {name!r} (configured: {known})")
        return hook

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stopping.set()
        for hook in self.hooks:
            if hook._worker is not None:
                hook._queue.put(None)
        deadline = self._clock() + timeout_s
        for hook in self.hooks:
            if hook._worker is not None:
                hook._worker.join(max(deadline - self._clock(), 0))

    # ---------------------------------------------------------------------------------------- internals

    def _start_worker(self, hook: ConfiguredHook) -> None:
        if hook._worker is None or not hook._worker.is_alive():
            hook._worker = threading.Thread(target=self._work, args=(hook,), name=f"hook:{hook.name}", daemon=True)
            hook._worker.start()

    def _work(self, hook: ConfiguredHook) -> None:
        while True:
            item = hook._queue.get()
            if item is None:
                return
            event, done = item
            try:
                self._run(hook, event, None)
            finally:
                with self._pending_lock:
                    hook.pending -= 1
                done.set()

    def _run(self, hook: ConfiguredHook, event: Event, dry_run: bool | None) -> HookRun:
        started_wall, started = time.time(), self._clock()
        dry = hook.spec.dry_run if dry_run is None else dry_run
        if hook.hook is None:
            result = HookResult.failed(f"hook unusable: {hook.error}")
        elif hook.stuck_since is not None:
            result = HookResult.failed(
                f"not run: its run for event {hook.stuck_event} is still stuck after "
                f"{self._clock() - hook.stuck_since:.0f} s (it ignored its {hook.spec.timeout_s:g} s timeout)")
        else:
            result = self._run_isolated(hook, event, dry)
        run = HookRun(
            hook=hook.name, hook_type=hook.spec.type, event_id=event.id, incident_id=event.incident_id,
            event_kind=event.kind.value, status=result.status, summary=result.summary,
            details=dict(result.details), output=_truncate(result.output), duration_s=self._clock() - started,
            dry_run=dry, test=event.test, wall_s=started_wall, monotonic_s=started,
        )
        self._record(run)
        return run

    def _run_isolated(self, hook: ConfiguredHook, event: Event, dry_run: bool) -> HookResult:
        assert hook.hook is not None
        cancelled = threading.Event()
        # A test event (`timeguard hooks test`) is judged on the verdict at hand: nothing forms new ones there.
        ctx = self._context(dry_run, lambda: cancelled.is_set() or self._stopping.is_set(), live=not event.test)
        box: list[HookResult] = []

        def call() -> None:
            try:
                result = hook.hook.handle(event, ctx)  # type: ignore[union-attr]
                if not isinstance(result, HookResult):
                    result = HookResult.failed(f"hook returned {type(result).__name__}, not a HookResult")
            except Exception as exc:  # noqa: BLE001 — a hook's exception is its failure, never ours
                result = HookResult.failed(f"raised {type(exc).__name__}: {exc}")
            box.append(result)
            if cancelled.is_set():  # it finished after all: the hook is usable again
                hook.stuck_since = None
                hook.stuck_event = None

        runner = threading.Thread(target=call, name=f"hook-run:{hook.name}", daemon=True)
        runner.start()
        # A hook that enforces the timeout on children itself (command: SIGTERM, grace, SIGKILL) says how long
        # that takes at most, so its own account of the kill is recorded rather than "abandoned".
        runner.join(getattr(hook.hook, "max_run_s", hook.spec.timeout_s))
        if box:
            return box[0]
        cancelled.set()
        if runner.is_alive():
            hook.stuck_since = self._clock()
            hook.stuck_event = event.id
        return HookResult(HookStatus.FAILED, f"timed out after {hook.spec.timeout_s:g} s (abandoned)")

    def _context(self, dry_run: bool, cancelled: Callable[[], bool], *, live: bool = True) -> HookContext:
        return HookContext(dry_run=dry_run, trusted_now=self._trusted_now, verdict=self._verdict(),
                           hostname=self._hostname, cancelled=cancelled, enqueue=self._enqueue,
                           history=self._history, undo_log=self._undo_log,
                           current_verdict=self._verdict if live else None)

    def _record(self, run: HookRun) -> None:
        if self._on_run is not None:
            try:
                self._on_run(run)
            except Exception:  # noqa: BLE001 - the listener's bug must not lose the record
                if self._log is not None:
                    self._log.exception("hook_run_listener_failed", hook=run.hook)
        log = self._log
        if log is not None:
            level = log.warning if run.status is HookStatus.FAILED else log.info
            level("hook_run", hook=run.hook, kind=run.event_kind, incident=run.incident_id, status=run.status.value,
                  summary=run.summary, duration_s=round(run.duration_s, 3), dry_run=run.dry_run, test=run.test)
        if self._recorder is None:
            return
        try:
            self._recorder.record_hook_run(run)
        except JournalError as exc:
            if log is not None:
                log.error("journal_write_failed", error=str(exc), what="hook run")


def _truncate(output: str) -> str:
    if len(output) <= MAX_OUTPUT:
        return output
    return output[:MAX_OUTPUT] + f"\n[… {len(output) - MAX_OUTPUT} more characters cut]"

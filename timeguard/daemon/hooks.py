"""The hooks' side of the daemon: the dispatcher that runs the configured hooks, the outbox that delivers their
alerts at least once (including what a previous run left pending), the audit scheduler (timeguard/hooks/audit.py),
the forward-jump guard (timeguard/daemon/guard.py) and the failed runs counted for the metrics. A reload swaps the
dispatcher; the outbox, the audits' and the guard's state stay.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from timeguard.config import Config
from timeguard.daemon.recorder import Recorder
from timeguard.hooks.api import HookRun, HookStatus
from timeguard.hooks.audit import AuditScheduler
from timeguard.hooks.dispatch import Dispatcher
from timeguard.watch.clockwatch import ClockReading


class HookRuntime:
    def __init__(self, cfg: Config, recorder: Recorder, *, clock: Callable[[], ClockReading],
                 trusted_now: Callable[[], float | None], verdict: Callable[[], Mapping[str, Any] | None],
                 log: Any) -> None:
        from timeguard.hooks.outbox import Outbox

        self._recorder, self._trusted_now, self._verdict, self._log = recorder, trusted_now, verdict, log
        self.outbox = Outbox(recorder.journal, {}, trusted_now=trusted_now, epoch=recorder.boot_id, log=log)
        self.outbox.start()
        self.audits = AuditScheduler(retry_s=cfg.daemon.audit_retry_s, interval_s=cfg.daemon.audit_interval_s,
                                     clock=clock, boot_id=recorder.boot_id, trusted_now=trusted_now, verdict=verdict,
                                     record=recorder.event, journal=recorder.journal,
                                     journal_failed=recorder.failed, log=log)
        from timeguard.daemon.guard import GuardRunner

        self.guard = GuardRunner(recorder, clock=clock, trusted_now=trusted_now, verdict=verdict, log=log)
        self.dispatcher: Dispatcher | None = None
        self.failures: dict[tuple[str, str], int] = {}  # (hook, type) → failed runs (metrics)
        self._lock = threading.Lock()
        self.install(self.make_dispatcher(cfg))
        recorder.on_change = self.guard.poke
        self.guard.start()

    def make_dispatcher(self, cfg: Config) -> Dispatcher:
        """The hooks of ``cfg``, ready to run (a reload's worker makes them: importing a plugin may fail)."""
        from timeguard.hooks.outbox import JournalHistory
        from timeguard.repair.undo import UndoLog

        journal = self._recorder.journal
        return Dispatcher(cfg.hooks, recorder=journal, history=JournalHistory(journal), undo_log=UndoLog(journal),
                          trusted_now=self._trusted_now,
                          verdict=self._verdict, hostname=socket.gethostname(), log=self._log,
                          enqueue=self.outbox.enqueue, on_run=self.after_run)

    def install(self, dispatcher: Dispatcher) -> None:
        """Run ``dispatcher``'s hooks from now on; the one it replaces finishes its runs in flight (up to 2 s) in
        a thread of its own."""
        from timeguard.hooks.outbox import deliverers_from

        old, self.dispatcher = self.dispatcher, dispatcher
        self._recorder.dispatcher = dispatcher
        self.outbox.set_deliverers(deliverers_from(h.hook for h in dispatcher.hooks))
        self.audits.configure(dispatcher.auditors())
        self.guard.configure(dispatcher)
        if old is not None:
            threading.Thread(target=old.stop, name="stop-old-hooks", daemon=True).start()

    def audit_tick(self, *, sources_answered: bool) -> None:
        if self.dispatcher is not None:
            self.audits.tick(self.dispatcher, sources_answered=sources_answered)

    def after_run(self, run: HookRun) -> None:
        """Failures are counted for the metrics (not a test run's); a failed or skipped repair brings its audit
        forward."""
        if run.status is HookStatus.FAILED and not run.test:
            with self._lock:
                key = (run.hook, run.hook_type)
                self.failures[key] = self.failures.get(key, 0) + 1
        self.audits.hook_ran(run)

    def stop(self, *, outbox: bool = False) -> None:
        self.guard.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if outbox:
            abandoned = self.outbox.stop()
            if abandoned:
                self._log.info("outbox_stopped", abandoned_sends=abandoned, note="re-sent with the same id at start")

"""The daemon, ``timeguard run``: the orchestrator that builds DESIGN.md's flow and keeps it running.

    sources ─ measure/check.py ─→ measure/tracking.py (latest samples, poll policy, verdict) ─┐
    kernel clocks ─ watch/clockwatch.py (steps) ──────────────────────────────────────────────┴→ watch/detector.py
    → events → daemon/recorder.py (journal first) → hooks (daemon/hooks.py: dispatcher, outbox, audits)

Threads: the main thread runs the step detection loop (timerfd + REALTIME−BOOTTIME polling), persists the floor
and the heartbeat, pings the systemd watchdog and acts on signals (daemon/signals.py) — it never waits on the
network. APScheduler's threads (daemon/jobs.py) run the NTP and HTTP rounds, the audits and the journal's upkeep;
every step re-arms them. One lock guards the tracker and the detector, which are not thread-safe themselves.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from timeguard import __version__, logs
from timeguard.config import Config
from timeguard.daemon import memory, ntskeys
from timeguard.daemon.hooks import HookRuntime
from timeguard.daemon.metrics_feed import MetricsFeed
from timeguard.daemon.recorder import Recorder
from timeguard.daemon.reload import Prepared, Refused, Reloader
from timeguard.daemon.signals import SignalInbox
from timeguard.events import EventKind
from timeguard.hooks.dispatch import Dispatcher
from timeguard.measure.check import Probe, measure_all, probes
from timeguard.measure.tracking import Tracker, poll_interval_s
from timeguard.model import SourceKind, Verdict, verdict_summary
from timeguard.sdnotify import Notifier
from timeguard.store.journal import DaemonInfo, JournalError
from timeguard.timefmt import iso as _iso
from timeguard.watch.clockwatch import ClockReading, ClockStep, StepDetector, read_boot_id, read_clocks
from timeguard.watch.detector import Detector, leap_announced
from timeguard.watch.localclock import read_kernel_clock

if TYPE_CHECKING:
    from timeguard.metrics import MetricsSource

HEARTBEAT_S = 10.0  # how often `timeguard status` can see the daemon is alive
POLL_SLACK_S = 2.0  # a scheduled job waits this long at most for a source's next allowed poll
AUDIT_TICK_S = 5.0  # how often the audit job looks whether an auditing hook is due
PRUNE_INTERVAL_S = 3600.0  # how often the journal's retention runs


class Agent:
    """Builds the parts of the flow, runs the detection loop and hands each input to the part that decides."""

    def __init__(self, cfg: Config, *, config_path: Path | None = None,
                 reader: Callable[[], ClockReading] = read_clocks,
                 probe_factory: Callable[[Config], list[Probe]] = probes, notifier: Notifier | None = None) -> None:
        self.cfg, self.config_path = cfg, config_path
        self._reader, self._probe_factory = reader, probe_factory
        self._notifier = notifier or Notifier()
        self.log = logs.get("timeguard.agent")
        self.boot_id = read_boot_id()
        self._lock = threading.RLock()  # guards the tracker and the detector
        self.tracker = Tracker()
        self.detector = Detector(flap_window_s=cfg.daemon.flap_window_s)
        self._stop = threading.Event()
        self.signals = SignalInbox()  # noted by the handler, acted on by the loop (_act_on_signals)
        self.reloader = Reloader(config_path, prepare=self._prepare_reload, apply=self._apply_reload,
                                 refuse=self._refuse_reload)
        self.recorder: Recorder  # the journal's writer: set by run() (tests: a Recorder on a journal of theirs)
        self.hooks: HookRuntime  # set by _start_hooks()
        self.clockwatch: StepDetector  # set by run()
        self._jobs: Any = None
        self._metrics: MetricsFeed | None = None  # set by run()

    # ------------------------------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self.signals.install()  # first: a SIGHUP's default action during start-up would kill the daemon
        self.recorder = Recorder.open(self.cfg.state_dir, boot_id=self.boot_id, log=self.log)
        self._start_hooks()
        reading = self._reader()
        self._check_while_down(reading)
        self.recorder.clock(reading, floor=True, reason="raised at start-up")
        self.recorder.journal.set_daemon_info(DaemonInfo(pid=os.getpid(), version=__version__, boot_id=self.boot_id,
                                                         started_wall_s=reading.realtime_s, config=self.cfg.origin))
        self.clockwatch = clockwatch = StepDetector.open(threshold_s=self.cfg.daemon.step_threshold_s,
                                                         leap_pending=self._leap_pending, read=self._reader)
        if clockwatch.watcher is None:
            self.log.warning("timerfd_unavailable", error=clockwatch.watcher_error,
                             fallback="polling REALTIME-BOOTTIME every tick")
        self._rebuild_probes()
        ntskeys.restore(self.cfg, self.log)
        self._metrics = MetricsFeed(self.cfg.metrics, self.log)
        memory.release(collect=True)  # what loading the configuration and the journal left behind
        self._start_jobs()
        self.log.info("started", version=__version__, config=self.cfg.origin, boot_id=self.boot_id,
                      pid=os.getpid(), timerfd=clockwatch.watcher is not None)
        self._notifier.ready("local clock checked, waiting for the first cross-check")
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def request_stop(self) -> None:
        """Stop the daemon (from any thread): the loop sees it at its next tick."""
        self._stop.set()

    def _loop(self) -> None:
        ping_every = self._notifier.watchdog_ping_interval_s
        now = time.monotonic()
        next_ping, next_heartbeat, next_floor = now, now + HEARTBEAT_S, now + self.cfg.daemon.floor_interval_s
        while True:
            self._act_on_signals()
            if self._stop.is_set():
                break
            timeout_s = self.cfg.daemon.tick_s
            if ping_every is not None:  # wake for the ping on time, not up to a tick late
                timeout_s = min(timeout_s, max(next_ping - time.monotonic(), 0.0))
            for step in self.signals.wait(self.clockwatch, timeout_s):
                self._handle_step(step)
            now = time.monotonic()
            self.recorder.flush()
            if now >= next_heartbeat or now >= next_floor:
                self.recorder.clock(self._reader(), floor=now >= next_floor, reason="raised")
                next_heartbeat = now + HEARTBEAT_S
                if now >= next_floor:
                    next_floor = now + self.cfg.daemon.floor_interval_s
            self.reloader.progress()
            if ping_every is not None and now >= next_ping:
                # Only the detection loop pings: if it wedges, systemd restarts us (WatchdogSec).
                self._notifier.watchdog()
                next_ping = now + ping_every

    def _shutdown(self) -> None:
        self._notifier.stopping()
        self._notifier.close()
        self.hooks.stop(outbox=True)
        for part in filter(None, (self._jobs, self._metrics)):  # made late in run(): absent after a failed start
            part.close()
        ntskeys.keep(self.cfg, self.log)
        try:
            self.recorder.clock(self._reader(), floor=True, reason="shutdown")
            self.recorder.flush()
        except JournalError as exc:
            self.log.error("journal_write_failed_at_shutdown", error=str(exc))
        self.clockwatch.close()
        self.recorder.journal.close()
        self.signals.close()
        self.log.info("stopped")

    def _act_on_signals(self) -> None:
        """What the signal handler noted (daemon/signals.py), acted on here, where logging is safe."""
        inbox, clockwatch = self.signals, self.clockwatch
        if inbox.stop is not None and not self._stop.is_set():
            self.log.info("stopping", signal=signal.Signals(inbox.stop).name)
            self._stop.set()
        if inbox.ignored is not None:
            signum, inbox.ignored = inbox.ignored, None
            self.log.info("signal_ignored", signal=signal.Signals(signum).name)
        if inbox.report:
            inbox.report = False
            verdict = self.tracker.verdict
            self.log.info("state", verdict=None if verdict is None else verdict_summary(verdict),
                          steps=self.recorder.steps_total, journal_errors=self.recorder.errors,
                          unwritten_events=len(self.recorder.unwritten), timerfd=clockwatch.watcher is not None,
                          glitches_dropped=clockwatch.glitches_dropped, read_errors=clockwatch.read_errors,
                          reload_in_progress=self.reloader.job is not None)
        if inbox.reload and self.reloader.job is None and not self._stop.is_set():
            inbox.reload = False  # before the worker reads the file: a later SIGHUP is a new reload
            self._notifier.reloading()
            self.reloader.start()

    # ----------------------------------------------------------------------------------- clock steps

    def _check_while_down(self, reading: ClockReading) -> None:
        """At start-up: did the clock move while we were not watching?"""
        floor = self.recorder.journal.floor()
        event = self.detector.while_down(reading, boot_id=self.boot_id, threshold_s=self.cfg.daemon.step_threshold_s,
                                         last_clock=self.recorder.journal.meta().get("last_clock"),
                                         floor_wall_s=None if floor is None else floor.wall_s,
                                         floor_boot_id=None if floor is None else floor.boot_id)
        if event is not None:
            self.recorder.step(event, reading.boottime_s)
            self.log.warning("clock_step", kind=event.kind.value, step_s=event.step_s, incident=event.incident_id,
                             **event.detail)

    def _handle_step(self, step: ClockStep) -> None:
        with self._lock:
            event = self.detector.on_step(step, self._rebased_verdict(), self.boot_id)
        if event is None:
            self.log.info("resumed_from_suspend", suspended_s=step.suspended_s)
            return
        self.recorder.step(event, step.boottime_s)
        self.log.warning("clock_step", kind=event.kind.value, step_s=round(step.step_s, 6), incident=event.incident_id,
                         transition=event.detail["transition"], detected_by=step.detected_by,
                         wall_before=_iso(step.realtime_before_s), wall_after=_iso(step.realtime_after_s),
                         trusted_time=None if event.trusted_time_s is None else _iso(event.trusted_time_s))
        if self._jobs is not None:
            self._jobs.rearm("clock step")  # APScheduler sleeps on the wall clock: run every job from "now"
        self._update_metrics()

    def _leap_pending(self) -> str | None:
        """A leap second announced by the kernel, else by the NTP sources that agree (leap indicator 1/2)."""
        try:
            return read_kernel_clock().leap_pending or leap_announced(self.tracker.verdict)
        except OSError:
            return leap_announced(self.tracker.verdict)

    # ------------------------------------------------------------------------------- verdicts, hooks

    def trusted_now(self) -> float | None:
        """The true time now according to the latest verdict, corrected for every step since it was formed."""
        with self._lock:
            return self.tracker.trusted_now(self._reader())

    def _rebased_verdict(self) -> Verdict | None:
        """The consensus of the samples re-based to the clock *now*; None before any source answered."""
        with self._lock:
            return self.tracker.verdict_now(self._reader(), self.cfg) if self.tracker.latest else None

    def _verdict_summary(self) -> dict[str, Any] | None:
        """What hooks see as ``ctx.verdict``: the samples re-based to the clock *now*, not the last stored verdict.
        Right after a rollback the stored one still says "180 days ahead"; a repair hook gating on it would refuse."""
        verdict = self._rebased_verdict()
        return None if verdict is None else verdict_summary(verdict)

    def _start_hooks(self) -> None:
        self.hooks = HookRuntime(self.cfg, self.recorder, clock=self._reader, trusted_now=self.trusted_now,
                                 verdict=self._verdict_summary, log=self.log)

    def _audit_job(self) -> None:
        with self._lock:
            answered = self.detector.started  # until every source class answered, no verdict trusts the clock
        self.hooks.audit_tick(sources_answered=answered)

    # ------------------------------------------------------------------------------------ rounds, jobs

    def _rebuild_probes(self, probes: list[Probe] | None = None) -> None:
        """The probes of ``self.cfg`` (``probes``: already made from it, by a reload's worker)."""
        if probes is None:
            probes = self._probe_factory(self.cfg)
        with self._lock:
            self.tracker.set_probes(probes, self.cfg.daemon)
            self.detector.configure(self.tracker.classes)

    def _start_jobs(self) -> None:
        from timeguard.daemon.jobs import Jobs

        self._jobs = Jobs(self.log)  # each period is asked at every (re)arm: a reload may change it
        for kind in (SourceKind.NTP, SourceKind.HTTP):
            self._jobs.add(kind.value, self._run_checks, lambda k=kind: poll_interval_s(k, self.cfg.daemon), kind,
                           failed="check_failed", kind=kind.value)
        self._jobs.add("audit", self._audit_job, lambda: min(AUDIT_TICK_S, self.cfg.daemon.audit_retry_s),
                       failed="audit_failed")
        self._jobs.add("prune", self._prune_job, lambda: PRUNE_INTERVAL_S, failed="journal_upkeep_failed")
        self._jobs.start()

    def _prune_job(self) -> None:
        from timeguard.daemon.jobs import journal_upkeep

        if not journal_upkeep(self.recorder.journal, self.cfg.daemon, trusted_now_s=self.trusted_now(),
                              stop=self._stop.is_set, log=self.log):
            self.recorder.errors += 1

    def _run_checks(self, kind: SourceKind) -> None:
        """A round of one source class: poll its sources that are due, then judge the consensus of all."""
        with self._lock:
            due = self.tracker.due(kind, time.monotonic(), POLL_SLACK_S)
        if due:
            time.sleep(max(max(d.when_s for d in due) - time.monotonic(), 0.0))
            start = self._reader()
            samples = measure_all([d.probe for d in due], self.cfg.timeout_s)
            with self._lock:
                for d, sample in zip(due, samples, strict=True):
                    self.tracker.record(d.probe.name, sample, start)
        if self._stop.is_set():
            return  # stopping: the journal is being closed and the hooks stopped; the round is dropped
        with self._lock:
            now = self._reader()
            verdict = self.tracker.verdict = self.tracker.verdict_now(now, self.cfg)
            self.tracker.verdict_epoch_s = now.boot_epoch_s
            self.detector.round_done(kind, verdict)
        self._after_verdict(verdict, kind, polled=len(due))
        memory.release()  # the round's garbage: idle until the next one

    def _after_verdict(self, verdict: Verdict, kind: SourceKind, *, polled: int) -> None:
        now = self._reader()
        self.recorder.check(verdict, now)
        self.log.info("checked", kind=kind.value, polled=polled, status=verdict.status.value,
                      offset_s=verdict.offset_s, error_s=verdict.error_s, usable=verdict.usable,
                      agreeing=verdict.agreeing)
        with self._lock:  # an event only when the condition changes (watch/detector.py)
            event = self.detector.on_verdict(verdict, now, self.boot_id)
        if event is not None:
            self.recorder.event(event)
            log = self.log.info if event.kind is EventKind.RECOVERED else self.log.warning
            log("condition", kind=event.kind.value, incident=event.incident_id, summary=verdict.summary)
        self._notifier.status(f"{verdict.status.value}: {verdict.summary}")
        self._update_metrics()

    # ------------------------------------------------------------------------------------------ reload

    def _prepare_reload(self, cfg: Config) -> tuple[list[Probe], Dispatcher]:
        """In the reload's worker: what can fail or take long (importing source and hook modules)."""
        return self._probe_factory(cfg), self.hooks.make_dispatcher(cfg)

    def _refuse_reload(self, refused: Refused) -> None:
        self.log.error("reload_refused", config=str(self.config_path), errors=refused.errors, keeping=self.cfg.origin)
        self._notifier.ready(f"{refused.status}, old configuration kept")

    def _apply_reload(self, prepared: Prepared) -> None:
        try:
            self._switch_to(prepared.cfg, *prepared.parts)
        except Exception:  # applying is plain assignments; if one still fails, the loop must go on
            self.log.exception("reload_failed", config=prepared.cfg.origin)
            self._notifier.ready("reload failed")

    def _switch_to(self, new: Config, probes: list[Probe], dispatcher: Dispatcher) -> None:
        if new.state_dir != self.cfg.state_dir:
            self.log.warning("state_dir_change_needs_restart", old=self.cfg.state_dir, new=new.state_dir)
            new = dataclasses.replace(new, state_dir=self.cfg.state_dir)
        self.cfg = new
        logs.configure(new.logging.level, new.logging.format)
        self.clockwatch.threshold_s = new.daemon.step_threshold_s
        with self._lock:
            self.detector.flap_window_s = new.daemon.flap_window_s
        self.hooks.audits.retry_s, self.hooks.audits.interval_s = new.daemon.audit_retry_s, new.daemon.audit_interval_s
        self.hooks.install(dispatcher)
        self._rebuild_probes(probes)
        if self._jobs is not None:
            self._jobs.rearm("clock step")
        self.log.info("reloaded", config=new.origin)
        self._notifier.ready("configuration reloaded")

    # ----------------------------------------------------------------------------------------- metrics

    def metrics_snapshot(self) -> MetricsSource:
        """The counters and the newest verdict, as timeguard.metrics reads them."""
        hooks, recorder = self.hooks, self.recorder
        return SimpleNamespace(cfg=self.cfg, verdict=self.tracker.verdict, journal=recorder.journal,
                               journal_errors=recorder.errors, steps_total=recorder.steps_total,
                               hook_failures=hooks.failures, future_state_found=hooks.audits.future_state_found)

    def _update_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.update(self.metrics_snapshot())

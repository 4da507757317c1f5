"""The daemon, ``timeguard run``: detect steps, cross-check the sources on a schedule, keep the journal.

Threads: the main thread runs the step detector (timerfd + REALTIME−BOOTTIME polling), persists the floor and
the heartbeat, pings the systemd watchdog and handles signals — it never waits on the network. APScheduler's
threads run the NTP and HTTP cross-checks. APScheduler computes its sleeps from the wall clock, so a 180-day
rollback would stall it for 180 days (research/harness.md §1d): after every detected step the agent re-arms
every job from the new "now", which also runs the checks at once.

Samples are kept per source with the boot epoch (REALTIME − BOOTTIME) at which they were measured. Every
verdict re-bases them to the current host clock (a step of Δ since the measurement shifts the offset by −Δ)
and widens their interval by 15 ppm of their age (RFC 5905's PHI), so NTP answers from a minute ago and HTTP
answers from a quarter of an hour ago can be combined soundly.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from timeguard import __version__, logs
from timeguard import config as config_mod
from timeguard.config import Config
from timeguard.events import Event, EventKind, new_id
from timeguard.hooks.api import HookRun, HookStatus
from timeguard.hooks.dispatch import Dispatcher
from timeguard.measure import consensus
from timeguard.measure.check import Probe, measure_all, probes
from timeguard.measure.ntp import PollPolicy
from timeguard.model import Sample, SourceKind, SourceState, Status, Verdict
from timeguard.sdnotify import Notifier
from timeguard.store.journal import CheckRecord, Journal, JournalError, open_for_daemon
from timeguard.timefmt import iso as _iso
from timeguard.watch.clockwatch import ClockReading, ClockStep, StepDetector, StepKind, read_boot_id, read_clocks
from timeguard.watch.localclock import read_kernel_clock

PHI = 15e-6  # RFC 5905: how fast an old sample's error grows (s/s)
HEARTBEAT_S = 10.0  # how often `timeguard status` can see the daemon is alive
POLL_SLACK_S = 2.0  # a scheduled job waits this long at most for a source's next allowed poll
SAMPLE_MAX_AGE_INTERVALS = 3  # a sample older than 3 of its class's intervals no longer counts
AUDIT_TICK_S = 5.0  # how often the audit job looks whether an auditing hook is due
PRUNE_INTERVAL_S = 3600.0  # how often the journal's retention runs
RELOAD_TIMEOUT_S = 10.0  # a SIGHUP's new configuration not read and validated by then is refused
MAX_STUCK_RELOADS = 2  # reload threads still stuck past their deadline (a FIFO, a hung NFS) before SIGHUP is refused
_STOP_SIGNALS = frozenset({signal.SIGTERM.value, signal.SIGINT.value})

_CONDITIONS: dict[Status, EventKind | None] = {
    Status.OK: None,
    Status.WARNING: EventKind.OFFSET_WARNING,
    Status.CRITICAL: EventKind.OFFSET_CRITICAL,
    Status.SOURCES_INCONSISTENT: EventKind.SOURCES_INCONSISTENT,
    Status.NO_MAJORITY: EventKind.SOURCES_UNAVAILABLE,
    Status.UNKNOWN: EventKind.SOURCES_UNAVAILABLE,
}
_STEP_EVENTS = {StepKind.ROLLBACK: EventKind.ROLLBACK, StepKind.FORWARD_JUMP: EventKind.FORWARD_JUMP,
                StepKind.LEAP: EventKind.LEAP}


def open_journal(state_dir: str, log: Any) -> Journal:
    """Open the journal. Only a damaged file is moved aside (kept, never deleted), what is readable in it salvaged
    into a new one (timeguard.store.journal.open_for_daemon); a lock or an unusable state directory raises."""
    journal, damage = open_for_daemon(state_dir)
    if damage is not None:
        log.error("journal_damaged", error=damage["reason"], moved_to=damage["moved_to"], salvaged=damage["copied"],
                  unreadable_rows=damage["lost"], note="`timeguard status` shows it")
    return journal


@dataclasses.dataclass(slots=True)
class _Latest:
    sample: Sample
    epoch_s: float  # boot epoch when the measurement started: what its offset is relative to
    monotonic_s: float


@dataclasses.dataclass(slots=True)
class _Audit:
    """When one auditing hook is next looked at, and the future_state_found incident it has open."""

    next_due_s: float  # monotonic
    backoff_s: float  # the next retry delay after a failure, a skip or a finding
    incident: str | None = None  # open while audits keep finding: one incident, one alert
    found: int = 0  # findings in the open incident


@dataclasses.dataclass(slots=True)
class _Incident:
    id: str
    last_step_monotonic_s: float
    transitions: int


@dataclasses.dataclass(slots=True)
class _Reload:
    """A SIGHUP's reload: read, validated and prepared by a worker thread, applied or refused by the loop."""

    started_s: float  # monotonic
    worker: threading.Thread | None = None
    cfg: Config | None = None
    probes: list[Probe] | None = None
    dispatcher: Dispatcher | None = None
    errors: list[str] | None = None
    done: bool = False  # set last by the worker


def rebase(latest: _Latest, now: ClockReading, max_age_s: float) -> Sample:
    """The sample as it applies to the host clock *now*: shifted by the clock's steps and slews since it was
    measured, widened by PHI × age, or unreachable once too old."""
    sample = latest.sample
    age = now.monotonic_s - latest.monotonic_s
    if age > max_age_s:
        return Sample.failed(sample.name, sample.kind, SourceState.UNREACHABLE,
                             f"last answer {age:.0f} s ago is too old (limit {max_age_s:.0f} s)")
    if not sample.usable:
        return sample
    assert sample.offset_s is not None and sample.offset_lo_s is not None and sample.offset_hi_s is not None
    shift = now.boot_epoch_s - latest.epoch_s
    widen = PHI * max(age, 0.0)
    return dataclasses.replace(
        sample,
        offset_s=sample.offset_s - shift,
        offset_lo_s=sample.offset_lo_s - shift - widen,
        offset_hi_s=sample.offset_hi_s - shift + widen,
    )


def verdict_summary(verdict: Verdict) -> dict[str, Any]:
    return {
        "status": verdict.status.value,
        "offset_s": verdict.offset_s,
        "offset_lo_s": verdict.offset_lo_s,
        "offset_hi_s": verdict.offset_hi_s,
        "ntp_http_agree": verdict.ntp_http_agree,
        "summary": verdict.summary,
    }


def steady_interval(seconds: float) -> Any:
    """An APScheduler trigger with a fixed period that survives wall-clock jumps.

    APScheduler's IntervalTrigger, after a forward jump, makes the scheduler enumerate every missed fire time
    (180 days at 15 s is ~1 million datetimes, seconds of CPU under the job-store lock); after a backward jump it
    waits for the wall clock to catch up. This one resumes the period from "now" in both cases, and fires at
    once when (re)scheduled.
    """
    from datetime import timedelta

    from apscheduler.triggers.base import BaseTrigger

    period = timedelta(seconds=seconds)

    class SteadyInterval(BaseTrigger):
        __slots__ = ()

        def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
            if previous_fire_time is None:
                return now
            following = previous_fire_time + period
            if following <= now or following > now + period:  # jumped forward / backward: restart from now
                return now + period
            return following

        def __str__(self) -> str:
            return f"steady interval[{period}]"

    return SteadyInterval()


class Agent:
    def __init__(
        self,
        cfg: Config,
        *,
        config_path: Path | None = None,
        reader: Callable[[], ClockReading] = read_clocks,
        probe_factory: Callable[[Config], list[Probe]] = probes,
        notifier: Notifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._reader = reader
        self._probe_factory = probe_factory
        self._notifier = notifier or Notifier()
        self.log = logs.get("timeguard.agent")
        self.boot_id = read_boot_id()
        self._lock = threading.RLock()  # guards samples, verdict, incidents, condition
        self._stop = threading.Event()
        # Noted by _on_signal (plain stores: a signal handler must not lock, log or do I/O), acted on by the loop.
        self._stop_signal: int | None = None
        self._reload_requested = False
        self._report_requested = False
        self._ignored_signal: int | None = None
        self._wakeup_fds: tuple[int, int] | None = None  # the self-pipe signal.set_wakeup_fd writes to
        self._previous_wakeup_fd = -1
        self._reload_job: _Reload | None = None
        self._stuck_reloads: list[threading.Thread] = []
        self._latest: dict[str, _Latest] = {}
        self._policies: dict[str, PollPolicy] = {}
        self._probes: list[Probe] = []
        self._rounds_done: set[SourceKind] = set()
        self._verdict: Verdict | None = None
        self._verdict_complete = False  # formed after every configured source class finished its first round
        self._incident: _Incident | None = None
        self._condition: EventKind | None = None
        self._condition_incident: str | None = None
        self._unwritten: list[Event] = []  # events the journal refused: retried, never dropped
        self.journal_errors = 0
        self.steps_total = {"backward": 0, "forward": 0}
        self.hook_failures: dict[tuple[str, str], int] = {}  # (hook, type) → failed runs (metrics)
        self.future_state_found: dict[tuple[str, str], int] = {}  # (hook, target) → audit findings (metrics)
        self.journal: Journal | None = None
        self._scheduler: Any = None
        self._metrics: Any = None
        self._verdict_epoch_s = 0.0  # boot epoch when self._verdict was formed: its offset is relative to it
        self._dispatcher: Dispatcher | None = None
        self._outbox: Any = None
        self._audits: dict[str, _Audit] = {}
        self._audit_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self._install_signals()  # first: a SIGHUP's default action during start-up would kill the daemon
        self.journal = open_journal(self.cfg.state_dir, self.log)
        if self.journal.salvaged is not None:
            self.journal_errors += 1  # timeguard_journal_errors: a damaged journal was found and salvaged
        self._start_hooks()
        reading = self._reader()
        self._check_while_down(reading)
        self._persist_clock(reading, floor=True, reason="raised at start-up")
        self.journal.set_meta({"pid": os.getpid(), "version": __version__, "boot_id": self.boot_id,
                               "started_wall_s": reading.realtime_s, "config": self.cfg.origin})
        detector = self._make_detector()
        self._rebuild_probes()
        self._start_metrics()
        self._start_scheduler()
        self.log.info("started", version=__version__, config=self.cfg.origin, boot_id=self.boot_id,
                      pid=os.getpid(), timerfd=detector.watcher is not None)
        self._notifier.ready("local clock checked, waiting for the first cross-check")
        try:
            self._loop(detector)
        finally:
            self._shutdown(detector)
        return 0

    def request_stop(self) -> None:
        """Stop the daemon (from any thread): the loop sees it at its next tick."""
        self._stop.set()

    def _make_detector(self) -> StepDetector:
        detector = StepDetector.open(threshold_s=self.cfg.daemon.step_threshold_s, leap_pending=self._leap_pending,
                                     read=self._reader)
        if detector.watcher is None:
            self.log.warning("timerfd_unavailable", error=detector.watcher_error,
                             fallback="polling REALTIME-BOOTTIME every tick")
        return detector

    def _leap_pending(self) -> str | None:
        """A leap second announced by the kernel, else by the NTP sources that agree (leap indicator 1/2)."""
        try:
            kernel = read_kernel_clock().leap_pending
        except OSError:
            kernel = None
        if kernel is not None:
            return kernel
        verdict = self._verdict
        if verdict is None:
            return None
        leaps = [sv.sample.leap for sv in verdict.sources
                 if sv.state is SourceState.TRUECHIMER and sv.sample.kind is SourceKind.NTP]
        if leaps and leaps.count(1) * 2 > len(leaps):
            return "insert"
        if leaps and leaps.count(2) * 2 > len(leaps):
            return "delete"
        return None

    # ----------------------------------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 logs the state, SIGUSR2 is ignored (the default action of
        all of them would kill the daemon).

        A Python signal handler runs in the main thread between two bytecodes: possibly inside a log write that
        holds the logger's non-reentrant lock, or inside a journal write. A handler that logs or takes a lock can
        deadlock the daemon for good (issue 9: a second SIGTERM inside the first one's log line hung it for 25
        minutes). So :meth:`_on_signal` only notes the signal in plain attributes, and the C-level handler writes
        the signal number to a self-pipe (``signal.set_wakeup_fd``) that wakes the detection loop, which acts.
        """
        if threading.current_thread() is not threading.main_thread() or self._wakeup_fds is not None:
            return
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_fds = (read_fd, write_fd)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """The handler: plain attribute stores only. No lock, no I/O, no logging, no threading.Event."""
        if signum in _STOP_SIGNALS:
            self._stop_signal = signum
        elif signum == signal.SIGHUP:
            self._reload_requested = True
        elif signum == signal.SIGUSR1:
            self._report_requested = True
        else:
            self._ignored_signal = signum

    def _restore_wakeup_fd(self) -> None:
        """Hand the wakeup fd back before closing the pipe (a later signal must not write into a reused fd). The
        handlers stay: they only note signals, and a signal after the loop ended must not kill a clean exit."""
        if self._wakeup_fds is None:
            return
        fds, self._wakeup_fds = self._wakeup_fds, None
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for fd in fds:
            os.close(fd)

    def _wait(self, detector: StepDetector, timeout_s: float) -> list[ClockStep]:
        """The detector's wait, also woken at once by a signal (the self-pipe)."""
        if self._wakeup_fds is None:
            return detector.wait(timeout_s)
        watcher = detector.watcher
        fds: list[Any] = [self._wakeup_fds[0]]
        if watcher is not None and not watcher.closed:
            fds.append(watcher)
        try:
            select.select(fds, [], [], timeout_s)
        except (OSError, ValueError):
            return detector.wait(timeout_s)  # the detector's own wait counts and logs the error
        try:
            while os.read(self._wakeup_fds[0], 512):
                pass
        except BlockingIOError:
            pass
        return detector.poll()

    def _act_on_signals(self, detector: StepDetector) -> None:
        """The loop's half of the signal handling: what _on_signal noted, acted on where logging is safe."""
        if self._stop_signal is not None and not self._stop.is_set():
            self.log.info("stopping", signal=signal.Signals(self._stop_signal).name)
            self._stop.set()
        if self._ignored_signal is not None:
            signum, self._ignored_signal = self._ignored_signal, None
            self.log.info("signal_ignored", signal=signal.Signals(signum).name)
        if self._report_requested:
            self._report_requested = False
            verdict = self._verdict
            self.log.info("state", verdict=None if verdict is None else verdict_summary(verdict),
                          steps=self.steps_total, journal_errors=self.journal_errors,
                          unwritten_events=len(self._unwritten), timerfd=detector.watcher is not None,
                          glitches_dropped=detector.glitches_dropped, read_errors=detector.read_errors,
                          reload_in_progress=self._reload_job is not None)
        if self._reload_requested and self._reload_job is None and not self._stop.is_set():
            self._reload_requested = False  # before the worker reads the file: a later SIGHUP is a new reload
            self._start_reload()

    def _loop(self, detector: StepDetector) -> None:
        ping_every = self._notifier.watchdog_ping_interval_s
        now = time.monotonic()
        next_ping = now
        next_heartbeat = now + HEARTBEAT_S
        next_floor = now + self.cfg.daemon.floor_interval_s
        while True:
            self._act_on_signals(detector)
            if self._stop.is_set():
                break
            timeout_s = self.cfg.daemon.tick_s
            if ping_every is not None:  # wake for the ping on time, not up to a tick late
                timeout_s = min(timeout_s, max(next_ping - time.monotonic(), 0.0))
            steps = self._wait(detector, timeout_s)
            for step in steps:
                self._handle_step(step)
            now = time.monotonic()
            if self._unwritten:
                self._flush_unwritten()
            if now >= next_heartbeat or now >= next_floor:
                current = self._reader()
                self._persist_clock(current, floor=now >= next_floor, reason="raised")
                next_heartbeat = now + HEARTBEAT_S
                if now >= next_floor:
                    next_floor = now + self.cfg.daemon.floor_interval_s
            if self._reload_job is not None:
                self._reload_progress(detector)
            if ping_every is not None and now >= next_ping:
                # Only the detection loop pings: if it wedges, systemd restarts us (WatchdogSec).
                self._notifier.watchdog()
                next_ping = now + ping_every

    def _shutdown(self, detector: StepDetector) -> None:
        self._notifier.stopping()
        self._notifier.close()
        self._stop_hooks(outbox=True)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._metrics is not None:
            self._metrics.close()
        try:
            self._persist_clock(self._reader(), floor=True, reason="shutdown")
            self._flush_unwritten()
        except JournalError as exc:
            self.log.error("journal_write_failed_at_shutdown", error=str(exc))
        detector.close()
        assert self.journal is not None
        self.journal.close()
        self._restore_wakeup_fd()
        self.log.info("stopped")

    # ----------------------------------------------------------------------------------- floor, heartbeat

    def _check_while_down(self, reading: ClockReading) -> None:
        """At start-up: did the clock move while we were not watching?"""
        assert self.journal is not None
        threshold = self.cfg.daemon.step_threshold_s
        last = self.journal.meta().get("last_clock")
        floor = self.journal.floor()
        if isinstance(last, dict) and last.get("boot_id") == self.boot_id:
            # Same boot: the boot epoch then and now gives the exact net step while we were down.
            step = reading.boot_epoch_s - (float(last["wall_s"]) - float(last["boottime_s"]))
            if step < -threshold:
                self._record_while_down(reading, EventKind.ROLLBACK_WHILE_DOWN, step,
                                        {"same_boot": True, "exact": True, "down_for_s": reading.boottime_s
                                         - float(last["boottime_s"])})
            elif step > threshold:
                self._record_while_down(reading, EventKind.FORWARD_JUMP, step,
                                        {"same_boot": True, "exact": True, "while_down": True})
            return
        if floor is not None and reading.realtime_s < floor.wall_s - threshold:
            # Another boot: how long the host was down is unknown, so the size is a lower bound.
            self._record_while_down(reading, EventKind.ROLLBACK_WHILE_DOWN, reading.realtime_s - floor.wall_s,
                                    {"same_boot": floor.boot_id == self.boot_id, "lower_bound": True,
                                     "previous_boot_id": floor.boot_id, "floor_wall_s": floor.wall_s})

    def _record_while_down(self, reading: ClockReading, kind: EventKind, step_s: float,
                           detail: dict[str, Any]) -> None:
        assert self.journal is not None
        incident = new_id()
        event = Event(kind=kind, incident_id=incident, wall_time_s=reading.realtime_s,
                      monotonic_s=reading.monotonic_s, boot_id=self.boot_id, step_s=step_s,
                      wall_before_s=reading.realtime_s - step_s, detail=detail)
        self._record(event)
        self.log.warning("clock_step", kind=kind.value, step_s=step_s, incident=incident, **detail)
        if kind is EventKind.ROLLBACK_WHILE_DOWN:
            self.steps_total["backward"] += 1
            self.journal.set_floor(reading.realtime_s, self.boot_id, reading.boottime_s,
                                   f"lowered after {kind.value} {incident}")
        else:
            self.steps_total["forward"] += 1

    def _persist_clock(self, reading: ClockReading, *, floor: bool, reason: str) -> None:
        assert self.journal is not None
        try:
            self.journal.set_meta({
                "last_clock": {"wall_s": reading.realtime_s, "boottime_s": reading.boottime_s,
                               "boot_id": self.boot_id},
                "heartbeat": {"boottime_s": reading.boottime_s, "wall_s": reading.realtime_s,
                              "boot_id": self.boot_id, "pid": os.getpid()},
            })
            if floor:
                self.journal.raise_floor(reading.realtime_s, self.boot_id, reading.boottime_s, reason)
        except JournalError as exc:
            self.journal_errors += 1
            self.log.error("journal_write_failed", error=str(exc), what="floor/heartbeat")

    # ------------------------------------------------------------------------------------------- steps

    def _handle_step(self, step: ClockStep) -> None:
        if step.kind is StepKind.SUSPEND:
            self.log.info("resumed_from_suspend", suspended_s=step.suspended_s)
            return
        kind = _STEP_EVENTS[step.kind]
        with self._lock:
            if self._incident is not None and (
                step.monotonic_s - self._incident.last_step_monotonic_s <= self.cfg.daemon.flap_window_s
            ):
                self._incident.transitions += 1
                self._incident.last_step_monotonic_s = step.monotonic_s
            else:
                self._incident = _Incident(new_id(), step.monotonic_s, 1)
            incident = self._incident
            verdict = self._current_verdict() if self._latest else None
        trusted = None
        if verdict is not None and verdict.offset_s is not None:
            trusted = step.realtime_after_s + verdict.offset_s
        event = Event(
            kind=kind, incident_id=incident.id, wall_time_s=step.realtime_after_s, monotonic_s=step.monotonic_s,
            boot_id=self.boot_id, step_s=step.step_s, wall_before_s=step.realtime_before_s,
            trusted_time_s=trusted, verdict=None if verdict is None else verdict_summary(verdict),
            detail={"detected_by": step.detected_by, "transition": incident.transitions,
                    "suspended_s": step.suspended_s},
        )
        self._record(event)
        self.steps_total["backward" if step.step_s < 0 else "forward"] += 1
        self.log.warning("clock_step", kind=kind.value, step_s=round(step.step_s, 6), incident=incident.id,
                         transition=incident.transitions, detected_by=step.detected_by,
                         wall_before=_iso(step.realtime_before_s), wall_after=_iso(step.realtime_after_s),
                         trusted_time=None if trusted is None else _iso(trusted))
        if step.step_s < 0:
            # The rollback is recorded: the new, lower wall time is the floor from now on.
            try:
                assert self.journal is not None
                self.journal.set_floor(step.realtime_after_s, self.boot_id, step.boottime_s,
                                       f"lowered after {kind.value} {incident.id}")
            except JournalError as exc:
                self.journal_errors += 1
                self.log.error("journal_write_failed", error=str(exc), what="floor")
        self._rearm_jobs()
        self._update_metrics()

    def _record(self, event: Event, *, only: str | None = None) -> None:
        """Journal first, then the hooks (DESIGN.md's flow); an event the disk refuses still reaches them.
        ``only``: dispatch to that hook alone (a repeated audit finding retries the repair, not the alerts)."""
        assert self.journal is not None
        try:
            self.journal.record_event(event)
        except JournalError as exc:
            self.journal_errors += 1
            self._unwritten.append(event)
            self.log.error("journal_write_failed", error=str(exc), what="event", kept_in_memory=len(self._unwritten))
        if self._dispatcher is not None:
            self._dispatcher.dispatch(event, only=only)

    # ------------------------------------------------------------------------------------------- hooks

    def trusted_now(self) -> float | None:
        """The true time now according to the latest verdict, corrected for every step since it was formed."""
        with self._lock:
            verdict, epoch = self._verdict, self._verdict_epoch_s
        if verdict is None or verdict.offset_s is None:
            return None
        now = self._reader()
        return now.realtime_s + verdict.offset_s - (now.boot_epoch_s - epoch)

    def _verdict_summary(self) -> dict[str, Any] | None:
        """What hooks see as ``ctx.verdict``: the samples re-based to the clock *now*, not the last stored verdict.
        Right after a rollback the stored one still says "180 days ahead"; a repair hook gating on it would refuse."""
        with self._lock:
            if not self._latest:
                return None
            return verdict_summary(self._current_verdict())

    def _start_hooks(self) -> None:
        """The dispatcher runs the hooks; alert hooks queue their messages in the outbox, which delivers them
        at least once — including what a previous run left pending."""
        from timeguard.hooks.outbox import Outbox

        assert self.journal is not None
        if self._outbox is None:
            self._outbox = Outbox(self.journal, {}, trusted_now=self.trusted_now, epoch=self.boot_id, log=self.log)
            self._outbox.start()
        self._install_dispatcher(self._make_dispatcher(self.cfg))

    def _make_dispatcher(self, cfg: Config) -> Dispatcher:
        import socket

        return Dispatcher(cfg.hooks, journal=self.journal, recorder=self.journal, trusted_now=self.trusted_now,
                          verdict=self._verdict_summary, hostname=socket.gethostname(), log=self.log,
                          enqueue=self._outbox.enqueue, on_run=self._after_hook_run)

    def _install_dispatcher(self, dispatcher: Dispatcher) -> None:
        from timeguard.hooks.outbox import deliverers_from

        self._dispatcher = dispatcher
        self._outbox.set_deliverers(deliverers_from(h.hook for h in self._dispatcher.hooks))
        with self._audit_lock:  # a new auditor is due at once; one kept across a reload keeps its state
            names = self._dispatcher.auditors()
            due = self._reader().monotonic_s
            self._audits = {n: self._audits.get(n) or _Audit(due, self.cfg.daemon.audit_retry_s) for n in names}

    def _stop_hooks(self, *, outbox: bool = False) -> None:
        if self._dispatcher is not None:
            self._dispatcher.stop()
        if outbox and self._outbox is not None:
            abandoned = self._outbox.stop()
            if abandoned:
                self.log.info("outbox_stopped", abandoned_sends=abandoned, note="re-sent with the same id at start")

    def _flush_unwritten(self) -> None:
        assert self.journal is not None
        while self._unwritten:
            try:
                self.journal.record_event(self._unwritten[0])
            except JournalError:
                return
            self._unwritten.pop(0)

    # ------------------------------------------------------------------------------------------ audits

    def _audit_tick(self) -> None:
        """Scheduler job: audit every hook that is due (research: the operator who installs timeguard after the
        damage; also the retry of a repair that failed or was skipped). Not before every source class answered
        once: until then no verdict can trust the clock."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            return
        with self._lock:
            if not {p.kind for p in self._probes} <= self._rounds_done:
                return
        for name in dispatcher.auditors():
            with self._audit_lock:
                state = self._audits.get(name)
            if state is None or self._reader().monotonic_s < state.next_due_s or dispatcher.busy(name):
                continue  # a run queued or in progress: look once it is over
            try:
                result = dispatcher.audit(name)
            except Exception as exc:  # noqa: BLE001 - an audit error is logged and retried, never fatal
                self._audit_done(name, state, "error", str(exc) or type(exc).__name__, {})
                continue
            self._audit_done(name, state, result.outcome.value, result.summary, dict(result.details))

    def _audit_done(self, name: str, state: _Audit, outcome: str, summary: str, details: dict[str, Any]) -> None:
        d = self.cfg.daemon
        now = self._reader()
        event: Event | None = None
        first = False
        with self._audit_lock:
            if outcome == "clean":
                state.incident, state.found, state.backoff_s = None, 0, d.audit_retry_s
                delay = d.audit_interval_s
            else:
                delay = state.backoff_s
                state.backoff_s = min(state.backoff_s * 2, d.audit_interval_s)
            if outcome == "found":
                key = (name, str(details.get("target") or details.get("database") or ""))
                self.future_state_found[key] = self.future_state_found.get(key, 0) + 1
                state.found += 1
                first = state.found == 1
                state.incident = state.incident or new_id()
                event = Event(kind=EventKind.FUTURE_STATE_FOUND, incident_id=state.incident,
                              wall_time_s=now.realtime_s, monotonic_s=now.monotonic_s, boot_id=self.boot_id,
                              trusted_time_s=self.trusted_now(), verdict=self._verdict_summary(),
                              detail={**details, "hook": name, "summary": summary, "finding": state.found})
            state.next_due_s = now.monotonic_s + delay
        log = self.log.warning if outcome in ("found", "error") else self.log.info
        log("audit", hook=name, outcome=outcome, summary=summary, next_in_s=round(delay, 1))
        try:
            assert self.journal is not None
            self.journal.set_meta({f"audit:{name}": {"wall_s": now.realtime_s, "outcome": outcome,
                                                      "summary": summary, "next_in_s": delay}})
        except JournalError as exc:
            self.journal_errors += 1
            self.log.error("journal_write_failed", error=str(exc), what="audit")
        if event is not None:
            # The first finding of an incident goes to every hook that wants it (alerts, repairs); a repeated
            # one only to the hook whose audit found it: a retry of the repair, not another alert.
            self._record(event, only=None if first else name)

    def _after_hook_run(self, run: HookRun) -> None:
        """A repair that failed or was skipped (database down, clock not trusted yet) is retried by an audit
        after the back-off rather than at the next regular audit. Failures are counted for the metrics."""
        if run.status is HookStatus.FAILED and not run.test:
            with self._audit_lock:
                key = (run.hook, run.hook_type)
                self.hook_failures[key] = self.hook_failures.get(key, 0) + 1
        if run.dry_run or run.test or run.status not in (HookStatus.FAILED, HookStatus.SKIPPED):
            return
        with self._audit_lock:
            state = self._audits.get(run.hook)
            if state is not None:
                state.next_due_s = min(state.next_due_s, self._reader().monotonic_s + state.backoff_s)

    # ------------------------------------------------------------------------------------------ checks

    def _rebuild_probes(self, probes: list[Probe] | None = None) -> None:
        """The probes of ``self.cfg`` (``probes``: already made from it, by a reload's worker)."""
        if probes is None:
            probes = self._probe_factory(self.cfg)
        with self._lock:
            self._probes = probes
            names = {p.name for p in self._probes}
            self._latest = {k: v for k, v in self._latest.items() if k in names}
            old = self._policies
            self._policies = {}
            for probe in self._probes:
                interval = self._interval(probe.kind)
                policy = old.get(probe.name)
                if policy is None or policy.interval_s < interval:
                    policy = PollPolicy(interval_s=interval, max_interval_s=max(1024.0, interval * 16))
                self._policies[probe.name] = policy
            self._rounds_done = {k for k in self._rounds_done if any(p.kind == k for p in self._probes)}

    def _interval(self, kind: SourceKind) -> float:
        d = self.cfg.daemon
        return d.ntp_interval_s if kind is SourceKind.NTP else d.http_interval_s

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        for kind in (SourceKind.NTP, SourceKind.HTTP):
            self._scheduler.add_job(self._check_class, self._trigger(kind), args=[kind], id=kind.value,
                                    next_run_time=datetime.now(UTC))
        self._scheduler.add_job(self._audit_job, self._audit_trigger(), id="audit", next_run_time=datetime.now(UTC))
        self._scheduler.add_job(self._prune_job, steady_interval(PRUNE_INTERVAL_S), id="prune",
                                next_run_time=datetime.now(UTC))
        self._scheduler.start()

    def _prune_job(self) -> None:
        """Journal upkeep, in the scheduler's thread. First ``PRAGMA quick_check`` (0.2 s for 100,000 events):
        damage that appeared while running is logged at error and counted in timeguard_journal_errors every pass
        (the file is salvaged at the next start; detection goes on, refused writes are kept in memory). Then
        retention (daemon.events_retention_days, events_max) in small batches: the detection loop's writes wait for
        one batch at most. The age rule needs a trusted time: while there is none, only the count rule applies (a
        clock far ahead must not empty the journal)."""
        d = self.cfg.daemon
        try:
            assert self.journal is not None
            problems = self.journal.integrity_problems()
            if problems:
                self.journal_errors += 1
                self.log.error("journal_damaged", error="; ".join(problems), path=str(self.journal.path),
                               note="salvaged into a new journal at the next start; `timeguard status` shows it")
                return
            removed = self.journal.prune_events(max_events=d.events_max, retention_s=d.events_retention_days * 86400,
                                                now_s=self.trusted_now(), pause_s=0.05, stop=self._stop.is_set)
        except JournalError as exc:
            self.log.error("journal_prune_failed", error=str(exc))
            return
        if removed:
            self.log.info("journal_pruned", events=removed)

    def _audit_trigger(self) -> Any:
        return steady_interval(min(AUDIT_TICK_S, self.cfg.daemon.audit_retry_s))

    def _audit_job(self) -> None:
        try:
            self._audit_tick()
        except Exception:  # the next tick runs on schedule
            self.log.exception("audit_failed")

    def _trigger(self, kind: SourceKind) -> Any:
        return steady_interval(self._interval(kind))

    def _rearm_jobs(self) -> None:
        """A fresh trigger from the new "now" for every job: they run at once and keep their period. Done off the
        detection loop: APScheduler's job-store lock must never delay the next step's detection."""
        if self._scheduler is None:
            return

        def rearm() -> None:
            for kind in (SourceKind.NTP, SourceKind.HTTP):
                self._scheduler.reschedule_job(kind.value, trigger=self._trigger(kind))
            self._scheduler.reschedule_job("audit", trigger=self._audit_trigger())
            self._scheduler.reschedule_job("prune", trigger=steady_interval(PRUNE_INTERVAL_S))
            self.log.info("jobs_rearmed", reason="clock step")

        threading.Thread(target=rearm, name="rearm-jobs", daemon=True).start()

    def _check_class(self, kind: SourceKind) -> None:
        try:
            self._run_checks(kind)
        except Exception:  # a failed round is logged; the next one runs on schedule
            self.log.exception("check_failed", kind=kind.value)

    def _run_checks(self, kind: SourceKind) -> None:
        with self._lock:
            candidates = [(p, self._policies[p.name]) for p in self._probes if p.kind is kind]
        now = time.monotonic()
        due = []
        for probe, policy in candidates:
            when = policy.next_poll_monotonic()
            if when is not None and when <= now + POLL_SLACK_S:
                due.append((probe, policy, when))
        if due:
            wait = max(when for _, _, when in due) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            start = self._reader()
            samples = measure_all([p for p, _, _ in due], self.cfg.timeout_s)
            with self._lock:
                for (probe, policy, _), sample in zip(due, samples, strict=True):
                    policy.record(sample)
                    self._latest[probe.name] = _Latest(sample, start.boot_epoch_s, start.monotonic_s)
        if self._stop.is_set():
            return  # stopping: the journal is being closed and the hooks stopped; the round is dropped
        with self._lock:
            self._rounds_done.add(kind)
            verdict = self._current_verdict()
            self._verdict = verdict
            self._verdict_epoch_s = self._reader().boot_epoch_s
            # Decided with the verdict, not later: another class's round may finish while this one is still
            # writing its check, and must not make this verdict (formed without that class) a condition.
            self._verdict_complete = {p.kind for p in self._probes} <= self._rounds_done
        self._after_verdict(verdict, kind, polled=len(due))

    def _current_verdict(self) -> Verdict:
        now = self._reader()
        samples = []
        for probe in self._probes:
            latest = self._latest.get(probe.name)
            if latest is None:
                continue
            max_age = SAMPLE_MAX_AGE_INTERVALS * self._policies[probe.name].interval_s + self.cfg.timeout_s
            samples.append(rebase(latest, now, max_age))
        return consensus.decide(samples, warning_s=self.cfg.thresholds.warning_s,
                                critical_s=self.cfg.thresholds.critical_s,
                                min_sources=self.cfg.consensus.min_sources, monotonic_s=now.monotonic_s)

    def _after_verdict(self, verdict: Verdict, kind: SourceKind, *, polled: int) -> None:
        now = self._reader()
        assert self.journal is not None
        try:
            self.journal.record_check(CheckRecord(
                wall_s=now.realtime_s, monotonic_s=now.monotonic_s, boot_id=self.boot_id,
                status=verdict.status.value, offset_s=verdict.offset_s, offset_lo_s=verdict.offset_lo_s,
                offset_hi_s=verdict.offset_hi_s, usable=verdict.usable, agreeing=verdict.agreeing,
                ntp_http_agree=verdict.ntp_http_agree, summary=verdict.summary,
                sources=[{"name": sv.sample.name, "kind": sv.sample.kind.value, "state": sv.state.value,
                          "offset_s": sv.sample.offset_s, "reason": sv.reason} for sv in verdict.sources],
            ))
        except JournalError as exc:
            self.journal_errors += 1
            self.log.error("journal_write_failed", error=str(exc), what="check")
        self.log.info("checked", kind=kind.value, polled=polled, status=verdict.status.value,
                      offset_s=verdict.offset_s, error_s=verdict.error_s, usable=verdict.usable,
                      agreeing=verdict.agreeing)
        self._transition(verdict, now)
        self._notifier.status(f"{verdict.status.value}: {verdict.summary}")
        self._update_metrics()

    def _transition(self, verdict: Verdict, now: ClockReading) -> None:
        """Record offset/source conditions when they change, not on every check.

        Only the newest verdict is judged (an older one, from a round that finished its journal write later, is
        stale), and only once it was formed after every configured source class finished its first round: until
        then a class that has not answered yet is not a condition (issue 9: "only 0 of 0 sources usable" at
        start-up, then "recovered", both paging)."""
        with self._lock:
            if verdict is not self._verdict or not self._verdict_complete:
                return
            condition = _CONDITIONS[verdict.status]
            if condition == self._condition:
                return
            previous, self._condition = self._condition, condition
            if condition is None:
                kind, incident = EventKind.RECOVERED, self._condition_incident or new_id()
                self._condition_incident = None
            else:
                kind = condition
                self._condition_incident = self._condition_incident or new_id()
                incident = self._condition_incident
        trusted = None if verdict.offset_s is None else now.realtime_s + verdict.offset_s
        self._record(Event(kind=kind, incident_id=incident, wall_time_s=now.realtime_s,
                           monotonic_s=now.monotonic_s, boot_id=self.boot_id, trusted_time_s=trusted,
                           verdict=verdict_summary(verdict),
                           detail={"previous": None if previous is None else previous.value}))
        log = self.log.info if condition is None else self.log.warning
        log("condition", kind=kind.value, incident=incident, summary=verdict.summary)

    # ------------------------------------------------------------------------------------------ reload

    def _start_reload(self) -> None:
        """SIGHUP: read, validate and prepare the new configuration in a worker thread. A file may fail in any
        way (bad YAML, a YAML bomb, deep nesting, unreadable, a FIFO that never opens, a bug in a validator) or
        take long; detection never waits for it: the loop applies the result, or refuses it after
        RELOAD_TIMEOUT_S, and the old configuration stays in force until then."""
        self._stuck_reloads = [t for t in self._stuck_reloads if t.is_alive()]
        self._notifier.reloading()
        if len(self._stuck_reloads) >= MAX_STUCK_RELOADS:
            self._refuse_reload([f"{len(self._stuck_reloads)} earlier reloads are still stuck reading "
                                 f"{self.config_path}: restart the daemon to read it again"], "reload refused")
            return
        job = _Reload(started_s=time.monotonic())
        job.worker = threading.Thread(target=self._prepare_reload, args=(job,), name="reload", daemon=True)
        self._reload_job = job
        job.worker.start()

    def _prepare_reload(self, job: _Reload) -> None:
        """The worker: everything that can fail or take long (reading, validating, importing source and hook
        modules); nothing that changes the running daemon."""
        origin = str(self.config_path) if self.config_path is not None else "<embedded defaults>"
        try:
            cfg = config_mod.load(self.config_path)
            job.probes = self._probe_factory(cfg)
            job.dispatcher = self._make_dispatcher(cfg)
            job.cfg = cfg
        except config_mod.ConfigError as exc:
            job.errors = [p.format(exc.origin) for p in exc.problems]
        except RecursionError:
            job.errors = [f"{origin}: nested too deeply to be read"]
        except MemoryError:
            job.errors = [f"{origin}: too large to be read (out of memory)"]
        except Exception as exc:  # noqa: BLE001 - whatever fails, the reload is refused and the old config kept
            job.errors = [f"{origin}: {type(exc).__name__}: {exc}"]
        finally:
            job.done = True

    def _reload_progress(self, detector: StepDetector) -> None:
        job = self._reload_job
        assert job is not None
        if job.done:
            self._reload_job = None
            if job.cfg is None:
                self._refuse_reload(job.errors or ["unknown error"], "reload refused: invalid configuration")
                return
            try:
                self._apply_reload(job, detector)
            except Exception:  # applying is plain assignments; if one still fails, the loop must go on
                self.log.exception("reload_failed", config=job.cfg.origin)
                self._notifier.ready("reload failed")
            return
        waited = time.monotonic() - job.started_s
        if waited > RELOAD_TIMEOUT_S:
            self._reload_job = None  # abandoned: its result, if it ever comes, is never applied
            if job.worker is not None:
                self._stuck_reloads.append(job.worker)
            self._refuse_reload([f"{self.config_path}: not read and validated after {waited:.0f} s "
                                 f"(limit {RELOAD_TIMEOUT_S:.0f} s)"], "reload refused: timed out")

    def _refuse_reload(self, errors: list[str], status: str) -> None:
        self.log.error("reload_refused", config=str(self.config_path), errors=errors, keeping=self.cfg.origin)
        self._notifier.ready(f"{status}, old configuration kept")

    def _apply_reload(self, job: _Reload, detector: StepDetector) -> None:
        new, probes, dispatcher = job.cfg, job.probes, job.dispatcher
        assert new is not None and probes is not None and dispatcher is not None
        if new.state_dir != self.cfg.state_dir:
            self.log.warning("state_dir_change_needs_restart", old=self.cfg.state_dir, new=new.state_dir)
            new = dataclasses.replace(new, state_dir=self.cfg.state_dir)
        self.cfg = new
        logs.configure(new.logging.level, new.logging.format)
        detector.threshold_s = new.daemon.step_threshold_s
        old = self._dispatcher
        self._install_dispatcher(dispatcher)
        if old is not None:  # waits up to 2 s for hooks in flight: not in the detection loop
            threading.Thread(target=old.stop, name="stop-old-hooks", daemon=True).start()
        self._rebuild_probes(probes)
        self._rearm_jobs()
        self.log.info("reloaded", config=new.origin)
        self._notifier.ready("configuration reloaded")

    # ----------------------------------------------------------------------------------------- metrics

    def _start_metrics(self) -> None:
        if self.cfg.metrics.listen is None and self.cfg.metrics.textfile is None:
            return
        try:
            from timeguard.metrics import Metrics
        except ImportError as exc:
            self.log.error("metrics_unavailable", error=str(exc), hint="pip install 'timeguard[metrics]'")
            return
        self._metrics = Metrics(self.cfg.metrics, self.log)

    def _update_metrics(self) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.update(self)
        except Exception:  # metrics must never break detection
            self.log.exception("metrics_update_failed")

    @property
    def verdict(self) -> Verdict | None:
        return self._verdict


"""The timeguard daemon beside a real celery beat: shared by tests/e2e/test_beat_repair_daemon.py and
benchmarks/bench_beat_resume.py.

One FakeClock moves both: beat follows ``beat_clock`` itself (NO_CACHE: a step is seen at its very next tick),
the daemon ``beat_clock.sharing(1)`` (a 1-s libfaketime cache: under NO_CACHE the many-threaded daemon crawls,
an artefact of the harness). The time sources (FakeNTPServer, fake_http) run in the calling process at real
time on loopback; the hook ``type: celery_beat`` gets the beat database's URL with an explicit driver.

::

    with running_daemon(db, beat_clock, ntp, http, hook={"beat_max_interval_s": 1}) as daemon:
        beat_clock.set(FUTURE_S)
        daemon.wait_event(EventKind.OFFSET_CRITICAL, 10)
        with running_beat(db, beat_clock, max_interval=1) as beat:
            resumed = rollback_and_resume(db, beat_clock, beat, daemon)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support import beat as beatlib
from tests.support import daemon as daemonlib
from tests.support.beat import BeatDatabase, BeatProcess
from tests.support.realprogs import FakeClock, ManagedProcess, scratch_dir
from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookRun, HookStatus

REPAIR_HOOK = "beat-repair"
RELOAD_LINE = r"DatabaseScheduler: Schedule changed"


def repair_hook(db: BeatDatabase, **options: Any) -> dict[str, Any]:
    """The ``celery_beat`` hook for ``db``; ``options`` override (none: the defaults a user gets). With
    ``django`` (the project's settings) the hook names no database URL: the settings say where it is."""
    where = {} if "django" in options else {"database_url": db.sa_url}
    return {"type": "celery_beat", "name": REPAIR_HOOK, **where, **options}


@dataclasses.dataclass
class Daemon:
    config: Path
    log: Path
    proc: ManagedProcess
    started_mono: float = 0.0  # CLOCK_MONOTONIC just before the process was started

    def events(self, kind: EventKind | None = None) -> list[Event]:
        return daemonlib.events(self.config, kind)

    def wait_event(self, kind: EventKind, timeout_s: float, since_mono: float | None = None) -> Event:
        """The first ``kind`` event (recorded at or after ``since_mono``, CLOCK_MONOTONIC, shared with the daemon)."""
        def probe() -> Event | None:
            return next((e for e in self.events(kind) if since_mono is None or e.monotonic_s >= since_mono), None)

        return daemonlib.wait_for(kind.value, probe, timeout_s, self.proc)

    def hook_runs(self, hook: str = REPAIR_HOOK) -> list[HookRun]:
        return daemonlib.hook_runs(self.config, hook)

    def wait_hook_run(self, event: Event, timeout_s: float, hook: str = REPAIR_HOOK) -> HookRun:
        """``hook``'s recorded run for ``event`` (recorded when the run has finished)."""
        def probe() -> HookRun | None:
            return next((r for r in self.hook_runs(hook) if r.event_id == event.id), None)

        return daemonlib.wait_for(f"the {hook} run for {event.kind.value}", probe, timeout_s, self.proc)

    def last_check(self) -> Any:
        with daemonlib.journal_of(self.config) as j:
            return j.last_check()

    def audit(self) -> dict[str, Any] | None:
        """The last audit of the repair hook as the daemon recorded it (outcome, summary, next_in_s), or None."""
        with daemonlib.journal_of(self.config) as j:
            return j.meta().get(f"audit:{REPAIR_HOOK}")

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.log_tail(lines)


@contextlib.contextmanager
def running_daemon(db: BeatDatabase, beat_clock: FakeClock, ntp: Sequence[Any], http: Any, *,
                   hook: dict[str, Any] | None = None, extra_hooks: Sequence[dict[str, Any]] = (),
                   env: dict[str, str] | None = None, first_checks: int = 2, ready: bool = True
                   ) -> Iterator[Daemon]:
    """``timeguard run`` under ``beat_clock.sharing(1)`` with the celery_beat hook for ``db`` (``hook``: its
    options) and ``extra_hooks``; yields once it has recorded ``first_checks`` checks and its first audit
    (``ready=False``: at once, as a host's boot starts it — the boot case). Stopped by PID on exit."""
    directory = scratch_dir("beatdaemon")
    hooks = [repair_hook(db, **(hook or {})), *extra_hooks]
    config = daemonlib.write_config(directory, {"ntp": list(ntp), "http": http}, hooks=hooks)
    with restarted(config, beat_clock, env, ready=ready, first_checks=first_checks) as daemon:
        yield daemon


@contextlib.contextmanager
def restarted(config: Path, beat_clock: FakeClock, env: dict[str, str] | None = None, *, ready: bool = True,
              first_checks: int = 2) -> Iterator[Daemon]:
    """``timeguard run --config CONFIG`` (again: the same state directory and journal), as running_daemon."""
    log = config.parent / f"daemon-{time.monotonic_ns()}.log"
    started = time.monotonic()
    with daemonlib.start(config, beat_clock.sharing(1), log, env={**os.environ, **(env or {})}) as proc:
        daemon = Daemon(config, log, proc, started)
        if not ready:
            yield daemon
            return
        daemonlib.wait_for("the first checks", lambda: daemonlib.checks(config) >= first_checks, 20, proc)
        # The daemon audits the hook's database once every source class has answered, then every
        # audit_interval_s (600 s; after a skipped audit: audit_retry_s, 30 s, doubling). Wait for that first
        # look, so that no audit lands between a test's clock step and the daemon noticing it: the rollback's
        # run is then the one that repairs (an audit in that window would raise future_state_found and repair
        # first, leaving the rollback's run "nothing to repair").
        daemonlib.wait_for("the first audit", lambda: daemon.audit() is not None, 20, proc)
        yield daemon


# --------------------------------------------------------------------------------------------------------
# The measured resume: rollback → repair → beat sends again
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resumed:
    bug: beatlib.BugShown
    rollback: Event  # the daemon's rollback event
    reload_mono: float  # beat's first "Schedule changed" after the step
    first_resend: beatlib.SentTask  # the first custom task beat sent after the step (+ grace)
    quiet_before_reload: list[beatlib.SentTask]  # custom sends between step + grace and the reload (must be [])

    @property
    def step_to_resend_s(self) -> float:
        return self.first_resend.mono - self.bug.step_mono

    @property
    def step_to_detect_s(self) -> float:
        return self.rollback.monotonic_s - self.bug.step_mono

    @property
    def step_to_reload_s(self) -> float:
        return self.reload_mono - self.bug.step_mono


def rollback_and_resume(db: BeatDatabase, beat_clock: FakeClock, beat: BeatProcess, daemon: Daemon, *,
                        quiet_s: float = 1.0, resend_timeout_s: float = 40.0, before_step: Any = None) -> Resumed:
    """With the clock at +180 d, ``beat`` running and the daemon watching: drive_into_bug (the clock back to +0,
    beat silent for ``quiet_s``), then wait for the daemon's rollback, beat's reload and its first custom send."""
    bug = beatlib.drive_into_bug(db, beat_clock, beat, quiet_s=quiet_s, before_step=before_step)
    return resumed_after(bug, beat, daemon, resend_timeout_s=resend_timeout_s)


def resumed_after(bug: beatlib.BugShown, beat: BeatProcess, daemon: Daemon, *,
                  resend_timeout_s: float = 40.0) -> Resumed:
    """After the step of ``bug``: the daemon's rollback event, beat's reload and its first custom send."""
    t_step = bug.step_mono
    rollback = daemon.wait_event(EventKind.ROLLBACK, 10, since_mono=t_step - 1)
    reload = beat.wait_log(RELOAD_LINE, timeout_s=resend_timeout_s, since=t_step)
    first = beat.wait_custom_sent(t_step + beatlib.GRACE_S, resend_timeout_s, daemon.log_tail)
    sent = [s for s in beat.sent_since(t_step + beatlib.GRACE_S) if s.name in beatlib.CUSTOM]
    quiet = [s for s in sent if s.mono < reload.mono]
    return Resumed(bug, rollback, reload.mono, first, quiet)


def assert_changed(run: HookRun) -> None:
    assert run.status is HookStatus.CHANGED, f"{run.status.value}: {run.summary}\n{run.details}"

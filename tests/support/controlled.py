"""A scheduler the tests run the way a service manager would: through tests/support/beatctl.py.

The repair hooks' ``stop_command``/``start_command`` in the tests are beatctl's (``stop PIDFILE EVENTS``: SIGTERM
the PID in the pidfile and wait; ``start SPEC EVENTS``: start the SPEC's argv detached, PID to the pidfile); both
stamp EVENTS with CLOCK_MONOTONIC. A process beatctl started is not the test's child: :class:`AdoptedProcess`
watches and stops it by PID.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.support.beat import PROJECT_DIR, BeatProcess
from tests.support.realprogs import SETPRIV_NO_SYS_TIME, FakeClock, resolve_program, shm_entries

BEATCTL = Path(__file__).resolve().parent / "beatctl.py"


def commands(pidfile: Path, spec: Path, events: Path) -> dict[str, list[str]]:
    """The hook options that stop and start the process of ``pidfile`` / ``spec`` through beatctl."""
    return {"stop_command": [sys.executable, str(BEATCTL), "stop", str(pidfile), str(events)],
            "start_command": [sys.executable, str(BEATCTL), "start", str(spec), str(events)]}


def beat_spec(new: BeatProcess, clock: FakeClock, pidfile: Path) -> dict[str, Any]:
    """What BeatProcess.start runs (same command, environment, log), as beatctl's start SPEC."""
    program, *args = new.command()
    cmd = [resolve_program(program), *args]
    return {"argv": [*SETPRIV_NO_SYS_TIME, *clock.wrap(cmd)], "env": clock.env(new.environment(), preload=False),
            "cwd": str(PROJECT_DIR), "log": str(new.log_path), "pidfile": str(pidfile)}


class AdoptedProcess:
    """A process started by beatctl (not our child): alive/stop by PID, checked against its start time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.handle = psutil.Process(pid)
        self.returncode: int | None = None

    def alive(self) -> bool:
        try:
            return self.handle.is_running() and self.handle.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def stop(self) -> int | None:
        if self.alive():
            with contextlib.suppress(psutil.NoSuchProcess):
                self.handle.send_signal(signal.SIGTERM)  # psutil checks the PID is still this process
            deadline = time.monotonic() + 10
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.handle.send_signal(signal.SIGKILL)
        if not psutil.pid_exists(self.pid):
            for path in shm_entries(self.pid):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return self.returncode

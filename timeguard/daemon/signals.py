"""Signals for a daemon whose main thread must never deadlock: the handler only notes, the loop acts.

SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 logs the state, SIGUSR2 is ignored (the default action of all of
them would kill the daemon). A Python signal handler runs in the main thread between two bytecodes: possibly inside
a log write that holds the logger's non-reentrant lock, or inside a journal write. A handler that logs or takes a
lock can deadlock the daemon for good (issue 9: a second SIGTERM inside the first one's log line hung it for 25
minutes). So the handler only notes the signal in plain attributes, and the C-level handler writes the signal
number to a self-pipe (``signal.set_wakeup_fd``) that wakes the detection loop's wait, which then acts.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from types import FrameType
from typing import Any

from timeguard.watch.clockwatch import ClockStep, StepDetector

_STOP_SIGNALS = frozenset({signal.SIGTERM.value, signal.SIGINT.value})
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class SignalInbox:
    """What the signals asked for, noted by :meth:`on_signal`; the loop reads and clears the fields."""

    def __init__(self) -> None:
        self.stop: int | None = None  # the stop signal received
        self.reload = False
        self.report = False
        self.ignored: int | None = None
        self._wakeup_fds: tuple[int, int] | None = None  # the self-pipe signal.set_wakeup_fd writes to
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        """Handle the signals and wake :meth:`wait` on each (only possible in the main thread)."""
        if threading.current_thread() is not threading.main_thread() or self._wakeup_fds is not None:
            return
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wakeup_fds = (read_fd, write_fd)
        self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for signum in HANDLED:
            signal.signal(signum, self.on_signal)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """The handler: plain attribute stores only. No lock, no I/O, no logging, no threading.Event."""
        if signum in _STOP_SIGNALS:
            self.stop = signum
        elif signum == signal.SIGHUP:
            self.reload = True
        elif signum == signal.SIGUSR1:
            self.report = True
        else:
            self.ignored = signum

    def wait(self, clockwatch: StepDetector, timeout_s: float) -> list[ClockStep]:
        """The clock watch's wait, also woken at once by a signal (the self-pipe)."""
        if self._wakeup_fds is None:
            return clockwatch.wait(timeout_s)
        watcher = clockwatch.watcher
        fds: list[Any] = [self._wakeup_fds[0]]
        if watcher is not None and not watcher.closed:
            fds.append(watcher)
        try:
            select.select(fds, [], [], timeout_s)
        except (OSError, ValueError):
            return clockwatch.wait(timeout_s)  # the clock watch's own wait counts and logs the error
        try:
            while os.read(self._wakeup_fds[0], 512):
                pass
        except BlockingIOError:
            pass
        return clockwatch.poll()

    def close(self) -> None:
        """Hand the wakeup fd back before closing the pipe (a later signal must not write into a reused fd). The
        handlers stay: they only note signals, and a signal after the loop ended must not kill a clean exit."""
        if self._wakeup_fds is None:
            return
        fds, self._wakeup_fds = self._wakeup_fds, None
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for fd in fds:
            os.close(fd)

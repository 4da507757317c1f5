"""structlog set-up: console on a terminal, JSON lines otherwise (journald stores one line per entry).

Every entry carries ``monotonic_s`` and ``boottime_s`` beside the wall-clock ``timestamp``: the wall clock is
the thing timeguard distrusts, so the log must stay orderable across a rollback.

Under systemd, with stderr connected to the journal (``$JOURNAL_STREAM`` names stderr's device and inode), every
line starts with its syslog priority the way sd-daemon(3) defines it — ``<3>`` error, ``<4>`` warning, ``<6>``
info, ``<7>`` debug — so ``journalctl -p warning`` shows the warnings and errors. systemd's
``SyslogLevelPrefix=`` (on by default) strips the prefix and stores the priority.

structlog's lines and the lines of libraries that log through the stdlib (apscheduler, urllib3) go to the same
stream through one lock, one whole line per write: two threads never interleave inside a line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: sd-daemon(3) priorities by structlog level name.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}


def _add_clocks(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event["monotonic_s"] = round(time.monotonic(), 6)
    event["boottime_s"] = round(time.clock_gettime(time.CLOCK_BOOTTIME), 6)
    return event


def connected_to_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal's stream socket: ``$JOURNAL_STREAM`` is ``DEVICE:INODE`` of the fd
    systemd connected, and only counts if ``stream``'s fd is that very file (systemd.exec(5): a child whose stderr
    was redirected inherits the variable but not the connection)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no fd (a StringIO) or closed
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def prefixed(text: str, priority: int) -> str:
    """``text`` with ``<priority>`` at the start of every line (a traceback's lines are entries of their own)."""
    tag = f"<{priority}>"
    return tag + text.replace("\n", "\n" + tag)


def for_stderr(text: str, priority: int = 3) -> str:
    """``text`` to print to stderr before (or without) :func:`configure`, e.g. why the daemon does not start:
    with its priority on every line when stderr is the journal (default ``<3>``, an error)."""
    return prefixed(text, priority) if connected_to_journal(sys.stderr) else text


class _Lines:
    """The one stream every log line goes through, a whole line per write, under one lock."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            written = self._stream.write(text)
            self._stream.flush()
            return written

    def flush(self) -> None:
        pass  # every write is flushed under the lock

    def isatty(self) -> bool:
        return self._stream.isatty()


def _with_priority(renderer: Callable[..., str]) -> Callable[..., str]:
    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        level = str(event.get("level", name))
        return prefixed(renderer(logger, name, event), PRIORITIES.get(level, 6))

    return render


class _PriorityFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = 3 if record.levelno >= logging.ERROR else 4 if record.levelno >= logging.WARNING else \
            6 if record.levelno >= logging.INFO else 7
        return prefixed(super().format(record), priority)


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
              environ: dict[str, str] | None = None) -> None:
    """``fmt``: "auto" (console on a TTY, else JSON), "json" or "console". Priorities prefixed when ``stream`` is
    the journal (``environ``: for tests, default ``os.environ``)."""
    stream = stream or sys.stderr
    journal = connected_to_journal(stream, environ)
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
    if journal:
        renderer = _with_priority(renderer)
    lines = _Lines(stream)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_clocks,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=lines),  # type: ignore[arg-type]  # one write per line
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the stdlib (apscheduler, urllib3) go to the same stream, warnings only.
    handler = logging.StreamHandler(lines)  # type: ignore[arg-type]
    fmt_text = "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(_PriorityFormatter(fmt_text) if journal else logging.Formatter(fmt_text))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


def get(name: str = "timeguard") -> Any:
    return structlog.get_logger(name)

"""structlog set-up: console on a terminal, JSON lines otherwise (journald stores one line per entry).

Every entry carries ``monotonic_s`` and ``boottime_s`` beside the wall-clock ``timestamp``: the wall clock is
the thing timeguard distrusts, so the log must stay orderable across a rollback.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_clocks(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event["monotonic_s"] = round(time.monotonic(), 6)
    event["boottime_s"] = round(time.clock_gettime(time.CLOCK_BOOTTIME), 6)
    return event


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """``fmt``: "auto" (console on a TTY, else JSON), "json" or "console"."""
    stream = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
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
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries that log through the stdlib (apscheduler, urllib3) go to the same stream, warnings only.
    logging.basicConfig(level=logging.WARNING, stream=stream, format="%(levelname)s %(name)s: %(message)s",
                        force=True)


def get(name: str = "timeguard") -> Any:
    return structlog.get_logger(name)

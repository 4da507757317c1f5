"""A real daemon process whose log stream sends signals to its own process from INSIDE a log write.

``python -m tests.support.signal_child CONFIG LOG PLAN`` runs ``timeguard run`` (the CLI's path: load the config,
configure the logs, ``Agent.run``) with the log going to LOG through :class:`SignallingStream`. PLAN is a JSON
object ``{"started": ["SIGTERM", ...], ...}``: during the main thread's first write of the line with that
``event``, after the first half of the line is written and before the rest, those signals are sent to this very
process, one by one. A Python signal
handler runs in the main thread at the next bytecode, so it runs *inside* that write, while the logger holds its
(non-reentrant) lock: a handler that logs or takes that lock deadlocks here, every time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO


class SignallingStream:
    """A text stream over ``file`` that signals its own process during chosen writes of the main thread."""

    def __init__(self, file: TextIO, plan: dict[str, list[str]]) -> None:
        self._file = file
        self._plan = dict(plan)

    def write(self, text: str) -> int:
        if threading.current_thread() is not threading.main_thread():
            return self._file.write(text)
        event = next((e for e in self._plan if f'"event": "{e}"' in text), None)
        signals = self._plan.pop(event) if event is not None else []
        half = len(text) // 2
        written = self._file.write(text[:half])
        self._file.flush()
        for name in signals:
            os.kill(os.getpid(), getattr(signal, name))  # the handler runs here, inside this write
        return written + self._file.write(text[half:])

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._file.fileno()


def main(argv: list[str]) -> int:
    from timeguard import config, logs
    from timeguard.agent import Agent
    from timeguard.hooks.registry import HOOK_TYPES

    config_path, log_path, plan_text = argv
    plan: dict[str, list[str]] = json.loads(plan_text)
    cfg = config.load(config_path, hook_types=HOOK_TYPES)
    with Path(log_path).open("a", buffering=1) as log_file:
        stream: Any = SignallingStream(log_file, plan)
        logs.configure(cfg.logging.level, cfg.logging.format, stream=stream)
        return Agent(cfg, config_path=Path(config_path)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

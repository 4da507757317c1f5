"""A tiny service manager for celery beat, for the celery_beat hook's ``stop_command``/``start_command`` in tests.

::

    python tests/support/beatctl.py stop PIDFILE EVENTS      # SIGTERM the PID in PIDFILE, wait until it is gone
    python tests/support/beatctl.py start SPEC EVENTS        # start SPEC's argv detached, write its PID to PIDFILE

``SPEC`` is a JSON file: ``{"argv": [...], "env": {...}, "cwd": "...", "log": "...", "pidfile": "..."}``; the test
builds the argv (setpriv without CAP_SYS_TIME + libfaketime wrapper + ``python -m celery ... beat``), so this
program starts exactly what :class:`tests.support.beat.BeatProcess` would. ``start`` returns at once (like
``systemctl start``): the beat runs on in its own session with its output in ``log``, stdin/stdout/stderr not
inherited (the hook runs this with captured output and would otherwise wait for the beat to end).

Every action appends one JSON line to ``EVENTS`` with CLOCK_MONOTONIC times (the same clock in every process),
so the test can order them against the repair.

``stop`` only signals the PID written in PIDFILE (never by name), treats a zombie as gone (the test process,
the parent of the first beat, reaps it later), and exits 1 if the process is still alive after 20 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STOP_TIMEOUT_S = 20.0


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def _record(events: str, **entry: object) -> None:
    with open(events, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def stop(pidfile: str, events: str) -> int:
    began = time.monotonic()
    pid = int(Path(pidfile).read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _record(events, op="stop", pid=pid, began=began, done=time.monotonic(), already_gone=True)
        return 0
    deadline = began + STOP_TIMEOUT_S
    while not _gone(pid):
        if time.monotonic() > deadline:
            _record(events, op="stop", pid=pid, began=began, done=None, error="still running")
            print(f"beatctl: pid {pid} still running {STOP_TIMEOUT_S:g} s after SIGTERM", file=sys.stderr)
            return 1
        time.sleep(0.02)
    _record(events, op="stop", pid=pid, began=began, done=time.monotonic())
    return 0


def start(spec_path: str, events: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    began = time.monotonic()
    with open(spec["log"], "ab") as log:
        proc = subprocess.Popen(spec["argv"], env=spec["env"], cwd=spec["cwd"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    tmp = Path(spec["pidfile"] + ".tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(spec["pidfile"])
    _record(events, op="start", pid=proc.pid, began=began, done=time.monotonic())
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("stop", "start"):
        print("usage: beatctl.py stop PIDFILE EVENTS | start SPEC EVENTS", file=sys.stderr)
        return 2
    return stop(argv[1], argv[2]) if argv[0] == "stop" else start(argv[1], argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

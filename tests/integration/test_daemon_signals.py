"""Signals to the daemon as a real process (issue 9, item 13): a signal handler must never log, lock or do I/O.

Once, a daemon that got SIGTERM twice hung for 25 minutes: the second SIGTERM arrived while the first handler's
log line held structlog's non-reentrant lock, and its handler blocked on that lock. These tests deliver signals
deterministically inside a log write of the main thread, and in bursts while the daemon's threads log, and
require a clean exit (code 0, "stopped" logged, the journal closed) within seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import random
import re
import signal
import socket
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import log_event, wait_for, write_config
from tests.support.realprogs import ManagedProcess, scratch_dir

REPO = Path(__file__).resolve().parents[2]
EXIT_WITHIN_S = 8.0  # hooks get 2 s to finish at shutdown; the rest is Python and SQLite
STDLIB_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")  # what libraries log (logs.py)
WRITE_SYSCALL = {"x86_64": 1, "aarch64": 64}.get(platform.machine())


def _entries(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _wait_exit(proc: ManagedProcess, timeout_s: float) -> float:
    """Seconds until ``proc`` exited; fails (and the fixture kills it) if it did not within ``timeout_s``."""
    started = time.monotonic()
    while proc.alive():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"the daemon did not exit within {timeout_s} s of the signals (hung):\n{proc.log_tail(30)}")
        time.sleep(0.02)
    return time.monotonic() - started


PLANS = {  # the line (its event) inside whose write the signals arrive → the signals, in order
    "term-twice": {"started": ["SIGTERM", "SIGTERM"]},
    "term-in-the-stopping-line": {"started": ["SIGTERM"], "stopping": ["SIGTERM", "SIGINT"]},
    "hup-usr-then-term": {"started": ["SIGHUP", "SIGUSR1", "SIGUSR2"], "signal_ignored": ["SIGUSR1", "SIGHUP"],
                          "state": ["SIGTERM", "SIGHUP", "SIGUSR1", "SIGTERM"]},
    "int-then-term-thrice": {"started": ["SIGINT"], "stopping": ["SIGTERM", "SIGTERM", "SIGTERM"]},
    "hup-during-start-up": {"outbox_started": ["SIGHUP", "SIGUSR1"], "started": ["SIGTERM"]},
}


@pytest.mark.parametrize("plan", list(PLANS), ids=list(PLANS))
def test_signals_sent_from_inside_a_log_write_of_the_main_thread(sources, plan):
    """The log stream itself sends the signals to its own process in the middle of writing a line
    (tests/support/signal_child.py): a second SIGTERM inside the first one's ``stopping`` line is the very case of
    the 25-minute hang. Whatever the mix, the daemon exits cleanly within seconds of its ``stopping``."""
    directory = scratch_dir("signals")
    config = write_config(directory, sources)
    log = directory / "daemon.log"
    log.touch()
    cmd = [sys.executable, "-m", "tests.support.signal_child", str(config), str(log), json.dumps(PLANS[plan])]
    with ManagedProcess.start(cmd, name="timeguard", log_path=directory / "stderr.log", cwd=str(REPO),
                              stop_signal=signal.SIGKILL) as proc:
        stopping = wait_for("stopping", lambda: log_event(log, "stopping"), 30, proc)
        took = _wait_exit(proc, EXIT_WITHIN_S) + time.monotonic() - stopping["monotonic_s"]
    names = [e.get("event") for e in _entries(log.read_text())]
    assert proc.returncode == 0, (proc.returncode, (directory / "stderr.log").read_text()[-3000:])
    assert names.count("stopping") == 1 and "stopped" in names, names
    assert took < EXIT_WITHIN_S
    print(f"{plan}: exited {took:.2f} s after stopping")


def _thread_syscall(pid: int, tid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
    except OSError:
        return []


@pytest.mark.skipif(WRITE_SYSCALL is None, reason="write(2)'s syscall number is known for x86_64 and aarch64 only")
def test_sigterm_twice_while_the_main_thread_is_blocked_writing_its_log(sources):
    """The real ``timeguard run`` with its stderr a full pipe: the main thread blocks inside its ``started`` log line
    (write(2) on fd 2, seen in /proc), holding the logger's lock. Two SIGTERMs, a SIGHUP and a SIGUSR1 arrive
    there; then the pipe is drained. Before the fix, the first handler's own log line deadlocked on that lock."""
    directory = scratch_dir("signals")
    for server in sources["ntp"]:
        server.blackhole = True  # no source answers for 5 s: no other thread logs before the main thread's lines
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections (backlog), never answers
    http = types.SimpleNamespace(url=f"http://127.0.0.1:{silent.getsockname()[1]}/")
    config = write_config(directory, {"ntp": sources["ntp"], "http": http}, timeout_s=5)
    # A one-page pipe, filled but for room for the first line (outbox_started, ~210 bytes, logged before the
    # handlers were installed before the fix): the next one, ``started`` (~300 bytes), blocks in write(2).
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    os.write(write_fd, b"#" * (4096 - 300))
    drained: list[bytes] = []
    try:
        with ManagedProcess.start([sys.executable, "-m", "timeguard", "run", "--config", str(config)],
                                  name="timeguard", stdout=write_fd, stderr=write_fd) as proc:
            os.close(write_fd)
            write_fd = -1
            blocked = wait_for("the main thread blocked in write(2, ...)",
                               lambda: (s := _thread_syscall(proc.pid, proc.pid))[:2] == [str(WRITE_SYSCALL), "0x2"]
                               and s, 20, proc)
            for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
                os.kill(proc.pid, signum)
                time.sleep(0.05)
            assert proc.alive()  # nothing could be written yet: still inside that write

            def drain() -> None:
                while chunk := os.read(read_fd, 65536):
                    drained.append(chunk)

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
            took = _wait_exit(proc, EXIT_WITHIN_S)
            reader.join(5)
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        silent.close()
    entries = _entries(b"".join(drained).decode(errors="replace").replace("#", ""))
    names = [e.get("event") for e in entries]
    assert blocked[:2] == [str(WRITE_SYSCALL), "0x2"]
    assert names[:3] == ["outbox_started", "started", "stopping"], names  # the signals came inside ``started``
    assert proc.returncode == 0 and "stopped" in names and names.count("stopping") == 1, names
    print(f"exited {took:.2f} s after the pipe was drained")


def test_signal_bursts_while_the_threads_log(sources):
    """Hundreds of SIGHUP/SIGUSR1/SIGUSR2 in bursts (each reload re-arms the checks: the scheduler's threads log
    meanwhile), then SIGTERMs among more of them: a clean exit within seconds, every log line intact."""
    directory = scratch_dir("signals")
    config = write_config(directory, sources)
    log = directory / "daemon.log"
    rng = random.Random(9)
    with ManagedProcess.start([sys.executable, "-m", "timeguard", "run", "--config", str(config)],
                              name="timeguard", log_path=log) as proc:
        wait_for("started", lambda: log_event(log, "started"), 20, proc)
        for _ in range(30):
            for _ in range(rng.randint(1, 15)):
                os.kill(proc.pid, rng.choice([signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR1, signal.SIGUSR2]))
            time.sleep(rng.uniform(0, 0.05))
        assert proc.alive()
        for _ in range(40):
            os.kill(proc.pid, rng.choice([signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1]))
        os.kill(proc.pid, signal.SIGTERM)
        took = _wait_exit(proc, EXIT_WITHIN_S)
    lines = log.read_text().splitlines()
    entries = _entries("\n".join(lines))
    names = [e.get("event") for e in entries]
    assert proc.returncode == 0 and "stopped" in names and names.count("stopping") == 1
    torn = [line for line in lines if not _entries(line) and not STDLIB_LINE.match(line)]
    assert not torn  # every line whole: none torn or interleaved by a write from inside another
    assert "state" in names and "reloaded" in names and "checked" in names
    print(f"{len(lines)} log lines, {names.count('reloaded')} reloads, {names.count('state')} state reports; "
          f"exited {took:.2f} s after the first SIGTERM")

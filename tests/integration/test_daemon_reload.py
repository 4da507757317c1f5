"""SIGHUP to the daemon as a real process (issue 9, item 6): a reload may fail in any way — not YAML, a YAML
bomb, 600 nested ``[``, not UTF-8, a directory, a FIFO nobody writes (the read never returns) — and the daemon
keeps its old configuration and keeps detecting: the systemd watchdog is pinged on time throughout, and a clock
step during a stuck reload is seen at once. Reading and validating happen in a worker thread, never in the signal
handler or the detection loop; a reload not done after RELOAD_TIMEOUT_S is refused.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import log_event, start, wait_for, write_config
from tests.support.realprogs import scratch_dir
from timeguard.daemon.reload import RELOAD_TIMEOUT_S
from timeguard.events import EventKind

WATCHDOG_S = 3.0  # WatchdogSec as the test's "systemd" announces it: pings every 1.5 s, checked once per 1-s tick


def _bomb(levels: int) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _count(log: Path, name: str) -> int:
    return log.read_text(errors="replace").count(f'"event": "{name}"')


class _Manager:
    """The NOTIFY_SOCKET end: every datagram with its CLOCK_MONOTONIC arrival time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_sighup_with_any_bad_file_keeps_the_old_config_and_detection_going(fake_clock, sources):
    directory = scratch_dir("reload")
    config = write_config(directory, sources)
    good = config.read_text()
    log = directory / "daemon.log"
    manager = _Manager(directory / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(directory / "notify.sock"), "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}
    bad_files: dict[str, Any] = {
        "not YAML": "sources: [unclosed\n",
        "alias bomb": _bomb(6),
        "600 nested [": "[" * 600 + "]" * 600 + "\n",
        "not UTF-8": b"state_dir: \xff\xfe\n",
        "a directory": None,
        "invalid value": good + "\nthresholds: {warning_s: oops}\n",
    }
    refused: dict[str, str] = {}
    try:
        with start(config, fake_clock, log, env=env) as proc:
            wait_for("the first check", lambda: log_event(log, "checked"), 15, proc)
            for case, content in bad_files.items():
                before = _count(log, "reload_refused")
                config.unlink(missing_ok=True)
                if content is None:
                    config.mkdir()
                elif isinstance(content, bytes):
                    config.write_bytes(content)
                else:
                    config.write_text(content)
                os.kill(proc.pid, signal.SIGHUP)
                wait_for(f"reload_refused ({case})", lambda b=before: _count(log, "reload_refused") > b,
                         RELOAD_TIMEOUT_S + 10, proc)
                if content is None:
                    config.rmdir()
                refused[case] = _last(log, "reload_refused")

            # A FIFO nobody writes: the worker's read never returns. Detection goes on; the reload times out.
            config.unlink(missing_ok=True)
            os.mkfifo(config)
            before = _count(log, "reload_refused")
            sighup_at = time.monotonic()
            os.kill(proc.pid, signal.SIGHUP)
            time.sleep(1.0)
            stepped = time.monotonic()
            fake_clock.set(3600)
            jump = wait_for("forward_jump during the stuck reload", lambda: _jumps(directory), 5, proc)[0]
            wait_for("reload_refused (FIFO)", lambda: _count(log, "reload_refused") > before, RELOAD_TIMEOUT_S + 10,
                     proc)
            refused["a FIFO nobody writes"] = _last(log, "reload_refused")
            timed_out_after = time.monotonic() - sighup_at
            # Let the stuck worker finish now: what it reads so late is never applied.
            fd = os.open(config, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, good.replace("level: debug", "level: info").encode())
            os.close(fd)
            time.sleep(1.0)
            assert _count(log, "reloaded") == 0

            config.unlink()
            config.write_text(good)
            os.kill(proc.pid, signal.SIGHUP)
            wait_for("reloaded", lambda: log_event(log, "reloaded"), RELOAD_TIMEOUT_S + 5, proc)
            assert proc.alive()
        assert proc.returncode == 0
    finally:
        manager.close()

    for case, entry in refused.items():
        print(f"{case}: {entry['errors']}")
        assert entry["keeping"] == str(config) and entry["errors"]
    assert "not valid YAML" in str(refused["not YAML"])
    assert "UTF-8" in str(refused["not UTF-8"]) and "cannot read" in str(refused["a directory"])
    assert "must be a number of seconds" in str(refused["invalid value"])
    assert f"limit {RELOAD_TIMEOUT_S:.0f} s" in str(refused["a FIFO nobody writes"])
    assert RELOAD_TIMEOUT_S <= timed_out_after < RELOAD_TIMEOUT_S + 3
    assert jump.step_s == pytest.approx(3600, abs=1) and jump.monotonic_s - stepped < 1.5

    pings = [t for t, m in manager.messages if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    print(f"{len(pings)} watchdog pings, longest gap {max(gaps):.2f} s (WatchdogSec {WATCHDOG_S} s); "
          f"forward_jump seen {jump.monotonic_s - stepped:.3f} s after the step during the stuck reload; "
          f"FIFO reload refused after {timed_out_after:.1f} s")
    assert max(gaps) < WATCHDOG_S
    texts = [m for _, m in manager.messages]
    reloading = sum("RELOADING=1" in m for m in texts)
    assert reloading == len(bad_files) + 2  # every reload announced ...
    assert sum("READY=1" in m for m in texts) == reloading + 1  # ... and concluded (plus the start-up READY)


def _jumps(directory: Path) -> list[Any]:
    """The forward jumps in the journal, read without the config file (it is a FIFO just now)."""
    from timeguard.store.journal import Journal, JournalError

    try:
        with Journal(directory / "state" / "journal.sqlite", readonly=True) as j:
            return j.events(kinds=[EventKind.FORWARD_JUMP])
    except JournalError:
        return []


def _last(log: Path, name: str) -> dict[str, Any]:
    import json

    found = None
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == name:
                found = entry
    assert found is not None
    return found

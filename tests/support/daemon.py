"""The daemon as a real process for tests: its config, start under a FakeClock, waiting on its journal and log.

Used by the daemon integration tests and the celery-beat end-to-end tests. The honest sources (FakeNTPServer,
fake_http.running) run in the test process on loopback at real time; the daemon runs under libfaketime.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.realprogs import FakeClock, ManagedProcess, run_under_clock
from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookRun
from timeguard.store.journal import Journal, JournalError


def write_config(directory: Path, sources: dict[str, Any], **overrides: Any) -> Path:
    """The daemon's config for ``sources`` (``"http": None``: no HTTP source, ``http: []``); ``overrides`` are merged
    into the top-level sections."""
    cfg: dict[str, Any] = {
        "state_dir": str(directory / "state"),
        "sources": {
            "ntp": [{"host": "127.0.0.1", "port": s.port} for s in sources["ntp"]],
            "http": [] if sources.get("http") is None else [{"url": sources["http"].url, "allow_plain_http": True}],
        },
        "timeout_s": 3,
        "http": {"requests": 3},
        "daemon": {"ntp_interval_s": 15, "http_interval_s": 15},
        "logging": {"format": "json", "level": "debug"},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = directory / "timeguard.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(config: Path, clock: FakeClock | None, log: Path, env: dict[str, str] | None = None) -> ManagedProcess:
    cmd = [sys.executable, "-m", "timeguard", "run", "--config", str(config)]
    if clock is None:
        return ManagedProcess.start(cmd, log_path=log, env=env)
    return run_under_clock(cmd, clock, log_path=log, env=env)


def journal_of(config: Path) -> Journal:
    """Read-only: the daemon owns the journal (readonly never takes the write lock or migrates)."""
    return Journal(Path(yaml.safe_load(config.read_text())["state_dir"]) / "journal.sqlite", readonly=True)


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float, proc: ManagedProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if proc is not None and not proc.alive():
            pytest.fail(f"daemon exited ({proc.returncode}) while waiting for {what}:\n{proc.log_tail(40)}")
        time.sleep(0.05)
    tail = proc.log_tail(40) if proc is not None else ""
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def _read(config: Path, query: Callable[[Journal], Any], empty: Any) -> Any:
    """``query(journal)``, or ``empty`` while the daemon has not created (and migrated) its journal yet."""
    try:
        with journal_of(config) as j:
            return query(j)
    except JournalError:
        return empty


def events(config: Path, kind: EventKind | None = None) -> list[Event]:
    return _read(config, lambda j: j.events(kinds=None if kind is None else [kind]), [])


def checks(config: Path) -> int:
    return _read(config, lambda j: j.check_count(), 0)


def last_check(config: Path) -> Any:
    """The newest check the daemon recorded (a CheckRecord: status, sources in brief), or None."""
    return _read(config, lambda j: j.last_check(), None)


def ntp_requests(sources: dict[str, Any]) -> int:
    return sum(len(s.received) for s in sources["ntp"])


def log_event(log: Path, name: str) -> dict[str, Any] | None:
    """The first log entry ``name`` (a journald priority prefix ``<N>`` skipped), or None."""
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(re.sub(r"\A<[0-7]>", "", line))
        except ValueError:
            continue
        if entry.get("event") == name:
            return entry
    return None


def hook_runs(config: Path, hook: str | None = None) -> list[HookRun]:
    """Every recorded run (of ``hook``), oldest first."""
    return _read(config, lambda j: j.hook_runs(hook=hook), [])


def meta(config: Path) -> dict[str, Any]:
    return _read(config, lambda j: j.meta(), {})

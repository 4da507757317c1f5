"""The guard in the real daemon: a reload (SIGHUP) that turns the guard off while it keeps a scheduler stopped
starts the scheduler, loudly — never leaves it stopped in silence (timeguard/repair/guard.py, "release"); and a
forward step that *corrects* a clock that was behind stops nothing (a step is no evidence, the sources are).

``timeguard run`` under libfaketime with honest sources on loopback; the hook is ``type: celery_beat`` on a real
django-celery-beat schema (SQLite); its "scheduler" is represented by stop/start commands that append to a file
(the guard's contract with the owner is exactly those two commands; tests/e2e/test_beat_guard.py runs a real beat).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.daemon import checks, events, journal_of, log_event, start, wait_for, write_config
from tests.support.dcb_schema import beat_database
from tests.support.realprogs import FakeClock, scratch_dir
from timeguard.events import EventKind

pytestmark = pytest.mark.real

FUTURE_S = 180 * 86400


@pytest.fixture
def beat_db(tmp_path: Path) -> Iterator[Any]:
    with beat_database("sqlite", tmp_path) as db:
        yield db


def _hook(db: Any, owner: Path, guard: str) -> dict[str, Any]:
    return {"type": "celery_beat", "name": "beat", "database_url": db.url, "guard": guard, "timeout_s": 20,
            "stop_command": ["sh", "-c", f"echo stop >> {owner}"],
            "start_command": ["sh", "-c", f"echo start >> {owner}"]}


def _owner(owner: Path) -> list[str]:
    return owner.read_text().split() if owner.exists() else []


@pytest.mark.parametrize("change", ["guard: alert", "hook removed"])
def test_a_reload_that_turns_the_guard_off_starts_the_stopped_scheduler(fake_clock: FakeClock,
                                                                        sources: dict[str, Any], beat_db: Any,
                                                                        change: str) -> None:
    directory = scratch_dir("guardreload")
    owner = directory / "owner.log"
    config = write_config(directory, sources, hooks=[_hook(beat_db, owner, "stop")])
    log = directory / "daemon.log"
    with start(config, fake_clock, log, env=dict(os.environ)) as proc:
        wait_for("two checks", lambda: checks(config) >= 2, 40, proc)
        fake_clock.set(FUTURE_S)
        wait_for("the guard's stop", lambda: _owner(owner) == ["stop"], 20, proc)
        with journal_of(config) as journal:
            assert list(journal.guards()) == ["beat"]

        cfg = yaml.safe_load(config.read_text())
        cfg["hooks"] = [_hook(beat_db, owner, "alert")] if change == "guard: alert" else []
        config.write_text(yaml.safe_dump(cfg))
        os.kill(proc.pid, signal.SIGHUP)
        wait_for("the start after the reload", lambda: _owner(owner) == ["stop", "start"], 30, proc)
        released = wait_for("guard_released_scheduler in the log",
                            lambda: log_event(log, "guard_released_scheduler"), 10, proc)
        assert released["level"] == "error", released
        with journal_of(config) as journal:
            assert journal.guards() == {}

        def announced() -> list[Any]:
            return [e for e in events(config, EventKind.FUTURE_STATE_ACCRUING)
                    if any(s.get("action") == "released" for s in e.detail.get("stores", []))]

        wait_for("the release announced", announced, 10, proc)
        assert len(announced()) == 1, [e.detail for e in events(config, EventKind.FUTURE_STATE_ACCRUING)]
        why = announced()[0].detail["stores"][0]["why"]
        assert why == ("its hook is now guard: alert" if change == "guard: alert" else "its hook was removed")
        assert proc.alive()


def test_a_forward_step_that_corrects_a_clock_behind_stops_nothing(fake_clock: FakeClock, sources: dict[str, Any],
                                                                   beat_db: Any) -> None:
    """The host runs 3 days behind (the sources say so: offset_critical), then its clock steps forward to the right
    time: a forward_jump, and the re-based verdict says the host is now right — nothing is stopped."""
    directory = scratch_dir("guardfwd")
    owner = directory / "owner.log"
    config = write_config(directory, sources, hooks=[_hook(beat_db, owner, "stop")])
    log = directory / "daemon.log"
    fake_clock.set(-3 * 86400)
    with start(config, fake_clock, log, env=dict(os.environ)) as proc:
        wait_for("offset_critical (3 days behind)", lambda: events(config, EventKind.OFFSET_CRITICAL), 40, proc)
        fake_clock.set(0)
        wait_for("the forward jump", lambda: events(config, EventKind.FORWARD_JUMP), 20, proc)
        before = checks(config)
        wait_for("a check after the step", lambda: checks(config) > before, 40, proc)
        assert _owner(owner) == []
        assert events(config, EventKind.FUTURE_STATE_ACCRUING) == []
        with journal_of(config) as journal:
            assert journal.guards() == {}
        assert proc.alive()

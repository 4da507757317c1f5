"""A real ``celery beat`` with celery's default scheduler (the celerybeat-schedule shelve) under libfaketime.

The app is ``tests/e2e/shelveproject/shelveapp.py`` (every-1s, every-2s, every-3s, hourly; beat_sync_every=1).
Its broker is Redis db 13 (the shelve tests' own) with a key prefix and queue per beat. It reuses the django-celery-beat
harness's observer (:class:`tests.support.beat.BeatProcess`: log tail, sends, rates, stop by PID); only the
command, environment and Redis database differ.

::

    beat = ShelveBeat(clock, schedule_dir).start()
    beat.wait_sent("every-1s", 3)
    future_entries(beat.schedule)            # {name: seconds ahead of real time} (read from a copy)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from tests.support.beat import BeatProcess, LogTail
from tests.support.controlled import AdoptedProcess, commands
from tests.support.realprogs import SETPRIV_NO_SYS_TIME, FakeClock, resolve_program, run_under_clock
from tests.support.shelve import read_entries

APP_DIR = Path(__file__).resolve().parent.parent / "e2e" / "shelveproject"
REDIS_URL = "redis://127.0.0.1:6379/13"
NAMES = ("every-1s", "every-2s", "every-3s")  # sent every few seconds
HOURLY = "hourly"  # created with last_run_at = beat's now and not due for an hour: never sent in a test
EVERY_S = {"every-1s": 1.0, "every-2s": 2.0, "every-3s": 3.0}


class _App:
    """What BeatProcess reads from its ``db``: a kind for messages and the environment."""

    kind = "shelve"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))}
        env.update(PYTHONPATH=str(APP_DIR), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **(extra or {}))
        return env


class ShelveBeat(BeatProcess):
    """``python -m celery -A shelveapp beat -s DIR/celerybeat-schedule --max-interval 1`` under ``clock``."""

    def __init__(self, clock: FakeClock, schedule_dir: Path, *, keyprefix: str | None = None) -> None:
        super().__init__(_App(), clock, max_interval=1)  # type: ignore[arg-type]
        self.schedule = schedule_dir / "celerybeat-schedule"
        if keyprefix is not None:  # a restarted beat keeps its predecessor's queue
            self.keyprefix, self.queue = keyprefix, keyprefix.rstrip(":")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "shelveapp", "beat", "-l", self.loglevel, "--pidfile=",
                "-s", str(self.schedule), "--max-interval", str(self.max_interval)]

    def environment(self) -> dict[str, str]:
        return self.db.env({"TG_BEAT_BROKER_URL": REDIS_URL, "TG_BEAT_KEYPREFIX": self.keyprefix,
                            "TG_BEAT_QUEUE": self.queue})

    def start(self) -> Self:
        """As BeatProcess.start, in the app's directory (its files, not the Django project's, are what beat and
        timeguard discover read)."""
        self.log_path.touch()
        self.tail = LogTail(self.log_path)
        self.started_mono = time.monotonic()
        self.process = run_under_clock(self.command(), self.clock, name="celery-beat:shelve", log_path=self.log_path,
                                       env=self.environment(), cwd=str(APP_DIR), stop_signal=signal.SIGTERM,
                                       stop_timeout_s=10)
        return self

    def spec(self, pidfile: Path) -> dict[str, Any]:
        """This beat as tests/support/beatctl.py's start SPEC (what :meth:`start` would run)."""
        program, *args = self.command()
        return {"argv": [*SETPRIV_NO_SYS_TIME, *self.clock.wrap([resolve_program(program), *args])],
                "env": self.clock.env(self.environment(), preload=False), "cwd": str(APP_DIR),
                "log": str(self.log_path), "pidfile": str(pidfile)}

    def _clean_redis(self) -> None:
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            try:
                keys = list(client.scan_iter(match=f"{self.keyprefix}*", count=500))
                keys += list(client.scan_iter(match=f"*{self.queue}*", count=500))
                if keys:
                    client.delete(*set(keys))
            finally:
                client.close()


def beatctl_commands(work: Path, new: ShelveBeat) -> dict[str, list[str]]:
    """The hook's stop/start commands: tests/support/beatctl.py stop (SIGTERM the PID in ``work/beat.pid``, wait) and
    start (``new``'s command, detached, its PID to the pidfile); both stamp ``work/events.jsonl``."""
    pidfile, events, spec = work / "beat.pid", work / "events.jsonl", work / "spec.json"
    spec.write_text(json.dumps(new.spec(pidfile)))
    return commands(pidfile, spec, events)


def ctl_events(work: Path) -> list[dict[str, Any]]:
    """beatctl's stamps: [{op: stop|start, pid, began, done}] (CLOCK_MONOTONIC)."""
    path = work / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def adopt(new: ShelveBeat, work: Path, since: float) -> None:
    """``new`` was started by beatctl (not our child): observe it from ``since``, stop it by its PID at the end."""
    new.process = AdoptedProcess(int((work / "beat.pid").read_text()))  # type: ignore[assignment]
    new.started_mono = since


def schedule_entries(schedule: Path) -> dict[str, Any]:
    """The entries of the shelve, read from a copy (beat may hold the original open and write it)."""
    with tempfile.TemporaryDirectory(prefix="shelve-copy-") as tmp:
        for f in schedule.parent.iterdir():
            if f.is_file() and f.name.startswith(schedule.name):
                shutil.copy2(f, Path(tmp) / f.name)
        return read_entries(Path(tmp) / schedule.name)


def ahead_s(schedule: Path) -> dict[str, float]:
    """{entry: how far its last_run_at is ahead of real time (s)} for the app's entries."""
    now = time.time()
    return {name: e.last_run_at.timestamp() - now for name, e in schedule_entries(schedule).items()
            if name in (*NAMES, HOURLY)}

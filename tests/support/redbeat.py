"""A real RedBeat beat under libfaketime, its Redis (one database), and the timeguard daemon beside it.

The app is ``tests/e2e/redbeatapp`` (every-1s, every-2s: intervals; every-minute: a crontab), started as
``python -m celery -A redbeatapp beat -S redbeat.RedBeatScheduler`` by the django-celery-beat harness's
:class:`tests.support.beat.BeatProcess` (its log tail, sends and rates), with this command and environment.
Everything RedBeat keeps is in that one database; :func:`fresh_db` flushes that database and no other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support import beat as beatlib
from tests.support import beatdaemon, redisdb
from tests.support import daemon as daemonlib
from tests.support.realprogs import FakeClock, scratch_dir
from timeguard.events import EventKind

REDIS_URL = redisdb.url(redisdb.REDBEAT)  # this worker's own: fresh_db flushes it
APP_DIR = Path(__file__).resolve().parent.parent / "e2e" / "redbeatapp"
PREFIX = "redbeat:"
SCHEDULE = PREFIX + ":schedule"
INTERVALS = ("every-1s", "every-2s")
TASKS = (*INTERVALS, "every-minute")


def client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL)


@contextlib.contextmanager
def fresh_db() -> Iterator[Any]:
    """A client of the harness's database, flushed before and after (this harness's database only); skips (fails under
    TIMEGUARD_REQUIRE_REAL=1) without celery-redbeat or a Redis."""
    import importlib.util

    from tests.support.require import need

    need(importlib.util.find_spec("redbeat"), "celery-redbeat is not installed (pip install -e '.[test]')")
    import redis

    c = client()
    try:
        c.ping()
        problem = None
    except redis.RedisError as exc:
        problem = f"no Redis on 127.0.0.1:6379 ({exc})"
    need(problem is None, problem or "")
    c.flushdb()
    try:
        yield c
    finally:
        c.flushdb()
        c.close()


def future_times(c: Any, now_s: float, tolerance_s: float = 60.0) -> dict[str, float]:
    """Every score and meta.last_run_at in the schedule more than ``tolerance_s`` after ``now_s``."""
    import json

    from timeguard.repair.redbeat import decode_datetime

    found = {}
    for key, score in c.zrange(SCHEDULE, 0, -1, withscores=True):
        name = key.decode()
        if score > now_s + tolerance_s:
            found[f"{name} score"] = score
        meta = c.hget(key, "meta")
        last = json.loads(meta)["last_run_at"] if meta else None
        if last is not None and (when := decode_datetime(last).timestamp()) > now_s + tolerance_s:
            found[f"{name} meta"] = when
    return found


@dataclasses.dataclass(frozen=True)
class _App:
    kind: str = "redbeat"


class RedBeatProcess(beatlib.BeatProcess):
    """``celery beat -S redbeat.RedBeatScheduler`` for the redbeat app (max interval 1 s)."""

    def __init__(self, clock: FakeClock, max_interval: float | None = 1) -> None:
        super().__init__(_App(), clock, max_interval=max_interval)  # type: ignore[arg-type]

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "celery", "-A", "redbeatapp", "beat", "-S", "redbeat.RedBeatScheduler",
               "-l", self.loglevel, "--pidfile="]
        if self.max_interval is not None:
            cmd += ["--max-interval", str(self.max_interval)]
        return cmd

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))}
        env.update(PYTHONPATH=str(APP_DIR), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                   TG_REDBEAT_URL=REDIS_URL, TG_REDBEAT_PREFIX=PREFIX)
        return env

    def _clean_redis(self) -> None:
        return None  # the database belongs to the test: fresh_db flushes it


@contextlib.contextmanager
def running_redbeat(clock: FakeClock, max_interval: float | None = 1) -> Iterator[RedBeatProcess]:
    beat = RedBeatProcess(clock, max_interval)
    try:
        yield beat.start()
    finally:
        beat.stop()


def quiet_for(beat: RedBeatProcess, seconds: float, since: float) -> list[beatlib.SentTask]:
    """Wait ``seconds`` with beat alive; the tasks it sent since ``since`` (the bug: none)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        beat.check_alive()
        time.sleep(0.1)
    return [s for s in beat.sent_since(since) if s.name in TASKS]


def interval_rates(beat: RedBeatProcess, t0: float, window_s: float = 4.0) -> dict[str, float]:
    """Sends per second of the interval tasks in [t0, t0 + window_s), waiting for the window to end."""
    t1 = t0 + window_s
    while time.monotonic() < t1:
        beat.check_alive()
        time.sleep(0.1)
    return {name: beat.rate(name, t0, t1) for name in INTERVALS}


def repair_hook(**options: Any) -> dict[str, Any]:
    return {"type": "redbeat", "name": beatdaemon.REPAIR_HOOK, "redis_url": REDIS_URL, **options}


@contextlib.contextmanager
def running_daemon(clock: FakeClock, ntp: Sequence[Any], http: Any, *, hook: dict[str, Any] | None = None,
                   wait_audit: bool = True) -> Iterator[beatdaemon.Daemon]:
    """``timeguard run`` under ``clock.sharing(1)`` with the redbeat hook; yields once it has checked twice (and,
    with ``wait_audit``, audited once)."""
    directory = scratch_dir("redbeatdaemon")
    config = daemonlib.write_config(directory, {"ntp": list(ntp), "http": http}, hooks=[repair_hook(**(hook or {}))])
    log = directory / "daemon.log"
    with daemonlib.start(config, clock.sharing(1), log, env=dict(os.environ)) as proc:
        daemon = beatdaemon.Daemon(config, log, proc)
        daemonlib.wait_for("the first checks", lambda: daemonlib.checks(config) >= 2, 20, proc)
        if wait_audit:
            daemonlib.wait_for("the first audit", lambda: daemon.audit() is not None, 20, proc)
        yield daemon


@dataclasses.dataclass(frozen=True)
class RolledBack:
    beat: RedBeatProcess
    step_mono: float  # CLOCK_MONOTONIC of the step back
    rollback: Any  # the daemon's rollback event


@contextlib.contextmanager
def rolled_back(clock: FakeClock, daemon: beatdaemon.Daemon, *, to_s: float = 0.0) -> Iterator[RolledBack]:
    """With the daemon watching: the clock to +180 d, beat started and sending (stamping the future into Redis),
    the clock back to ``to_s``; yields once the daemon has seen the rollback (beat still running)."""
    t_jump = time.monotonic()
    clock.set(beatlib.FUTURE_S)
    daemon.wait_event(EventKind.FORWARD_JUMP, 10, since_mono=t_jump)
    with running_redbeat(clock) as beat:
        beat.wait_sent("every-1s", count=3, timeout_s=20)
        t_step = time.monotonic()
        clock.set(to_s)
        yield RolledBack(beat, t_step, daemon.wait_event(EventKind.ROLLBACK, 10, since_mono=t_step - 1))

"""A real django-celery-beat under libfaketime: databases, the seed schedule, a running ``celery beat``, its log.

The project is ``tests/e2e/beatproject`` (settings from the environment). Everything here runs the project in
subprocesses with the venv's real interpreter, so nothing Django or Celery is imported into the test process.

API (see tests/e2e/test_beat_bug.py for use)::

    db = BeatDatabase("postgresql")        # or "mariadb", "sqlite": unique database + `manage.py migrate`
    db.create_tasks()                      # every-1s, every-2s (interval), every-minute (crontab), clocked-once
    clock.set(+180 * 86400)
    with running_beat(db, clock, max_interval=1) as beat:
        beat.wait_sent("every-1s", count=3, timeout_s=20)
        t = time.monotonic()
        ...
        beat.sent_since(t)                 # [SentTask(mono, name, task)] seen in beat's log since t
        beat.rate("every-1s", t0, t1)      # sends per second in [t0, t1)
    db.state()                             # BeatState: last_run_at / date_changed / enabled per task, last_update
    db.drop()

Times are measured in the test process with CLOCK_MONOTONIC when a log line first appears (a thread tails
the log every 50 ms): beat's own log timestamps are its *faked* wall clock and useless across a step.

Pitfalls absorbed here:

* The broker is Redis on 127.0.0.1 with a unique ``global_keyprefix`` and queue name per beat (no worker: the
  messages just pile up); :meth:`BeatProcess.stop` deletes exactly those keys.
* ``celery beat`` is started as ``python -m celery`` (the real interpreter, not the ``bin/celery`` wrapper) under
  ``run_under_clock`` (setpriv without CAP_SYS_TIME, LD_PRELOAD on the final program only).
* ``beat_sync_every=1`` (settings) makes beat write ``last_run_at`` back after every sent task; otherwise the
  database only learns the future values at the next 3-minute sync or at shutdown.
* The clock uses FAKETIME_NO_CACHE: beat is idle between ticks (one thread), so re-reading the rc file on every
  clock call costs nothing measurable, and a step is seen by the very next tick (with a cache it lags 1–2 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from tests.support.realprogs import FakeClock, Lifecycle, ManagedProcess, run_under_clock, scratch_dir

PROJECT_DIR = Path(__file__).resolve().parent.parent / "e2e" / "beatproject"
KINDS = ("sqlite", "postgresql", "mariadb")
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
MARIADB_ADMIN = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
REDIS_URL = "redis://127.0.0.1:6379/0"
#: A stock project's settings: the database from dj-database-url's DATABASE_URL (BeatDatabase(stock=True)).
STOCK_SETTINGS = "beatproject.settings_dburl"

#: The custom tasks the seed schedule creates (celery's own ``celery.backend_cleanup`` may also exist).
SEED_TASKS = ("every-1s", "every-2s", "every-minute", "clocked-once")

_SENT_RE = re.compile(r"Scheduler: Sending due task (?P<name>\S+) \((?P<task>[^)]+)\)")


def project_env(database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a project subprocess needs (settings module, database, no stray faketime variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD"))}
    env.update(
        DJANGO_SETTINGS_MODULE="beatproject.settings",
        TG_BEAT_DATABASE_URL=database_url,
        PYTHONPATH=str(PROJECT_DIR),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra or {})
    return env


def _parse_dt(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


# --------------------------------------------------------------------------------------------------------
# Service availability (for need())
# --------------------------------------------------------------------------------------------------------


def service_problem(kind: str) -> str | None:
    """None if the service for ``kind`` (and Redis) answers on 127.0.0.1, else why not."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except Exception as exc:
        return f"Redis on 127.0.0.1:6379 is not reachable ({exc})"
    try:
        if kind == "postgresql":
            import psycopg

            psycopg.connect(**PG_ADMIN, connect_timeout=3).close()
        elif kind == "mariadb":
            import pymysql

            pymysql.connect(**MARIADB_ADMIN, connect_timeout=3).close()
    except Exception as exc:
        return f"{kind} on 127.0.0.1 is not reachable ({exc})"
    return None


def packages_problem() -> str | None:
    """None if the project's packages are importable, else what to install."""
    import importlib.util

    missing = [m for m in ("django", "django_celery_beat", "celery", "redis", "psycopg", "pymysql")
               if importlib.util.find_spec(m) is None]
    return f"missing {', '.join(missing)} (pip install -e '.[test]')" if missing else None


# --------------------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskRow:
    name: str
    task: str
    enabled: bool
    one_off: bool
    total_run_count: int
    last_run_at: dt.datetime | None
    date_changed: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class BeatState:
    """What the beat tables hold, read through the ORM (aware UTC datetimes)."""

    tasks: dict[str, TaskRow]
    last_update: dt.datetime | None  # django_celery_beat_periodictasks.last_update (ident=1)

    def future(self, now: dt.datetime | None = None, tolerance_s: float = 60.0) -> list[str]:
        """``task.column`` / ``last_update`` values later than ``now`` (real UTC) + tolerance."""
        limit = (now or dt.datetime.now(dt.UTC)) + dt.timedelta(seconds=tolerance_s)
        out = [f"{row.name}.{col}" for row in self.tasks.values() for col in ("last_run_at", "date_changed")
               if (value := getattr(row, col)) is not None and value > limit]
        if self.last_update is not None and self.last_update > limit:
            out.append("last_update")
        return out


class BeatDatabase(Lifecycle):
    """A unique database of ``kind`` (sqlite, postgresql, mariadb) with django-celery-beat's tables migrated."""

    def __init__(self, kind: str, settings: dict[str, str] | None = None, *, stock: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.settings = dict(settings or {})  # TG_BEAT_USE_TZ… for every project process (beatproject/settings.py)
        self.stock = stock  # beatproject.settings_dburl: the database from a dj-database-url DATABASE_URL
        self.name = f"tg_beat_{uuid.uuid4().hex[:12]}"
        self.dir = scratch_dir(f"beatdb-{kind}")
        self._created = False
        if kind == "sqlite":
            self.path: Path | None = self.dir / f"{self.name}.sqlite3"
            self.url = f"sqlite:///{self.path}"
        elif kind == "postgresql":
            self.path = None
            self.url = f"postgresql://postgres@127.0.0.1:5432/{self.name}"
        else:
            self.path = None
            self.url = f"mysql://root@127.0.0.1:3306/{self.name}"
        if stock:
            self.settings.update(DJANGO_SETTINGS_MODULE=STOCK_SETTINGS, DATABASE_URL=self.url)

    @property
    def sa_url(self) -> str:
        """The URL for timeguard's repair (SQLAlchemy): Django's ``postgresql://``/``mysql://`` name SQLAlchemy's
        default drivers (psycopg2, mysqlclient), which timeguard[celery-beat] does not install; psycopg 3 and
        PyMySQL are named explicitly."""
        for plain, explicit in (("postgresql://", "postgresql+psycopg://"), ("mysql://", "mysql+pymysql://")):
            if self.url.startswith(plain):
                return explicit + self.url[len(plain):]
        return self.url

    # -- life cycle -------------------------------------------------------------------------------------

    def create(self) -> Self:
        """Create the database and run ``manage.py migrate`` (real interpreter, subprocess)."""
        self._admin(f'CREATE DATABASE "{self.name}"', f"CREATE DATABASE `{self.name}` CHARACTER SET utf8mb4")
        self._created = True
        self.manage("migrate", "--no-input", "-v", "0", timeout_s=120)
        return self

    def drop(self) -> None:
        """Drop the database (idempotent). Call after every process using it has stopped."""
        if not self._created:
            return
        self._created = False
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', f"DROP DATABASE IF EXISTS `{self.name}`")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _admin(self, postgresql: str, mariadb: str) -> None:
        """One statement on the database server as its administrator (nothing to do for SQLite)."""
        if self.kind == "postgresql":
            import psycopg

            with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:
                conn.execute(postgresql)
        elif self.kind == "mariadb":
            import pymysql

            conn = pymysql.connect(**MARIADB_ADMIN, autocommit=True)
            try:
                with conn.cursor() as cur:
                    cur.execute(mariadb)
            finally:
                conn.close()

    def _enter(self) -> Self:
        return self.create()

    def _exit(self) -> None:
        self.drop()

    # -- running project code -----------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return project_env(self.url, {**self.settings, **(extra or {})})

    def run(self, *args: str, timeout_s: float = 60, extra_env: dict[str, str] | None = None) -> str:
        """Run ``python ARGS`` in the project directory against this database (real time); returns stdout."""
        proc = subprocess.run(
            [sys.executable, *args], cwd=PROJECT_DIR, env=self.env(extra_env),
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}) on {self.kind}:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def manage(self, *args: str, timeout_s: float = 60) -> str:
        return self.run("manage.py", *args, timeout_s=timeout_s)

    def create_tasks(self, clocked_at: dt.datetime | None = None) -> dict[str, object]:
        """The seed schedule (SEED_TASKS). ``clocked_at`` defaults to real now + 1 day (fires early at +180 d)."""
        extra = {"TG_BEAT_CLOCKED_AT": clocked_at.isoformat()} if clocked_at else None
        return json.loads(self.run("-m", "beatproject.tools", "create-tasks", extra_env=extra))

    def state(self) -> BeatState:
        """``last_run_at``, ``date_changed``, ``enabled``… of every periodic task and ``periodictasks.last_update``."""
        raw = json.loads(self.run("-m", "beatproject.tools", "state"))
        tasks = {
            name: TaskRow(
                name=name, task=row["task"], enabled=row["enabled"], one_off=row["one_off"],
                total_run_count=row["total_run_count"], last_run_at=_parse_dt(row["last_run_at"]),
                date_changed=_parse_dt(row["date_changed"]),
            )
            for name, row in raw["tasks"].items()
        }
        return BeatState(tasks=tasks, last_update=_parse_dt(raw["last_update"]))


@contextlib.contextmanager
def seeded_database(kind: str, settings: dict[str, str] | None = None, *, stock: bool = False
                    ) -> Iterator[BeatDatabase]:
    """A migrated ``kind`` database with the seed schedule, dropped afterwards; skips (or, with
    TIMEGUARD_REQUIRE_REAL=1, fails) when the packages or the database server are missing. ``settings``: the
    project's TG_BEAT_* settings (time-zone conventions)."""
    from tests.support.require import need

    need(packages_problem() is None, f"{packages_problem()}")
    need(service_problem(kind) is None, f"{service_problem(kind)}")
    db = BeatDatabase(kind, settings, stock=stock)
    try:
        db.create()
        db.create_tasks()
        yield db
    finally:
        db.drop()


# --------------------------------------------------------------------------------------------------------
# The running beat and its log
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SentTask:
    mono: float  # time.monotonic() in the test process when the log line was first seen
    name: str  # PeriodicTask.name, e.g. "every-1s"
    task: str  # the Celery task, e.g. "beatproject.tasks.tick"


@dataclasses.dataclass(frozen=True)
class LogLine:
    mono: float
    text: str


class LogTail:
    """Follows a growing log file from a thread; every complete line is stamped with CLOCK_MONOTONIC."""

    def __init__(self, path: Path, poll_s: float = 0.05) -> None:
        self.path = path
        self.poll_s = poll_s
        self.lines: list[LogLine] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tail {path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pos, partial = 0, b""
        while True:
            stopping = self._stop.is_set()
            with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
                if chunk:
                    now = time.monotonic()
                    *complete, partial = (partial + chunk).split(b"\n")
                    with self._lock:
                        self.lines.extend(LogLine(now, ln.decode(errors="replace")) for ln in complete)
            if stopping:
                return
            self._stop.wait(self.poll_s)

    def snapshot(self) -> list[LogLine]:
        with self._lock:
            return list(self.lines)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class BeatProcess(Lifecycle):
    """``python -m celery -A beatproject beat -l debug --max-interval N`` (DatabaseScheduler) under ``clock``.

    ``max_interval=None`` leaves beat's default (DatabaseScheduler: 5 s). ``debug`` (default) also logs every
    wake-up ("beat: Waking up in 1.00 second."), which shows the loop is alive while nothing is sent.
    """

    def __init__(self, db: BeatDatabase, clock: FakeClock, max_interval: float | None = 1,
                 loglevel: str = "debug") -> None:
        self.db = db
        self.clock = clock
        self.max_interval = max_interval
        self.loglevel = loglevel
        self.dir = scratch_dir("beat")
        self.log_path = self.dir / "beat.log"
        tag = uuid.uuid4().hex[:10]
        self.keyprefix = f"tg-beat-{tag}:"
        self.queue = f"tg-beat-{tag}"
        self.process: ManagedProcess | None = None
        self.tail: LogTail | None = None
        self.started_mono: float | None = None

    def command(self) -> list[str]:
        """The ``celery beat`` command line (the real interpreter; no clock wrapping)."""
        cmd = [sys.executable, "-m", "celery", "-A", "beatproject", "beat", "-l", self.loglevel,
               "--pidfile=", "-s", str(self.dir / "celerybeat-schedule")]
        if self.max_interval is not None:
            cmd += ["--max-interval", str(self.max_interval)]
        return cmd

    def environment(self) -> dict[str, str]:
        """Its environment without the fake clock: the database, this beat's broker key prefix and queue."""
        return self.db.env({
            "TG_BEAT_BROKER_URL": REDIS_URL, "TG_BEAT_KEYPREFIX": self.keyprefix, "TG_BEAT_QUEUE": self.queue,
        })

    def start(self) -> Self:
        cmd, env = self.command(), self.environment()
        self.log_path.touch()
        self.tail = LogTail(self.log_path)
        self.started_mono = time.monotonic()
        # SIGTERM: beat runs its final sync() (like a service manager would stop it); SIGKILL after 10 s.
        self.process = run_under_clock(cmd, self.clock, name=f"celery-beat:{self.db.kind}", log_path=self.log_path,
                                       env=env, cwd=str(PROJECT_DIR), stop_signal=signal.SIGTERM,
                                       stop_timeout_s=10)
        return self

    # -- observing -------------------------------------------------------------------------------------

    def lines(self) -> list[LogLine]:
        return self.tail.snapshot() if self.tail else []

    def sent(self) -> list[SentTask]:
        """Every "Scheduler: Sending due task NAME (TASK)" line so far."""
        out = []
        for line in self.lines():
            m = _SENT_RE.search(line.text)
            if m:
                out.append(SentTask(line.mono, m["name"], m["task"]))
        return out

    def sent_since(self, t_mono: float, name: str | None = None) -> list[SentTask]:
        return [s for s in self.sent() if s.mono >= t_mono and (name is None or s.name == name)]

    def count(self, name: str, t0: float, t1: float | None = None) -> int:
        return sum(1 for s in self.sent() if s.name == name and s.mono >= t0 and (t1 is None or s.mono < t1))

    def wakeups_since(self, t_mono: float) -> int:
        """"beat: Waking up in N seconds." lines since ``t_mono`` (only logged at ``loglevel="debug"``): proof that
        beat's loop keeps ticking while it sends nothing."""
        return sum(1 for ln in self.lines() if ln.mono >= t_mono and "beat: Waking up in" in ln.text)

    def rate(self, name: str, t0: float, t1: float) -> float:
        """Sends of ``name`` per second in the monotonic window [t0, t1)."""
        return self.count(name, t0, t1) / (t1 - t0)

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def check_alive(self) -> None:
        if not self.alive():
            rc = self.process.returncode if self.process else None
            raise AssertionError(f"celery beat ({self.db.kind}) exited with {rc}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        return "\n".join(text[-lines:])

    def wait_sent(self, name: str, count: int = 1, timeout_s: float = 20, since: float | None = None) -> list[SentTask]:
        """Wait until ``name`` was sent ``count`` times (since ``since``, default: ever); returns those sends."""
        deadline = time.monotonic() + timeout_s
        while True:
            hits = [s for s in self.sent() if s.name == name and (since is None or s.mono >= since)]
            if len(hits) >= count:
                return hits
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} sent {len(hits)}/{count} times in {timeout_s} s on {self.db.kind}:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.05)

    def wait_custom_sent(self, since: float, timeout_s: float, context: Any = None) -> SentTask:
        """The first task of the seed schedule (CUSTOM) sent at or after ``since``; ``context()`` (e.g. the daemon's
        log tail) is added to the failure."""
        deadline = time.monotonic() + timeout_s
        while True:
            sent = [s for s in self.sent_since(since) if s.name in CUSTOM]
            if sent:
                return sent[0]
            self.check_alive()
            if time.monotonic() > deadline:
                extra = f"\n--- daemon ---\n{context()}" if context is not None else ""
                raise AssertionError(f"[{self.db.kind}] no custom task sent within {timeout_s} s:\n"
                                     f"{self.log_tail()}{extra}")
            time.sleep(0.05)

    def wait_log(self, pattern: str, timeout_s: float = 20, since: float | None = None) -> LogLine:
        """Wait for a log line matching regex ``pattern`` (e.g. "Schedule changed")."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines():
                if (since is None or line.mono >= since) and regex.search(line.text):
                    return line
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line /{pattern}/ in {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def queued(self) -> int:
        """Messages waiting in this beat's Redis queue (every sent task lands there: no worker consumes)."""
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            return int(client.llen(self.keyprefix + self.queue))
        finally:
            client.close()

    # -- stopping --------------------------------------------------------------------------------------

    def stop(self) -> int | None:
        """SIGTERM (beat's final sync runs), reap, stop tailing, delete this beat's Redis keys. Idempotent."""
        rc = self.process.stop() if self.process else None
        if self.tail is not None:
            self.tail.close()
        self._clean_redis()
        return rc

    def _clean_redis(self) -> None:
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            try:
                keys = list(client.scan_iter(match=f"{self.keyprefix}*", count=500))
                # kombu's redis transport also keeps a few bookkeeping keys named after the queue.
                keys += [k for k in client.scan_iter(match=f"*{self.queue}*", count=500)]
                if keys:
                    client.delete(*set(keys))
            finally:
                client.close()


@contextlib.contextmanager
def running_beat(db: BeatDatabase, clock: FakeClock, max_interval: float | None = 1,
                 loglevel: str = "debug") -> Iterator[BeatProcess]:
    """A started :class:`BeatProcess`, stopped (by PID) and its Redis keys removed on exit."""
    beat = BeatProcess(db, clock, max_interval=max_interval, loglevel=loglevel)
    try:
        yield beat.start()
    finally:
        beat.stop()


# --------------------------------------------------------------------------------------------------------
# The bug, reproduced and asserted (the starting point of every repair test)
# --------------------------------------------------------------------------------------------------------

FUTURE_S = 180 * 86400
RATE_WINDOW_S = 5.0  # how long the rates are measured at +180 d
QUIET_S = 8.0  # how long beat must send nothing after the backward step
GRACE_S = 0.5  # a send already in flight when the clock steps may still be logged just after it
CUSTOM = ("every-1s", "every-2s", "every-minute", "clocked-once")


@dataclasses.dataclass(frozen=True)
class BugShown:
    first_send_mono: float  # first send at +180 d
    rates: dict[str, float]  # every-1s / every-2s sends per second at +180 d
    step_mono: float  # when the clock went back to +0
    state: BeatState  # the database after the quiet window: last_run_at ≈ +180 d


def assert_rates(kind: str, rates: dict[str, float], what: str) -> None:
    """every-1s at ≈ 1/s, every-2s at ≈ 0.5/s (bounds wide enough for a loaded 2-core machine)."""
    print(f"[{kind}] {what}: every-1s {rates['every-1s']:.2f}/s, every-2s {rates['every-2s']:.2f}/s")
    assert 0.6 <= rates["every-1s"] <= 1.4, rates
    assert 0.2 <= rates["every-2s"] <= 0.8, rates


def run_at_future(beat: BeatProcess) -> tuple[float, dict[str, float]]:
    """Wait for the first sends at +180 d, measure the rates over RATE_WINDOW_S; returns (first send, rates)."""
    first = beat.wait_sent("every-1s", count=1, timeout_s=30)[0].mono
    t0 = first + 0.5  # past the start-up burst (every task is due at once)
    t1 = t0 + RATE_WINDOW_S
    beat.wait_sent("every-1s", count=3, timeout_s=30)
    while time.monotonic() < t1:
        beat.check_alive()
        time.sleep(0.1)
    return first, {name: beat.rate(name, t0, t1) for name in ("every-1s", "every-2s")}


def wait_persisted(db: BeatDatabase, timeout_s: float = 20) -> BeatState:
    """Until every-1s/every-2s/every-minute hold ``last_run_at`` > +179 d and ``last_update`` too
    (``beat_sync_every=1`` writes them back after every send)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = db.state()
        ahead = dt.datetime.now(dt.UTC) + dt.timedelta(days=179)
        persisted = [n for n in ("every-1s", "every-2s", "every-minute")
                     if (v := state.tasks[n].last_run_at) is not None and v > ahead]
        if (len(persisted) == 3 and state.last_update is not None and state.last_update > ahead) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(persisted) == 3, state
    assert state.last_update is not None and state.last_update > ahead, state.last_update
    return state


def drive_into_bug(db: BeatDatabase, clock: FakeClock, beat: BeatProcess, *, quiet_s: float = QUIET_S,
                   after_step: Any = None, before_step: Any = None) -> BugShown:
    """With ``clock`` at +180 d and ``beat`` running: measure the rates, wait until the future values are in the
    database, step the clock back to +0 and assert that beat sends no custom task for ``quiet_s`` while its
    loop keeps ticking. ``after_step()`` (optional) runs right after the step, e.g. to start a timer;
    ``before_step()`` right before it (e.g. to start a daemon a few seconds before, as a host's boot does)."""
    kind = db.kind
    first, rates = run_at_future(beat)
    print(f"[{kind}] first send {first - (beat.started_mono or first):.2f} s after start")
    assert_rates(kind, rates, "+180 d")
    names = {s.name for s in beat.sent()}
    assert {"every-minute", "clocked-once"} <= names, names  # due at once: their last run is 180 d "ago"
    wait_persisted(db)

    if before_step is not None:
        before_step()
    clock.set(0)  # the correction: back to real time
    t_step = time.monotonic()
    if after_step is not None:
        after_step()
    while time.monotonic() < t_step + quiet_s:
        beat.check_alive()
        time.sleep(0.1)
    late = [s for s in beat.sent_since(t_step + GRACE_S) if s.name in CUSTOM]
    wakeups = beat.wakeups_since(t_step + GRACE_S)
    print(f"[{kind}] after the step back: {len(late)} custom sends and {wakeups} wake-ups in "
          f"{quiet_s - GRACE_S:.1f} s; queue holds {beat.queued()} messages")
    assert late == [], f"beat still sent after the backward step: {late}"
    assert beat.alive()
    if beat.loglevel == "debug" and beat.max_interval is not None and beat.max_interval <= 1:
        assert wakeups >= quiet_s - GRACE_S - 2, f"beat's loop stopped ticking ({wakeups} wake-ups):\n{beat.log_tail()}"
    return BugShown(first, rates, t_step, db.state())

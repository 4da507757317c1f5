"""Harness for the APScheduler job-store repair (tests/e2e/test_apscheduler_repair.py, the benchmark): the test
application tests/e2e/apsapp/apsapp.py (a real ``BackgroundScheduler``) on a store of its own — a PostgreSQL
database created and dropped here, an SQLite file in a scratch directory, or this worker's Redis database
(tests/support/redisdb.py: the only one this harness flushes) — started and stopped under a FakeClock through
tests/support/beatctl.py (the same argv the repair's stop/start commands run), its runs read from the JSON lines it
appends, the store read directly.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import redisdb
from tests.support.beat import PG_ADMIN
from tests.support.controlled import commands
from tests.support.realprogs import SETPRIV_NO_SYS_TIME, FakeClock, scratch_dir

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "tests" / "e2e" / "apsapp"
REDIS_DB = redisdb.flushable_db(redisdb.APS)  # this worker's own: the harness flushes it
REDIS_URL = redisdb.url(redisdb.APS)
JOBS = ("every-1s", "every-2s", "cron-every-2s")
PERIOD_S = {"every-1s": 1.0, "every-2s": 2.0, "cron-every-2s": 2.0}
FUTURE_S = 180 * 86400.0
#: The environment variable the application reads its job store's URL from when the command line gives none.
URL_ENV = "APSAPP_JOBSTORE_URL"


@dataclass
class JobStore:
    """One store of the test application: ``kind`` sql (PostgreSQL), sqlite (a file) or redis (REDIS_DB); ``password``
    goes into a PostgreSQL URL (the server trusts loopback, so any password connects)."""

    kind: str
    url: str = ""
    name: str = ""
    password: str | None = None
    _created: bool = field(default=False, repr=False)

    @property
    def sql(self) -> bool:
        return self.kind in ("sql", "sqlite")

    def __enter__(self) -> JobStore:
        if self.kind == "sqlite":
            self.url = f"sqlite:///{scratch_dir('aps-sqlite') / 'jobs.sqlite'}"
        elif self.kind == "sql":
            import psycopg

            self.name = f"tg_aps_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self._created = True
            user = f"postgres:{self.password}" if self.password else "postgres"
            self.url = f"postgresql+psycopg://{user}@127.0.0.1:5432/{self.name}"
        else:
            self.url = REDIS_URL
            self.redis().flushdb()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "sql" and self._created:
            import psycopg

            with psycopg.connect(**PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self._created = False
        elif self.kind == "redis":
            self.redis().flushdb()

    def redis(self) -> Any:
        import redis

        return redis.Redis.from_url(REDIS_URL)

    def _engine(self) -> Any:
        import sqlalchemy as sa

        return sa.create_engine(self.url, poolclass=sa.pool.NullPool)

    def rows(self) -> dict[str, tuple[float | None, bytes]]:
        """id → (next run time as stored, job_state bytes)."""
        if self.sql:
            import sqlalchemy as sa

            engine = self._engine()
            try:
                with engine.connect() as conn:
                    found = conn.execute(sa.text("SELECT id, next_run_time, job_state FROM apscheduler_jobs")).all()
            finally:
                engine.dispose()
            return {r[0]: (r[1], bytes(r[2])) for r in found}
        r = self.redis()
        states = r.hgetall("apscheduler.jobs")
        return {k.decode(): (r.zscore("apscheduler.run_times", k), v) for k, v in states.items()}

    def put(self, job_id: str, next_run_s: float, state: bytes) -> None:
        """Write one job as the job store does (column + state, or hash + ZSET in one MULTI)."""
        if self.sql:
            import sqlalchemy as sa

            engine = self._engine()
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text("INSERT INTO apscheduler_jobs (id, next_run_time, job_state) "
                                         "VALUES (:i, :n, :s)"), {"i": job_id, "n": next_run_s, "s": state})
            finally:
                engine.dispose()
            return
        pipe = self.redis().pipeline(transaction=True)
        pipe.hset("apscheduler.jobs", job_id, state)
        pipe.zadd("apscheduler.run_times", {job_id: next_run_s})
        pipe.execute()

    def column_only_update(self, now_s: float) -> None:
        """The naive fix a user would try: the next run time alone set to now (research §4: the loop spins)."""
        if self.sql:
            import sqlalchemy as sa

            engine = self._engine()
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text("UPDATE apscheduler_jobs SET next_run_time = :n"), {"n": now_s})
            finally:
                engine.dispose()
            return
        r = self.redis()
        for member in r.zrange("apscheduler.run_times", 0, -1):
            r.zadd("apscheduler.run_times", {member: now_s})


class App:
    """The test application, started and stopped through beatctl (stop: SIGTERM to the PID in its pidfile); with
    ``url_in_env`` its store's URL is in its environment ($APSAPP_JOBSTORE_URL), not on its command line."""

    def __init__(self, store: JobStore, clock: FakeClock, *, url_in_env: bool = False) -> None:
        self.store, self.clock = store, clock
        self.dir = scratch_dir("apsapp")
        self.runs = self.dir / "runs.jsonl"
        self.pidfile = self.dir / "app.pid"
        self.events = self.dir / "ctl.jsonl"
        self.spec = self.dir / "spec.json"
        env = {k: v for k, v in clock.env(preload=False).items() if not k.startswith("TIMEGUARD")}
        env.update(APSAPP_LOG=str(self.runs), PYTHONPATH=str(APP_DIR))
        where = [] if url_in_env else [store.url]
        if url_in_env:
            env[URL_ENV] = store.url
        argv = [*SETPRIV_NO_SYS_TIME, *clock.wrap([sys.executable, "-c", "import apsapp; apsapp.main()",
                                                   "redis" if store.kind == "redis" else "sql", *where])]
        self.spec.write_text(json.dumps({"argv": argv, "env": env, "cwd": str(APP_DIR),
                                         "log": str(self.dir / "app.log"), "pidfile": str(self.pidfile)}))

    @property
    def stop_command(self) -> list[str]:
        return commands(self.pidfile, self.spec, self.events)["stop_command"]

    @property
    def start_command(self) -> list[str]:
        return commands(self.pidfile, self.spec, self.events)["start_command"]

    def start(self) -> None:
        import subprocess

        subprocess.run(self.start_command, check=True, timeout=30)

    def stop(self) -> None:
        import subprocess

        if self.pidfile.exists():
            subprocess.run(self.stop_command, check=True, timeout=30)

    def log(self) -> str:
        path = self.dir / "app.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def ran(self, since_mono: float = 0.0) -> list[dict[str, Any]]:
        if not self.runs.exists():
            return []
        lines = [json.loads(x) for x in self.runs.read_text().splitlines() if x.strip()]
        return [x for x in lines if x["mono"] >= since_mono]

    def counts(self, since_mono: float, until_mono: float | None = None) -> dict[str, int]:
        out = dict.fromkeys(JOBS, 0)
        for x in self.ran(since_mono):
            if until_mono is None or x["mono"] <= until_mono:
                out[x["job"]] = out.get(x["job"], 0) + 1
        return out

    def wait_runs(self, since_mono: float, count: int, timeout_s: float, jobs: tuple[str, ...] = JOBS) -> float:
        """Until each of ``jobs`` ran ``count`` times since ``since_mono``; returns when the first of them ran."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            runs = self.ran(since_mono)
            if all(sum(1 for x in runs if x["job"] == j) >= count for j in jobs):
                return min(x["mono"] for x in runs if x["job"] in jobs)
            time.sleep(0.05)
        raise AssertionError(f"jobs did not run {count}× within {timeout_s} s: {self.counts(since_mono)}\n"
                             f"{self.log()}")


    def pid(self) -> int:
        return int(self.pidfile.read_text().split()[0])

    def into_the_bug(self) -> None:
        """Started at +180 d: the jobs run and their next run times are stamped ≈ +180 d; then the clock goes back
        to +0 (after which nothing runs: research §4)."""
        self.wait_runs(0.0, 2, timeout_s=30)
        assert set(future_jobs(self.store, FUTURE_S - 3600)) == set(JOBS), self.store.rows()
        self.clock.set(0)
        time.sleep(1.0)

    def runs_at_rate(self, since_mono: float) -> None:
        """Every job runs again, at its rate, within 20 s of ``since_mono`` (the start of a repair)."""
        first = self.wait_runs(since_mono, 1, timeout_s=20)
        window = first + 1.0
        time.sleep(max(0.0, window + 6.0 - time.monotonic()))
        counts = self.counts(window, window + 6.0)
        assert counts["every-1s"] >= 5 and counts["every-2s"] >= 2 and counts["cron-every-2s"] >= 2, counts


def future_jobs(store: JobStore, slack_s: float = 60.0) -> dict[str, float]:
    """id → stored next run of every job more than ``slack_s`` ahead of the real clock."""
    limit = time.time() + slack_s
    return {k: v for k, (v, _) in store.rows().items() if v is not None and v > limit}


@contextlib.contextmanager
def running_app(store: JobStore, clock: FakeClock, *, url_in_env: bool = False) -> Iterator[App]:
    app = App(store, clock, url_in_env=url_in_env)
    app.start()
    try:
        yield app
    finally:
        app.stop()

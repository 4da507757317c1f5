"""How discover confirms an APScheduler job store (timeguard.discover.aps), against real stores written by a real
APScheduler 3 ``BackgroundScheduler``: a renamed SQLAlchemy table in an SQLite file, and RedisJobStore keys other
than the defaults (found by the bounded scan for a hash + ZSET pair sharing a pickled member), in the Redis
database the APScheduler harness owns (tests/support/aps.py, db 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.aps import REDIS_DB, JobStore
from timeguard.discover import aps

pytestmark = pytest.mark.real


def tick() -> None:
    return None


def _schedule(store: Any) -> None:
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(jobstores={"default": store}, timezone="UTC")
    scheduler.start(paused=True)
    scheduler.add_job(tick, "interval", seconds=60, id="a")
    scheduler.add_job(tick, "cron", hour=3, id="b")
    scheduler.shutdown(wait=False)


def test_a_renamed_table_in_an_sqlite_file_is_found_and_other_sqlite_files_are_not(tmp_path: Path) -> None:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

    jobs = tmp_path / "jobs.sqlite"
    _schedule(SQLAlchemyJobStore(url=f"sqlite:///{jobs}", tablename="my_jobs"))
    other = tmp_path / "other.sqlite"
    import sqlite3

    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE jobs (id TEXT, next_run_time REAL)")  # not APScheduler's shape
    (tmp_path / "notes.txt").write_text("not a database")
    found = aps._sqlite_stores([str(jobs), str(other), str(tmp_path / "notes.txt")])
    assert [(s.kind, s.tablename, s.jobs, s.found_by) for s in found] == [
        ("sql", "my_jobs", 2, f"open file {jobs}")]


def test_renamed_redis_job_store_keys_are_found_by_the_scan() -> None:
    with JobStore("redis") as store:
        _renamed_keys(store.redis(), "tg-discover")


def _renamed_keys(client: Any, prefix: str) -> None:
    from apscheduler.jobstores.redis import RedisJobStore

    _schedule(RedisJobStore(db=REDIS_DB, jobs_key=f"{prefix}.jobs", run_times_key=f"{prefix}.times"))
    client.hset(f"{prefix}.decoy", "a", b"not a pickle")  # a hash with the member, not a job state
    pairs = aps._redis_pairs(client)
    assert (f"{prefix}.jobs", f"{prefix}.times", 2) in pairs
    assert not any(jobs == f"{prefix}.decoy" for jobs, _, _ in pairs)


def test_urls_are_read_from_the_environment_and_the_command_line() -> None:
    env = {"DATABASE_URL": "postgres://app:pw@db/app", "HOME": "/root", "CACHE": "redis://cache:6379/1",
           "SITE": "https://example.org/"}
    found = aps._urls(env, ["python", "run.py", "--store=sqlite:////srv/jobs.sqlite"])
    assert [(u.where, u.env) for u in found] == [("environment $CACHE", "CACHE"),
                                                 ("environment $DATABASE_URL", "DATABASE_URL"),
                                                 ("command line", None)]
    assert [aps._scheme(u.url) for u in found] == ["redis", "postgresql", "sqlite"]

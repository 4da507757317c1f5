"""The APScheduler target's rules per trigger and its refusals, on a real ``SQLAlchemyJobStore`` (SQLite file)
filled by APScheduler itself, the job states read by this interpreter through apprun (as the application's would):

* interval: more than one interval ahead → now, and a start_date from the false period → now too (so a later
  ``resume_job``/``get_next_fire_time(None, now)`` does not return the false date again); within one interval: kept;
* cron: → the trigger's next fire time from now; a weekly cron legitimately days ahead: kept (the audit does not
  cry wolf on it);
* date (a one-off): left and reported; a column that disagrees with the pickled state: left and reported — unless
  it is the naive fix (the column brought back by hand, the pickled time still far ahead: the scheduler spins),
  which is repaired, both written;
* corrupt bytes: unreadable, left byte for byte; the repair is idempotent; the hook refuses without a way to stop
  the owner; a wrong table and an unreachable database are clear errors without the password;
* the same jobs in ``RedisJobStore``'s hash and ZSET (the APScheduler harness's Redis database): the ZSET score
  and the pickled state written together, a run time without its job reported and left, a key of the wrong type
  refused.
"""

from __future__ import annotations

import datetime as dt
import pickle
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.support import aps
from tests.support.require import need
from timeguard.hooks.api import HookConfigError
from timeguard.repair.apscheduler_jobs import APSchedulerKind
from timeguard.repair.hook import bound_to
from timeguard.repair.target import RepairError

UTC = dt.UTC
DAY = 86400.0
FALSE = 180 * DAY


def tick() -> None:  # the jobs' function (never run here)
    return None


def fill(path: Path, now: dt.datetime) -> None:
    """APScheduler's own store, written as a scheduler does, with next runs from a false period (+180 d)."""
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    false_now = now + dt.timedelta(seconds=FALSE)
    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{path}")},
                                    timezone="UTC")
    scheduler.start(paused=True)
    ref = f"{__name__}:tick"
    made_then = IntervalTrigger(seconds=10, start_date=false_now + dt.timedelta(seconds=10))
    scheduler.add_job(ref, made_then, id="interval-false", next_run_time=false_now + dt.timedelta(seconds=10))
    scheduler.add_job(ref, IntervalTrigger(hours=2, start_date=now - dt.timedelta(days=1)), id="interval-fine",
                      next_run_time=now + dt.timedelta(hours=1, minutes=30))
    scheduler.add_job(ref, CronTrigger(minute="*/5", timezone=UTC), id="cron-false",
                      next_run_time=false_now)
    weekly = CronTrigger(day_of_week="mon", hour=3, timezone=UTC)
    scheduler.add_job(ref, weekly, id="cron-weekly", next_run_time=weekly.get_next_fire_time(None, now))
    scheduler.add_job(ref, DateTrigger(false_now), id="one-off", next_run_time=false_now)
    scheduler.shutdown(wait=False)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO apscheduler_jobs VALUES ('corrupt', ?, ?)", (false_now.timestamp(), b"\x80\x04xx"))
        state = db.execute("SELECT job_state FROM apscheduler_jobs WHERE id = 'cron-false'").fetchone()[0]
        db.execute("INSERT INTO apscheduler_jobs VALUES ('column-edited', ?, ?)",
                   (false_now.timestamp() + 1, state.replace(b"cron-false", b"cron-falsf")))
        # the naive fix: the column brought back to now by hand, the pickled time still +180 d (it spins)
        db.execute("INSERT INTO apscheduler_jobs VALUES ('hand-fixed', ?, ?)",
                   (now.timestamp() - 5, state.replace(b"cron-false", b"hand-fixed")))


def rows(path: Path) -> dict[str, tuple[float, bytes]]:
    with sqlite3.connect(path) as db:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, next_run_time, job_state FROM apscheduler_jobs")}


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, float]:
    pytest.importorskip("apscheduler")
    now = dt.datetime.now(UTC).replace(microsecond=0)
    path = tmp_path / "jobs.sqlite"
    fill(path, now)
    return path, now.timestamp()


def options(path: Path, **more: object) -> dict[str, object]:
    return {"jobstore_url": f"sqlite:///{path}", "python": sys.executable,
            "path": [str(Path(__file__).resolve().parents[2])], **more}


def test_rules_per_trigger(store: tuple[Path, float]) -> None:
    path, now = store
    before = rows(path)
    target = APSchedulerKind.from_options(options(path)).open()
    plan = target.plan(now)
    changes = {c.item: c for c in plan.changes}
    assert set(changes) == {"interval-false", "cron-false", "hand-fixed"}
    assert "column-only edit" in changes["hand-fixed"].why
    assert changes["interval-false"].new_s == now
    assert now < changes["cron-false"].new_s <= now + 300
    notes = {n.item: n.detail for n in plan.report}
    assert set(notes) == {"one-off", "column-edited"}, notes
    assert "one-off" in notes["one-off"] and "disagree" in notes["column-edited"]
    assert [u.item for u in plan.unreadable] == ["corrupt"]
    audit = target.audit(now)
    assert audit.found and audit.details["counts"] == {"next_run_time": 3}

    outcome = target.apply(lambda: now, undo_log=None, incident_id="i1", owner_stopped=True)
    assert outcome.clean and outcome.rounds[0]["changed"] == 3
    after = rows(path)
    assert after["corrupt"] == before["corrupt"] and after["one-off"] == before["one-off"]
    assert after["cron-weekly"] == before["cron-weekly"] and after["interval-fine"] == before["interval-fine"]
    state = pickle.loads(after["interval-false"][1])  # noqa: S301 - this test's own objects
    assert state["next_run_time"].timestamp() == after["interval-false"][0] == now
    assert state["trigger"].start_date.timestamp() == now, "the false-period start_date is reset too"
    assert state["trigger"].get_next_fire_time(None, dt.datetime.fromtimestamp(now, UTC)).timestamp() == now
    for job in ("cron-false", "hand-fixed"):
        cron = pickle.loads(after[job][1])  # noqa: S301 - this test's own objects
        assert cron["next_run_time"].timestamp() == after[job][0], job

    again = target.apply(lambda: now, undo_log=None, incident_id="i2", owner_stopped=True)
    assert not again.changed and rows(path) == after, "idempotent"
    assert not target.audit(now).found
    target.close()


def test_refuses_without_owner_stopped(store: tuple[Path, float]) -> None:
    path, now = store
    target = APSchedulerKind.from_options(options(path)).open()
    with pytest.raises(RepairError, match="must be stopped"):
        target.apply(lambda: now, undo_log=None, incident_id="i")
    hook = bound_to("apscheduler")
    with pytest.raises(HookConfigError, match="service"):
        hook.from_config("aps", options(path))
    assert hook.from_config("aps", {**options(path), "service": "app.service"}).stop_command == \
        ["systemctl", "stop", "app.service"]


def test_option_problems(tmp_path: Path) -> None:
    with pytest.raises(HookConfigError) as err:
        APSchedulerKind.from_options({"jobstore_url": "sqlite:////x", "redis_url": "redis://h/1", "python": "py",
                                      "tolerance_s": float("nan")})
    keys = [k for k, _ in err.value.problems]
    assert keys == ["jobstore_url", "python", "tolerance_s"], err.value.problems


def test_wrong_table_and_unreachable_store(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE apscheduler_jobs (id TEXT, when_s REAL)")
    target = APSchedulerKind.from_options(options(path)).open()
    with pytest.raises(RepairError, match="not an APScheduler job table"):
        target.audit(1.8e9)
    down = APSchedulerKind.from_options({"jobstore_url": "postgres://u:hunter2@127.0.0.1:1/db",
                                         "python": sys.executable}).open()
    with pytest.raises(RepairError) as err:
        down.audit(1.8e9)
    assert "hunter2" not in str(err.value) and "127.0.0.1" in str(err.value)
    redis_down = APSchedulerKind.from_options({"redis_url": "redis://:hunter2@127.0.0.1:1/12",
                                               "python": sys.executable}).open()
    with pytest.raises(RepairError) as err:
        redis_down.audit(1.8e9)
    assert "hunter2" not in str(err.value)


# --------------------------------------------------------------------------------------------------------- Redis

REDIS_URL = aps.REDIS_URL  # the APScheduler harness's database (this worker's own)


@pytest.fixture
def redis_store(store: tuple[Path, float]) -> object:
    """The SQLite store's jobs copied into RedisJobStore's hash and ZSET (the harness's database, flushed before
    and after)."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        need(False, f"no Redis on 127.0.0.1:6379: {exc}")
    client.flushdb()
    path, _now = store
    for job_id, (column, state) in rows(path).items():
        client.hset("apscheduler.jobs", job_id, state)
        client.zadd("apscheduler.run_times", {job_id: column})
    client.zadd("apscheduler.run_times", {"ghost": 1e10})  # a run time without its job
    yield client
    client.flushdb()


def test_redis_rules_mismatch_and_undo_bytes(store: tuple[Path, float], redis_store: object) -> None:
    _path, now = store
    client = redis_store
    before = (client.hgetall("apscheduler.jobs"), client.zrange("apscheduler.run_times", 0, -1, withscores=True))
    target = APSchedulerKind.from_options({"redis_url": REDIS_URL, "python": sys.executable,
                                           "path": [str(Path(__file__).resolve().parents[2])]}).open()
    plan = target.plan(now)
    assert {c.item for c in plan.changes} == {"interval-false", "cron-false", "hand-fixed"}
    assert {u.item for u in plan.unreadable} == {"corrupt", "ghost"}
    assert "not in the jobs hash" in next(u.why for u in plan.unreadable if u.item == "ghost")
    outcome = target.apply(lambda: now, undo_log=None, incident_id="r1", owner_stopped=True)
    assert outcome.clean and outcome.rounds[0]["changed"] == 3
    assert client.zscore("apscheduler.run_times", "interval-false") == now
    assert client.zscore("apscheduler.run_times", "ghost") == 1e10, "the mismatch is left as it is"
    state = pickle.loads(client.hget("apscheduler.jobs", "interval-false"))  # noqa: S301 - this test's own objects
    assert state["next_run_time"].timestamp() == now, "the ZSET and the pickled state agree"
    assert client.hget("apscheduler.jobs", "corrupt") == before[0][b"corrupt"]
    client.set("apscheduler.jobs.x", 1)
    wrong = APSchedulerKind.from_options({"redis_url": REDIS_URL, "python": sys.executable,
                                          "jobs_key": "apscheduler.jobs.x"}).open()
    with pytest.raises(RepairError, match="is a string, not a hash"):
        wrong.audit(now)
    target.close()
    wrong.close()


def test_url_from_env_and_file(store: tuple[Path, float], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, now = store
    base = {k: v for k, v in options(path).items() if k != "jobstore_url"}
    unset = APSchedulerKind.from_options({**base, "jobstore_url_env": "TG_TEST_APS_URL"})
    monkeypatch.delenv("TG_TEST_APS_URL", raising=False)
    with pytest.raises(RepairError, match=r"jobstore_url_env: \$TG_TEST_APS_URL is not set"):
        unset.open()
    monkeypatch.setenv("TG_TEST_APS_URL", f"sqlite:///{path}")
    assert unset.open().audit(now).found
    url_file = tmp_path / "url"
    url_file.write_text(f"sqlite:///{path}\n")
    assert APSchedulerKind.from_options({**base, "jobstore_url_file": str(url_file)}).open().audit(now).found
    with pytest.raises(RepairError, match=r"jobstore_url_file .*missing: No such file"):
        APSchedulerKind.from_options({**base, "jobstore_url_file": str(tmp_path / "missing")}).open()

"""The redbeat target against this machine's Redis (db 11 only), on entries written by RedBeat's own code
(``RedBeatSchedulerEntry.save``/``reschedule``, celery-redbeat in the test venv): what is repaired and how, what is
left byte-for-byte as it was, undo, a key prefix and lock of one's own, and the errors of a Redis that refuses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import redbeat as rb
from timeguard.hooks.api import HookConfigError
from timeguard.repair.redbeat import _LOCK_SCRIPT, RedBeatKind, RedBeatTarget, decode_datetime, encode_datetime
from timeguard.repair.target import RepairError
from timeguard.repair.undo import UndoLog
from timeguard.store.journal import Journal

pytestmark = pytest.mark.real

FUTURE = 180 * 86400.0


@pytest.fixture
def redis() -> Iterator[Any]:
    with rb.fresh_db() as client:
        yield client


def app(prefix: str = rb.PREFIX, **conf: Any) -> Any:
    from celery import Celery

    a = Celery("tg-redbeat-test", broker=rb.REDIS_URL)
    a.conf.update(redbeat_redis_url=rb.REDIS_URL, redbeat_key_prefix=prefix, timezone="UTC", **conf)
    return a


def entry(a: Any, name: str, schedule: Any, last_run_s: float | None, zone: Any = dt.UTC) -> Any:
    """A RedBeat entry as beat leaves it after a run at ``last_run_s`` (RedBeat's save + reschedule)."""
    from redbeat.schedulers import RedBeatSchedulerEntry

    e = RedBeatSchedulerEntry(name, "t.tick", schedule, app=a)
    e.save()
    if last_run_s is not None:
        e.reschedule(last_run_at=dt.datetime.fromtimestamp(last_run_s, zone))
    return e


def loaded(a: Any, name: str) -> Any:
    from redbeat.schedulers import RedBeatSchedulerEntry

    return RedBeatSchedulerEntry.from_key(a.redbeat_conf.key_prefix + name, app=a)


def dump(redis: Any) -> dict[bytes, Any]:
    """Every key of db 11 as DUMP gives it (bytes-exact), with the schedule's scores."""
    return {k: redis.dump(k) for k in redis.keys("*")} | {b"#scores": redis.zrange(rb.SCHEDULE, 0, -1,
                                                                                   withscores=True)}


@pytest.fixture
def undo_log(tmp_path: Path) -> Iterator[UndoLog]:
    with Journal(tmp_path / "journal.sqlite") as journal:
        yield UndoLog(journal)


def test_repairs_meta_and_score_keeping_the_counter(redis: Any) -> None:
    from celery.schedules import crontab, schedule

    a = app()
    now = time.time()
    entry(a, "every-min", schedule(60), now + FUTURE)
    entry(a, "cron5", crontab(minute="*/5"), now + FUTURE, zone=dt.timezone(dt.timedelta(hours=2)))
    entry(a, "fine", schedule(30), now - 10)
    redis.hset(rb.PREFIX + "every-min", "meta", json.dumps(
        {**json.loads(redis.hget(rb.PREFIX + "every-min", "meta")), "total_run_count": 41}))
    target = RedBeatTarget(rb.REDIS_URL)
    outcome = target.apply(lambda: now, undo_log=None, incident_id="i1")
    assert outcome.clean and len(outcome.rounds) == 1, outcome
    fields = {(c.name, c.field) for c in outcome.plan.changes}
    assert fields == {("every-min", "meta.last_run_at"), ("every-min", "score"), ("cron5", "meta.last_run_at"),
                      ("cron5", "score")}
    m = loaded(a, "every-min")
    assert abs(m.last_run_at.timestamp() - now) < 1e-3 and m.total_run_count == 41
    # the score is what RedBeat itself computes for that meta (reschedule: due_at = last_run_at + every)
    assert redis.zscore(rb.SCHEDULE, rb.PREFIX + "every-min") == m.score == int(now + 60)
    c = loaded(a, "cron5")
    assert c.last_run_at.utcoffset() == dt.timedelta(hours=2)  # the notation beat wrote is kept
    assert redis.zscore(rb.SCHEDULE, rb.PREFIX + "cron5") == int(now)  # loaded next tick: is_due decides
    assert c.is_due()[0] is False  # not sent early: it ran "now"
    # idempotent
    assert target.plan(now).empty
    assert target.apply(lambda: now, undo_log=None, incident_id="i2").rounds == ()


def test_score_alone_future_is_repaired_for_intervals_and_never_run(redis: Any) -> None:
    from celery.schedules import crontab, schedule

    a = app()
    now = time.time()
    entry(a, "late-score", schedule(60), now - 30)
    redis.zadd(rb.SCHEDULE, {rb.PREFIX + "late-score": now + FUTURE})  # e.g. a hand-edited meta, score forgotten
    entry(a, "never", schedule(10), None)
    redis.hdel(rb.PREFIX + "never", "meta")  # no meta: RedBeat's "never run" (decode_meta)
    redis.zadd(rb.SCHEDULE, {rb.PREFIX + "never": now + FUTURE})  # created while the clock was ahead
    entry(a, "daily", crontab(minute=0, hour=4), now - 30)  # its score is up to a day ahead, legitimately
    target = RedBeatTarget(rb.REDIS_URL)
    plan = target.plan(now)
    assert {(c.name, c.field, c.new_s) for c in plan.changes} == {
        ("late-score", "score", float(int(now + 30))), ("never", "score", float(int(now)))}


def test_unreadable_entries_are_left_byte_for_byte(redis: Any) -> None:
    from celery.schedules import schedule

    a = app()
    now = time.time()
    entry(a, "good", schedule(60), now + FUTURE)
    bad = {
        "bad-json": {"definition": "{not json", "meta": "{}"},
        "bad-meta": {"definition": json.dumps({"name": "bad-meta", "schedule": {"__type__": "interval", "every": 5,
                                                                                "relative": False}}),
                     "meta": "not json"},
        "unknown-type": {"definition": json.dumps({"name": "unknown-type"}),
                         "meta": json.dumps({"last_run_at": {"__type__": "instant", "epoch": now + FUTURE}})},
        "no-schedule": {"definition": json.dumps({"name": "no-schedule"}), "meta": '{"last_run_at": null}'},
        "solar": {"definition": json.dumps({"name": "solar", "schedule": {"__type__": "solar", "event": "dawn"}}),
                  "meta": '{"last_run_at": null}'},
        "missing-fields": {"definition": json.dumps({"name": "missing-fields"}),
                           "meta": json.dumps({"last_run_at": {"__type__": "datetime", "year": 2027}})},
        "bad-zone": {"definition": json.dumps({"name": "bad-zone"}),
                     "meta": json.dumps({"last_run_at": {**encode_datetime(now + FUTURE, None),
                                                         "timezone": "Mars/Olympus"}})},
    }
    for name, fields in bad.items():
        redis.hset(rb.PREFIX + name, mapping=fields)
        redis.zadd(rb.SCHEDULE, {rb.PREFIX + name: now + FUTURE})
    redis.set(rb.PREFIX + "a-string", "x")
    redis.zadd(rb.SCHEDULE, {rb.PREFIX + "a-string": now + FUTURE, rb.PREFIX + "no-hash": now + FUTURE})
    target = RedBeatTarget(rb.REDIS_URL)
    # every key but the good entry's and the schedule (whose other scores are checked below), exactly
    before = {k: v for k, v in dump(redis).items()
              if k not in (rb.PREFIX.encode() + b"good", rb.SCHEDULE.encode(), b"#scores")}
    outcome = target.apply(lambda: now, undo_log=None, incident_id="i1")
    unreadable = {u.item.removeprefix(rb.PREFIX): u.why for u in outcome.plan.unreadable}
    assert set(unreadable) == {*bad, "a-string", "no-hash"}, unreadable
    assert "not a hash" in unreadable["a-string"] and "no hash" in unreadable["no-hash"]
    assert "without a RedBeat schedule" in unreadable["solar"]
    assert "unknown time zone" in unreadable["bad-zone"] and "missing month, day" in unreadable["missing-fields"]
    after = dump(redis)
    assert {k: after[k] for k in before} == before
    scores = dict(after[b"#scores"])
    assert all(scores[(rb.PREFIX + n).encode()] == now + FUTURE for n in unreadable)
    assert abs(loaded(a, "good").last_run_at.timestamp() - now) < 1e-3
    assert "cannot read" in target.audit_of(outcome.plan, now).summary
    entry(a, "good", schedule(60), now + FUTURE)
    audit = target.audit(now)
    assert audit.found and [(c["name"], c["field"]) for c in audit.details["changes"]] == [
        ("good", "meta.last_run_at"), ("good", "score")], audit
    assert len(audit.details["unreadable"]) == len(unreadable)


def test_undo_restores_exactly_and_skips_what_beat_changed(redis: Any, undo_log: UndoLog) -> None:
    from celery.schedules import schedule

    a = app()
    now = time.time()
    for name in ("a", "b"):
        entry(a, name, schedule(60), now + FUTURE)
    before = dump(redis)
    target = RedBeatTarget(rb.REDIS_URL)
    target.apply(lambda: now, undo_log=undo_log, incident_id="inc")
    loaded(a, "b").reschedule(dt.datetime.fromtimestamp(now + 5, dt.UTC))  # beat ran b since
    dry = target.undo(undo_log, "inc", lambda: now, dry_run=True)
    assert {(r["name"], r["field"]) for r in dry.restored} == {("a", "meta.last_run_at"), ("a", "score")}
    result = target.undo(undo_log, "inc", lambda: now)
    assert [s["name"] for s in result.skipped] == ["b", "b"]
    after = dump(redis)
    assert after[(rb.PREFIX + "a").encode()] == before[(rb.PREFIX + "a").encode()]  # meta and definition exact
    assert dict(after[b"#scores"])[(rb.PREFIX + "a").encode()] == dict(before[b"#scores"])[(rb.PREFIX + "a").encode()]
    assert target.undo(undo_log, "inc", lambda: now).restored == ()  # undone once


def test_own_prefix_and_lock_reported_never_touched(redis: Any) -> None:
    from celery.schedules import schedule

    a = app(prefix="myapp:")
    now = time.time()
    entry(a, "x", schedule(60), now + FUTURE)
    other = app()  # the default prefix: another app in the same database, not ours to touch
    entry(other, "y", schedule(60), now + FUTURE)
    redis.set("myapp::lock", "token", px=int(FUTURE * 1000))  # a lock deadline from the false period
    target = RedBeatTarget(rb.REDIS_URL, key_prefix="myapp:")
    outcome = target.apply(lambda: now, undo_log=None, incident_id="i")
    assert {c.name for c in outcome.plan.changes} == {"x"}
    assert [n.kind for n in outcome.plan.report] == ["lock"] and "DEL myapp::lock" in outcome.plan.report[0].detail
    audit = target.audit(now)  # after the repair: nothing in the future, the lock still reported
    assert not audit.found and audit.details["report"][0]["kind"] == "lock", audit
    assert redis.get("myapp::lock") == b"token"
    assert loaded(other, "y").last_run_at.timestamp() > now + FUTURE - 1
    assert RedBeatTarget(rb.REDIS_URL, key_prefix="myapp:", lock_key="beatlock").lock_key == "myapp:beatlock"


@pytest.mark.parametrize(("url", "says"), [
    ("redis://nobody:s3cret@127.0.0.1:6379/11", "authentication failed"),
    ("redis://127.0.0.1:6379/99", "no such database"),
    ("redis://127.0.0.1:1/11", "nothing was changed"),
])
def test_a_refusing_redis_is_a_clear_error_without_the_password(redis: Any, url: str, says: str) -> None:
    with pytest.raises(RepairError) as caught:
        RedBeatTarget(url).plan(time.time())
    text = str(caught.value)
    host = url.rsplit("@", maxsplit=1)[-1].split("/", maxsplit=1)[0]
    assert says in text and "s3cret" not in text and host in text, text


def _redis_server(port: int, directory: Path, *extra: str) -> Any:
    from tests.support.realprogs import ManagedProcess

    proc = ManagedProcess.start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", str(directory), *extra],
                                name=f"redis-server:{port}", log_path=directory / f"redis-{port}.log")
    import redis

    client = redis.Redis(port=port, db=11)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.stop()
                raise
            time.sleep(0.05)


def test_a_read_only_replica_refuses_and_nothing_changes(tmp_path: Path) -> None:
    """A real replica (two redis-servers of this test's own on free ports, never the shared one): the plan reads,
    the write is refused with READONLY, named as such."""
    from celery.schedules import schedule

    from tests.support.realprogs import free_port
    from tests.support.require import need_program

    need_program("redis-server", "redis-server")
    primary_port, replica_port = free_port("tcp"), free_port("tcp")
    primary, pc = _redis_server(primary_port, tmp_path)
    try:
        replica, rc = _redis_server(replica_port, tmp_path, "--replicaof", "127.0.0.1", str(primary_port))
        try:
            url = f"redis://127.0.0.1:{primary_port}/11"
            a = app()
            a.conf.redbeat_redis_url = url
            now = time.time()
            entry(a, "x", schedule(60), now + FUTURE)
            deadline = time.monotonic() + 10
            while rc.info("replication").get("master_link_status") != "up" or rc.zcard(rb.SCHEDULE) == 0:
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
            target = RedBeatTarget(f"redis://127.0.0.1:{replica_port}/11")
            assert len(target.plan(now).changes) == 2
            with pytest.raises(RepairError, match="read-only replica"):
                target.apply(lambda: now, undo_log=None, incident_id="i")
            assert pc.zscore(rb.SCHEDULE, rb.PREFIX + "x") > now + FUTURE - 120
        finally:
            rc.close()
            replica.stop()
    finally:
        pc.close()
        primary.stop()


def test_hook_options() -> None:
    assert RedBeatKind.from_options({"redis_url_env": "X"}).values == {"redis_url_env": "X"}
    with pytest.raises(HookConfigError) as caught:
        RedBeatKind.from_options({"redis_url": "redis://h/0", "redis_url_env": "X", "tolerance_s": float("nan")})
    keys = [k for k, _ in caught.value.problems]
    assert "redis_url" in keys and "tolerance_s" in keys
    with pytest.raises(HookConfigError) as caught:
        RedBeatKind.from_options({"redis_url": "redis-sentinel://:pw@h:26379/0"})
    assert "redis://, rediss:// or unix://" in str(caught.value) and "pw" not in str(caught.value)


def test_datetime_codec_is_redbeats(redis: Any) -> None:  # (the fixture: celery-redbeat is installed)
    from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder

    for zone in (dt.UTC, dt.timezone(dt.timedelta(hours=-5))):
        when = dt.datetime(2027, 6, 4, 8, 1, 27, 156396, tzinfo=zone)
        stored = json.loads(json.dumps({"t": when}, cls=RedBeatJSONEncoder))["t"]
        assert decode_datetime(stored) == when
        mine = json.dumps({"t": encode_datetime(when.timestamp(), stored)})
        assert json.loads(mine, cls=RedBeatJSONDecoder)["t"] == when


# ------------------------------------------------------------------------------------- the command line


def _cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("TIMEGUARD_CONFIG", "TIMEGUARD_REDBEAT_REDIS_URL")}
    return subprocess.run([sys.executable, "-m", "timeguard", "repair", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False, env={**base, **(env or {})})


def test_cli_hook_url_from_env_and_usage_errors(redis: Any, tmp_path: Path) -> None:
    """``--hook`` takes the configured hook's Redis (its URL from an environment variable, read when used) and
    options; the command line's own options override them; no Redis at all is a usage error (exit 2)."""
    from celery.schedules import schedule

    a = app(prefix="proj:")
    now = time.time()
    entry(a, "x", schedule(60), now + FUTURE)
    config = tmp_path / "timeguard.yaml"
    config.write_text("hooks:\n  - type: redbeat\n    name: rb\n    redis_url_env: PROJ_REDIS\n"
                      "    key_prefix: 'proj:'\n")
    dry = _cli(config, "redbeat", "--hook", "rb", "--dry-run", "--trust-local-clock", "--json",
               env={"PROJ_REDIS": rb.REDIS_URL})
    assert dry.returncode == 0, dry.stderr
    assert {c["name"] for c in json.loads(dry.stdout)["changes"]} == {"x"}
    # the command line's prefix overrides the hook's: nothing under redbeat:
    other = _cli(config, "redbeat", "--hook", "rb", "--key-prefix", "redbeat:", "--dry-run", "--trust-local-clock",
                 "--json", env={"PROJ_REDIS": rb.REDIS_URL})
    assert other.returncode == 0 and json.loads(other.stdout)["changes"] == [], other.stdout + other.stderr
    unset = _cli(config, "redbeat", "--hook", "rb", "--dry-run", "--trust-local-clock")
    assert unset.returncode == 1 and "$PROJ_REDIS is not set" in unset.stderr, unset.stderr
    none = _cli(config, "redbeat", "--dry-run", "--trust-local-clock")
    assert none.returncode == 2 and "--redis-url" in none.stderr, none.stderr
    from_env = _cli(config, "redbeat", "--key-prefix", "proj:", "--trust-local-clock", "--json",
                    env={"TIMEGUARD_REDBEAT_REDIS_URL": rb.REDIS_URL})
    assert from_env.returncode == 0 and json.loads(from_env.stdout)["changed"] is True, from_env.stderr
    assert abs(loaded(a, "x").last_run_at.timestamp() - time.time()) < 60


def test_url_from_a_credential_file_read_when_used(redis: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``redis_url_file``: relative means inside $CREDENTIALS_DIRECTORY (systemd LoadCredential=), read at open."""
    kind = RedBeatKind.from_options({"redis_url_file": "redbeat-url"})  # validated without reading it
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(RepairError, match=r"CREDENTIALS_DIRECTORY.*not set"):
        kind.open()
    (tmp_path / "redbeat-url").write_text(rb.REDIS_URL + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    target = kind.open()
    assert target.plan(time.time()).empty and target.where.startswith(rb.REDIS_URL)
    missing = RedBeatKind.from_options({"redis_url_file": str(tmp_path / "nope")})
    with pytest.raises(RepairError, match="No such file"):
        missing.open()


def test_a_stale_lock_is_deleted_only_with_beat_stopped_and_only_if_unchanged(redis: Any) -> None:
    """A lock from the false period (its deadline months away: Redis keeps the absolute time) would make a new beat
    wait until then. With beat stopped by the hook (owner_stopped) it is deleted; a lock within the timeout (a live
    beat's) is not, even then; without beat stopped it is only reported."""
    from celery.schedules import schedule

    a = app()
    now = time.time()
    lock = rb.PREFIX + ":lock"
    entry(a, "x", schedule(60), now + FUTURE)
    redis.set(lock, "token", px=int(FUTURE * 1000))
    target = RedBeatTarget(rb.REDIS_URL, key_prefix=rb.PREFIX)
    assert [n.kind for n in target.apply(lambda: now, undo_log=None, incident_id="i").plan.report] == ["lock"]
    assert redis.get(lock) == b"token"  # beat may be running: reported only
    entry(a, "x", schedule(60), now + FUTURE)
    outcome = target.apply(lambda: now, undo_log=None, incident_id="j", owner_stopped=True)
    assert outcome.clean and redis.get(lock) is None
    (note,) = outcome.plan.report
    assert note.kind == "lock" and note.detail.startswith("deleted:"), note
    # a live beat's lock (within the timeout) is its own, even with our beat stopped (another host's beat)
    redis.set(lock, "live", px=60_000)
    entry(a, "x", schedule(60), now + FUTURE)
    assert target.apply(lambda: now, undo_log=None, incident_id="k", owner_stopped=True).plan.report == ()
    assert redis.get(lock) == b"live"
    # the compare-and-delete: a lock whose token changed since it was read is left
    redis.set(lock, "other", px=int(FUTURE * 1000))
    script = redis.register_script(_LOCK_SCRIPT)
    assert script(keys=[lock], args=[b"token", 1_000]) == 0 and redis.get(lock) == b"other"
    redis.delete(lock)

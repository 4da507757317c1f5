# ruff: noqa: S608  (table names from the fixed django-celery-beat prefix, values bound)
"""The celery_beat repair engine on the real django-celery-beat schema: PostgreSQL, MariaDB, SQLite."""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.dcb_schema import PREFIX, BeatDB, beat_database, server_problem
from tests.support.require import need
from timeguard.repair.celery_beat import CeleryBeatRepair, RepairError
from timeguard.repair.undo import UndoLog
from timeguard.store.journal import Journal

pytestmark = pytest.mark.real

NOW = 1_780_000_000.0  # the trusted now of these tests (2026-05-28)
DAY = 86400.0
FUTURE = NOW + 180 * DAY
PAST = NOW - 3 * DAY


@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    problem = server_problem(request.param)
    need(problem is None, problem or "")
    with beat_database(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    with Journal(tmp_path / "state" / "journal.sqlite") as j:
        yield j


def populate(db: BeatDB) -> None:
    db.add_task("interval-future", last_run_at=FUTURE, date_changed=FUTURE, total_run_count=7)
    db.add_task("crontab-future", kind="crontab", last_run_at=FUTURE + 60, date_changed=FUTURE + 60)
    db.add_task("null-lr-future-dc", last_run_at=None, date_changed=FUTURE)
    db.add_task("clocked-fired-early", kind="clocked", clocked_time=NOW + 30 * DAY, last_run_at=None,
                date_changed=FUTURE, one_off=True, enabled=False)
    db.add_task("expired-disabled", last_run_at=None, date_changed=FUTURE, enabled=False, expires=NOW + 10 * DAY)
    db.add_task("disabled-future", last_run_at=FUTURE, date_changed=PAST, enabled=False)
    db.add_task("past", kind="crontab", last_run_at=PAST, date_changed=PAST)
    db.add_task("slightly-ahead", last_run_at=NOW + 60, date_changed=NOW + 60)  # within the tolerance
    db.set_last_update(FUTURE)


def repairer(db: BeatDB, **kw: Any) -> CeleryBeatRepair:
    kw.setdefault("beat_max_interval_s", 0)
    kw.setdefault("wait_margin_s", 0)
    return CeleryBeatRepair(db.url, **kw)


def no_future(db: BeatDB, now_s: float, tol: float = 600) -> None:
    for name, row in db.tasks().items():
        assert row["date_changed"] is not None, name
        assert row["date_changed"] <= now_s + tol, name
        assert row["last_run_at"] is None or row["last_run_at"] <= now_s + tol, name
    lu = db.last_update()
    assert lu is not None and lu <= now_s + tol


def test_plan_lists_every_future_timestamp_and_the_report(db: BeatDB) -> None:
    populate(db)
    before = db.raw_tasks()
    plan = repairer(db).plan(NOW)
    got = {(c.name, c.column) for c in plan.changes}
    assert got == {
        ("interval-future", "last_run_at"), ("interval-future", "date_changed"),
        ("crontab-future", "last_run_at"), ("crontab-future", "date_changed"),
        ("null-lr-future-dc", "date_changed"), ("clocked-fired-early", "date_changed"),
        ("expired-disabled", "date_changed"), ("disabled-future", "last_run_at"),
        ("(reload signal)", "last_update"),
    }
    assert all(c.new_s == NOW for c in plan.changes)
    assert {(r.name, r.kind) for r in plan.report} == {("clocked-fired-early", "fired_early"),
                                                       ("expired-disabled", "expired_disabled")}
    assert db.raw_tasks() == before  # read-only


def test_apply_clamps_exactly_and_is_idempotent_and_undo_restores(db: BeatDB, journal: Journal) -> None:
    populate(db)
    before = db.tasks()
    raw_before = db.raw_tasks()
    engine = repairer(db)
    outcome = engine.apply(lambda: NOW, undo_log=UndoLog(journal), incident_id="inc-1", sleep=lambda s: None)
    assert outcome.clean
    assert outcome.rows_changed() == {"last_run_at": 3, "date_changed": 5, "last_update": 1}
    assert len(outcome.rounds) == 1
    after = db.tasks()
    for name in ("interval-future", "crontab-future"):
        assert after[name]["last_run_at"] == NOW and after[name]["date_changed"] == NOW
    assert after["null-lr-future-dc"] == {**before["null-lr-future-dc"], "date_changed": NOW}  # still NULL: not ours
    assert after["disabled-future"]["last_run_at"] == NOW and after["disabled-future"]["date_changed"] == PAST
    assert after["clocked-fired-early"]["enabled"] is False  # reported, never re-enabled
    assert after["expired-disabled"]["enabled"] is False
    assert after["interval-future"]["total_run_count"] == 7
    assert after["past"] == before["past"] and after["slightly-ahead"] == before["slightly-ahead"]
    assert db.last_update() == NOW + 1  # phase B: strictly greater than phase A
    no_future(db, NOW)

    records = UndoLog(journal).records("inc-1")
    assert len(records) == 9
    assert len({(r["item"], r["field"]) for r in records}) == 9
    assert {r["target"] for r in records} == {"celery_beat"}

    again = engine.apply(lambda: NOW, undo_log=UndoLog(journal), incident_id="inc-2", sleep=lambda s: None)
    assert not again.changed and again.clean and again.plan.empty
    assert db.tasks() == after
    assert UndoLog(journal).records("inc-2") == []

    dry = engine.undo(UndoLog(journal), "inc-1", lambda: NOW + 5, dry_run=True, sleep=lambda s: None)
    assert len(dry.restored) == 8 and db.tasks() == after
    undone = engine.undo(UndoLog(journal), "inc-1", lambda: NOW + 5, sleep=lambda s: None)
    assert len(undone.restored) == 8 and not undone.skipped
    assert db.raw_tasks() == raw_before  # the exact original values
    assert db.last_update() == NOW + 6  # bumped twice so a running beat reloads
    assert engine.undo(UndoLog(journal), "inc-1", lambda: NOW + 9, sleep=lambda s: None).restored == ()


def test_stale_write_back_between_rounds_is_fixed_by_round_two(db: BeatDB, journal: Journal) -> None:
    populate(db)
    writes: list[float] = []

    def beat_flushes_dirty(seconds: float) -> None:
        if not writes:  # once, after round 1's phase A: like beat's sync() of an unsynced entry
            writes.append(seconds)
            stamp = db.stamp(FUTURE + 5)
            db.sql(f"UPDATE {PREFIX}periodictask SET last_run_at = :t, date_changed = :t "
                   "WHERE name = 'interval-future'", {"t": stamp})

    outcome = repairer(db).apply(lambda: NOW, undo_log=UndoLog(journal), incident_id="inc", sleep=beat_flushes_dirty)
    assert outcome.clean and len(outcome.rounds) == 2
    assert (outcome.rounds[1].last_run_at, outcome.rounds[1].date_changed) == (1, 1)
    no_future(db, NOW)
    rows = [r for r in UndoLog(journal).records("inc") if r["name"] == "interval-future"]
    assert len(rows) == 2  # one per column: the first-seen original kept, no duplicate
    assert all(abs(db.epoch(r["old_value"]) - FUTURE) < 1 for r in rows)


def test_two_concurrent_agents_one_applies(db: BeatDB, tmp_path: Path) -> None:
    populate(db)
    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def agent(index: int) -> None:
        try:
            with Journal(tmp_path / f"agent{index}" / "journal.sqlite") as j:
                barrier.wait()
                results.append((index, j, repairer(db).apply(lambda: NOW, undo_log=UndoLog(j), incident_id="inc",
                                                            sleep=lambda s: time.sleep(0.2))))
                results[-1] = (index, UndoLog(j).records("inc"), results[-1][2])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    changed = [r for r in results if r[2].changed]
    assert len(changed) == 1
    idle = [r for r in results if not r[2].changed]
    assert len(idle) == 1 and idle[0][1] == []
    assert len(changed[0][1]) == 9
    no_future(db, NOW)


def test_tables_missing_names_them(tmp_path: Path) -> None:
    (tmp_path / "empty.sqlite3").touch()  # an empty file is an empty SQLite database
    engine = CeleryBeatRepair(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    with pytest.raises(RepairError, match="django_celery_beat_periodictask, django_celery_beat_periodictasks"):
        engine.plan(NOW)


def test_unreachable_database_is_a_clear_error() -> None:
    engine = CeleryBeatRepair("postgresql+psycopg://postgres:secret@127.0.0.1:1/nothing", connect_timeout_s=2)
    with pytest.raises(RepairError) as info:
        engine.plan(NOW)
    assert "cannot connect" in str(info.value) and "secret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_unsupported_url() -> None:
    with pytest.raises(RepairError, match="unsupported database 'oracle'"):
        CeleryBeatRepair("oracle://scott@db/x")
    with pytest.raises(RepairError, match="not a database URL"):
        CeleryBeatRepair("not a url")


def test_locked_tables_are_a_clear_error(db: BeatDB, journal: Journal) -> None:
    populate(db)
    import sqlalchemy as sa

    holder = db.engine().connect()
    tx = holder.begin()
    try:
        if db.backend == "sqlite":
            holder.exec_driver_sql(f"UPDATE {PREFIX}periodictasks SET ident = ident")  # the write lock
        else:
            holder.execute(sa.text(f"SELECT * FROM {PREFIX}periodictasks WHERE ident = 1 FOR UPDATE"))
        with pytest.raises(RepairError, match="locked"):
            repairer(db, lock_timeout_s=1).apply(lambda: NOW, undo_log=UndoLog(journal), incident_id="inc",
                                                 sleep=lambda s: None)
    finally:
        tx.rollback()
        holder.close()
    assert UndoLog(journal).records("inc") == []


# ------------------------------------------------------------------------------------ the hook, the CLI

def test_hook_repairs_with_evidence_and_records_undo(db: BeatDB, journal: Journal) -> None:
    from timeguard.events import Event, EventKind
    from timeguard.hooks.api import HookContext, HookStatus
    from timeguard.repair.hook import CeleryBeatHook

    populate(db)
    hook = CeleryBeatHook.from_config("beat", {"database_url": db.url, "beat_max_interval_s": 0,
                                               "wait_margin_s": 0.1})
    verdict = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": True}
    ev = Event(kind=EventKind.ROLLBACK, incident_id="inc-h", wall_time_s=NOW, monotonic_s=1.0, boot_id="b")

    def ctx(*, dry_run: bool) -> HookContext:
        return HookContext(dry_run=dry_run, trusted_now=lambda: NOW, verdict=verdict, undo_log=UndoLog(journal),
                           hostname="h")

    dry = hook.handle(ev, ctx(dry_run=True))
    assert dry.status is HookStatus.SKIPPED and "would change 9" in dry.summary
    assert len(dry.details["report"]) == 2
    result = hook.handle(ev, ctx(dry_run=False))
    assert result.status is HookStatus.CHANGED, result.summary
    assert result.details["rows_changed"] == {"last_run_at": 3, "date_changed": 5, "last_update": 1}
    assert "2 task(s) ran early or expired during the false period" in result.summary
    no_future(db, NOW)
    assert len(UndoLog(journal).records("inc-h")) == 9
    again = hook.handle(ev, ctx(dry_run=False))
    assert again.status is HookStatus.OK and again.summary.startswith("nothing to repair")


def test_report_names_a_one_off_that_ran_early_even_before_beat_disabled_it(sqlite_db: BeatDB) -> None:
    # What a real beat leaves when the clock went back before it looked at the one-off again: still enabled,
    # total_run_count 1 (beat disables it at its next look). Not a candidate for re-running, but reported.
    sqlite_db.add_task("clocked-ran", kind="clocked", clocked_time=NOW + DAY, last_run_at=FUTURE,
                       date_changed=FUTURE, one_off=True, enabled=True, total_run_count=1)
    sqlite_db.add_task("clocked-pending", kind="clocked", clocked_time=NOW + DAY, last_run_at=None,
                       date_changed=PAST, one_off=True, enabled=True)
    [item] = repairer(sqlite_db).plan(NOW).report
    assert (item.name, item.kind) == ("clocked-ran", "fired_early")
    assert "beat disables it at its next look" in item.detail


def test_cancel_cuts_the_wait_short_and_still_sends_the_reload_signal(sqlite_db: BeatDB, journal: Journal) -> None:
    populate(sqlite_db)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    clock = iter(range(10))
    outcome = repairer(sqlite_db, beat_max_interval_s=30).apply(
        lambda: NOW + next(clock), undo_log=UndoLog(journal), incident_id="inc-c", cancelled=cancel.is_set)
    took = time.monotonic() - started
    assert took < 5, f"the 32-s wait was not cut short ({took:.1f} s)"
    assert not outcome.clean and len(outcome.rounds) == 1
    # phase A committed, and phase B still ran: last_update moved strictly past now_A, so a beat may reload
    [round_] = outcome.rounds
    assert round_.now_b_s is not None and round_.now_b_s > round_.now_a_s
    assert sqlite_db.last_update() == pytest.approx(round_.now_b_s, abs=1e-3)
    no_future(sqlite_db, NOW + 10)


def test_hook_audit_finds_future_state_only_with_a_trusted_clock(db: BeatDB, journal: Journal) -> None:
    from timeguard.hooks.api import AuditOutcome, HookContext
    from timeguard.repair.hook import CeleryBeatHook

    hook = CeleryBeatHook.from_config("beat", {"database_url": db.url})

    def ctx(verdict: dict[str, Any]) -> HookContext:
        return HookContext(dry_run=False, trusted_now=lambda: NOW, verdict=verdict, undo_log=UndoLog(journal),
                           hostname="h")

    trusted = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": True}
    assert hook.audit(ctx(trusted)).outcome is AuditOutcome.CLEAN
    populate(db)
    before = db.raw_tasks()
    found = hook.audit(ctx(trusted))
    assert found.outcome is AuditOutcome.FOUND, found.summary
    assert found.details["counts"] == {"last_run_at": 3, "date_changed": 5, "last_update": 1}
    assert found.details["tasks"] == sorted(["interval-future", "crontab-future", "null-lr-future-dc",
                                            "clocked-fired-early", "expired-disabled", "disabled-future"])
    assert "180 days ahead" in found.summary
    # the clock is not trusted: the audit does not even look (a host 180 days ahead would see nothing future)
    spoofed = {"status": "OK", "offset_s": 0.01, "ntp_http_agree": False}
    assert hook.audit(ctx(spoofed)).outcome is AuditOutcome.SKIPPED
    behind = {"status": "CRITICAL", "offset_s": 3 * DAY, "ntp_http_agree": True}
    skipped = hook.audit(ctx(behind))
    assert skipped.outcome is AuditOutcome.SKIPPED and "behind" in skipped.summary
    assert db.raw_tasks() == before  # an audit never writes


def test_hook_audit_database_errors_raise_for_the_agent_to_retry(tmp_path: Path) -> None:
    from timeguard.hooks.api import HookContext
    from timeguard.repair.hook import CeleryBeatHook

    (tmp_path / "empty.sqlite3").touch()
    hook = CeleryBeatHook.from_config("beat", {"database_url": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})
    ctx = HookContext(dry_run=False, trusted_now=lambda: NOW, hostname="h",
                      verdict={"status": "OK", "offset_s": 0.0, "offset_lo_s": -0.01,
                               "offset_hi_s": 0.01, "ntp_http_agree": True})
    with pytest.raises(RepairError, match="missing"):
        hook.audit(ctx)
    hook = CeleryBeatHook.from_config("beat", {"database_url": f"sqlite:///{tmp_path / 'missing.sqlite3'}"})
    with pytest.raises(RepairError, match="no such database"):
        hook.audit(ctx)
    assert not (tmp_path / "missing.sqlite3").exists()


def _cli(*args: str, config: Path | None = None, env: dict[str, str] | None = None) -> Any:
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "timeguard", "repair", *args]
    if config is not None:
        argv += ["--config", str(config)]
    environ = {k: v for k, v in os.environ.items() if k not in ("TIMEGUARD_CONFIG", "TIMEGUARD_BEAT_DATABASE_URL")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**environ, **(env or {})},
                          check=False)


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Any:
    with beat_database("sqlite", tmp_path) as database:
        yield database


def test_cli_refuses_without_evidence_on_an_offline_host(sqlite_db: BeatDB) -> None:
    real_now = time.time()
    sqlite_db.add_task("future", last_run_at=real_now + 90 * DAY, date_changed=real_now + 90 * DAY)
    before = sqlite_db.raw_tasks()
    proc = _cli("celery-beat", "--database-url", sqlite_db.url)  # the default config: public sources, offline
    assert proc.returncode == 1
    assert "no repair:" in proc.stderr and "--trust-local-clock" in proc.stderr
    assert sqlite_db.raw_tasks() == before


def test_cli_dry_run_json_apply_and_undo(sqlite_db: BeatDB, tmp_path: Path) -> None:
    import json

    real_now = time.time()
    sqlite_db.add_task("nightly-report", kind="crontab", last_run_at=real_now + 90 * DAY,
                       date_changed=real_now + 90 * DAY)
    sqlite_db.add_task("untouched", last_run_at=real_now - DAY, date_changed=real_now - DAY)
    sqlite_db.set_last_update(real_now + 90 * DAY)
    before = sqlite_db.raw_tasks()
    config = tmp_path / "timeguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    url = sqlite_db.url

    table = _cli("celery-beat", "--database-url", url, "--dry-run", "--trust-local-clock", config=config)
    assert table.returncode == 0, table.stderr
    assert "assuming this host's clock is right now" in table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["TASK", "COLUMN", "OLD", "→", "NEW"]
    assert sum("nightly-report" in line for line in lines) == 2 and "untouched" not in table.stdout
    assert "(reload signal)" in table.stdout and "in the future" in table.stdout

    as_json = _cli("celery-beat", "--database-url", url, "--dry-run", "--trust-local-clock", "--json",
                   config=config)
    doc = json.loads(as_json.stdout)
    assert doc["counts"] == {"last_run_at": 1, "date_changed": 1, "last_update": 1}
    assert sqlite_db.raw_tasks() == before

    applied = _cli("celery-beat", "--database-url", url, "--trust-local-clock", "--json",
                   "--beat-max-interval-s", "0", config=config)
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    assert result["clean"] and result["rows_changed"]["last_run_at"] == 1
    no_future(sqlite_db, time.time())
    assert sqlite_db.raw_tasks()["untouched"] == before["untouched"]

    nothing = _cli("celery-beat", "--database-url", url, "--trust-local-clock", config=config)
    assert nothing.returncode == 0 and "nothing to repair" in nothing.stdout

    dry_undo = _cli("undo", result["incident_id"], "--dry-run", config=config, env={"TIMEGUARD_BEAT_DATABASE_URL": url})
    assert dry_undo.returncode == 0 and dry_undo.stdout.count("would restore") == 2
    undone = _cli("undo", result["incident_id"], "--database-url", url, config=config)
    assert undone.returncode == 0, undone.stderr
    assert sqlite_db.raw_tasks() == before
    unknown = _cli("undo", "no-such-incident", "--database-url", url, config=config)
    assert unknown.returncode == 1 and "no repair recorded" in unknown.stderr
    usage = _cli("celery-beat", config=config)
    assert usage.returncode == 2


def test_cli_database_errors_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "timeguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    (tmp_path / "empty.sqlite3").touch()
    proc = _cli("celery-beat", "--database-url", f"sqlite:///{tmp_path / 'empty.sqlite3'}", "--trust-local-clock",
                config=config)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "django_celery_beat_periodictask" in proc.stderr and "missing" in proc.stderr
    proc = _cli("celery-beat", "--database-url", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "--trust-local-clock",
                config=config)
    assert proc.returncode == 1 and "cannot connect" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ values the engine cannot read (issue 9)

# Per backend, every class of stored value the engine cannot read, as SQL literals: not a date, another type,
# ±infinity, the end of the calendar (9999-12-31 23:59:59.999999 converts to year 10000), beyond it, before year 2.
UNREADABLE = {
    "sqlite": ["'not a date'", "'9999-12-31 23:59:59.999999'", "1790000000", "1790000000.5", "x'00ff'",
               "'0001-01-01 00:00:00'", "''"],
    "postgresql": ["'infinity'", "'-infinity'", "'9999-12-31 23:59:59.999999+00'", "'20000-01-01 00:00:00+00'",
                   "'0001-01-01 00:00:00+00'"],
    "mysql": ["'9999-12-31 23:59:59.999999'", "'0000-00-00 00:00:00'", "'0001-01-01 00:00:00'"],
}


def raw_text(db: BeatDB, column: str, table: str = "periodictask", key: str = "name") -> dict[Any, str | None]:
    """Every row's ``column`` as the database itself shows it (no driver conversion, which may fail)."""
    expr = {"sqlite": f"quote({column})", "postgresql": f"CAST({column} AS text)",
            "mysql": f"CAST({column} AS CHAR)"}[db.backend]
    return {r[0]: r[1] for r in db.sql(f"SELECT {key}, {expr} FROM {PREFIX}{table}")}


def store(db: BeatDB, table: str, column: str, literal: str, where: str) -> None:
    """The SQL ``literal`` as written, through the driver: SQLAlchemy's text() would take a ``:0`` inside a
    quoted literal (hypothesis writes such text) for a bind parameter."""
    with db.engine().begin() as conn:
        if db.backend == "mysql":  # MariaDB's strict mode refuses the zero date: an old or relaxed server stored it
            conn.exec_driver_sql("SET SESSION sql_mode = ''")
        conn.exec_driver_sql(f"UPDATE {PREFIX}{table} SET {column} = {literal} WHERE {where}")


def test_unreadable_values_are_reported_and_skipped_every_other_row_repaired(db: BeatDB, journal: Journal) -> None:
    populate(db)
    bad: dict[tuple[str, str], str] = {}
    for i, literal in enumerate(UNREADABLE[db.backend]):
        for column in ("last_run_at", "date_changed"):
            name = f"bad-{column}-{i}"
            # the other column is future: the row would be repaired if the engine did not skip it
            db.add_task(name, last_run_at=FUTURE, date_changed=FUTURE)
            store(db, "periodictask", column, literal, f"name = '{name}'")
            bad[(name, column)] = literal
    raw_before = {c: raw_text(db, c) for c in ("last_run_at", "date_changed")}
    engine = repairer(db)

    plan = engine.plan(NOW)
    assert {(u.name, u.column) for u in plan.unreadable} == set(bad)
    for u in plan.unreadable:
        assert u.table == "periodictask" and "left as it is" in u.why and u.raw
    assert not {c.name for c in plan.changes} & {name for name, _ in bad}
    assert len(plan.changes) == 9  # populate()'s, as without the bad rows

    outcome = engine.apply(lambda: NOW, undo_log=UndoLog(journal), incident_id="inc-u", sleep=lambda s: None)
    assert outcome.clean and outcome.rows_changed() == {"last_run_at": 3, "date_changed": 5, "last_update": 1}
    assert {(u["name"], u["column"]) for u in outcome.to_dict()["unreadable"]} == set(bad)
    for column in ("last_run_at", "date_changed"):  # the skipped rows hold exactly what they held
        after = raw_text(db, column)
        assert {n: after[n] for n, _ in bad} == {n: raw_before[column][n] for n, _ in bad}
    assert not {r["name"] for r in UndoLog(journal).records("inc-u")} & {name for name, _ in bad}
    good = {n: r for n, r in db.sql(f"SELECT name, id FROM {PREFIX}periodictask") if not n.startswith("bad-")}
    assert good
    undone = engine.undo(UndoLog(journal), "inc-u", lambda: NOW + 5, sleep=lambda s: None)
    assert len(undone.restored) == 8 and not undone.skipped


def test_unreadable_report_columns_and_reload_signal(db: BeatDB, journal: Journal) -> None:
    populate(db)
    literal = UNREADABLE[db.backend][0]
    store(db, "periodictask", "expires", literal, "name = 'expired-disabled'")
    store(db, "clockedschedule", "clocked_time", UNREADABLE[db.backend][-1 if db.backend != "sqlite" else 2], "1 = 1")
    store(db, "periodictasks", "last_update", literal, "ident = 1")
    plan = repairer(db).plan(NOW)
    by_column = {u.column: u for u in plan.unreadable}
    assert set(by_column) >= {"expires", "last_update"}
    assert "only read for the report" in by_column["expires"].why
    assert "replaced by the reload signal" in by_column["last_update"].why
    assert ("(reload signal)", "last_update") in {(c.name, c.column) for c in plan.changes}
    assert {r.name for r in plan.report} <= {"clocked-fired-early", "expired-disabled"}
    outcome = repairer(db).apply(lambda: NOW, undo_log=UndoLog(journal), incident_id="inc-r", sleep=lambda s: None)
    assert outcome.clean
    assert db.last_update() == NOW + 1  # phase B replaced the unreadable reload signal: a running beat reads it
    assert db.tasks()["interval-future"]["last_run_at"] == NOW


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with beat_database("sqlite", tmp_path_factory.mktemp("template")) as database:
        yield database


SQLITE_UNREADABLE = st.one_of(
    st.integers(min_value=-2**63, max_value=2**63 - 1).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr).filter(lambda t: "e" not in t or "." in t),
    st.binary(min_size=1, max_size=8).map(lambda b: f"x'{b.hex()}'"),
    st.text(alphabet="abcxyz -:.T0123456789", min_size=1, max_size=30)
    .filter(lambda t: not _iso(t)).map(lambda t: f"'{t}'"),
    st.datetimes(min_value=dt.datetime(9999, 1, 1)).map(lambda d: f"'{d}'"),  # noqa: DTZ001 - naive, as Django
    st.datetimes(max_value=dt.datetime(1, 12, 31, 23, 59, 59)).map(lambda d: f"'{d}'"),  # noqa: DTZ001
)


def _iso(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(literal=SQLITE_UNREADABLE, column=st.sampled_from(["last_run_at", "date_changed"]))
def test_any_unreadable_sqlite_value_is_skipped_alone(sqlite_template: BeatDB, tmp_path: Path, literal: str,
                                                      column: str) -> None:
    path = tmp_path / f"{secrets.token_hex(4)}.sqlite3"
    shutil.copyfile(Path(sqlite_template.django["NAME"]), path)
    db = BeatDB("sqlite", f"sqlite:///{path}", {**sqlite_template.django, "NAME": str(path)})
    db.sql(f"DELETE FROM {PREFIX}periodictask")
    db.add_task("good", last_run_at=FUTURE, date_changed=FUTURE)
    db.add_task("bad", last_run_at=FUTURE, date_changed=FUTURE)
    store(db, "periodictask", column, literal, "name = 'bad'")
    before = raw_text(db, column)["bad"]
    engine = repairer(db)
    plan = engine.plan(NOW)
    assert [(u.name, u.column) for u in plan.unreadable] == [("bad", column)]
    outcome = engine.apply(lambda: NOW, undo_log=None, incident_id="inc", sleep=lambda s: None)
    assert outcome.clean and outcome.rows_changed()["last_run_at"] == 1
    assert raw_text(db, column)["bad"] == before
    [(good,)] = db.sql(f"SELECT last_run_at FROM {PREFIX}periodictask WHERE name = 'good'")
    assert db.epoch(good) == NOW
    path.unlink()


# ------------------------------------------------------------------------ files, drivers, passwords (issue 9)

def test_dry_run_and_audit_never_create_a_sqlite_file(tmp_path: Path) -> None:
    config = tmp_path / "timeguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    for missing in (tmp_path / "missing.sqlite3", tmp_path / "no-dir" / "beat.sqlite3"):
        proc = _cli("celery-beat", "--database-url", f"sqlite:///{missing}", "--dry-run", "--trust-local-clock",
                    config=config)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"no such database: {missing} does not exist" in proc.stderr
        assert not missing.exists() and not missing.with_name(missing.name + "-journal").exists()
        with pytest.raises(RepairError, match="no such database"):
            CeleryBeatRepair(f"sqlite:///{missing}").apply(lambda: NOW, undo_log=None, incident_id="i",
                                                         sleep=lambda s: None)
        assert not missing.exists()


def test_dry_run_opens_sqlite_read_only(sqlite_db: BeatDB) -> None:
    populate(sqlite_db)
    engine = repairer(sqlite_db)
    with engine._transaction("probe", read_only=True) as conn, pytest.raises(Exception, match="readonly"):
        conn.exec_driver_sql(f"UPDATE {PREFIX}periodictasks SET ident = ident")
    assert len(engine.plan(NOW).changes) == 9


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_urls_without_a_driver_reach_the_database(backend: str, tmp_path: Path) -> None:
    problem = server_problem(backend)
    need(problem is None, problem or "")
    with beat_database(backend, tmp_path) as database:
        populate(database)
        tail = database.url.split("://", 1)[1]
        for scheme in (("postgres", "postgresql") if backend == "postgresql" else ("mysql", "mariadb")):
            plan = CeleryBeatRepair(f"{scheme}://{tail}").plan(NOW)
            assert len(plan.changes) == 9, scheme


def test_a_query_string_password_is_never_stored_or_printed(tmp_path: Path) -> None:
    import json

    problem = server_problem("postgresql")
    need(problem is None, problem or "")  # trust authentication: the password is sent and ignored
    secret = "hunter2-Query-Secret"
    config = tmp_path / "timeguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    with beat_database("postgresql", tmp_path) as database:
        real_now = time.time()
        database.add_task("future", last_run_at=real_now + 90 * DAY, date_changed=real_now + 90 * DAY)
        url = f"{database.url}?password={secret}&application_name=tg"
        outputs = []
        for extra in (["--dry-run", "--json"], ["--dry-run"], ["--json", "--beat-max-interval-s", "0"]):
            proc = _cli("celery-beat", "--database-url", url, "--trust-local-clock", *extra, config=config)
            assert proc.returncode == 0, proc.stderr
            outputs.append(proc.stdout + proc.stderr)
        result = json.loads(proc.stdout)
        assert "password=***" in result["database"] and "application_name=tg" in result["database"]
        undo = _cli("undo", result["incident_id"], "--database-url", url, "--beat-max-interval-s", "0",
                    config=config)
        assert undo.returncode == 0, undo.stderr
        outputs.append(undo.stdout + undo.stderr)
        wrong = _cli("undo", result["incident_id"], "--database-url", f"{database.url}x?password={secret}",
                     config=config)
        assert wrong.returncode == 1 and "password=***" in wrong.stderr
        outputs.append(wrong.stdout + wrong.stderr)
    for text in outputs:
        assert secret not in text
    journal_bytes = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    assert secret.encode() not in journal_bytes
    with Journal(tmp_path / "state" / "journal.sqlite") as j:
        fingerprints = {r["fingerprint"] for r in UndoLog(j).records(result["incident_id"])}
    assert fingerprints and all("password=***" in f for f in fingerprints)


def test_hook_and_cli_say_which_values_they_could_not_read(sqlite_db: BeatDB, tmp_path: Path) -> None:
    import json

    from timeguard.events import Event, EventKind
    from timeguard.hooks.api import AuditOutcome, HookContext, HookStatus
    from timeguard.repair.hook import CeleryBeatHook

    real_now = time.time()
    sqlite_db.add_task("parked", last_run_at=PAST, date_changed=PAST)
    store(sqlite_db, "periodictask", "last_run_at", "'not a date'", "name = 'parked'")
    hook = CeleryBeatHook.from_config("beat", {"database_url": sqlite_db.url, "beat_max_interval_s": 0,
                                               "wait_margin_s": 0})
    verdict = {"status": "OK", "offset_s": 0.0, "offset_lo_s": -0.01, "offset_hi_s": 0.01, "ntp_http_agree": True}
    ctx = HookContext(dry_run=False, trusted_now=lambda: real_now, verdict=verdict, hostname="h")
    audit = hook.audit(ctx)  # nothing future to repair: clean, and it says what it could not read
    assert audit.outcome is AuditOutcome.CLEAN
    assert "parked last_run_at 'not a date': not a date and time" in audit.summary
    sqlite_db.add_task("future", last_run_at=real_now + 90 * DAY, date_changed=real_now + 90 * DAY)
    ev = Event(kind=EventKind.ROLLBACK, incident_id="inc", wall_time_s=real_now, monotonic_s=1.0, boot_id="b")
    result = hook.handle(ev, ctx)
    assert result.status is HookStatus.CHANGED, result.summary
    assert "1 value(s) it cannot read, left as they are: parked last_run_at" in result.summary
    assert [u["name"] for u in result.details["unreadable"]] == ["parked"]

    sqlite_db.add_task("future-2", last_run_at=real_now + 90 * DAY, date_changed=real_now + 90 * DAY)
    config = tmp_path / "timeguard.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    human = _cli("celery-beat", "--database-url", sqlite_db.url, "--dry-run", "--trust-local-clock", config=config)
    assert human.returncode == 0, human.stderr
    assert "values it cannot read" in human.stdout and "parked last_run_at 'not a date'" in human.stdout
    applied = _cli("celery-beat", "--database-url", sqlite_db.url, "--trust-local-clock", "--json",
                   "--beat-max-interval-s", "0", config=config)
    assert applied.returncode == 0, applied.stderr
    doc = json.loads(applied.stdout)
    assert doc["clean"] and doc["rows_changed"]["last_run_at"] == 1
    assert [(u["name"], u["column"], u["raw"]) for u in doc["unreadable"]] == [("parked", "last_run_at",
                                                                               "'not a date'")]
    assert raw_text(sqlite_db, "last_run_at")["parked"] == "'not a date'"

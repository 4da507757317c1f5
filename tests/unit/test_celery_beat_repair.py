"""The celery_beat repair without a database server: conventions, the evidence gate, hook options, the journal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookConfigError, HookContext, HookStatus
from timeguard.repair.celery_beat import CeleryBeatRepair, RepairError
from timeguard.repair.evidence import evidence_problem
from timeguard.repair.hook import CeleryBeatHook
from timeguard.repair.undo import UndoLog
from timeguard.store.journal import Journal

GOOD = {"status": "OK", "offset_s": 0.02, "offset_lo_s": 0.0, "offset_hi_s": 0.04, "ntp_http_agree": True,
        "summary": "ok"}
T = 1_780_000_000.0  # 2026-05-28 20:26:40 UTC


def event() -> Event:
    return Event(kind=EventKind.ROLLBACK, incident_id="inc-1", wall_time_s=T, monotonic_s=1.0, boot_id="b")


def ctx(verdict=GOOD, *, dry_run=False, trusted=T) -> HookContext:
    return HookContext(dry_run=dry_run, trusted_now=lambda: trusted, verdict=verdict, hostname="h")


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [
        (None, "no repair: no verdict from the time sources yet"),
        ({**GOOD, "status": "SOURCES_INCONSISTENT"}, "no usable verdict (SOURCES_INCONSISTENT)"),
        ({**GOOD, "status": "UNKNOWN", "offset_s": None}, "no usable verdict (UNKNOWN)"),
        ({**GOOD, "ntp_http_agree": False}, "no repair: NTP and HTTPS do not agree"),
        ({**GOOD, "ntp_http_agree": None}, "NTP and HTTPS did not both answer"),
        ({**GOOD, "status": "CRITICAL", "offset_s": 3 * 86400.0},
         "no repair: the host clock is 3 days behind the sources — it was rolled back into the past"),
        ({**GOOD, "status": "CRITICAL", "offset_s": -7200.0}, "the host clock is 2 h ahead of the sources"),
    ],
)
def test_no_repair_without_evidence(verdict, reason) -> None:
    problem = evidence_problem(verdict)
    assert problem is not None and reason in problem
    hook = CeleryBeatHook.from_config("beat", {"database_url": "sqlite:////nonexistent/never-opened.sqlite3"})
    result = hook.handle(event(), ctx(verdict))
    assert result.status is HookStatus.SKIPPED and result.summary == problem


def test_evidence_accepts_warning_and_critical_with_a_small_offset() -> None:
    assert evidence_problem(GOOD) is None
    assert evidence_problem(around(-0.9, status="CRITICAL")) is None
    assert evidence_problem(around(1.5)) is not None
    assert evidence_problem(around(1.5), max_offset_s=2) is None


def around(offset: float, error: float = 0.01, **more: Any) -> dict[str, Any]:
    return {**GOOD, "offset_s": offset, "offset_lo_s": offset - error, "offset_hi_s": offset + error, **more}


def test_evidence_refuses_an_interval_that_reaches_past_max_offset_s() -> None:
    """The estimate is within the bound, but the sources leave a true offset beyond it possible (a wide bound, or
    a split majority whose hull reaches past it): the host's now is not proven good enough to write."""
    assert evidence_problem(around(0.5, error=0.4)) is None
    problem = evidence_problem(around(0.5, error=0.6))
    assert problem is not None and "do not pin the clock down" in problem and "[-0.100000 s, +1.100000 s]" in problem
    split = {**GOOD, "offset_s": 0.0, "offset_lo_s": -0.001, "offset_hi_s": 2.5, "regions": [[-0.001, 0.001],
                                                                                              [2.4, 2.5]]}
    assert "do not pin the clock down" in (evidence_problem(split) or "")
    assert "no usable error bound" in (evidence_problem({**GOOD, "offset_lo_s": None}) or "")


def test_hook_config_lists_every_problem() -> None:
    with pytest.raises(HookConfigError) as info:
        CeleryBeatHook.from_config("b", {"database_url": "sqlite:///x", "database_url_env": "X", "use_tz": "yes",
                                         "tolerance_s": -1, "stop_command": "systemctl stop beat", "bogus": 1})
    keys = {k for k, _ in info.value.problems}
    assert {"bogus", "database_url", "use_tz", "tolerance_s", "stop_command"} <= keys
    with pytest.raises(HookConfigError, match="unsupported database 'oracle'"):
        CeleryBeatHook.from_config("b", {"database_url": "oracle://db/x"})
    with pytest.raises(HookConfigError, match="both stop_command and start_command"):
        CeleryBeatHook.from_config("b", {"database_url": "sqlite:///x", "stop_command": ["true"]})
    with pytest.raises(HookConfigError, match="not both"):
        CeleryBeatHook.from_config("b", {"database_url": "sqlite:///x", "beat_service": "beat",
                                         "stop_command": ["true"], "start_command": ["true"]})
    with pytest.raises(HookConfigError, match="systemd unit name"):
        CeleryBeatHook.from_config("b", {"database_url": "sqlite:///x", "beat_service": "--now"})
    service = CeleryBeatHook.from_config("b", {"database_url": "sqlite:///x", "beat_service": "celery-beat.service"})
    assert service.stop_command == ["systemctl", "stop", "celery-beat.service"]
    assert service.start_command == ["systemctl", "start", "celery-beat.service"]
    hook = CeleryBeatHook.from_config("b", {"database_url_env": "TG_BEAT_URL_FOR_TESTS", "beat_max_interval_s": 1})
    assert EventKind.FUTURE_STATE_FOUND in CeleryBeatHook.default_on
    assert hook.max_run_s > 6


def test_hook_with_unset_url_env_fails_with_the_variable_named(monkeypatch) -> None:
    monkeypatch.delenv("TG_BEAT_URL_FOR_TESTS", raising=False)
    hook = CeleryBeatHook.from_config("b", {"database_url_env": "TG_BEAT_URL_FOR_TESTS"})
    result = hook.handle(event(), ctx())
    assert result.status is HookStatus.FAILED and "$TG_BEAT_URL_FOR_TESTS is not set" in result.summary


def test_hook_on_missing_tables_fails_and_names_them(tmp_path: Path) -> None:
    (tmp_path / "empty.sqlite3").touch()  # an empty file is an empty SQLite database
    hook = CeleryBeatHook.from_config("b", {"database_url": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})
    result = hook.handle(event(), ctx())
    assert result.status is HookStatus.FAILED
    assert "django_celery_beat_periodictask" in result.summary and "missing" in result.summary


@pytest.mark.parametrize(
    ("url", "use_tz", "tz_aware", "column", "expected"),
    [
        ("postgresql+psycopg://u@h/d", True, True, "last_run_at", dt.datetime(2026, 5, 28, 20, 26, 40, tzinfo=dt.UTC)),
        ("mysql+pymysql://u@h/d", True, True, "date_changed", dt.datetime(2026, 5, 28, 20, 26, 40)),  # noqa: DTZ001
        ("sqlite:///x", True, True, "last_run_at", "2026-05-28 20:26:40.000000"),
        # USE_TZ=False: date_changed naive local TIME_ZONE, last_run_at naive UTC (research §1.8)
        ("sqlite:///x", False, False, "date_changed", "2026-05-28 22:26:40.000000"),
        ("sqlite:///x", False, False, "last_run_at", "2026-05-28 20:26:40.000000"),
        ("mysql+pymysql://u@h/d", False, False, "date_changed", dt.datetime(2026, 5, 28, 22, 26, 40)),  # noqa: DTZ001
    ],
)
def test_storage_conventions(url, use_tz, tz_aware, column, expected) -> None:
    engine = CeleryBeatRepair(url, use_tz=use_tz, tz_aware=tz_aware, time_zone="Europe/Berlin")
    value = engine.db_value(T, column)
    assert value == expected
    assert engine.epoch(value, column) == T


def test_pg_naive_project_writes_utc_wall_numbers_in_time_zone() -> None:
    engine = CeleryBeatRepair("postgresql+psycopg://u@h/d", use_tz=False, tz_aware=False, time_zone="Europe/Berlin")
    value = engine.db_value(T, "last_run_at")
    assert value.replace(tzinfo=None) == dt.datetime(2026, 5, 28, 20, 26, 40)  # noqa: DTZ001
    assert engine.epoch(value, "last_run_at") == T
    assert engine.db_value(T, "date_changed") == dt.datetime(2026, 5, 28, 20, 26, 40, tzinfo=dt.UTC)


def test_tolerance_defaults_follow_the_research() -> None:
    assert CeleryBeatRepair("sqlite:///x").tolerance_s == 600
    assert CeleryBeatRepair("sqlite:///x", use_tz=False).tolerance_s == 26 * 3600
    assert CeleryBeatRepair("sqlite:///x", use_tz=False, tolerance_s=60).tolerance_s == 60


def test_password_never_shown() -> None:
    engine = CeleryBeatRepair("postgresql+psycopg://beat:hunter2@db.example:5432/app")
    assert "hunter2" not in engine.where and "hunter2" not in engine.fingerprint
    assert engine.fingerprint.endswith("#django_celery_beat_")
    with pytest.raises(RepairError, match="time_zone 'Mars/Base'"):
        CeleryBeatRepair("sqlite:///x", time_zone="Mars/Base")


def test_journal_keeps_the_first_seen_old_value_and_the_latest_new_value(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        log = UndoLog(journal)
        rec = ("periodictask:3", "t", "last_run_at")
        log.record("celery_beat", "inc", "r1", "db#p_", [(*rec, "A", "N1")], applied_wall_s=1.0, applied_mono_s=1.0)
        log.record("celery_beat", "inc", "r1", "db#p_", [(*rec, "B", "N2")], applied_wall_s=2.0, applied_mono_s=2.0)
        rows = log.records("inc")
        assert [(r["old_value"], r["new_value"], r["undone"]) for r in rows] == [("A", "N2", 0)]
        log.mark_undone("inc", [rows[0]["key"]])
        assert log.records("inc", undone=False) == []
        assert log.records("other") == []


def test_a_later_round_makes_an_undone_entry_undoable_again(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        log = UndoLog(journal)
        rec = ("periodictask:3", "t", "last_run_at")
        log.record("celery_beat", "inc", "r1", "db#p_", [(*rec, "A", "N1")], applied_wall_s=1.0, applied_mono_s=1.0)
        [row] = log.records("inc")
        log.mark_undone("inc", [row["key"]])
        assert log.records("inc", undone=True)[0]["old_value"] == "A"
        # beat wrote the future value back, the audit repaired again within the same incident
        log.record("celery_beat", "inc", "r2", "db#p_", [(*rec, "B", "N3")], applied_wall_s=3.0, applied_mono_s=3.0)
        [again] = log.records("inc", undone=False)
        assert (again["old_value"], again["new_value"]) == ("A", "N3")  # still the first-seen original
        assert log.records("inc", fingerprint="other#p_") == []


def test_schema_3_undo_rows_are_carried_over_by_migration_4(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    db = _journal_at(path, 3)
    insert = ("INSERT INTO repair_undo (incident_id, repair_id, fingerprint, tbl, row_id, name, col, old_value, "
              "new_value, applied_wall_s, applied_mono_s, undone) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1.0, 1.0, ?)")
    db.execute(insert, ("inc", "r1", "db#p_", "periodictask", 7, "a", "last_run_at", "OLD-a", "NEW-a", 0))
    db.execute(insert, ("inc", "r1", "db#p_", "periodictask", 8, "b", "date_changed", "OLD-b", "NEW-b", 1))
    db.execute(insert, ("inc", "r1", "db#p_", "periodictasks", 1, "(reload signal)", "last_update", None, "NEW-lu", 0))
    db.close()
    with Journal(path) as journal:
        rows = UndoLog(journal).records("inc")
        assert [(r["name"], r["field"], r["old_value"], r["new_value"], r["undone"]) for r in rows] == [
            ("a", "last_run_at", "OLD-a", "NEW-a", 0), ("b", "date_changed", "OLD-b", "NEW-b", 1),
            ("(reload signal)", "last_update", None, "NEW-lu", 0)]
        assert rows[0]["item"] == "periodictask:7" and rows[0]["fingerprint"] == "db#p_"
        assert {r["target"] for r in rows} == {"celery_beat"}


def test_migration_5_scrubs_passwords_older_versions_wrote_and_keeps_the_undo_records(tmp_path: Path) -> None:
    """A journal written before URL secrets were redacted (schema 4) holds a ``?password=`` in clear in the
    repair fingerprint and possibly in hook runs, event bodies and audit notes: opening it scrubs every one, the
    file keeps no copy, and the undo records still belong to the same database."""
    import json

    from timeguard.secrets import redact_text

    secret = "s3cr3t-Pa55"
    url = f"postgresql://beat@db.example/beat?password={secret}&sslmode=require"
    fingerprint = f"{url}#django_celery_beat_"
    path = tmp_path / "journal.sqlite"
    db = _journal_at(path, 4)
    records = json.dumps([["periodictask", 7, "a", "last_run_at", "OLD-a", "NEW-a"]])
    db.execute("INSERT INTO repair_round (incident_id, repair_id, fingerprint, applied_wall_s, applied_mono_s, "
               "records) VALUES ('inc', 'r1', ?, 1.0, 1.0, ?)", (fingerprint, records))
    db.execute("INSERT INTO repair_undone (incident_id, fingerprint, tbl, row_id, col, round_seq) "
               "VALUES ('inc', ?, 'periodictask', 7, 'last_run_at', 1)", (fingerprint,))
    db.execute("INSERT INTO hook_runs (hook, hook_type, event_id, incident_id, event_kind, status, summary, details, "
               "output, duration_s, dry_run, test, wall_s, monotonic_s) VALUES ('beat', 'celery_beat', 'e', 'inc', "
               "'rollback', 'failed', ?, ?, ?, 0.1, 0, 0, 1.0, 1.0)",
               (f"cannot connect to {url}", json.dumps({"database": url}), f"psql password={secret}"))
    db.execute("INSERT INTO meta (key, value) VALUES ('audit.beat', ?)", (json.dumps({"summary": url}),))
    db.execute("INSERT INTO meta (key, value) VALUES ('plain', ?)", (json.dumps("see https://example.org/x?a=1"),))
    db.close()
    with Journal(path) as journal:
        rows = UndoLog(journal).records("inc")
        assert len(rows) == 1 and rows[0]["undone"] == 1 and rows[0]["old_value"] == "OLD-a"
        assert rows[0]["fingerprint"] == redact_text(fingerprint) and "password=***" in rows[0]["fingerprint"]
        runs = journal.hook_runs()
        assert runs and all(secret not in repr(run) for run in runs)
        meta = journal.meta()
        assert meta["plain"] == "see https://example.org/x?a=1"  # text without a secret is left as it was
        assert secret not in meta["audit.beat"]["summary"]
    assert secret.encode() not in b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.is_file())


def _journal_at(path: Path, version: int) -> Any:
    """A journal file with the schema of ``version`` (what an older timeguard left behind), open for inserts."""
    import sqlite3

    from timeguard.store.journal import _MIGRATIONS

    db = sqlite3.connect(path, isolation_level=None)
    db.create_function("timeguard_redact", 1, lambda text: text)
    for number, script in enumerate(_MIGRATIONS[:version], start=1):
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {number}")
    return db


_SCHEMA5_RECORD = st.tuples(st.sampled_from(["periodictask", "periodictasks"]), st.integers(1, 10**9),
                            st.text(max_size=30), st.sampled_from(["last_run_at", "date_changed", "last_update"]),
                            st.one_of(st.none(), st.text(max_size=30)), st.text(max_size=30))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(st.lists(_SCHEMA5_RECORD, max_size=6), min_size=1, max_size=3), undone=st.data())
def test_migration_6_keys_schema_5_undo_records_by_target_and_item(tmp_path: Path, rounds: list, undone: Any) -> None:
    """A schema-5 journal's rounds ([table, row_id, name, column, old, new]) and undone marks (tbl, row_id, col)
    are celery_beat's after migration 6: item "table:row_id", the same name, field, old and new values, in the
    same order, the same entries undone."""
    import json

    path = tmp_path / f"j{abs(hash(repr(rounds)))}.sqlite"
    path.unlink(missing_ok=True)
    db = _journal_at(path, 5)
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for seq, records in enumerate(rounds, start=1):
        db.execute("INSERT INTO repair_round (incident_id, repair_id, fingerprint, applied_wall_s, applied_mono_s, "
                   "records) VALUES ('inc', 'r', 'db#p_', 1.0, 1.0, ?)", (json.dumps([list(r) for r in records]),))
        for tbl, row_id, name, col, old, new in records:
            key = (f"{tbl}:{row_id}", col)
            if key in expected:
                expected[key].update(new_value=new, last=seq)
            else:
                expected[key] = {"name": name, "old_value": old, "new_value": new, "last": seq}
    marked = undone.draw(st.sets(st.sampled_from(sorted(expected)))) if expected else set()
    for item, col in marked:
        tbl, _, row_id = item.rpartition(":")
        db.execute("INSERT INTO repair_undone (incident_id, fingerprint, tbl, row_id, col, round_seq) "
                   "VALUES ('inc', 'db#p_', ?, ?, ?, ?)", (tbl, int(row_id), col, len(rounds)))
    db.close()
    with Journal(path) as journal:
        rows = UndoLog(journal).records("inc")
        assert [(r["item"], r["field"]) for r in rows] == list(expected)
        for r in rows:
            want = expected[(r["item"], r["field"])]
            assert (r["target"], r["fingerprint"], r["name"], r["old_value"], r["new_value"]) == (
                "celery_beat", "db#p_", want["name"], want["old_value"], want["new_value"])
            assert r["undone"] == int((r["item"], r["field"]) in marked)
        assert UndoLog(journal).records("inc", target="example") == []

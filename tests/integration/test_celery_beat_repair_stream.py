# ruff: noqa: S608  (table names from the fixed django-celery-beat prefix, values bound)
"""A repair of a large django-celery-beat store streams (issue 11): the plan, each round and the undo read-back hold
a batch of rows at a time, never the whole set.

Memory is measured with tracemalloc (Python's own allocations: the same figure on every machine). The bound is a
few batches; the whole-list code needed several times more for the same 20,000 future rows (its plan alone held
40,001 PlannedChange objects, ~14 MiB traced; a round ~30 MiB of rows, records and one JSON text). Seconds and RSS
are the benchmark's business (benchmarks/bench_celery_beat_repair.py), not a test's.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.dcb_schema import PREFIX, BeatDB, beat_database
from timeguard.repair.celery_beat import AUDIT_TASKS, PLAN_LIST_MAX, STREAM_BATCH, CeleryBeatRepair
from timeguard.repair.undo import UndoLog
from timeguard.store.journal import Journal

pytestmark = pytest.mark.real

NOW = 1_780_000_000.0
FUTURE = NOW + 180 * 86400.0
TASKS, FUTURE_ROWS = 30_000, 20_000
#: Traced bytes a streamed step may peak at: a few batches of STREAM_BATCH rows and their records.
BOUND = 4 * 2**20


def traced_peak(step: Callable[[], Any]) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        result = step()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with beat_database("sqlite", tmp_path_factory.mktemp("stream")) as db:
        yield db


@pytest.fixture
def beat(store: BeatDB) -> BeatDB:
    store.fill(TASKS, FUTURE_ROWS, future_s=FUTURE, past_s=NOW - 3600)
    store.set_last_update(FUTURE)
    return store


def test_plan_of_a_large_store_lists_the_first_changes_counts_all_and_streams(beat: BeatDB) -> None:
    engine = CeleryBeatRepair(beat.url)
    try:
        plan, peak = traced_peak(lambda: engine.plan(NOW))
        assert plan.total == 2 * FUTURE_ROWS + 1
        assert plan.counts() == {"last_run_at": FUTURE_ROWS, "date_changed": FUTURE_ROWS, "last_update": 1}
        assert len(plan.changes) == PLAN_LIST_MAX and plan.changes[0].name == "task-1"
        assert plan.tasks_total == FUTURE_ROWS
        assert list(plan.tasks) == sorted(f"task-{i}" for i in range(1, FUTURE_ROWS + 1))[:AUDIT_TASKS]
        assert plan.max_old_s == pytest.approx(FUTURE, abs=1e-3)
        assert plan.to_dict()["changes_total"] == plan.total and len(plan.to_dict()["changes"]) == PLAN_LIST_MAX
        assert peak < BOUND, f"plan() traced {peak / 2**20:.1f} MiB for {FUTURE_ROWS} future rows"
        audit = engine.audit(NOW)
        assert audit.found and audit.details["tasks_total"] == FUTURE_ROWS
        assert audit.summary.startswith(f"{plan.total} timestamp(s) in the future")
        full = engine.plan(NOW, limit=None)  # what --dry-run lists: every change
        assert len(full.changes) == full.total == plan.total
        assert {(c.name, c.column) for c in full.changes} >= {("task-20000", "date_changed"),
                                                              ("(reload signal)", "last_update")}
    finally:
        engine.close()


def test_a_round_on_a_large_store_streams_its_rows_and_undo_records(beat: BeatDB, tmp_path: Path) -> None:
    engine = CeleryBeatRepair(beat.url, beat_max_interval_s=0, wait_margin_s=0)
    try:
        with Journal(tmp_path / "journal.sqlite") as journal:
            log = UndoLog(journal)
            outcome, peak = traced_peak(lambda: engine.apply(lambda: NOW, undo_log=log, incident_id="big",
                                                             sleep=lambda s: None))
            assert outcome.clean and len(outcome.rounds) == 1
            assert outcome.rows_changed() == {"last_run_at": FUTURE_ROWS, "date_changed": FUTURE_ROWS,
                                              "last_update": 1}
            assert peak < BOUND, f"apply() traced {peak / 2**20:.1f} MiB for {FUTURE_ROWS} future rows"
            left = beat.sql(f"SELECT COUNT(*) FROM {PREFIX}periodictask WHERE last_run_at > :t OR date_changed > :t",
                            {"t": beat.stamp(NOW + 600)})
            assert left[0][0] == 0
            # The round's records: several journal rows (a batch each), one repair, every record once.
            rows = journal.read("SELECT repair_id, records FROM repair_round WHERE incident_id = 'big'")
            assert len(rows) >= 2 * FUTURE_ROWS // (2 * STREAM_BATCH)
            assert len({r["repair_id"] for r in rows}) == 1
            count, peak = traced_peak(lambda: sum(1 for _r in log.iter_records("big")))
            assert count == 2 * FUTURE_ROWS + 1
            assert peak < BOUND, f"iter_records traced {peak / 2**20:.1f} MiB for {count} records"
            first = next(log.iter_records("big"))
            assert (first["name"], first["field"], first["new_value"]) == (
                "task-1", "last_run_at", engine.to_text(engine.db_value(NOW, "last_run_at")))
            assert engine.epoch(first["old_value"], "last_run_at") == pytest.approx(FUTURE, abs=1e-3)
            # Undo reads the records back a batch at a time and restores every value the repair wrote.
            undone = engine.undo(log, "big", lambda: NOW, sleep=lambda s: None)
            assert len(undone.restored) == 2 * FUTURE_ROWS and not undone.skipped
            future = beat.sql(f"SELECT COUNT(*) FROM {PREFIX}periodictask WHERE last_run_at > :t "
                              "AND date_changed > :t", {"t": beat.stamp(NOW + 600)})
            assert future[0][0] == FUTURE_ROWS
            assert log.records("big", undone=False) == [r for r in log.records("big") if r["item"] ==
                                                        "periodictasks:1"]
    finally:
        engine.close()


def test_a_round_whose_undo_records_cannot_be_written_changes_nothing(beat: BeatDB, tmp_path: Path) -> None:
    """The journal is locked by another process for the whole round: the recorder's write fails (while the rows
    stream, or before the round commits, whichever comes first), the round rolls back, and neither the store nor
    the journal keeps anything of it."""
    import sqlite3

    from timeguard.repair.target import RepairError

    engine = CeleryBeatRepair(beat.url, beat_max_interval_s=0, wait_margin_s=0)
    path = tmp_path / "journal.sqlite"
    try:
        with Journal(path) as journal:
            journal._db.execute("PRAGMA busy_timeout = 300")  # fail in 0.3 s, not the daemon's 10 s
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process holds the journal's write lock
            try:
                with pytest.raises(RepairError, match="the undo records could not be written, nothing was changed"):
                    engine.apply(lambda: NOW, undo_log=UndoLog(journal), incident_id="locked", sleep=lambda s: None)
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert journal.read("SELECT COUNT(*) FROM repair_round")[0][0] == 0
        future = beat.sql(f"SELECT COUNT(*) FROM {PREFIX}periodictask WHERE last_run_at > :t AND date_changed > :t",
                          {"t": beat.stamp(NOW + 600)})
        assert future[0][0] == FUTURE_ROWS
        assert beat.last_update() == pytest.approx(FUTURE, abs=1e-3)
    finally:
        engine.close()


def test_the_dry_run_of_a_large_store_lists_every_change_streamed(beat: BeatDB, tmp_path: Path) -> None:
    """``timeguard repair celery-beat --dry-run`` lists every change (the plan itself lists the first 100), as
    JSON written item by item and as one table, at the real now (``--trust-local-clock``: nothing is written)."""
    import json
    import os
    import subprocess
    import sys
    import time

    now = time.time()
    beat.fill(3000, 1500, future_s=now + 180 * 86400, past_s=now - 3600)
    beat.set_last_update(now + 180 * 86400)
    config = tmp_path / "timeguard.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TIMEGUARD_CONFIG", "TIMEGUARD_BEAT_DATABASE_URL")}
    argv = [sys.executable, "-m", "timeguard", "repair", "celery-beat", "--database-url", beat.url, "--dry-run",
            "--trust-local-clock", "--config", str(config)]
    run = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["dry_run"] is True and out["changes_total"] == len(out["changes"]) == 3001
    assert out["counts"] == {"last_run_at": 1500, "date_changed": 1500, "last_update": 1}
    assert [c["name"] for c in out["changes"][:3]] == ["task-1", "task-1", "task-2"]
    assert out["changes"][-1]["column"] == "last_update" and out["report"] == [] and out["unreadable"] == []
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("TASK") and sum(1 for line in lines if line.startswith("TASK")) == 1
    assert len(lines) == 1 + 3001
    assert beat.sql(f"SELECT COUNT(*) FROM {PREFIX}periodictask WHERE last_run_at > :t",
                    {"t": beat.stamp(now + 600)})[0][0] == 1500  # a dry run writes nothing

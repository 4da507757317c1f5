# ruff: noqa: S608  (table names from the fixed django-celery-beat prefix, values bound)
"""Repair of 100,000 django-celery-beat tasks, 50,000 of them in the future, on PostgreSQL (issue 5).

Target: ≤ 2 s per round (set-based statements, no per-row round trips). Reports seconds per phase-A round, the
whole apply (waits excluded: beat_max_interval_s=0, no margin), the verify, and the process's peak RSS.
Run: ``.venv/bin/python -m benchmarks.bench_celery_beat_repair [--tasks 100000] [--future 50000]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from tests.support.dcb_schema import PREFIX, beat_database, server_problem
from timeguard.repair.celery_beat import CeleryBeatRepair
from timeguard.repair.undo import UndoLog
from timeguard.store.journal import Journal


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--future", type=int, default=50_000)
    args = parser.parse_args()
    problem = server_problem("postgresql")
    if problem:
        print(f"skipped: {problem}")
        return 0
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp, beat_database("postgresql", Path(tmp)) as db:
        db.sql(f"INSERT INTO {PREFIX}intervalschedule (every, period) VALUES (10, 'seconds')")
        started = time.monotonic()
        db.sql(
            f"INSERT INTO {PREFIX}periodictask (name, task, args, kwargs, expires, enabled, last_run_at, "
            "total_run_count, date_changed, description, interval_id, one_off, headers) "
            "SELECT 'task-' || g, 'app.tasks.noop', '[]', '{}', NULL, true, "
            "CASE WHEN g <= :future THEN to_timestamp(:fut) ELSE to_timestamp(:past) END, 1, "
            "CASE WHEN g <= :future THEN to_timestamp(:fut) ELSE to_timestamp(:past) END, '', "
            f"(SELECT MIN(id) FROM {PREFIX}intervalschedule), false, '{{}}' FROM generate_series(1, :n) AS g",
            {"future": args.future, "n": args.tasks, "fut": now + 180 * 86400, "past": now - 3600},
        )
        db.set_last_update(now + 180 * 86400)
        print(f"inserted {args.tasks} tasks ({args.future} future) in {time.monotonic() - started:.1f} s")
        engine = CeleryBeatRepair(db.url, beat_max_interval_s=0, wait_margin_s=0)
        with Journal(Path(tmp) / "journal.sqlite") as journal:
            t0 = time.monotonic()
            plan = engine.plan(now)
            t_plan = time.monotonic() - t0
            t0 = time.monotonic()
            outcome = engine.apply(lambda: now, undo_log=UndoLog(journal), incident_id="bench", sleep=lambda s: None)
            t_apply = time.monotonic() - t0
            undo_rows = len(UndoLog(journal).records("bench"))
        engine.close()
        figures = {
            "tasks": args.tasks, "future": args.future, "planned_changes": len(plan.changes),
            "plan_s": round(t_plan, 3),
            "round_s": [round(r.duration_s, 3) for r in outcome.rounds],
            "apply_total_s_without_waits": round(t_apply, 3),
            "rows_changed": outcome.rows_changed(), "clean": outcome.clean, "undo_records": undo_rows,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    print(json.dumps(figures, indent=2))
    ok = outcome.clean and all(r.duration_s <= 2.0 for r in outcome.rounds)
    print("target ≤ 2 s per round:", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

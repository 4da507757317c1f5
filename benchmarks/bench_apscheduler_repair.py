"""APScheduler 3.x job stores after a rollback: how fast the repair brings jobs back, what an audit costs (issue 12).

Real programs on loopback (tests/support/aps.py): the test application tests/e2e/apsapp (a
``BackgroundScheduler``, jobs added at run time: interval 1 s / 2 s, cron */2 s) on ``SQLAlchemyJobStore``
(PostgreSQL, a database of its own) and ``RedisJobStore`` (Redis db 12), under libfaketime.

1. **Rollback → first job run again**, per store, median of 3: clock +180 d, the jobs run, clock back to +0, then
   at once ``timeguard repair apscheduler --hook aps`` (evidence from 3 loopback NTP servers + an HTTP Date server;
   the hook's stop/start commands stop and restart the application, tests/support/beatctl.py): measured on
   CLOCK_MONOTONIC from the step to the first job run the application logs — CLI start, sources, the job states read
   and rewritten in the application's interpreter, the application's stop and start included.
   Peer, same run, same store: the fix a user would try by hand — the next run time alone set to now
   (``UPDATE apscheduler_jobs SET next_run_time = <now>``, or ``ZADD`` in Redis) and the application restarted.
   research/celery_beat.md §4: ``get_due_jobs`` returns the jobs by the column, ``_get_run_times`` on their pickled
   future time yields nothing, nothing updates the column, the scheduler's wait is 0 — it spins. Measured: job runs
   and the application's CPU use in the 10 s after its restart; then timeguard's repair of the store the peer left
   (it finds the due jobs whose pickled time is far ahead): CLI start → first job run.
2. **Audit at 10,000 jobs**, per store: 10,000 jobs (pickled by APScheduler itself), all poisoned (the worst case:
   each checked against its trigger in the application's interpreter), and all healthy (the stored times alone: no
   unpickling). The audit runs in a child process: wall and that process's peak RSS (VmHWM; the application's
   interpreter, another process with its own memory, is not in it). Targets ≤ 1 s, ≤ 64 MiB. Peer: counting the future
   rows with the stored time alone (``psql -c "SELECT count(*) … WHERE next_run_time > …"``, ``redis-cli ZCOUNT``).

Run: ``.venv/bin/python -m benchmarks.bench_apscheduler_repair [--reps 3]`` (~3 min). Safety: the application runs
under setpriv without CAP_SYS_TIME and is stopped by its PID; only the libfaketime rc file moves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks._common import Report, cleanup, machine, median, ratio
from tests.support.aps import APP_DIR, JOBS, App, JobStore
from tests.support.daemon import write_config
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, default_ftshim, scratch_dir

FUTURE_S = 180 * 86400.0
AUDIT_JOBS = 10_000
AUDIT_TARGET_S, RSS_TARGET_MIB = 1.0, 64.0
PEER_WINDOW_S = 10.0


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD", "TIMEGUARD"))}
    return subprocess.run([sys.executable, "-m", "timeguard", "repair", *args, "--config", str(config)],
                          check=False, capture_output=True, text=True, env=env, timeout=120)


def _options(store: JobStore) -> dict[str, Any]:
    key = "jobstore_url" if store.kind == "sql" else "redis_url"
    return {key: store.url, "python": sys.executable, "path": [str(APP_DIR)]}


def _into_bug(store: JobStore, clock: FakeClock) -> App:
    clock.set(FUTURE_S)
    app = App(store, clock)
    app.start()
    app.wait_runs(0.0, 2, timeout_s=30)
    return app


def _cpu_s(app: App) -> float:
    import psutil

    t = psutil.Process(int(app.pidfile.read_text())).cpu_times()
    return t.user + t.system


def _hook_config(store: JobStore, app: App, sources: dict[str, Any]) -> Path:
    config = write_config(scratch_dir("benchaps-cli"), sources)
    cfg = yaml.safe_load(config.read_text())
    cfg["hooks"] = [{"name": "aps", "type": "apscheduler", **_options(store),
                     "stop_command": app.stop_command, "start_command": app.start_command}]
    config.write_text(yaml.safe_dump(cfg))
    return config


def _repair_to_first_run(config: Path, app: App, since: float) -> float:
    run = _cli(config, "apscheduler", "--hook", "aps", "--json")
    if run.returncode != 0:
        raise SystemExit(f"repair failed: {run.stdout}\n{run.stderr}")
    return app.wait_runs(since, 1, timeout_s=30, jobs=("every-1s",)) - since


def rep_timeguard(kind: str, sources: dict[str, Any]) -> float:
    with JobStore(kind) as store:
        clock = FakeClock(scratch_dir("benchaps"), ftshim=default_ftshim())
        app = _into_bug(store, clock)
        try:
            config = _hook_config(store, app, sources)
            clock.set(0)
            return _repair_to_first_run(config, app, time.monotonic())
        finally:
            app.stop()


def rep_peer(kind: str, sources: dict[str, Any]) -> tuple[int, float, float]:
    """(job runs, the application's CPU %) in PEER_WINDOW_S after the column-only fix and a restart; then
    timeguard's repair of that store: seconds to the first job run."""
    with JobStore(kind) as store:
        clock = FakeClock(scratch_dir("benchaps"), ftshim=default_ftshim())
        app = _into_bug(store, clock)
        try:
            clock.set(0)
            app.stop()
            store.column_only_update(time.time())
            app.start()
            time.sleep(1.0)  # the application's start-up, outside the window
            since, cpu0 = time.monotonic(), _cpu_s(app)
            time.sleep(PEER_WINDOW_S)
            cpu = (_cpu_s(app) - cpu0) / (time.monotonic() - since) * 100
            runs = sum(app.counts(since).values())
            after = _repair_to_first_run(_hook_config(store, app, sources), app, time.monotonic())
            return runs, cpu, after
        finally:
            app.stop()


# ------------------------------------------------------------------------------------------------ audit


def _fill(store: JobStore, count: int, now: float, *, poisoned: bool) -> None:
    """``count`` interval jobs pickled by APScheduler itself (one template, its fixed-width id replaced)."""
    import datetime as dt

    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    if str(APP_DIR) not in sys.path:
        sys.path.append(str(APP_DIR))  # the job's function is the application's
    scheduler = BackgroundScheduler(jobstores={"default": MemoryJobStore()}, timezone="UTC")
    scheduler.start(paused=True)
    when = dt.datetime.fromtimestamp(now + (FUTURE_S if poisoned else 30), dt.UTC)
    job = scheduler.add_job("apsapp:tick", "interval", seconds=60, id="job-00000", args=["job-00000"],
                            next_run_time=when)
    import pickle

    template = pickle.dumps(job.__getstate__(), pickle.HIGHEST_PROTOCOL)
    scheduler.shutdown(wait=False)
    rows = [(f"job-{i:05d}", when.timestamp(), template.replace(b"job-00000", f"job-{i:05d}".encode()))
            for i in range(count)]
    if store.kind == "sql":
        import sqlalchemy as sa
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

        engine = sa.create_engine(store.url)
        SQLAlchemyJobStore(engine=engine).jobs_t.create(engine, checkfirst=True)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM apscheduler_jobs"))
            conn.execute(sa.text("INSERT INTO apscheduler_jobs (id, next_run_time, job_state) VALUES (:i, :n, :s)"),
                         [{"i": i, "n": n, "s": s} for i, n, s in rows])
        engine.dispose()
    else:
        r = store.redis()
        r.flushdb()
        pipe = r.pipeline(transaction=True)
        pipe.hset("apscheduler.jobs", mapping={i: s for i, _, s in rows})
        pipe.zadd("apscheduler.run_times", {i: n for i, n, _ in rows})
        pipe.execute()


#: The measured process: the target's audit (as the hook's), its wall and this process's peak RSS. Run with ``-c``,
#: so it imports timeguard's target alone, not this benchmark's harness.
AUDIT_CHILD = r"""
import json, sys, time
from timeguard.repair.apscheduler_jobs import APSchedulerKind
target = APSchedulerKind.from_options(json.loads(sys.argv[1])).open()
started = time.monotonic()
audit = target.audit(float(sys.argv[2]))
seconds = time.monotonic() - started
target.close()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "rss_mib": hwm / 1024, "found": audit.found, "summary": audit.summary}))
"""


def _audit(store: JobStore, now: float) -> dict[str, Any]:
    run = subprocess.run([sys.executable, "-c", AUDIT_CHILD, json.dumps(_options(store)), repr(now)], check=False,
                         capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise SystemExit(f"audit failed: {run.stderr[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _peer_count(store: JobStore, now: float) -> float:
    if store.kind == "sql":
        argv = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", store.name, "-tAc",
                f"SELECT count(*) FROM apscheduler_jobs WHERE next_run_time > {now + 600!r}"]  # noqa: S608 - a number
    else:
        argv = ["redis-cli", "-n", "12", "ZCOUNT", "apscheduler.run_times", f"({now + 600!r}", "+inf"]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return time.monotonic() - started


def bench_audit(report: Report, kind: str) -> None:
    with JobStore(kind) as store:
        for poisoned in (True, False):
            now = time.time()
            _fill(store, AUDIT_JOBS, now, poisoned=poisoned)
            result = _audit(store, now)
            if result["found"] != poisoned or (poisoned and f"{AUDIT_JOBS} value(s)" not in result["summary"]):
                raise SystemExit(f"audit of {kind}: expected {AUDIT_JOBS if poisoned else 0} jobs found: {result}")
            peer = _peer_count(store, now)
            what = "all poisoned (each checked in the app's interpreter)" if poisoned else "all healthy (stored " \
                "times alone)"
            report.row(f"{kind}: audit of {AUDIT_JOBS:,} jobs, {what}: wall; peak RSS",
                       f"{result['seconds']:.3f} s; {result['rss_mib']:.1f} MiB", f"≤ {AUDIT_TARGET_S:g} s; ≤ "
                       f"{RSS_TARGET_MIB:g} MiB",
                       result["seconds"] <= AUDIT_TARGET_S and result["rss_mib"] <= RSS_TARGET_MIB,
                       f"{'psql count(*)' if kind == 'sql' else 'redis-cli ZCOUNT'} on the stored time: "
                       f"{peer:.3f} s", ratio(result["seconds"], peer))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kinds", default="sql,redis")
    args = parser.parse_args()
    report = Report("bench_apscheduler_repair", "APScheduler 3.x job stores after a rollback of 180 days")
    report.note(f"{machine()}")
    kinds = args.kinds.split(",")
    with cleanup():
        ntp = [FakeNTPServer() for _ in range(3)]
        try:
            with running() as http:
                sources = {"ntp": ntp, "http": http}
                for kind in kinds:
                    times = [rep_timeguard(kind, sources) for _ in range(args.reps)]
                    runs, cpu, after = rep_peer(kind, sources)
                    report.row(f"{kind}: step → first job run again, CLI repair with stop/start (median of "
                               f"{len(times)}; all: {', '.join(f'{t:.2f}' for t in times)}; the store the peer "
                               f"left spinning, repaired by timeguard: {after:.2f} s)",
                               f"{median(times):.2f} s", "≤ 15 s", median(times) <= 15.0,
                               f"column-only fix + restart: {runs} job runs in {PEER_WINDOW_S:g} s, the "
                               f"application at {cpu:.0f} % CPU (spinning)", "∞ (the peer never runs them)")
        finally:
            for server in ntp:
                server.close()
        for kind in kinds:
            bench_audit(report, kind)
    report.note("Jobs: " + ", ".join(JOBS) + ". The peer's column-only update is what research/celery_beat.md §4 "
                "calls harmful: the pickled state keeps the future time, so the scheduler finds the jobs due by "
                "the column and runs none of them, and its wait is 0.")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

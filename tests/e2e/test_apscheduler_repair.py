"""End to end: APScheduler 3.x job stores after a rollback — a real ``BackgroundScheduler`` (tests/e2e/apsapp) on
``SQLAlchemyJobStore`` (PostgreSQL, a database of its own) and on ``RedisJobStore`` (Redis db 12), under a
libfaketime clock, repaired by ``timeguard repair apscheduler`` (the CLI, at real time, evidence-gated by honest
loopback NTP + HTTP sources).

Per store, one run of the whole story:

1. +180 d: the application adds its jobs at run time (interval 1 s / 2 s, cron */2 s) and they run; the store
   holds next run times ≈ +180 d.
2. Back to +0: nothing runs (silent), and a plain restart of the application does not help (the jobs are not
   re-added, so nothing recomputes them).
3. An unpicklable job (corrupt bytes) is put in the store; the target's audit finds the three poisoned jobs from
   the stored times and reports the corrupt one.
4. Sources 3 days ahead of this host (the host is behind: the trusted now would be wrong): the repair refuses and
   the store is unchanged.
5. ``--dry-run`` lists the three jobs and writes nothing; with the application stopped, ``--owner-stopped``: the
   repair rewrites the three jobs; ``repair undo`` puts every byte back.
6. ``--hook`` with stop/start commands (tests/support/beatctl.py): stop → repair → start; every job runs again
   at its rate, the store holds no future time, the corrupt job is left byte for byte.

And the daemon installed after the damage (Redis store): ``timeguard run`` at real time never sees a step; its
audit at start-up finds the jobs from the stored times, raises ``future_state_found``, and its ``apscheduler`` hook
stops the application, repairs and starts it: the jobs run again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.aps import FUTURE_S, JOBS, JobStore, future_jobs, running_app
from tests.support.beatdaemon import Daemon
from tests.support.daemon import start, write_config
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, find_libfaketime, scratch_dir
from tests.support.require import need, need_program
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus
from timeguard.repair.apscheduler_jobs import APSchedulerKind

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "tests" / "e2e" / "apsapp"
CORRUPT = b"\x80\x04\x95corrupt job state"


@pytest.fixture
def aps_clock(ftshim: Path) -> FakeClock:
    need(find_libfaketime(), "libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    need_program("setpriv", "util-linux")
    return FakeClock(scratch_dir("apsclock"), ftshim=ftshim)


@pytest.fixture(params=["sql", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    with JobStore(request.param) as s:
        yield s


def store_options(store: JobStore) -> dict[str, Any]:
    key = "jobstore_url" if store.kind == "sql" else "redis_url"
    return {key: store.url, "python": sys.executable, "path": [str(APP_DIR)]}


def store_args(store: JobStore, prefix: str = "") -> list[str]:
    flag = "jobstore-url" if store.kind == "sql" else "redis-url"
    return [f"--{prefix}{flag}", store.url, f"--{prefix}python", sys.executable, f"--{prefix}path", str(APP_DIR)]


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD", "TIMEGUARD"))}
    return subprocess.run([sys.executable, "-m", "timeguard", "repair", *args, "--config", str(config)],
                          check=False, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=90)


def test_rollback_bug_audit_refusal_undo_and_repair(store: JobStore, aps_clock: FakeClock,
                                                    sources: dict[str, Any]) -> None:
    aps_clock.set(FUTURE_S)
    with running_app(store, aps_clock) as app:
        # 1. the false period: the jobs run and their next run times are stamped ≈ +180 d; 2. back to +0: silent,
        # and a plain restart does not help
        app.into_the_bug()
        quiet = time.monotonic()
        time.sleep(3.0)
        app.stop()
        app.start()
        time.sleep(3.0)
        assert app.counts(quiet) == dict.fromkeys(JOBS, 0), "the bug: no job runs after the rollback"
        assert set(future_jobs(store, FUTURE_S - 3600)) == set(JOBS), "a restart recomputed nothing"

        # 3. a job whose state does not unpickle; the audit (target, trusted now = real time)
        store.put("corrupt", time.time() + FUTURE_S, CORRUPT)
        target = APSchedulerKind.from_options(store_options(store)).open()
        try:
            audit = target.audit(time.time())
        finally:
            target.close()
        assert audit.found, audit
        assert audit.details["counts"] == {"next_run_time": 3}, audit.details
        assert [u["item"] for u in audit.details["unreadable"]] == ["corrupt"], audit.details
        assert "does not unpickle" in audit.details["unreadable"][0]["why"]

        # 4. the host is behind the sources: refused, nothing changed
        app.stop()
        before = store.rows()
        ahead = [FakeNTPServer(offset_s=3 * 86400.0) for _ in range(3)]
        try:
            with running(offset_s=3 * 86400.0) as http:
                behind = write_config(scratch_dir("aps-behind"), {"ntp": ahead, "http": http})
                refused = cli(behind, "apscheduler", *store_args(store), "--owner-stopped", "--json")
        finally:
            for server in ahead:
                server.close()
        assert refused.returncode != 0, refused.stdout
        assert store.rows() == before

        # 5. repaired with the application stopped, then undone byte for byte
        config = write_config(scratch_dir("aps-cli"), sources)
        dry = cli(config, "apscheduler", *store_args(store), "--dry-run", "--json")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        listed = json.loads(dry.stdout)
        assert sorted(c["item"] for c in listed["changes"]) == sorted(JOBS), listed
        assert store.rows() == before, "a dry run writes nothing"
        fixed = cli(config, "apscheduler", *store_args(store), "--owner-stopped", "--json")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        result = json.loads(fixed.stdout)
        assert result["changed"] and result["plan"]["counts"] == {"next_run_time": 3}, result
        assert future_jobs(store) == {"corrupt": before["corrupt"][0]}
        undone = cli(config, "undo", result["incident_id"], *store_args(store, "aps-"))
        assert undone.returncode == 0, undone.stdout + undone.stderr
        assert store.rows() == before, "undo restores the column and the pickled state exactly"

        # 6. the hook: stop → repair → start, and the application runs every job at its rate again
        hooked = yaml.safe_load(config.read_text())
        hooked["hooks"] = [{"name": "aps", "type": "apscheduler", **store_options(store),
                            "stop_command": app.stop_command, "start_command": app.start_command}]
        config.write_text(yaml.safe_dump(hooked))
        app.start()  # running again, still stuck
        since = time.monotonic()
        repaired = cli(config, "apscheduler", "--hook", "aps", "--json")
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        outcome = json.loads(repaired.stdout)
        assert outcome["clean"] and outcome["plan"]["counts"] == {"next_run_time": 3}, outcome
        assert [u["item"] for u in outcome["unreadable"]] == ["corrupt"]
        app.runs_at_rate(since)
        assert future_jobs(store, 10.0) == {"corrupt": before["corrupt"][0]}
        assert store.rows()["corrupt"] == before["corrupt"], "the job it cannot read is left byte for byte"


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_daemon_installed_after_the_damage_repairs(store: JobStore, aps_clock: FakeClock,
                                                   sources: dict[str, Any]) -> None:
    aps_clock.set(FUTURE_S)
    with running_app(store, aps_clock) as app:
        app.into_the_bug()
        quiet = time.monotonic()
        directory = scratch_dir("aps-daemon")
        hook = {"name": "aps", "type": "apscheduler", **store_options(store), "stop_command": app.stop_command,
                "start_command": app.start_command}
        config = write_config(directory, sources, hooks=[hook])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD", "TIMEGUARD"))}
        with start(config, None, directory / "daemon.log", env=env) as proc:
            daemon = Daemon(config, directory / "daemon.log", proc)
            found = daemon.wait_event(EventKind.FUTURE_STATE_FOUND, 40)
            assert app.counts(quiet, found.monotonic_s) == dict.fromkeys(JOBS, 0), "silent until the repair"
            run = daemon.wait_hook_run(found, 60, hook="aps")
            assert run.status == HookStatus.CHANGED, (run, daemon.log_tail())
            app.wait_runs(found.monotonic_s, 2, timeout_s=20)
        assert future_jobs(store, 10.0) == {}

"""``timeguard discover`` finds real APScheduler applications (issue 12) and the hook it proposes repairs them.

The application is tests/e2e/apsapp (a real ``BackgroundScheduler``, tests/support/aps.py) on each kind of job store,
each found by another piece of evidence:

* PostgreSQL, the URL (with a password: the server trusts loopback, so any password connects) in the application's
  environment only: found by its TCP connection to the address that URL names; the password is never printed and
  the hook names the variable (``jobstore_url_env``) instead;
* SQLite: found by the database file among its open files;
* Redis (db 12), the URL on its command line: found by its connection, the database read from Redis's CLIENT LIST.

Per store, the whole story: the application driven into the bug (+180 d, then back to +0: silent), discover finds it
(its interpreter imports APScheduler 3, the store holds its three jobs), the proposed hook — commented, since the
application runs in no systemd unit here — with only its stop/start placeholders filled in passes ``config
validate``, and ``timeguard repair apscheduler --hook`` through it repairs the real application: every job runs
again at its rate. The repair's own flow (evidence, undo, refusal) is tests/e2e/test_apscheduler_repair.py's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.aps import FUTURE_S, JOBS, URL_ENV, App, JobStore, future_jobs, running_app
from tests.support.daemon import write_config
from tests.support.realprogs import FakeClock, scratch_dir
from tests.support.require import need

pytestmark = pytest.mark.real

PASSWORD = "s3cret-not-printed"
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


@pytest.fixture(params=["sql", "sqlite", "redis"])
def buggy_app(request: pytest.FixtureRequest, beat_clock: FakeClock) -> Iterator[App]:
    kind = request.param
    beat_clock.set(FUTURE_S)
    with JobStore(kind, password=PASSWORD if kind == "sql" else None) as store, \
            running_app(store, beat_clock, url_in_env=kind == "sql") as app:
        app.into_the_bug()
        yield app


def timeguard(*args: str, env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FAKETIME", "LD_PRELOAD", "TIMEGUARD"))}
    return subprocess.run([*prefix, sys.executable, "-m", "timeguard", *args], capture_output=True, text=True,
                          timeout=120, check=False, cwd="/", env={**clean, **(env or {})})


def test_discover_finds_the_application_and_its_hook_repairs_it(buggy_app: App, sources: dict[str, Any]) -> None:
    app, store = buggy_app, buggy_app.store
    found = timeguard("discover", "--json", "--pid", str(app.pid()))
    assert found.returncode == 0, found.stderr
    assert PASSWORD not in found.stdout
    answer = json.loads(found.stdout)
    assert answer["beats"] == [] and answer["not_inspected"] == {}
    (entry,) = answer["apscheduler"]
    assert entry["pid"] == app.pid() and entry["apscheduler"].startswith("3.") and entry["problems"] == []
    assert entry["interpreter"] == sys.executable and entry["store"]["jobs"] == len(JOBS)
    found_by = entry["store"]["found_by"]
    planned = entry["planned_hook"]
    assert entry["hook"] is None and planned["stop_command"] == ["FILL-IN", "stop"]  # no systemd unit here
    assert planned["type"] == "apscheduler" and planned["python"] == sys.executable
    if store.kind == "sql":
        assert found_by == f"connection to 127.0.0.1:5432, URL in environment ${URL_ENV}"
        assert entry["store"]["shown"] == store.url.replace(PASSWORD, "***")
        assert planned["jobstore_url_env"] == URL_ENV and "jobstore_url" not in planned
    elif store.kind == "sqlite":
        assert found_by == f"open file {store.url.removeprefix('sqlite:///')}"
        assert planned["jobstore_url"] == store.url
    else:
        # the database (12) is the one Redis's CLIENT LIST shows for the application's own connection
        assert found_by == "connection to 127.0.0.1:6379, URL in command line"
        assert planned["redis_url"] == store.url and "jobs_key" not in planned  # RedisJobStore's default keys
    table = timeguard("discover", "--pid", str(app.pid()))
    assert "1 APScheduler application on this host" in table.stdout and "no hook: see below" in table.stdout
    assert "# guard: stop" in table.stdout

    # the proposed hook, its stop/start placeholders filled in and nothing else changed
    hook = {**planned, "stop_command": app.stop_command, "start_command": app.start_command}
    config = write_config(scratch_dir("discover-aps"), sources, hooks=[hook])
    env = {URL_ENV: store.url} if store.kind == "sql" else {}
    valid = timeguard("config", "validate", str(config), env=env)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert set(future_jobs(store, FUTURE_S - 3600)) == set(JOBS), "still in the bug"
    since = time.monotonic()
    repaired = timeguard("repair", "apscheduler", "--hook", hook["name"], "--json", "--config", str(config), env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert json.loads(repaired.stdout)["plan"]["counts"] == {"next_run_time": len(JOBS)}
    app.runs_at_rate(since)
    assert future_jobs(store, 10.0) == {}

    # a configured hook on that store marks it covered; nothing is proposed again
    again = timeguard("discover", "--json", "--config", str(config), "--pid", str(app.pid()))
    (covered,) = json.loads(again.stdout)["apscheduler"]
    if store.kind == "sql":  # a hook reading the URL from the daemon's environment cannot be matched by its URL
        assert covered["covered_by"] is None
    else:
        assert covered["covered_by"] == hook["name"]


@pytest.mark.parametrize("buggy_app", ["sqlite"], indirect=True)
def test_another_users_application_is_listed_as_not_inspected(buggy_app: App) -> None:
    need(os.geteuid() == 0, "root (to run discover as nobody)")
    proc = timeguard("discover", "--json", "--pid", str(buggy_app.pid()), prefix=tuple(AS_NOBODY))
    assert proc.returncode == 1, proc.stdout + proc.stderr  # nothing found, and the reason listed
    answer = json.loads(proc.stdout)
    assert answer["apscheduler"] == []
    why = answer["not_inspected"][str(buggy_app.pid())]
    assert "permission denied" in why and "run timeguard discover as root" in why, why

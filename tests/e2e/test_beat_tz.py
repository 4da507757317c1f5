"""A tz-naive Django project (USE_TZ=False, DJANGO_CELERY_BEAT_TZ_AWARE=False, TIME_ZONE=Europe/Berlin) on MariaDB:
the storage conventions of research/celery_beat.md §1.8 with a real beat, and the repair's options for them.

Such a project stores ``last_run_at`` as naive UTC (beat's ``utcnow()``) but ``date_changed`` and ``last_update`` as
naive Berlin time — one or two hours apart in the same row. A repair that wrote ``last_run_at`` in local time would
leave every task an hour in the future for beat; one that wrote ``date_changed`` in UTC would put it an hour in the
past. The test reads the raw columns after ``timeguard repair celery-beat --no-use-tz --no-tz-aware --time-zone
Europe/Berlin`` and requires both conventions to the minute, and a running beat sending again at once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.support import beat as beatlib
from tests.support.beat import running_beat
from tests.support.daemon import write_config
from tests.support.realprogs import FakeClock, scratch_dir

pytestmark = pytest.mark.real

BERLIN = ZoneInfo("Europe/Berlin")
NAIVE_PROJECT = {"TG_BEAT_USE_TZ": "0", "TG_BEAT_TZ_AWARE": "0", "TG_BEAT_TIME_ZONE": "Europe/Berlin"}


def _raw(db: beatlib.BeatDatabase, name: str) -> tuple[dt.datetime, dt.datetime]:
    """(last_run_at, date_changed) of one task exactly as MariaDB holds them: naive datetimes."""
    import pymysql

    conn = pymysql.connect(**beatlib.MARIADB_ADMIN, database=db.name)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT last_run_at, date_changed FROM django_celery_beat_periodictask WHERE name = %s",
                        (name,))
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None and row[0] is not None and row[1] is not None, (name, row)
    return row[0], row[1]


def test_naive_project_conventions_are_kept_and_beat_resumes(beat_clock: FakeClock,
                                                             sources: dict[str, Any]) -> None:
    with beatlib.seeded_database("mariadb", NAIVE_PROJECT) as db:
        beat_clock.set(beatlib.FUTURE_S)
        with running_beat(db, beat_clock, max_interval=1) as beat:
            beatlib.drive_into_bug(db, beat_clock, beat, quiet_s=3)
            # beat wrote them 180 days ahead in two conventions: last_run_at naive UTC, date_changed naive Berlin
            lr, dc = _raw(db, "clocked-once")
            print(f"[naive] before: last_run_at {lr} (UTC), date_changed {dc} (Berlin)")

            config = write_config(scratch_dir("tz-cli"), sources)
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("FAKETIME", "LD_PRELOAD")) and k not in ("TIMEGUARD_CONFIG",)}
            started = time.monotonic()
            cli = subprocess.run(
                [sys.executable, "-m", "timeguard", "repair", "celery-beat", "--database-url", db.sa_url,
                 "--no-use-tz", "--no-tz-aware", "--time-zone", "Europe/Berlin", "--beat-max-interval-s", "1",
                 "--json", "--config", str(config)],
                capture_output=True, text=True, timeout=120, env=env, check=False)
            assert cli.returncode == 0, cli.stdout + cli.stderr
            out = json.loads(cli.stdout)
            assert out["changed"] and out["clean"], out
            now_a = out["rounds"][0]["now_a_s"]

            # beat sends again at once: its last_run_at is not an hour in the future for it
            first = beat.wait_sent("every-1s", count=1, since=started, timeout_s=20)[0].mono
            t0 = first + 0.5
            beat.wait_sent("every-1s", count=4, since=t0, timeout_s=20)
            beat.wait_sent("every-2s", count=2, since=t0, timeout_s=20)
            while time.monotonic() < t0 + 6:
                beat.check_alive()
                time.sleep(0.1)
            beatlib.assert_rates(db.kind, {n: beat.rate(n, t0, t0 + 6) for n in ("every-1s", "every-2s")},
                                 "naive project, after the repair")
            time.sleep(1.5)
            assert db.state().future() == [], db.state()

            # clocked-once is not run again: its raw columns are what the repair wrote (or beat's own save as it
            # disabled the task, in the same conventions), each to the minute in its own convention
            lr, dc = _raw(db, "clocked-once")
            print(f"[naive] after: last_run_at {lr} (UTC), date_changed {dc} (Berlin); repair's now "
                  f"{dt.datetime.fromtimestamp(now_a, dt.UTC):%H:%M:%S} UTC")
            utc_now = dt.datetime.fromtimestamp(now_a, dt.UTC).replace(tzinfo=None)
            berlin_now = dt.datetime.fromtimestamp(now_a, BERLIN).replace(tzinfo=None)
            assert abs((lr - utc_now).total_seconds()) < 60, (lr, utc_now)
            assert abs((dc - berlin_now).total_seconds()) < 120, (dc, berlin_now)
            assert beat.sent_since(started, "clocked-once") == []

"""The django-celery-beat repair without the daemon, end to end, against a real running ``celery beat``.

Every test starts from the asserted bug (``beat.drive_into_bug``): a real beat under libfaketime ran at +180 days,
wrote ``last_run_at`` ≈ +180 d, the clock stepped back to +0, and beat stopped sending its custom tasks. Then:

1. ``timeguard repair celery-beat`` (the CLI, at real time, evidence-gated by honest loopback NTP + HTTP sources)
   while beat keeps running: ``--dry-run`` lists the rows and changes nothing; the repair brings beat back to its
   rates without a restart (beat reloads only after phase B), the database is clean after beat synced again, and
   the clocked one-off that fired early is reported, not re-enabled (SQLite; the daemon's repair of
   test_beat_repair_daemon.py runs on all three databases).
2. Two agents at once on one database (two hosts: separate journals): the periodictasks row lock serialises them;
   exactly one repairs, the other finds nothing and writes nothing (PostgreSQL).
3. beat is killed (SIGKILL) between phase A and phase B: the CLI cannot tell and finishes clean; a new beat starts
   from the repaired rows and sends at its rates (MariaDB).
4. ``timeguard repair undo``: restores the future values exactly, but only where a row still holds what the repair
   wrote; the running beat reloads and stops sending the task whose outage came back; a second repair fixes it
   again (SQLite).
5. The ``celery_beat`` hook with ``stop_command``/``start_command`` (tests/support/beatctl.py), driven in-process
   with a verdict from a real check: stop → one round → start, in that order, and the new beat sends (PostgreSQL).

The CLI and helper programs run at real time (+0, which is right after the rollback); only beat follows the
FakeClock. Every process is started by this test and stopped by PID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.beat import (
    FUTURE_S,
    GRACE_S,
    BeatDatabase,
    BeatProcess,
    BeatState,
    LogTail,
    assert_rates,
    drive_into_bug,
    running_beat,
)
from tests.support.controlled import AdoptedProcess, beat_spec, commands
from tests.support.daemon import write_config
from tests.support.realprogs import (
    FakeClock,
    scratch_dir,
)
from tests.support.repaircli import Cli, CliRun, run_cli, start_cli
from timeguard.repair.celery_beat import DEFAULT_WAIT_MARGIN_S

pytestmark = pytest.mark.real

# The full 8-s bug check runs on every database in test_beat_bug.py and before the daemon's repair; here each
# test starts from a shorter one.
SHORT_QUIET_S = 3.0
BEAT_MAX_INTERVAL_S = 1  # beat runs with --max-interval 1; the repair is told the same
# the engine's wait between phase A and B on SQLite, where it cannot see beat's poll: max interval + margin
WAIT_S = BEAT_MAX_INTERVAL_S + DEFAULT_WAIT_MARGIN_S
RATE_WINDOW_S = 5.0
RELOAD = r"DatabaseScheduler: Schedule changed"
SLOW, SLOW_EVERY_S = "every-20s", 20  # test 4's extra task: not due again before the undo


# --------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def cli_config(sources: dict[str, Any]) -> Path:
    """A config of its own (state_dir, so its own journal: one per "host") with the honest sources."""
    return write_config(scratch_dir("repair-cli"), sources)


def state_dir(config: Path) -> Path:
    import yaml

    return Path(yaml.safe_load(config.read_text())["state_dir"])


def wall_to_mono(wall_s: float) -> float:
    """A wall-clock instant (real time, as the CLI's trusted now is) on this process's monotonic axis."""
    return wall_s - time.time() + time.monotonic()


def repair_args(db: BeatDatabase, *extra: str) -> tuple[str, ...]:
    return ("celery-beat", "--database-url", db.sa_url, "--json",
            "--beat-max-interval-s", str(BEAT_MAX_INTERVAL_S), *extra)


def key(change: dict[str, Any]) -> str:
    """A planned change as BeatState.future() names it: ``task.column``, or ``last_update``."""
    return f"{change['name']}.{change['column']}" if change["table"] == "periodictask" else change["column"]


def columns(keys: set[str] | list[str], column: str) -> int:
    return sum(1 for k in keys if k.endswith("." + column))


def wait_until_mono(t: float, beat: BeatProcess | None = None) -> None:
    while time.monotonic() < t:
        if beat is not None:
            beat.check_alive()
        time.sleep(0.05)


def assert_resumed(beat: BeatProcess, since: float, what: str) -> float:
    """every-1s ≥ 3 and every-2s ≥ 2 sends since ``since``, and their rates over RATE_WINDOW_S after the first
    resend; returns the first resend."""
    first = beat.wait_sent("every-1s", count=1, since=since, timeout_s=30)[0].mono
    t0 = first + 0.5
    wait_until_mono(t0 + RATE_WINDOW_S, beat)
    beat.wait_sent("every-1s", count=3, since=since, timeout_s=10)
    beat.wait_sent("every-2s", count=2, since=since, timeout_s=10)
    assert_rates(beat.db.kind, {n: beat.rate(n, t0, t0 + RATE_WINDOW_S) for n in ("every-1s", "every-2s")}, what)
    return first


def clean_after_sync(db: BeatDatabase, beat: BeatProcess) -> BeatState:
    """db.state() read after beat has sent (and, beat_sync_every=1, written back) every-1s once more: anything
    stale it still held in memory would be in the database by now (research §1.5)."""
    t = time.monotonic()
    beat.wait_sent("every-1s", count=2, since=t, timeout_s=10)
    state = db.state()
    assert state.future() == [], f"{db.kind}: future timestamps after the repair: {state.future()}\n{state}"
    return state


def raw_epoch(value: Any) -> float | None:
    """A timestamp as a driver returns it (aware, naive UTC, or SQLite's text) as epoch seconds."""
    if value is None:
        return None
    stamp = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return float(stamp.timestamp())


class RawReader:
    """Reads one column straight from the database (milliseconds, not a Django subprocess): for polling."""

    def __init__(self, db: BeatDatabase) -> None:
        self.db = db
        self._engine: Any = None
        if db.kind != "sqlite":
            import sqlalchemy as sa

            self._engine = sa.create_engine(db.sa_url, poolclass=sa.pool.NullPool)

    def last_run_at(self, name: str) -> float | None:
        sql = "SELECT last_run_at FROM django_celery_beat_periodictask WHERE name = :name"
        if self._engine is None:
            assert self.db.path is not None
            with contextlib.closing(sqlite3.connect(self.db.path, timeout=20)) as conn:
                row = conn.execute(sql.replace(":name", "?"), (name,)).fetchone()
        else:
            import sqlalchemy as sa

            with self._engine.connect() as conn:
                row = conn.execute(sa.text(sql), {"name": name}).first()
        return raw_epoch(row[0]) if row else None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def add_interval_task(db: BeatDatabase, name: str, every_s: int) -> None:
    """One more interval task (the seed schedule has none slower than 2 s), created at real time like the seed."""
    code = (
        "import django; django.setup()\n"
        "from django_celery_beat.models import IntervalSchedule, PeriodicTask\n"
        f"s, _ = IntervalSchedule.objects.get_or_create(every={every_s}, period=IntervalSchedule.SECONDS)\n"
        f"PeriodicTask.objects.create(name={name!r}, task='beatproject.tasks.tick', args='[\"{name}\"]', interval=s)\n"
    )
    db.run("-c", code)


def print_timeline(kind: str, what: str, cli: CliRun, out: dict[str, Any], *, reload_mono: float | None,
                   first_mono: float | None) -> None:
    r1 = out["rounds"][0]
    a, b = wall_to_mono(r1["now_a_s"]), wall_to_mono(r1["now_b_s"]) if r1["now_b_s"] else None
    parts = [f"[{kind}] {what}: CLI start → phase A {a - cli.started:.2f} s"]
    if b is not None:
        parts.append(f"A → B {b - a:.2f} s")
        if reload_mono is not None:
            parts.append(f"B → beat reload {reload_mono - b:.2f} s")
    if first_mono is not None:
        parts.append(f"CLI start → first resend {first_mono - cli.started:.2f} s")
        if b is not None:
            parts.append(f"B → first resend {first_mono - b:.2f} s")
    parts.append(f"CLI ran {cli.ended - cli.started:.2f} s, {len(out['rounds'])} round(s)")
    print(", ".join(parts))


# --------------------------------------------------------------------------------------------------------
# 1. The CLI repair brings a running beat back
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beat_db", ["sqlite"], indirect=True)  # the daemon's repair runs on all three kinds
def test_cli_repair_resumes_running_beat(beat_db: BeatDatabase, beat_clock: FakeClock,
                                         sources: dict[str, Any]) -> None:
    db, kind = beat_db, beat_db.kind
    config = cli_config(sources)
    beat_clock.set(FUTURE_S)
    with running_beat(db, beat_clock, max_interval=BEAT_MAX_INTERVAL_S) as beat:
        bug = drive_into_bug(db, beat_clock, beat, quiet_s=SHORT_QUIET_S)
        before = db.state()
        expected = set(before.future())
        assert {"every-1s.last_run_at", "every-2s.last_run_at", "every-minute.last_run_at",
                "clocked-once.last_run_at", "last_update"} <= expected, expected

        # --dry-run: every future timestamp listed (old ≈ +180 d → new ≈ now), nothing written.
        dry = run_cli(config, *repair_args(db, "--dry-run"))
        assert dry.rc == 0, dry
        plan = dry.json()
        assert plan["dry_run"] is True
        assert {key(c) for c in plan["changes"]} == expected, plan["changes"]
        for change in plan["changes"]:
            assert 179.9 * 86400 < change["old_s"] - change["new_s"] < 180.1 * 86400, change
            assert abs(change["new_s"] - time.time()) < 60, change
        assert db.state() == before, "the dry run changed the database"

        # The repair, while beat keeps running.
        cli = run_cli(config, *repair_args(db))
        assert cli.rc == 0, cli
        out = cli.json()
        assert out["changed"] is True and out["clean"] is True, out
        # One round: beat_sync_every=1 left nothing unsynced in beat's memory, so its reload wrote nothing back
        # and round 2 found nothing (research §1.5: with stale dirty entries there would be a second round).
        assert len(out["rounds"]) == 1, out["rounds"]
        r1 = out["rounds"][0]
        assert out["rows_changed"]["last_run_at"] == r1["last_run_at"] == columns(expected, "last_run_at"), out
        assert out["rows_changed"]["date_changed"] == r1["date_changed"] == columns(expected, "date_changed"), out
        assert r1["now_b_s"] - r1["now_a_s"] >= WAIT_S - 0.05, r1
        fired = [r for r in out["report"] if r["name"] == "clocked-once"]
        assert [r["kind"] for r in fired] == ["fired_early"], out["report"]

        # beat reloaded after phase B (phase A alone cannot make it: it last read last_update ≈ +180 d) and only
        # then sent again.
        reload = beat.wait_log(RELOAD, since=cli.started, timeout_s=10)
        phase_b = wall_to_mono(r1["now_b_s"])
        assert reload.mono > phase_b - 0.3, (reload, phase_b)
        early = [s for s in beat.sent_since(cli.started) if s.mono < reload.mono]
        assert early == [], f"beat sent before it reloaded: {early}"
        assert [s for s in beat.sent_since(bug.step_mono + GRACE_S) if s.mono < cli.started] == []
        first = assert_resumed(beat, cli.started, "after the CLI repair")
        print_timeline(kind, "repair", cli, out, reload_mono=reload.mono, first_mono=first)

        state = clean_after_sync(db, beat)
        # clocked-once ran at +180 d (a day early). django-celery-beat 2.9 disables a one-off only when it next
        # looks at it, which never happened before the step back (it stays enabled with total_run_count 1 until
        # beat loads it again, 5 min before its clocked time, and then disables it unrun). The repair reports
        # it and leaves enabled/total_run_count alone; beat does not send it again.
        once, once_before = state.tasks["clocked-once"], before.tasks["clocked-once"]
        assert (once.enabled, once.total_run_count) == (once_before.enabled, once_before.total_run_count), once
        assert once.total_run_count >= 1 or not once.enabled, once
        assert beat.sent_since(cli.started, "clocked-once") == []
        assert len([ln for ln in beat.lines() if ln.mono >= cli.started and "Schedule changed" in ln.text]) == 1


# --------------------------------------------------------------------------------------------------------
# 2. Two agents at once
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def periodictasks_locked(db: BeatDatabase) -> Iterator[Any]:
    """Hold the row lock every agent's phase A takes first (SELECT … FOR UPDATE on periodictasks ident=1), so
    that two agents can be lined up on it and released together; yields a function counting the waiters."""
    import psycopg

    conn = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=db.name)
    watch = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=db.name, autocommit=True)
    try:
        conn.execute("SELECT last_update FROM django_celery_beat_periodictasks WHERE ident = 1 FOR UPDATE")

        def waiters() -> int:
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (db.name,)
            ).fetchone()
            return int(row[0]) if row else 0

        yield waiters
    finally:
        conn.rollback()
        conn.close()
        watch.close()


@pytest.mark.parametrize("beat_db", ["postgresql"], indirect=True)
def test_two_agents_at_once(beat_db: BeatDatabase, beat_clock: FakeClock, sources: dict[str, Any]) -> None:
    """Two hosts' agents repair one database at the same moment. Both are lined up on the periodictasks row lock
    (held by the test until both wait on it, well within their 5 s lock timeout), then released together.
    Correct: the first to get the lock repairs everything in its phase A; the second, once the first commits,
    re-reads under the lock, finds no future row and no future last_update, and writes nothing — no second
    round, no phase B, no journal record. beat reloads exactly once (the winner's phase B) and resumes."""
    db, kind = beat_db, beat_db.kind
    configs = [cli_config(sources), cli_config(sources)]
    beat_clock.set(FUTURE_S)
    with running_beat(db, beat_clock, max_interval=BEAT_MAX_INTERVAL_S) as beat:
        drive_into_bug(db, beat_clock, beat, quiet_s=SHORT_QUIET_S)
        expected = set(db.state().future())

        clis: list[Cli] = []
        try:
            with periodictasks_locked(db) as waiters:
                clis = [start_cli(cfg, *repair_args(db)) for cfg in configs]
                deadline = time.monotonic() + 20
                while waiters() < 2:
                    for c in clis:
                        assert c.proc.alive(), c.finish()
                    assert time.monotonic() < deadline, "the two agents did not both reach the lock"
                    time.sleep(0.02)
                released = time.monotonic()
            print(f"[{kind}] both agents waited on the lock {released - clis[0].started:.2f} s after their start")
            runs = [c.finish() for c in clis]
        finally:
            for c in clis:
                c.proc.stop()
        for run in runs:
            assert run.rc == 0, run
        outs = [run.json() for run in runs]
        winners = [i for i, o in enumerate(outs) if o["changed"]]
        assert len(winners) == 1, outs
        win, lose = outs[winners[0]], outs[1 - winners[0]]
        assert win["clean"] and len(win["rounds"]) == 1, win
        assert win["rows_changed"]["last_run_at"] == columns(expected, "last_run_at"), win
        assert win["rows_changed"]["date_changed"] == columns(expected, "date_changed"), win
        # The loser went into apply (its plan, read before the lock was released, still saw the future rows) …
        assert {key(c) for c in lose["plan"]["changes"]} == expected, lose["plan"]
        # … and found nothing once it held the lock.
        assert lose["clean"] is True and lose["rounds"] == [], lose
        assert lose["rows_changed"] == {"last_run_at": 0, "date_changed": 0, "last_update": 0}, lose

        from timeguard.repair.undo import UndoLog
        from timeguard.store.journal import Journal

        with Journal.in_state_dir(state_dir(configs[winners[0]])) as j:
            assert len(UndoLog(j).records(win["incident_id"])) == len(expected), "winner's undo records"
        loser_journal = state_dir(configs[1 - winners[0]])
        with Journal.in_state_dir(loser_journal) as j:
            assert UndoLog(j).records(lose["incident_id"]) == [], "the loser recorded an undo"

        reload = beat.wait_log(RELOAD, since=released, timeout_s=10)
        first = assert_resumed(beat, released, "after two agents")
        print_timeline(kind, "winner", runs[winners[0]], win, reload_mono=reload.mono, first_mono=first)
        clean_after_sync(db, beat)
        reloads = [ln for ln in beat.lines() if ln.mono >= released and "Schedule changed" in ln.text]
        assert len(reloads) == 1, [ln.text for ln in reloads]


# --------------------------------------------------------------------------------------------------------
# 3. beat killed between phase A and phase B
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beat_db", ["mariadb"], indirect=True)
def test_beat_killed_during_repair(beat_db: BeatDatabase, beat_clock: FakeClock, sources: dict[str, Any]) -> None:
    """SIGKILL right after phase A committed (every-1s.last_run_at no longer in the future), ~3 s before phase B.

    What happens: beat never reloaded (phase A's last_update = now_A is below the +180 d value beat last read),
    and SIGKILL skips its final sync, so it dies holding the stale schedule without writing any of it back. The CLI
    cannot tell: phase B bumps last_update for nobody, round 2 finds nothing (no beat left to write stale values
    back), so it exits 0, clean, after one round. A beat started afterwards (clock still at +0) reads the repaired
    rows at start-up — every task last ran at now_A — and sends at its rates at once."""
    db, kind = beat_db, beat_db.kind
    config = cli_config(sources)
    reader = RawReader(db)
    beat_clock.set(FUTURE_S)
    try:
        with running_beat(db, beat_clock, max_interval=BEAT_MAX_INTERVAL_S) as beat:
            drive_into_bug(db, beat_clock, beat, quiet_s=SHORT_QUIET_S)
            assert beat.process is not None
            cli = start_cli(config, *repair_args(db))
            try:
                deadline = time.monotonic() + 30
                while True:
                    value = reader.last_run_at("every-1s")
                    if value is not None and value < time.time() + 86400:
                        break
                    assert cli.proc.alive(), cli.finish()
                    assert time.monotonic() < deadline, "phase A never committed"
                    time.sleep(0.02)
                seen = time.monotonic()
                os.kill(beat.process.pid, signal.SIGKILL)
                killed = time.monotonic()
                assert beat.process.popen.wait(10) == -signal.SIGKILL
                run = cli.finish()
            finally:
                cli.proc.stop()
            assert [ln.text for ln in beat.lines() if ln.mono >= cli.started and "Schedule changed" in ln.text] == []
            assert [s for s in beat.sent_since(cli.started)] == [], "beat sent before it was killed"
        assert run.rc == 0, run
        out = run.json()
        assert out["changed"] is True and out["clean"] is True and len(out["rounds"]) == 1, out
        r1 = out["rounds"][0]
        phase_a, phase_b = wall_to_mono(r1["now_a_s"]), wall_to_mono(r1["now_b_s"])
        print(f"[{kind}] phase A → seen committed {seen - phase_a:.2f} s, killed {killed - phase_a:.2f} s after "
              f"phase A, phase B {phase_b - killed:.2f} s after the kill; CLI ran {run.ended - run.started:.2f} s")
        assert killed < phase_b - 0.5, "beat was not killed between phase A and phase B"
        assert db.state().future() == [], "future rows after the repair, with no beat left to write them back"

        with running_beat(db, beat_clock, max_interval=BEAT_MAX_INTERVAL_S) as beat2:  # the clock is still at +0
            first = assert_resumed(beat2, beat2.started_mono or 0.0, "new beat after the kill")
            print(f"[{kind}] new beat: first send {first - (beat2.started_mono or first):.2f} s after its start")
            clean_after_sync(db, beat2)
    finally:
        reader.close()


# --------------------------------------------------------------------------------------------------------
# 4. undo brings the outage back; a second repair fixes it again
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beat_db", ["sqlite"], indirect=True)
def test_undo_restores_and_beat_stops_again(beat_db: BeatDatabase, beat_clock: FakeClock,
                                            sources: dict[str, Any]) -> None:
    """``repair undo`` restores an old value only where the row still holds the value the repair wrote. With beat
    running, every-1s/every-2s are rewritten by beat within seconds of the repair, so their undo is refused (beat's
    newer value wins) and they keep running. A slower task, every-20s, is not due again until now_A + 20 s, so the
    undo (≈ 9 s after phase A) restores its +180 d value before beat runs it. beat reloads at the undo's *first*
    last_update bump (it last read the repair's now_B, which is in the past, so any later value is "newer"), and
    does not send it — the outage is back for exactly the restored rows. A second repair fixes them again."""
    db, kind = beat_db, beat_db.kind
    add_interval_task(db, SLOW, SLOW_EVERY_S)
    config = cli_config(sources)
    reader = RawReader(db)
    beat_clock.set(FUTURE_S)
    with running_beat(db, beat_clock, max_interval=BEAT_MAX_INTERVAL_S) as beat:
        drive_into_bug(db, beat_clock, beat, quiet_s=SHORT_QUIET_S)
        before = db.state()
        assert {f"{SLOW}.last_run_at", f"{SLOW}.date_changed"} <= set(before.future()), before.future()

        cli = run_cli(config, *repair_args(db))
        assert cli.rc == 0, cli
        out = cli.json()
        assert out["changed"] and out["clean"], out
        incident, now_a = out["incident_id"], out["rounds"][0]["now_a_s"]
        repaired = {key(c) for c in out["plan"]["changes"] if c["table"] == "periodictask"}
        beat.wait_sent("every-2s", count=1, since=cli.started, timeout_s=10)  # every-1s/-2s rows are beat's again

        # (Quick raw reads from here on: the undo must come well before SLOW is due at now_A + 20 s.)
        undo_args = ("undo", incident, "--database-url", db.sa_url, "--json")
        watched = (SLOW, "clocked-once")  # rows beat does not touch after the repair
        repaired_values = [reader.last_run_at(name) for name in watched]
        dry = run_cli(config, *undo_args, "--dry-run")
        assert dry.rc == 0, dry
        dry_out = dry.json()
        assert dry_out["dry_run"] is True
        assert {f"{SLOW}.last_run_at", f"{SLOW}.date_changed", "clocked-once.last_run_at"} <= \
            {f"{r['name']}.{r['column']}" for r in dry_out["restored"]}, dry_out
        assert "every-1s.last_run_at" in {f"{r['name']}.{r['column']}" for r in dry_out["skipped"]}, dry_out
        assert [reader.last_run_at(name) for name in watched] == repaired_values, "the dry run restored something"

        undo = run_cli(config, *undo_args)
        assert undo.rc == 0, undo
        result = undo.json()
        restored = {f"{r['name']}.{r['column']}" for r in result["restored"]}
        skipped = {f"{r['name']}.{r['column']}": r["why"] for r in result["skipped"]}
        print(f"[{kind}] undo {undo.ended - cli.ended:.1f} s after the repair: restored {sorted(restored)}; "
              f"left alone {sorted(skipped)}")
        assert restored | set(skipped) == repaired and not restored & set(skipped), (restored, skipped, repaired)
        for name in ("every-1s.last_run_at", "every-2s.last_run_at"):
            assert "changed since the repair" in skipped.get(name, ""), skipped
        assert {f"{SLOW}.last_run_at", f"{SLOW}.date_changed", "clocked-once.last_run_at"} <= restored

        # The running beat reloads (at the undo's first last_update bump) before SLOW would be due …
        reload = beat.wait_log(RELOAD, since=undo.started, timeout_s=20)
        # The restored values are exactly the ones before the repair; last_update is not restored (beat reloads).
        after = db.state()
        back = set(after.future())
        # every-minute is restored when no minute boundary passed since the repair; should beat send it in the
        # second between the restore and its reload, it writes its in-memory value back over the restored one
        # (research §1.5) — that send is in its log.
        lost = restored - back
        assert {item.rsplit(".", 1)[0] for item in lost} <= {"every-minute"}, (back, restored)
        for item in lost:
            assert beat.sent_since(undo.started, item.rsplit(".", 1)[0]), (item, back)
        assert back <= restored, (back, restored)
        for item in back:
            name, column = item.rsplit(".", 1)
            assert getattr(after.tasks[name], column) == getattr(before.tasks[name], column), item
        due = wall_to_mono(now_a + SLOW_EVERY_S)
        assert reload.mono < due - 1, (f"precondition: the undo's reload came {reload.mono - due:+.1f} s after "
                                       f"{SLOW} was due (machine too slow for this test's timing)")
        # … and does not send it when it would have been due (the outage is back), while every-1s keeps running.
        wait_until_mono(due + 4, beat)
        assert beat.sent_since(cli.started, SLOW) == [], f"{SLOW} ran although its undo restored +180 d"
        assert beat.count("every-1s", reload.mono + 1, due + 4) >= 0.6 * (due + 3 - reload.mono)
        print(f"[{kind}] undo's reload {due - reload.mono:.1f} s before {SLOW} was due; not sent by due + 4 s")

        # A second repair fixes exactly the restored rows again.
        cli2 = run_cli(config, *repair_args(db))
        assert cli2.rc == 0, cli2
        out2 = cli2.json()
        assert out2["changed"] and out2["clean"], out2
        assert out2["rows_changed"]["last_run_at"] == columns(back, "last_run_at"), out2
        assert out2["rows_changed"]["date_changed"] == columns(back, "date_changed"), out2
        beat.wait_log(RELOAD, since=cli2.started, timeout_s=10)
        clean_after_sync(db, beat)


# --------------------------------------------------------------------------------------------------------
# 5. The hook with stop_command / start_command and a real beat
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beat_db", ["postgresql"], indirect=True)
def test_stop_start_commands_with_real_beat(beat_db: BeatDatabase, beat_clock: FakeClock,
                                            sources: dict[str, Any]) -> None:
    """``type: celery_beat`` with stop_command/start_command, in-process, with the verdict of a real check.

    Order: stop (SIGTERM; beat's final sync runs, its rows stay +180 d: nothing it holds is newer) → one round,
    no reload dance (nothing runs to reload) → start. Asserted on CLOCK_MONOTONIC: beatctl stamps its stop/start,
    the test stamps every call of the hook's trusted_now (the repair's plan, phase A and verification)."""
    from timeguard import config as tg_config
    from timeguard.events import Event, EventKind, new_id
    from timeguard.hooks.api import HookContext, HookStatus
    from timeguard.measure.check import run_check
    from timeguard.model import verdict_summary
    from timeguard.repair.evidence import evidence_problem
    from timeguard.repair.hook import CeleryBeatHook
    from timeguard.repair.undo import UndoLog
    from timeguard.store.journal import Journal
    from timeguard.watch.clockwatch import read_boot_id

    db, kind = beat_db, beat_db.kind
    cfg = tg_config.load(cli_config(sources))
    work = scratch_dir("beatctl")
    pidfile, events_path, spec_path = work / "beat.pid", work / "events.jsonl", work / "spec.json"
    beat_clock.set(FUTURE_S)
    new = BeatProcess(db, beat_clock, max_interval=BEAT_MAX_INTERVAL_S)  # started by start_command
    try:
        with running_beat(db, beat_clock, max_interval=BEAT_MAX_INTERVAL_S) as beat:
            drive_into_bug(db, beat_clock, beat, quiet_s=SHORT_QUIET_S)
            expected = set(db.state().future())
            assert beat.process is not None
            old_pid = beat.process.pid
            pidfile.write_text(f"{old_pid}\n")
            spec_path.write_text(json.dumps(beat_spec(new, beat_clock, pidfile)))
            hook = CeleryBeatHook.from_config("beat-repair", {
                "database_url": db.sa_url, "beat_max_interval_s": BEAT_MAX_INTERVAL_S,
                **commands(pidfile, spec_path, events_path),
            })

            result = run_check(cfg)
            verdict = verdict_summary(result.verdict)
            assert evidence_problem(verdict) is None, verdict
            offset = float(result.verdict.offset_s or 0.0)
            calls: list[float] = []

            def trusted_now() -> float:
                calls.append(time.monotonic())
                return time.time() + offset

            event = Event(kind=EventKind.ROLLBACK, incident_id=new_id(), wall_time_s=time.time(),
                          monotonic_s=time.monotonic(), boot_id=read_boot_id(), step_s=-float(FUTURE_S),
                          trusted_time_s=time.time() + offset, verdict=verdict)
            journal = Journal.in_state_dir(cfg.state_dir)
            ctx = HookContext(dry_run=False, trusted_now=trusted_now, verdict=verdict, undo_log=UndoLog(journal),
                              hostname=socket.gethostname())
            new.log_path.touch()
            new.tail = LogTail(new.log_path)
            t_handle = time.monotonic()
            try:
                outcome = hook.handle(event, ctx)
            finally:
                journal.close()
                new_pid = int(pidfile.read_text().strip())
                if new_pid != old_pid:
                    new.process = AdoptedProcess(new_pid)  # type: ignore[assignment]
            took = time.monotonic() - t_handle
            assert not beat.alive(), "stop_command did not stop the running beat"
            print(f"[{kind}] hook: {outcome.status} in {took:.2f} s: {outcome.summary}; old beat exited "
                  f"{beat.process.returncode}")

        assert outcome.status == HookStatus.CHANGED, outcome
        details = outcome.details
        assert details["clean"] is True and len(details["rounds"]) == 1, details
        assert details["rounds"][0]["now_b_s"] is None, "a reload signal although beat was stopped"
        assert details["rows_changed"]["last_run_at"] == columns(expected, "last_run_at"), details
        assert details["rows_changed"]["date_changed"] == columns(expected, "date_changed"), details

        recorded = [json.loads(line) for line in events_path.read_text().splitlines()]
        assert [e["op"] for e in recorded] == ["stop", "start"], recorded
        stop, start = recorded
        assert stop["pid"] == old_pid and start["pid"] == new_pid != old_pid, recorded
        # handle() asks trusted_now once for its gate, then the repair asks for its plan, phase A, verification.
        assert len(calls) >= 3, calls
        assert calls[0] < stop["began"], "the repair's gate ran after the stop"
        assert stop["done"] < calls[1], "the repair read the database before beat was stopped"
        assert calls[-1] < start["began"], "beat was started before the repair finished"
        print(f"[{kind}] stop took {stop['done'] - stop['began']:.2f} s; repair {start['began'] - stop['done']:.2f} s;"
              f" start → first send {new.wait_sent('every-1s', 1, timeout_s=30)[0].mono - start['done']:.2f} s")

        with Journal.in_state_dir(cfg.state_dir) as j:
            assert len(UndoLog(j).records(event.incident_id)) == len(expected)

        new.started_mono = start["done"]
        new.check_alive()
        assert_resumed(new, start["done"], "beat started by start_command")
        clean_after_sync(db, new)
    finally:
        new.stop()

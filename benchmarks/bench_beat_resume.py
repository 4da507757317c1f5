"""How long a running celery beat stays silent after a rollback: with the timeguard daemon, and without (issue 5).

Real programs on loopback (tests/support/beat.py, tests/support/beatdaemon.py): a Django project with
django-celery-beat's DatabaseScheduler on SQLite, PostgreSQL and MariaDB, ``celery beat`` at its **default**
``max_interval`` (DatabaseScheduler: 5 s) under libfaketime, broker Redis; ``timeguard run`` under the same clock
(1-s libfaketime cache) with 3 FakeNTPServers, an HTTP Date server and the ``celery_beat`` hook with its
**default** options (``beat_max_interval_s`` 5, ``wait_margin_s`` 2, ``max_rounds`` 3) — only ``database_url``.

Each repetition: a fresh database with the seed schedule (every-1s, every-2s, every-minute, clocked-once), the
clock at +180 d, beat started and sending, its future ``last_run_at`` in the database (drive_into_bug), the clock
back to +0. Measured with CLOCK_MONOTONIC in this process: step → the daemon's rollback event, → beat's reload
("DatabaseScheduler: Schedule changed."), → **the first custom task sent again**. Target: ≤ 15 s (the hook waits
one beat poll + margin = 7 s between its phases, then beat reloads within one poll, ≤ 5 s).

Comparison, same run, same beat and database kind, no timeguard: the same bug, then the number of custom tasks
beat sends in an observation window after the step (``--window``, default 30 s) — 0; beat's next send comes when
the wall clock passes the future ``last_run_at``, i.e. in 180 days (its 5-minute forced resync is dead after a
backward step too: research/celery_beat.md §1.4).

Run: ``.venv/bin/python -m benchmarks.bench_beat_resume [--reps 3] [--kinds sqlite,postgresql,mariadb]
[--window 30]`` (~8 min with the defaults). Safety: every process runs under setpriv without CAP_SYS_TIME and is
stopped by its PID; only the libfaketime rc file moves, never this machine's clock.
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback
from dataclasses import dataclass

from benchmarks._common import Report, cleanup, machine, median, need_programs
from tests.support import beat as beatlib
from tests.support import beatdaemon
from tests.support.beat import BeatDatabase, running_beat
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, find_libfaketime, scratch_dir
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus

TARGET_S = 15.0


@dataclass
class Rep:
    detect_s: float
    reload_s: float
    resend_s: float
    hook_s: float
    rounds: int
    ok: bool  # hook CHANGED and clean, nothing left in the future, beat silent until its reload
    why: str = ""


def with_timeguard(kind: str, ntp: list[FakeNTPServer], http: object) -> Rep:
    with BeatDatabase(kind) as db:
        db.create_tasks()
        clock = FakeClock(scratch_dir("benchclock"))
        with beatdaemon.running_daemon(db, clock, ntp, http) as daemon:  # the hook's defaults
            t_jump = time.monotonic()
            clock.set(beatlib.FUTURE_S)
            daemon.wait_event(EventKind.OFFSET_CRITICAL, 20, since_mono=t_jump)
            with running_beat(db, clock, max_interval=None) as beat:  # DatabaseScheduler's default: 5 s
                resumed = beatdaemon.rollback_and_resume(db, clock, beat, daemon, quiet_s=1.0, resend_timeout_s=90)
                run = daemon.wait_hook_run(resumed.rollback, 120)
                time.sleep(2.0)
                future = db.state().future()
        problems = []
        if run.status is not HookStatus.CHANGED or not run.details.get("clean"):
            problems.append(f"hook {run.status.value}: {run.summary}")
        if future:
            problems.append(f"future after the repair: {future}")
        if resumed.quiet_before_reload:
            problems.append(f"sent before the reload: {resumed.quiet_before_reload}")
        return Rep(resumed.step_to_detect_s, resumed.step_to_reload_s, resumed.step_to_resend_s, run.duration_s,
                   len(run.details.get("rounds", [])), not problems, "; ".join(problems))


def without_timeguard(kind: str, window_s: float) -> tuple[int, int]:
    """(custom sends, wake-up lines) in ``window_s`` after the step, same beat settings, no daemon."""
    with BeatDatabase(kind) as db:
        db.create_tasks()
        clock = FakeClock(scratch_dir("benchclock"))
        clock.set(beatlib.FUTURE_S)
        with running_beat(db, clock, max_interval=None) as beat:
            bug = beatlib.drive_into_bug(db, clock, beat, quiet_s=window_s)  # asserts: nothing sent
            late = [s for s in beat.sent_since(bug.step_mono + beatlib.GRACE_S) if s.name in beatlib.CUSTOM]
            return len(late), beat.wakeups_since(bug.step_mono + beatlib.GRACE_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(beatlib.KINDS))
    parser.add_argument("--window", type=float, default=30.0, help="observation window without timeguard (s)")
    args = parser.parse_args()
    need_programs("setpriv")
    if find_libfaketime() is None:
        raise SystemExit("libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    if beatlib.packages_problem():
        raise SystemExit(beatlib.packages_problem())

    report = Report("bench_beat_resume", "7. Celery beat sends again after a rollback")
    print(machine(), flush=True)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    ntp = [FakeNTPServer() for _ in range(3)]
    try:
        with cleanup(), running() as http:
            for kind in kinds:
                problem = beatlib.service_problem(kind)
                if problem:
                    report.row(f"{kind}: step → first custom task sent again", f"not measured: {problem}",
                               f"≤ {TARGET_S:g} s", False)
                    continue
                reps: list[Rep] = []
                for i in range(args.reps):
                    print(f"--- {kind}, with timeguard, repetition {i + 1}/{args.reps}", flush=True)
                    try:
                        rep = with_timeguard(kind, ntp, http)
                    except Exception as exc:  # a failed repetition is a figure too
                        traceback.print_exc()
                        rep = Rep(float("nan"), float("nan"), float("nan"), float("nan"), 0, False,
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                    print(f"    step → rollback {rep.detect_s:.2f} s, → reload {rep.reload_s:.2f} s, → first resend "
                          f"{rep.resend_s:.2f} s; hook run {rep.hook_s:.2f} s in {rep.rounds} round(s)"
                          f"{'' if rep.ok else '  PROBLEM: ' + rep.why}", flush=True)
                    reps.append(rep)
                print(f"--- {kind}, without timeguard, {args.window:g} s window", flush=True)
                try:
                    sends, wakeups = without_timeguard(kind, args.window)
                    peer = f"without timeguard: {sends} custom tasks sent in {args.window:g} s (next: in 180 d)"
                except Exception as exc:
                    traceback.print_exc()
                    sends, wakeups = -1, 0
                    peer = f"without timeguard: comparison failed ({type(exc).__name__})"
                print(f"    {peer}; beat woke up {wakeups} times meanwhile", flush=True)

                good = [r for r in reps if r.ok]
                resend = [r.resend_s for r in good]
                value = (f"{median(resend):.2f} / {max(resend):.2f} s ({len(good)}/{len(reps)} reps)"
                         if resend else "no successful repetition")
                report.row(f"{kind}: step → first custom task sent again, median / max", value,
                           f"≤ {TARGET_S:g} s", bool(resend) and len(good) == len(reps) and max(resend) <= TARGET_S,
                           peer)
                if good:
                    detect, reload = median([r.detect_s for r in good]), median([r.reload_s for r in good])
                    report.row(f"{kind}: step → rollback event / → beat reload, median",
                               f"{detect:.2f} s / {reload:.2f} s")
                    report.row(f"{kind}: hook run (CHANGED, clean), median duration; rounds",
                               f"{median([r.hook_s for r in good]):.2f} s; "
                               f"{statistics.mode([r.rounds for r in good])}")
                for r in reps:
                    if not r.ok:
                        report.note(f"{kind}: a repetition failed: {r.why}")
                if sends != 0:
                    report.row(f"{kind}: without timeguard, beat stays silent {args.window:g} s", f"{sends} sends",
                               "0 (the bug)", False)
    finally:
        for server in ntp:
            server.close()
    report.note(f"{machine()}. Beat at its default max_interval (5 s), the hook at its defaults "
                "(beat_max_interval_s 5 + wait_margin_s 2 between its phases). The daemon runs with a 1-s libfaketime "
                "cache, so the step reaches it up to ~1–2 s later than a real clock step would.")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

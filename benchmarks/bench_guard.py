"""The forward-jump guard: how soon a running celery beat is stopped after the host clock jumps ahead, and how much
future state it wrote first — beside the same beat without the guard, in the same run (issue 12).

Real programs on loopback (tests/support/guardbeat.py, beatdaemon.py): django-celery-beat's DatabaseScheduler on
SQLite (or PostgreSQL/MariaDB with ``--kinds``), ``celery beat --max-interval 1`` under libfaketime (broker
Redis, ``beat_sync_every=1``: every send writes its ``last_run_at`` back), ``timeguard run`` under the same clock
(1-s libfaketime cache, 1-s tick) with 3 FakeNTPServers and an HTTP Date server, and the ``celery_beat`` hook with
stop/start commands (tests/support/beatctl.py, a pidfile).

Each repetition: a fresh database with the seed schedule, beat sending at real time, the daemon running; then the
clock jumps +180 d and for :data:`WINDOW_S` seconds this process counts, with CLOCK_MONOTONIC:

* ``guard: stop`` — step → beat stopped (beatctl's stop done), and the custom tasks beat sent at +180 d before
  that: each one wrote a ``last_run_at`` 180 days ahead (its "future stamps");
* the peer, ``guard: alert`` (no guard: the alert only) — the future stamps beat wrote in the same window; it
  goes on writing them for as long as the clock stays ahead.

Run: ``.venv/bin/python -m benchmarks.bench_guard [--reps 3] [--kinds sqlite]`` (~2 min). Safety: every process
runs under setpriv without CAP_SYS_TIME and is stopped by its PID; only the libfaketime rc file moves.
"""

from __future__ import annotations

import argparse
import time
import traceback
from dataclasses import dataclass

from benchmarks._common import Report, cleanup, machine, median, need_programs, ratio
from tests.support import beat as beatlib
from tests.support import beatdaemon
from tests.support.beat import BeatDatabase, running_beat
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.guardbeat import Controlled
from tests.support.realprogs import FakeClock, find_libfaketime, scratch_dir
from timeguard.events import EventKind

WINDOW_S = 10.0  # how long after the step the future stamps are counted (both runs)
STOP_TARGET_S = 3.0  # step → beat stopped: the step's detection (~1–1.6 s under this harness) + beat's SIGTERM


@dataclass
class Rep:
    stopped_s: float  # step → beat stopped (nan: not stopped within the window)
    stamps: int  # custom tasks sent at +180 d within the window (each wrote a future last_run_at)
    future_rows: int  # database values (last_run_at, date_changed, last_update) in the future at the end
    ok: bool = True
    why: str = ""


def measure(kind: str, guard: str, ntp: list[FakeNTPServer], http: object) -> Rep:
    with BeatDatabase(kind) as db:
        db.create_tasks()
        clock = FakeClock(scratch_dir("benchclock"))
        ctl = Controlled(db, clock)
        try:
            with running_beat(db, clock, max_interval=1) as beat, \
                    beatdaemon.running_daemon(db, clock, ntp, http, hook=ctl.hook(guard)) as daemon:
                assert beat.process is not None
                ctl.pidfile.write_text(f"{beat.process.pid}\n")
                beat.wait_sent("every-1s", count=2, timeout_s=30)
                t_jump = time.monotonic()
                clock.set(beatlib.FUTURE_S)
                daemon.wait_event(EventKind.FUTURE_STATE_ACCRUING, WINDOW_S, since_mono=t_jump)
                time.sleep(max(0.0, t_jump + WINDOW_S - time.monotonic()))
                stops = [op for op in ctl.ops() if op["op"] == "stop" and op.get("done")]
                stopped = stops[0]["done"] - t_jump if stops else float("nan")
                stamps = [s for s in beat.sent_since(t_jump + beatlib.GRACE_S) if s.name in beatlib.CUSTOM]
                time.sleep(1.0)  # beat_sync_every=1: a last send's row is written by now
                future = db.state().future()
                problems = []
                if guard == "stop" and (not stops or beat.alive()):
                    problems.append("beat was not stopped")
                if guard == "alert" and (stops or not beat.alive()):
                    problems.append("beat was stopped without the guard")
                return Rep(stopped, len(stamps), len(future), not problems, "; ".join(problems))
        finally:
            ctl.next.stop()


def _repeat(what: str, reps: int, kind: str, guard: str, *, ntp: list[FakeNTPServer], http: object) -> list[Rep]:
    out = []
    for i in range(reps):
        print(f"--- {kind}, {what}, repetition {i + 1}/{reps}", flush=True)
        try:
            rep = measure(kind, guard, ntp, http)
        except Exception as exc:  # a failed repetition is a figure too
            traceback.print_exc()
            rep = Rep(float("nan"), 0, 0, False, f"{type(exc).__name__}: {exc}")
        print(f"    → stopped {rep.stopped_s:.2f} s after the step; {rep.stamps} future stamp(s) in "
              f"{WINDOW_S:g} s; {rep.future_rows} value(s) in the future{'' if rep.ok else '  PROBLEM: ' + rep.why}",
              flush=True)
        out.append(rep)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kinds", default="sqlite", help="databases (sqlite, postgresql, mariadb)")
    args = parser.parse_args()
    need_programs("setpriv")
    if find_libfaketime() is None:
        raise SystemExit("libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    if beatlib.packages_problem():
        raise SystemExit(beatlib.packages_problem())
    report = Report("bench_guard", "12. The forward-jump guard stops a running celery beat")
    print(machine(), flush=True)
    ntp = [FakeNTPServer() for _ in range(3)]
    try:
        with cleanup(), running() as http:
            for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
                problem = beatlib.service_problem(kind)
                if problem:
                    report.row(f"{kind}: step → beat stopped", f"not measured: {problem}", "-", False)
                    continue
                guarded = _repeat("guard: stop", args.reps, kind, "stop", ntp=ntp, http=http)
                peers = _repeat("no guard (guard: alert)", args.reps, kind, "alert", ntp=ntp, http=http)
                good = [r for r in guarded if r.ok]
                peer_good = [p for p in peers if p.ok]
                latency = median([r.stopped_s for r in good]) if good else float("nan")
                report.row(f"{kind}: +180 d step → beat stopped, median / max of {len(good)}/{len(guarded)}",
                           f"{latency:.2f} / {max(r.stopped_s for r in good):.2f} s" if good else "not stopped",
                           f"≤ {STOP_TARGET_S:g} s", bool(good) and len(good) == len(guarded)
                           and latency <= STOP_TARGET_S)
                g_stamps = median([float(r.stamps) for r in good]) if good else float("nan")
                p_stamps = median([float(p.stamps) for p in peer_good]) if peer_good else float("nan")
                report.row(f"{kind}: future stamps beat wrote in the {WINDOW_S:g} s after the step, median "
                           "(database values in the future at the end)",
                           f"{g_stamps:.0f} ({median([float(r.future_rows) for r in good]):.0f})" if good else "-",
                           "fewer than without the guard", bool(good) and bool(peer_good) and g_stamps < p_stamps,
                           f"no guard: {p_stamps:.0f} "
                           f"({median([float(p.future_rows) for p in peer_good]):.0f}), and on at "
                           f"{p_stamps / WINDOW_S * 60:.0f}/min while the clock stays ahead" if peer_good
                           else "no guard: failed", ratio(g_stamps, p_stamps))
                for r in [*guarded, *peers]:
                    if not r.ok:
                        report.note(f"{kind}: a repetition failed: {r.why}")
    finally:
        for server in ntp:
            server.close()
    report.note(f"{machine()}. The step reaches the daemon through a 1-s libfaketime cache and a 1-s detection "
                "tick here (timerfd on a real host: milliseconds), so most of the latency is the harness's; the "
                "stamps before the stop are beat's first tick at +180 d, when every task is due at once.")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

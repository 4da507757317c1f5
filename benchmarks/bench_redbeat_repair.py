"""RedBeat after a rollback: how soon a running beat sends again with timeguard, what the manual fix does, and the
cost of an audit of 10,000 entries (issue 12).

Real programs on loopback, Redis db 11 only (tests/support/redbeat.py): ``celery beat -S redbeat.RedBeatScheduler``
(the app's ``beat_max_loop_interval`` 1 s: RedBeat's default is 300 s, and beat sees a repair at its next tick, so
with the default the resume takes up to 300 s longer — for the manual fix as for ours) under libfaketime;
``timeguard run`` under the same clock with 3 FakeNTPServers, an HTTP Date server and a ``type: redbeat`` hook
(only ``redis_url``).

1. Rollback → first task sent again (median of ``--reps``, default 3): the clock at +180 d, beat sending, the clock
   back to +0; CLOCK_MONOTONIC from the step to beat's first "Sending due task" after it. Target ≤ 5 s.
   Peer, same run: what users do by hand (sibson/redbeat #106, #151): a redis-cli loop
   ``ZADD redbeat::schedule <now> <member>`` for every member. It leaves ``meta.last_run_at`` 180 days ahead, so
   beat loads the entries every tick and ``is_due`` says no: nothing is sent in the window (``--window``, 15 s).
2. Audit of 10,000 entries (5,000 in the future) in a child process: its wall time (redis-py imported and the
   connection open, as in the running daemon; that first cost is printed beside it) and peak RSS (VmHWM, the
   child's own). Targets ≤ 1 s, ≤ 64 MiB. Peer: ``redis-cli ZCOUNT`` of the future scores (one command: fast, but
   it sees only the scores, not meta, and nothing it cannot parse).

Run: ``.venv/bin/python -m benchmarks.bench_redbeat_repair [--reps 3] [--window 15] [--entries 10000]`` (~2 min).
Safety: every process runs under setpriv without CAP_SYS_TIME and is stopped by its PID; only the libfaketime rc
file moves, never this machine's clock; only Redis db 11 is written and flushed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback

from benchmarks._common import Report, cleanup, machine, median, need_programs, ratio
from tests.support import beat as beatlib
from tests.support import redbeat as rb
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, find_libfaketime, scratch_dir
from timeguard.hooks.api import HookStatus

RESUME_TARGET_S = 5.0
AUDIT_TARGET_S = 1.0
RSS_TARGET_MIB = 64.0
FUTURE_S = beatlib.FUTURE_S


def with_timeguard(ntp: list[FakeNTPServer], http: object) -> tuple[float, str]:
    """One repetition: (step → first task sent again in s, problems or "")."""
    clock = FakeClock(scratch_dir("benchclock"))
    with rb.fresh_db() as redis, rb.running_daemon(clock, ntp, http) as daemon, rb.rolled_back(clock, daemon) as step:
        first = step.beat.wait_custom_sent(step.step_mono + beatlib.GRACE_S, 40, daemon.log_tail)
        run = daemon.wait_hook_run(step.rollback, 60)
        problems = []
        if run.status is not HookStatus.CHANGED or not run.details.get("clean"):
            problems.append(f"hook {run.status.value}: {run.summary}")
        time.sleep(1.5)
        left = rb.future_times(redis, time.time(), tolerance_s=65)
        if left:
            problems.append(f"future left: {left}")
        return first.mono - step.step_mono, "; ".join(problems)


def manual_zadd(window_s: float) -> tuple[int, float, float]:
    """The peer: (tasks sent in the window after the ZADD loop, its seconds, how far ahead meta still is in s)."""
    clock = FakeClock(scratch_dir("benchclock"))
    with rb.fresh_db() as redis, rb.running_redbeat(clock) as beat:
        clock.set(FUTURE_S)
        beat.wait_sent("every-1s", count=3, timeout_s=20)
        clock.set(0)
        time.sleep(1.0)
        members = [m.decode() for m in redis.zrange(rb.SCHEDULE, 0, -1)]
        t0 = time.monotonic()
        for member in members:  # as in the issues: one redis-cli per member, the score set to now
            subprocess.run(["redis-cli", "-n", "11", "ZADD", rb.SCHEDULE, str(int(time.time())), member],
                           check=True, capture_output=True, timeout=10)
        zadd_s = time.monotonic() - t0
        sent = rb.quiet_for(beat, window_s, t0)
        ahead = max((v for k, v in rb.future_times(redis, time.time()).items() if k.endswith(" meta")), default=0.0)
        return len(sent), zadd_s, ahead - time.time() if ahead else 0.0


_AUDIT_CHILD = """
import json, sys, time
from timeguard.repair.redbeat import RedBeatTarget
t = RedBeatTarget(sys.argv[1])
now = float(sys.argv[2])
t0 = time.perf_counter()
t.client  # redis-py imported and connected: once per daemon, not per audit
t1 = time.perf_counter()
audit = t.audit(now)
took = time.perf_counter() - t1
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(json.dumps({"s": took, "open_s": t1 - t0, "hwm_kb": hwm, "found": audit.found,
                  "changes": audit.details.get("counts")}))
"""


def fill(redis: object, entries: int, now: float) -> None:
    """``entries`` RedBeat entries as RedBeat writes them (its own encoder), every other one 180 days ahead."""
    import datetime as dt

    from celery.schedules import schedule
    from redbeat.decoder import RedBeatJSONEncoder

    definition = {"task": "t.tick", "args": [], "kwargs": {}, "options": {}, "schedule": schedule(60),
                  "enabled": True}
    pipe = redis.pipeline(transaction=False)  # type: ignore[attr-defined]
    for i in range(entries):
        last = now + (FUTURE_S if i % 2 == 0 else -30)
        key = f"{rb.PREFIX}task-{i}"
        pipe.hset(key, mapping={
            "definition": json.dumps({"name": f"task-{i}", **definition}, cls=RedBeatJSONEncoder),
            "meta": json.dumps({"last_run_at": dt.datetime.fromtimestamp(last, dt.UTC), "total_run_count": i},
                               cls=RedBeatJSONEncoder)})
        pipe.zadd(rb.SCHEDULE, {key: int(last + 60)})
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()


def audit(entries: int) -> tuple[float, float, float, float, object]:
    """(audit s, import + connect s, child peak RSS MiB, redis-cli ZCOUNT s, the audit's counts)."""
    with rb.fresh_db() as redis:
        now = time.time()
        fill(redis, entries, now)
        out = subprocess.run([sys.executable, "-c", _AUDIT_CHILD, rb.REDIS_URL, str(now)], capture_output=True,
                             text=True, check=True, timeout=60)
        result = json.loads(out.stdout)
        t0 = time.monotonic()
        subprocess.run(["redis-cli", "-n", "11", "ZCOUNT", rb.SCHEDULE, f"({int(now + 600)}", "+inf"], check=True,
                       capture_output=True, timeout=10)
        peer_s = time.monotonic() - t0
        return result["s"], result["open_s"], result["hwm_kb"] / 1024, peer_s, result["changes"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    need_programs("setpriv", "redis-cli")
    if not find_libfaketime():
        sys.exit("libfaketime is not installed")
    report = Report("bench_redbeat_repair", "RedBeat: a running beat sends again after a rollback; audit cost")
    print(machine())
    resumes: list[float] = []
    ntp = [FakeNTPServer() for _ in range(3)]
    try:
        with cleanup(), running() as http:
            for rep in range(args.reps):
                try:
                    took, problems = with_timeguard(ntp, http)
                except AssertionError:
                    traceback.print_exc()
                    report.note(f"rep {rep + 1} failed: see the output")
                    continue
                print(f"  rep {rep + 1}: step → first task sent again {took:.2f} s {problems}", flush=True)
                if problems:
                    report.note(f"rep {rep + 1}: {problems}")
                else:
                    resumes.append(took)
            sent, zadd_s, ahead_s = manual_zadd(args.window)
            ours = median(resumes)
            report.row(f"rollback → first task sent again (median of {len(resumes)}/{args.reps})", f"{ours:.2f} s",
                       f"≤ {RESUME_TARGET_S:g} s", len(resumes) == args.reps and ours <= RESUME_TARGET_S,
                       f"ZADD loop by hand ({zadd_s:.2f} s): {sent} task(s) sent in {args.window:g} s, meta still "
                       f"{ahead_s / 86400:.0f} d ahead", "∞ (the peer never resumes)" if not sent else "-")
            took_s, open_s, rss_mib, peer_s, counts = audit(args.entries)
            report.row(f"audit of {args.entries} entries ({counts})",
                       f"{took_s:.3f} s (+ {open_s:.3f} s import and connect, once)",
                       f"≤ {AUDIT_TARGET_S:g} s", took_s <= AUDIT_TARGET_S,
                       f"redis-cli ZCOUNT {peer_s:.3f} s (scores only)", ratio(took_s, peer_s))
            report.row("audit peak RSS (child VmHWM)", f"{rss_mib:.1f} MiB", f"≤ {RSS_TARGET_MIB:g} MiB",
                       rss_mib <= RSS_TARGET_MIB)
    finally:
        for server in ntp:
            server.close()
    report.note("The peer's ZADD leaves meta.last_run_at in the future: beat loads the entries each tick and "
                "is_due (celery's schedule on that meta) says not before 180 days; timeguard rewrites meta and score "
                "together, atomically (research/celery_beat.md §3).")
    report.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

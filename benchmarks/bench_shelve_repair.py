"""celery's default scheduler (the celerybeat-schedule shelve) after a rollback: how soon beat sends again with the
``celery_shelve`` hook, and what an audit of a large shelve costs (issue 12).

1. Rollback → first task sent again (median of ``--reps``): a real ``celery beat`` (tests/support/shelvebeat.py,
   every-1s/2s/3s, ``--max-interval 1``) under libfaketime at +180 d stamps its shelve; ``timeguard run`` watches
   under the same clock (1-s cache) with honest loopback NTP + HTTP sources and a ``type: celery_shelve`` hook whose
   stop/start commands are tests/support/beatctl.py (SIGTERM by PID and wait; start detached). The clock steps back
   to +0; measured with CLOCK_MONOTONIC: step → the daemon's rollback event → the hook's stop → the first task the
   restarted beat sends. Target ≤ 15 s.
   Peer, same run, same beat: the manual fix (stop beat, delete ``celerybeat-schedule*``, start beat), timed from
   the stop to the first send. It loses every entry's ``total_run_count`` (printed), ours keeps them. The ratio
   compares the same span: stop → first send.
2. Audit of a shelve of 10,000 entries (5,000 of them +180 d), as the daemon runs it: in a child process (its peak
   RSS is timeguard's; beat's interpreter, which unpickles the entries, is measured apart). Targets ≤ 1 s, timeguard
   ≤ 64 MiB. Peer: reading the same shelve by hand (``python -c "import shelve; …"`` in beat's interpreter, on the
   live file — which gdbm's lock would refuse while beat runs).

Run: ``.venv/bin/python -m benchmarks.bench_shelve_repair [--reps 3] [--entries 10000]`` (~2 min). Safety: every
process runs under setpriv without CAP_SYS_TIME and is stopped by its PID; only the libfaketime rc file moves.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import Report, cleanup, machine, median, need_programs, ratio, run_measured
from tests.support import daemon as daemonlib
from tests.support.beat import GRACE_S, LogTail
from tests.support.beatdaemon import Daemon
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, find_libfaketime, scratch_dir
from tests.support.shelve import entry, write_shelve
from tests.support.shelvebeat import NAMES, ShelveBeat, adopt, ahead_s, beatctl_commands, ctl_events, schedule_entries
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus

TARGET_S = 15.0
AUDIT_TARGET_S = 1.0
RSS_TARGET_MIB = 64.0
FUTURE_S = 180 * 86400.0
HOOK = "shelve-repair"


@dataclass
class Rep:
    step_to_send_s: float
    stop_to_send_s: float
    hook_s: float
    counts_kept: bool
    ok: bool
    why: str = ""


def _at_future(clock: FakeClock, schedule_dir: Path, keyprefix: str | None = None) -> ShelveBeat:
    clock.set(FUTURE_S)
    beat = ShelveBeat(clock, schedule_dir, keyprefix=keyprefix).start()
    for name in NAMES:
        beat.wait_sent(name, 2, timeout_s=20)
    time.sleep(0.5)  # beat_sync_every=1: the last send is in the shelve
    return beat


def with_timeguard(ntp: list[FakeNTPServer], http: object) -> Rep:
    clock = FakeClock(scratch_dir("benchclock"))
    schedule_dir, work = scratch_dir("bench-shelve"), scratch_dir("bench-shelvectl")
    beat = new = None
    try:
        beat = ShelveBeat(clock, schedule_dir)
        new = ShelveBeat(clock, schedule_dir, keyprefix=beat.keyprefix)
        commands = beatctl_commands(work, new)
        hook = {"type": "celery_shelve", "name": HOOK, "schedule_file": str(beat.schedule),
                "python": sys.executable, **commands}
        directory = scratch_dir("bench-shelve-daemon")
        config = daemonlib.write_config(directory, {"ntp": ntp, "http": http}, hooks=[hook])
        log = directory / "daemon.log"
        with daemonlib.start(config, clock.sharing(1), log) as proc:
            daemon = Daemon(config, log, proc)
            daemonlib.wait_for("the first checks", lambda: daemonlib.checks(config) >= 2, 20, proc)
            daemonlib.wait_for("the first audit", lambda: daemonlib.meta(config).get(f"audit:{HOOK}"), 20, proc)
            t_jump = time.monotonic()
            clock.set(FUTURE_S)
            daemon.wait_event(EventKind.FORWARD_JUMP, 10, since_mono=t_jump)
            beat.start()
            for name in NAMES:
                beat.wait_sent(name, 2, timeout_s=20)
            time.sleep(0.5)
            assert beat.process is not None
            (work / "beat.pid").write_text(f"{beat.process.pid}\n")
            counts = {n: e.total_run_count for n, e in schedule_entries(beat.schedule).items() if n in NAMES}
            new.log_path.touch()
            new.tail = LogTail(new.log_path)
            t_step = time.monotonic()
            clock.set(0)
            rollback = daemon.wait_event(EventKind.ROLLBACK, 15, since_mono=t_step - 1)
            run = daemon.wait_hook_run(rollback, 60, hook=HOOK)
            adopt(new, work, t_step)
            first = min(s.mono for s in new.wait_sent("every-1s", 1, timeout_s=30, since=t_step + GRACE_S))
        stop = next(e for e in ctl_events(work) if e["op"] == "stop")
        entries = schedule_entries(beat.schedule)
        kept = all(entries[n].total_run_count >= counts[n] for n in NAMES)
        problems = []
        if run.status is not HookStatus.CHANGED or not run.details.get("clean"):
            problems.append(f"hook {run.status.value}: {run.summary}")
        if any(a > 60 for a in ahead_s(beat.schedule).values()):
            problems.append(f"future after the repair: {ahead_s(beat.schedule)}")
        return Rep(first - t_step, first - stop["began"], run.duration_s, kept, not problems, "; ".join(problems))
    finally:
        for b in (new, beat):
            if b is not None:
                b.stop()


def manual_fix() -> tuple[float, dict[str, int], dict[str, int]]:
    """The peer: stop beat, delete celerybeat-schedule*, start beat. (stop → first send, counts before, after)."""
    clock = FakeClock(scratch_dir("benchclock"))
    schedule_dir = scratch_dir("bench-shelve-manual")
    beat = _at_future(clock, schedule_dir)
    new = None
    try:
        before = {n: e.total_run_count for n, e in schedule_entries(beat.schedule).items() if n in NAMES}
        clock.set(0)
        time.sleep(GRACE_S)
        t0 = time.monotonic()
        beat.stop()  # SIGTERM by PID, wait
        for f in schedule_dir.iterdir():
            if f.name.startswith(beat.schedule.name):
                f.unlink()
        new = ShelveBeat(clock, schedule_dir, keyprefix=beat.keyprefix).start()
        first = min(s.mono for s in new.wait_sent("every-1s", 1, timeout_s=30, since=t0))
        new.stop()
        after = {n: e.total_run_count for n, e in schedule_entries(beat.schedule).items() if n in NAMES}
        return first - t0, before, after
    finally:
        for b in (new, beat):
            if b is not None:
                b.stop()


AUDIT_CHILD = textwrap.dedent("""\
    import json, sys, time
    from timeguard.repair.celery_shelve import CeleryShelveKind
    target = CeleryShelveKind.from_options({"schedule_file": sys.argv[1], "python": sys.executable}).open()
    t0 = time.monotonic()
    found = target.audit(time.time())
    took = time.monotonic() - t0
    hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"s": took, "hwm_kb": hwm, "found": found.found, "future": found.details["counts"]}))
""")
PEER_CHILD = textwrap.dedent("""\
    import shelve, sys, time
    db = shelve.open(sys.argv[1], flag="r")
    now = time.time()
    print(sum(1 for e in db["entries"].values() if e.last_run_at.timestamp() > now + 600))
""")


def audit(entries: int) -> tuple[float, float, float, float, float, str]:
    """(audit s, timeguard's VmHWM MiB, the whole (with beat's interpreter) MiB, peer s, peer MiB, what it found)."""
    base = scratch_dir("bench-shelve-audit") / "celerybeat-schedule"
    now = time.time()
    write_shelve(base, {f"task-{i}": entry(f"task-{i}", now + (FUTURE_S if i % 2 else -60), i)
                        for i in range(entries)})
    runs = [run_measured([sys.executable, "-c", AUDIT_CHILD, str(base)], rss=True, timeout_s=120) for _ in range(3)]
    for r in runs:
        if r.returncode != 0:
            raise SystemExit(f"the audit failed: {r.stderr[-2000:]}")
    answers = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    peers = [run_measured([sys.executable, "-c", PEER_CHILD, str(base)], rss=True, timeout_s=120) for _ in range(3)]
    return (median([a["s"] for a in answers]), max(a["hwm_kb"] for a in answers) / 1024,
            max(r.maxrss_kb for r in runs) / 1024, median([p.wall_s for p in peers]),
            max(p.maxrss_kb for p in peers) / 1024, f"{answers[0]['future']} (peer: {peers[0].stdout.strip()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args()
    need_programs("setpriv")
    if find_libfaketime() is None:
        raise SystemExit("libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    report = Report("bench_shelve_repair", "celery's default scheduler (celerybeat-schedule) after a rollback")
    print(machine(), flush=True)
    ntp = [FakeNTPServer() for _ in range(3)]
    try:
        with cleanup(), running() as http:
            reps: list[Rep] = []
            peers: list[tuple[float, dict[str, int], dict[str, int]]] = []
            for i in range(args.reps):
                print(f"--- with timeguard, repetition {i + 1}/{args.reps}", flush=True)
                try:
                    rep = with_timeguard(ntp, http)
                except Exception as exc:  # a failed repetition is a figure too
                    traceback.print_exc()
                    nan = float("nan")
                    rep = Rep(nan, nan, nan, False, False, f"{type(exc).__name__}: {str(exc)[:200]}")
                print(f"    step → first send {rep.step_to_send_s:.2f} s, stop → first send {rep.stop_to_send_s:.2f} "
                      f"s, hook {rep.hook_s:.2f} s, counts kept {rep.counts_kept}"
                      f"{'' if rep.ok else '  PROBLEM: ' + rep.why}", flush=True)
                reps.append(rep)
                print(f"--- the manual fix, repetition {i + 1}/{args.reps}", flush=True)
                peer = manual_fix()
                print(f"    stop → first send {peer[0]:.2f} s; run counts {peer[1]} → {peer[2]}", flush=True)
                peers.append(peer)
    finally:
        for server in ntp:
            server.close()
    good = [r for r in reps if r.ok]
    peer_s = median([p[0] for p in peers])
    if good:
        step = [r.step_to_send_s for r in good]
        ours = median([r.stop_to_send_s for r in good])
        report.row("rollback → first task sent again (daemon, hook stops/repairs/starts beat), median / max",
                   f"{median(step):.2f} / {max(step):.2f} s ({len(good)}/{len(reps)} reps)", f"≤ {TARGET_S:g} s",
                   len(good) == len(reps) and max(step) <= TARGET_S)
        report.row("beat stopped → first task sent again, median", f"{ours:.2f} s (hook run "
                   f"{median([r.hook_s for r in good]):.2f} s)", "-", None,
                   f"manual fix (stop, rm celerybeat-schedule*, start): {peer_s:.2f} s", ratio(ours, peer_s))
        report.row("total_run_count kept", f"{sum(r.counts_kept for r in good)}/{len(good)} reps", "all",
                   all(r.counts_kept for r in good), f"manual fix: {peers[0][1]} → {peers[0][2]}")
    else:
        report.row("rollback → first task sent again", "no successful repetition", f"≤ {TARGET_S:g} s", False)
    for r in reps:
        if not r.ok:
            report.note(f"a repetition failed: {r.why}")
    took, hwm, whole, peer_took, peer_mib, found = audit(args.entries)
    report.row(f"audit of {args.entries:,} entries (half +180 d), median of 3", f"{took:.3f} s",
               f"≤ {AUDIT_TARGET_S:g} s", took <= AUDIT_TARGET_S, f"by hand (python -c shelve…): {peer_took:.3f} s",
               ratio(took, peer_took))
    report.row("audit: timeguard's peak RSS (VmHWM)", f"{hwm:.1f} MiB", f"≤ {RSS_TARGET_MIB:g} MiB",
               hwm <= RSS_TARGET_MIB, f"by hand: {peer_mib:.1f} MiB")
    report.row("audit: peak RSS with beat's interpreter unpickling", f"{whole:.1f} MiB; found {found}")
    report.note(f"{machine()}. Beat with --max-interval 1; the daemon under a 1-s libfaketime cache (a step "
                "reaches it up to ~1–2 s later than a real clock step would). The audit reads a copy of the shelve in "
                "a temporary directory (beat holds the original open); the peer reads the live file.")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

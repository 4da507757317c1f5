"""``timeguard events --json`` on a large journal: wall time and peak RSS, against ``sqlite3 -json`` reading the same
table in the same run, at two journal sizes (memory must stay flat: it may not grow with the number of events).

* The journal is filled through the journal's own schema with realistic events (a verdict with three sources, a
  step, the detail keys the daemon writes; ~1 KiB of JSON each), in one transaction.
* timeguard: ``timeguard events --json --config C`` (the installed script, under setpriv without CAP_SYS_TIME),
  stdout to /dev/null through a file, GNU time's ``%M`` for the peak RSS of that one process.
* Peer: ``sqlite3 -json journal.sqlite 'SELECT body FROM events ORDER BY seq'``: the bare read of the same rows.
* Also: ``timeguard events`` (human lines) and the time one retention pass takes to prune the journal down to
  ``daemon.events_max``.

Targets: peak RSS of ``events --json`` ≤ 40 MiB at 200,000 events and within 5 MiB of the figure at 20,000 (flat);
≤ 10 s for 200,000 events on this 2-CPU machine (the issue measured 20 s and ~1 GB before streaming).

Run: .venv/bin/python -m benchmarks.bench_events [--events 200000] [--pythonpath DIR]
``--pythonpath DIR`` runs ``python -m timeguard`` from another checkout (e.g. a ``git worktree`` of an older
commit) for a before/after comparison with the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from benchmarks._common import SETPRIV, Report, cleanup, machine, mib, program, ratio, run_measured, sec, timeguard_cmd
from tests.support.realprogs import scratch_dir
from timeguard.events import Event, EventKind
from timeguard.store.journal import Journal


def _event(i: int) -> Event:
    sources = [{"name": f"ntp{k}.example.net", "kind": "ntp", "state": "truechimer", "offset_s": 0.0012 * k,
                "error_s": 0.004, "stratum": 2} for k in range(3)]
    verdict = {"status": "WARNING", "offset_s": 0.61, "offset_lo_s": 0.6, "offset_hi_s": 0.62,
               "summary": "true offset in [+0.600000 s, +0.620000 s] (3 of 3 sources agree)", "ntp_http_agree": True,
               "sources": sources}
    return Event(kind=EventKind.OFFSET_WARNING if i % 3 else EventKind.ROLLBACK, incident_id=f"incident-{i // 4}",
                 wall_time_s=1.7e9 + i * 60.0, monotonic_s=1000.0 + i, boot_id="0f6c1c2e-boot", host="bench-host",
                 step_s=None if i % 3 else -3600.0, trusted_time_s=1.7e9 + i * 60.0 + 0.6, verdict=verdict,
                 detail={"detected_by": "timerfd", "transition": "OK->WARNING", "previous": "OK"})


def fill(path: str, count: int) -> None:
    with Journal(path) as journal, journal.transaction() as db:  # one transaction: a fill, not the daemon's writes
        db.executemany(
            "INSERT INTO events (id, incident_id, kind, wall_time_s, trusted_time_s, monotonic_s, boot_id, step_s, "
            "test, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((e.id, e.incident_id, e.kind.value, e.wall_time_s, e.trusted_time_s, e.monotonic_s, e.boot_id,
              e.step_s, 0, e.to_json()) for e in map(_event, range(count))))


def measure(report: Report, count: int, cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    state = scratch_dir(f"events-{count}")
    path = str(state / "journal.sqlite")
    started = time.monotonic()
    fill(path, count)
    print(f"{count} events written in {time.monotonic() - started:.1f} s ({os.path.getsize(path) / 2**20:.0f} MiB)",
          flush=True)
    config = state / "timeguard.yaml"
    config.write_text(f"state_dir: {state}\nhooks: []\n")
    ours = run_measured([*SETPRIV, *cmd, "events", "--json", "--config", str(config)], timeout_s=600, env=env,
                        rss=True)
    if ours.returncode != 0:
        sys.exit(f"timeguard events failed ({ours.returncode}): {ours.stderr[-2000:]}")
    printed = json.loads(ours.stdout)
    if len(printed) != count:
        sys.exit(f"timeguard events --json printed {len(printed)} events, not {count}")
    del printed
    peer = run_measured([*SETPRIV, program("sqlite3"), "-json", "-readonly", path,
                         "SELECT body FROM events ORDER BY seq"], timeout_s=600, rss=True)
    human = run_measured([*SETPRIV, *cmd, "events", "--config", str(config)], timeout_s=600, env=env, rss=True)
    report.row(f"events --json, {count:,} events: wall time", sec(ours.wall_s, 2), "≤ 10 s" if count >= 200_000
               else "-", ours.wall_s <= 10 if count >= 200_000 else None, sec(peer.wall_s, 2),
               ratio(ours.wall_s, peer.wall_s))
    report.row(f"events --json, {count:,} events: peak RSS", mib(ours.maxrss_kb), "≤ 40 MiB",
               ours.maxrss_kb <= 40 * 1024, mib(peer.maxrss_kb), ratio(ours.maxrss_kb, peer.maxrss_kb))
    report.row(f"events (human lines), {count:,} events: wall time / peak RSS",
               f"{sec(human.wall_s, 2)} / {mib(human.maxrss_kb)}")
    if "PYTHONPATH" not in env:  # the retention pass exists only in this checkout
        with Journal(path) as journal:
            started = time.monotonic()
            removed = journal.prune_events(max_events=count // 2, retention_s=None, now_s=None)
            took = time.monotonic() - started
        report.row(f"retention pass, {count:,} → {count - removed:,} events (batches of 500)", sec(took, 2))
    shutil.rmtree(state, ignore_errors=True)
    return ours.wall_s, ours.maxrss_kb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--pythonpath", help="run `python -m timeguard` from this checkout instead")
    args = parser.parse_args()
    env = dict(os.environ)
    cmd = timeguard_cmd()
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
        cmd = [sys.executable, "-m", "timeguard"]
    report = Report("bench_events", "timeguard events --json on a large journal, vs sqlite3 -json")
    report.note(f"Machine: {machine()}; timeguard from {args.pythonpath or 'this checkout'}")
    with cleanup():
        _, small_rss = measure(report, args.events // 10, cmd, env)
        _, large_rss = measure(report, args.events, cmd, env)
    flat = large_rss - small_rss <= 5 * 1024
    report.row("peak RSS growth, ×10 events", mib(large_rss - small_rss), "≤ 5 MiB (flat)", flat)
    report.finish()


if __name__ == "__main__":
    main()

"""kill -9 at any point during writes: every committed write survives, nothing half-written appears."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from timeguard.store.journal import Journal

WRITER = textwrap.dedent(
    """
    import sys, time
    from timeguard.events import Event, EventKind
    from timeguard.store.journal import CheckRecord, Journal
    j = Journal(sys.argv[1])
    start = int(sys.argv[2])
    for i in range(start, start + 100000):
        j.record_event(Event(kind=EventKind.ROLLBACK, incident_id=f"inc{i}", wall_time_s=float(i),
                             monotonic_s=time.monotonic(), boot_id="b", step_s=-float(i), id=f"ev{i}",
                             detail={"pad": "x" * 500}))
        j.raise_floor(float(i), "b", time.monotonic())
        j.record_check(CheckRecord(float(i), 0.0, "b", "OK", 0.0, 0.0, 0.0, 1, 1, None, "s", []))
        print(i, flush=True)   # only after the commits: i is durable from here on
    """
)


def test_kill_minus_9_mid_write_loses_no_committed_event(tmp_path):
    path = tmp_path / "journal.sqlite"
    rng = random.Random(1234)
    committed: list[int] = []
    next_index = 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(next_index)],
                                stdout=subprocess.PIPE, text=True)
        # wait until it writes, then kill at a random moment in the middle of its write stream
        first = proc.stdout.readline()
        assert first.strip(), "writer did not start"
        time.sleep(rng.uniform(0.01, 0.15))
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        seen = [int(first)] + [int(line) for line in out.split()]
        committed.extend(seen)
        next_index = seen[-1] + 1_000  # leave a gap: an event after the last printed one may or may not exist
    with Journal(path) as j:
        assert j.health()["ok"]
        stored = {e.id for e in j.events()}
        missing = [i for i in committed if f"ev{i}" not in stored]
        assert missing == [], f"committed events lost after kill -9: {missing[:10]}"
        for event in j.events():  # every row is a whole, decodable event
            assert event.detail == {"pad": "x" * 500}
        assert j.floor().wall_s >= max(committed)
    print(f"{len(committed)} committed events over 8 kills, none lost")

"""A celery beat that the timeguard daemon can stop and start, through tests/support/beatctl.py and a pidfile (as
``supervisorctl`` would): shared by tests/e2e/test_beat_guard.py and benchmarks/bench_guard.py.

::

    ctl = Controlled(db, clock)
    with running_beat(db, clock, max_interval=1) as beat:      # the first beat: the test's own child
        ctl.pidfile.write_text(f"{beat.process.pid}\n")
        hook = ctl.hook("stop")                                # the celery_beat hook's guard and commands
        ...                                                    # the daemon stops it: ctl.ops() → [{"op": "stop"…}]
        ctl.adopt(60)                                          # the daemon started one: ctl.next observes it
    ctl.next.stop()                                            # by PID, with its Redis keys
"""

from __future__ import annotations

import json
from typing import Any

from tests.support import daemon as daemonlib
from tests.support.beat import BeatDatabase, BeatProcess, LogTail
from tests.support.controlled import AdoptedProcess, beat_spec, commands
from tests.support.realprogs import FakeClock, scratch_dir


class Controlled:
    """beat under beatctl: the first one the test's (running_beat), each later one started by the daemon."""

    def __init__(self, db: BeatDatabase, clock: FakeClock) -> None:
        self.work = scratch_dir("guardbeat")
        self.pidfile, self.events, self.spec = (self.work / "beat.pid", self.work / "beatctl.jsonl",
                                                self.work / "spec.json")
        self.next = BeatProcess(db, clock, max_interval=1)  # what start_command starts
        self.spec.write_text(json.dumps(beat_spec(self.next, clock, self.pidfile)))
        self.next.log_path.touch()
        self.next.tail = LogTail(self.next.log_path)

    def hook(self, guard: str) -> dict[str, Any]:
        return {"beat_max_interval_s": 1, "timeout_s": 60, "guard": guard,
                **commands(self.pidfile, self.spec, self.events)}

    def ops(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines()]

    def adopt(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the daemon's start of beat; the new beat is then ``self.next`` (stopped by the test at the end)."""
        started = daemonlib.wait_for("beatctl start", lambda: next(
            (op for op in self.ops() if op["op"] == "start"), None), timeout_s, None)
        self.next.process = AdoptedProcess(started["pid"])  # type: ignore[assignment]
        self.next.started_mono = started["done"]
        return started

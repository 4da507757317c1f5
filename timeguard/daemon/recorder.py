"""The daemon's writes to the journal: events, checks, the floor and the heartbeat.

An event goes to the journal first, then to the hooks (DESIGN.md's flow); one the disk refuses still reaches them,
and is kept in memory and written again at every tick until the journal takes it — never dropped. Every failed
write is logged and counted (``timeguard_journal_errors``); detection never stops for the disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from timeguard.events import Event
from timeguard.model import Verdict, verdict_record
from timeguard.store.journal import CheckRecord, ClockMark, Heartbeat, Journal, JournalError, open_for_daemon
from timeguard.watch.clockwatch import ClockReading

if TYPE_CHECKING:
    from timeguard.hooks.dispatch import Dispatcher


class Recorder:
    def __init__(self, journal: Journal, *, boot_id: str, log: Any) -> None:
        self.journal, self.boot_id, self.log = journal, boot_id, log
        self.dispatcher: Dispatcher | None = None  # where events go once journalled
        self.errors = 0 if journal.salvaged is None else 1  # a damaged journal was found and salvaged
        self.unwritten: list[Event] = []  # events the journal refused: retried, never dropped
        self.steps_total = {"backward": 0, "forward": 0}  # steps recorded (metrics)
        self.on_change: Callable[[], None] | None = None  # told of every step and verdict (the guard looks again)

    @classmethod
    def open(cls, state_dir: str, *, boot_id: str, log: Any) -> Recorder:
        """Open the journal. Only a damaged file is moved aside (kept, never deleted), what is readable in it
        salvaged into a new one (timeguard.store.journal.open_for_daemon); a lock or an unusable state directory
        raises."""
        journal, damage = open_for_daemon(state_dir)
        if damage is not None:
            log.error("journal_damaged", error=damage["reason"], moved_to=damage["moved_to"],
                      salvaged=damage["copied"], unreadable_rows=damage["lost"], note="`timeguard status` shows it")
        return cls(journal, boot_id=boot_id, log=log)

    def event(self, event: Event, only: str | None = None) -> None:
        """Journal the event, then dispatch it. ``only``: to that hook alone (a repeated audit finding retries
        the repair, not the alerts)."""
        try:
            self.journal.record_event(event)
        except JournalError as exc:
            self.errors += 1
            self.unwritten.append(event)
            self.log.error("journal_write_failed", error=str(exc), what="event", kept_in_memory=len(self.unwritten))
        if self.dispatcher is not None:
            self.dispatcher.dispatch(event, only=only)

    def flush(self) -> None:
        """Write the events the journal refused, oldest first, until it refuses again."""
        while self.unwritten:
            try:
                self.journal.record_event(self.unwritten[0])
            except JournalError:
                return
            self.unwritten.pop(0)

    def failed(self, exc: JournalError, what: str) -> None:
        self.errors += 1
        self.log.error("journal_write_failed", error=str(exc), what=what)

    def check(self, verdict: Verdict, now: ClockReading) -> None:
        try:
            self.journal.record_check(CheckRecord(wall_s=now.realtime_s, monotonic_s=now.monotonic_s,
                                                  boot_id=self.boot_id, **verdict_record(verdict)))
        except JournalError as exc:
            self.failed(exc, "check")
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def clock(self, reading: ClockReading, *, floor: bool, reason: str) -> None:
        """The last clock reading and the heartbeat (what `timeguard status` and the next start-up read); with
        ``floor``, the floor raised to the wall time now."""
        try:
            self.journal.set_clock(ClockMark(wall_s=reading.realtime_s, boottime_s=reading.boottime_s,
                                             boot_id=self.boot_id),
                                   Heartbeat(boottime_s=reading.boottime_s, wall_s=reading.realtime_s,
                                             boot_id=self.boot_id, pid=os.getpid()))
            if floor:
                self.journal.raise_floor(reading.realtime_s, self.boot_id, reading.boottime_s, reason)
        except JournalError as exc:
            self.failed(exc, "floor/heartbeat")

    def step(self, step: Event, boottime_s: float) -> None:
        """Journal and dispatch a step event, count it; after a rollback the new, lower wall time is the floor
        from now on."""
        assert step.step_s is not None
        self.event(step)
        self.steps_total["backward" if step.step_s < 0 else "forward"] += 1
        self._changed()
        if step.step_s >= 0:
            return
        try:
            self.journal.set_floor(step.wall_time_s, self.boot_id, boottime_s,
                                   f"lowered after {step.kind.value} {step.incident_id}")
        except JournalError as exc:
            self.failed(exc, "floor")

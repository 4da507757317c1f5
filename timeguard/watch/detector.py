"""The detector: what a clock step, a gap in the watch or a verdict means, as events (DESIGN.md's flow:
clockwatch and consensus → **detector** → journal → dispatcher → hooks).

Pure: inputs in, decisions out. No I/O, no threads, no clock reads — the agent hands in what clockwatch saw
and what consensus decided, under its lock, and journals and dispatches the events that come back.

The policy, in one place:

* **Steps.** clockwatch classifies a discontinuity by size, direction, suspend and leap (:class:`StepKind`); a
  suspend is no event, every other kind is one (:data:`STEP_EVENTS`). Steps less than ``flap_window_s`` apart
  share one incident, numbered by ``detail["transition"]``: a clock flapping between two sources is one page.
* **While down.** At start-up, the same boot's boot epoch then and now gives the exact net step; after a reboot
  only the floor (the highest wall time seen) can tell a rollback, and only as a lower bound.
* **Conditions.** offset_warning/critical, sources_inconsistent and sources_unavailable are raised on a change
  only, and end with ``recovered``; one incident from the first condition until recovered. None before every
  configured source class finished its first round (issue 9: "0 of 0 sources usable" at start-up, then
  "recovered", both paging), and only the newest verdict is judged: an older one, judged late, is stale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from timeguard import events
from timeguard.events import Event, EventKind
from timeguard.model import SourceKind, SourceState, Status, Verdict, verdict_summary
from timeguard.watch.clockwatch import ClockReading, ClockStep, StepKind

#: The condition each status stands for; OK stands for none.
CONDITIONS: dict[Status, EventKind | None] = {
    Status.OK: None,
    Status.WARNING: EventKind.OFFSET_WARNING,
    Status.CRITICAL: EventKind.OFFSET_CRITICAL,
    Status.SOURCES_INCONSISTENT: EventKind.SOURCES_INCONSISTENT,
    Status.NO_MAJORITY: EventKind.SOURCES_UNAVAILABLE,
    Status.UNKNOWN: EventKind.SOURCES_UNAVAILABLE,
}
#: The event each step kind is recorded as; a suspend is none (the wall clock did not jump).
STEP_EVENTS: dict[StepKind, EventKind] = {StepKind.ROLLBACK: EventKind.ROLLBACK,
                                          StepKind.FORWARD_JUMP: EventKind.FORWARD_JUMP,
                                          StepKind.LEAP: EventKind.LEAP}


@dataclasses.dataclass(slots=True)
class _Incident:
    id: str
    last_step_monotonic_s: float
    transitions: int


class Detector:
    """The event policy's state: the open step incident, the condition in force, the first rounds seen.

    Not thread-safe: the caller serialises the calls (the agent holds its lock)."""

    def __init__(self, *, flap_window_s: float, new_id: Callable[[], str] = events.new_id) -> None:
        self.flap_window_s = flap_window_s  # reloadable
        self._new_id = new_id
        self._incident: _Incident | None = None
        self._condition: EventKind | None = None
        self._condition_incident: str | None = None
        self._classes: frozenset[SourceKind] = frozenset()
        self._rounds_done: set[SourceKind] = set()
        self._newest: Verdict | None = None
        self._newest_complete = False  # formed after every configured class finished its first round

    # ------------------------------------------------------------------------------------------- rounds

    def configure(self, classes: Iterable[SourceKind]) -> None:
        """The source classes configured now (start-up, reload): a class kept keeps its first round."""
        self._classes = frozenset(classes)
        self._rounds_done &= self._classes

    @property
    def started(self) -> bool:
        """Every configured source class finished its first round (true at once with no sources)."""
        return self._classes <= self._rounds_done

    def round_done(self, kind: SourceKind, verdict: Verdict) -> None:
        """A round of ``kind`` formed ``verdict``, the newest. Whether it counts as complete is decided now, not
        when it is judged: another class's round may finish in between and must not make this verdict (formed
        without that class) a condition."""
        self._rounds_done.add(kind)
        self._newest = verdict
        self._newest_complete = self.started

    # ------------------------------------------------------------------------------------------ verdicts

    def on_verdict(self, verdict: Verdict, now: ClockReading, boot_id: str) -> Event | None:
        """The condition event ``verdict`` raises or ends, or None: no change, a stale verdict, or not started."""
        if verdict is not self._newest or not self._newest_complete:
            return None
        condition = CONDITIONS[verdict.status]
        if condition == self._condition:
            return None
        previous, self._condition = self._condition, condition
        if condition is None:
            kind, incident = EventKind.RECOVERED, self._condition_incident or self._new_id()
            self._condition_incident = None
        else:
            kind = condition
            self._condition_incident = self._condition_incident or self._new_id()
            incident = self._condition_incident
        return Event(kind=kind, incident_id=incident, wall_time_s=now.realtime_s, monotonic_s=now.monotonic_s,
                     boot_id=boot_id, trusted_time_s=verdict.trusted_now(now.realtime_s),
                     verdict=verdict_summary(verdict),
                     detail={"previous": None if previous is None else previous.value})

    # --------------------------------------------------------------------------------------------- steps

    def on_step(self, step: ClockStep, verdict: Verdict | None, boot_id: str) -> Event | None:
        """The event for a step clockwatch detected (None for a suspend), in the incident of the steps before it
        when they are at most ``flap_window_s`` apart. ``verdict``: the sources re-based to the clock now."""
        kind = STEP_EVENTS.get(step.kind)
        if kind is None:
            return None
        incident = self._incident
        if incident is not None and step.monotonic_s - incident.last_step_monotonic_s <= self.flap_window_s:
            incident.transitions += 1
            incident.last_step_monotonic_s = step.monotonic_s
        else:
            incident = self._incident = _Incident(self._new_id(), step.monotonic_s, 1)
        return Event(kind=kind, incident_id=incident.id, wall_time_s=step.realtime_after_s,
                     monotonic_s=step.monotonic_s, boot_id=boot_id, step_s=step.step_s,
                     wall_before_s=step.realtime_before_s,
                     trusted_time_s=None if verdict is None else verdict.trusted_now(step.realtime_after_s),
                     verdict=None if verdict is None else verdict_summary(verdict),
                     detail={"detected_by": step.detected_by, "transition": incident.transitions,
                             "suspended_s": step.suspended_s})

    def while_down(self, now: ClockReading, *, boot_id: str, threshold_s: float, last_clock: Any,
                   floor_wall_s: float | None, floor_boot_id: str | None) -> Event | None:
        """At start-up: did the clock move while nothing watched it? ``last_clock``: the journal's last
        {wall_s, boottime_s, boot_id}; ``floor_*``: the highest wall time seen, and in which boot."""
        if isinstance(last_clock, dict) and last_clock.get("boot_id") == boot_id:
            # Same boot: the boot epoch then and now gives the exact net step while we were down.
            step = now.boot_epoch_s - (float(last_clock["wall_s"]) - float(last_clock["boottime_s"]))
            if step < -threshold_s:
                down_for = now.boottime_s - float(last_clock["boottime_s"])
                return self._down(now, boot_id, EventKind.ROLLBACK_WHILE_DOWN, step,
                                  {"same_boot": True, "exact": True, "down_for_s": down_for})
            if step > threshold_s:
                return self._down(now, boot_id, EventKind.FORWARD_JUMP, step,
                                  {"same_boot": True, "exact": True, "while_down": True})
            return None
        if floor_wall_s is not None and now.realtime_s < floor_wall_s - threshold_s:
            # Another boot: how long the host was down is unknown, so the size is a lower bound.
            return self._down(now, boot_id, EventKind.ROLLBACK_WHILE_DOWN, now.realtime_s - floor_wall_s,
                              {"same_boot": floor_boot_id == boot_id, "lower_bound": True,
                               "previous_boot_id": floor_boot_id, "floor_wall_s": floor_wall_s})
        return None

    def _down(self, now: ClockReading, boot_id: str, kind: EventKind, step_s: float,
              detail: dict[str, Any]) -> Event:
        return Event(kind=kind, incident_id=self._new_id(), wall_time_s=now.realtime_s,
                     monotonic_s=now.monotonic_s, boot_id=boot_id, step_s=step_s,
                     wall_before_s=now.realtime_s - step_s, detail=detail)


def leap_announced(verdict: Verdict | None) -> str | None:
    """The leap second a majority of the agreeing NTP sources announce (leap indicator 1: insert, 2: delete)."""
    if verdict is None:
        return None
    leaps = [sv.sample.leap for sv in verdict.sources
             if sv.state is SourceState.TRUECHIMER and sv.sample.kind is SourceKind.NTP]
    if leaps and leaps.count(1) * 2 > len(leaps):
        return "insert"
    if leaps and leaps.count(2) * 2 > len(leaps):
        return "delete"
    return None

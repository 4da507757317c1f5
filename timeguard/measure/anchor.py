"""One reading of the wall clock, tied to the monotonic clock with the uncertainty of the tie.

A source reads the wall clock once per query and derives every later local time (NTP's T1 and T4, the
moments an HTTP probe left and its answer arrived) from the monotonic clock, so a step of the host clock in
the middle of a query moves none of them against the others. The tie itself is two clock calls, and the
thread may be preempted between them: on a loaded host (or under libfaketime, which reads a file on each
call) the wall reading can belong to an instant hundreds of microseconds, even milliseconds, away from the
monotonic reading it is paired with. Every time derived from the pair then carries that error, and an NTP
interval on loopback — a few microseconds wide — no longer holds the true offset (an honest server turns
into a falseticker).

So the wall reading is bracketed by two monotonic readings: it happened somewhere between them, and the
midpoint is within half their distance of it. That half is the anchor's uncertainty, which every interval
derived from it adds to its error bound. The bracket is taken a few times and the tightest one kept, so a
preemption costs one more try rather than a wider bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

#: An anchor this certain (half its bracket) is taken at once; a wider one is tried again (up to :data:`TRIES` in all).
GOOD_ENOUGH_NS = 20_000
TRIES = 5


@dataclass(frozen=True, slots=True)
class WallAnchor:
    """The wall clock read ``wall_ns`` at monotonic ``mono_ns``, give or take ``uncertainty_ns``."""

    wall_ns: int
    mono_ns: int
    uncertainty_ns: int

    @property
    def uncertainty_s(self) -> float:
        return self.uncertainty_ns / 1e9

    @property
    def base_s(self) -> float:
        """REALTIME − MONOTONIC at this reading (seconds): what every time derived from it is relative to."""
        return (self.wall_ns - self.mono_ns) / 1e9

    def wall_at(self, mono_ns: int) -> int:
        """The wall time at monotonic ``mono_ns``, as this anchor's wall reading plus the monotonic time since."""
        return self.wall_ns + (mono_ns - self.mono_ns)

    def mono_at(self, wall_ns: int) -> int:
        """The monotonic time at which the wall clock (as anchored) reads ``wall_ns``."""
        return self.mono_ns + (wall_ns - self.wall_ns)


def read_anchor(wall_ns: Callable[[], int] = time.time_ns, tries: int = TRIES,
                mono_ns: Callable[[], int] = time.monotonic_ns) -> WallAnchor:
    """Read ``wall_ns`` between two ``mono_ns`` readings, up to ``tries`` times; keep the tightest bracket."""
    best: WallAnchor | None = None
    for _ in range(max(1, tries)):
        before = mono_ns()
        wall = wall_ns()
        after = mono_ns()
        gap = after - before
        candidate = WallAnchor(wall_ns=wall, mono_ns=before + gap // 2, uncertainty_ns=(gap + 1) // 2)
        if best is None or candidate.uncertainty_ns < best.uncertainty_ns:
            best = candidate
        if best.uncertainty_ns <= GOOD_ENOUGH_NS:
            break
    assert best is not None
    return best

"""HTTP ``Date`` narrowing: what a one-second Date proves about the offset, and when to ask next (pure, no I/O).

A probe sent at local time t0 and answered at t1 whose Date says D proves

    D − t1 ≤ offset < D + 1 − t0        (offset = true − host)

because the server stamped D at some moment between t0 and t1 and truncates to the second
(:func:`date_constraint`). Intersecting the constraints of several probes (:meth:`Interval.intersect`) never widens
the interval and never loses the true offset; an empty intersection proves the answers cannot all be true.
:func:`send_at_ns` times the next probe so that the server's second ticks over at the middle of the interval known
so far: the answer then tells which half holds the offset, and each probe halves the interval down to about
± rtt/2. :mod:`timeguard.measure.http` does the I/O around these; ``tests/unit/test_narrowing.py`` simulates servers.

Every quantity is an integer of nanoseconds, so the arithmetic is exact even for offsets of years.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from timeguard.measure.median import median

NS = 1_000_000_000
#: Sent later than this share of the interval, a probe's split is off-centre and mostly repeats what is known.
_LATE_SHARE = 8
_MIN_LATE_NS = 1_000_000


@dataclass(frozen=True, slots=True)
class Interval:
    """``lo_ns ≤ offset < hi_ns``: the offsets (true − host, in ns) that every answer so far leaves possible."""

    lo_ns: int
    hi_ns: int

    @property
    def width_ns(self) -> int:
        return self.hi_ns - self.lo_ns

    @property
    def mid_ns(self) -> int:
        return (self.lo_ns + self.hi_ns) // 2

    def intersect(self, other: Interval) -> Interval | None:
        """The offsets both allow; None when none is (the answers contradict each other)."""
        lo, hi = max(self.lo_ns, other.lo_ns), min(self.hi_ns, other.hi_ns)
        return Interval(lo, hi) if lo < hi else None

    def max_late_ns(self) -> int:
        """How late a probe aimed at this interval's middle may leave and still split it usefully."""
        return max(self.width_ns // _LATE_SHARE, _MIN_LATE_NS)


def date_constraint(date_s: int, t0_ns: int, t1_ns: int) -> Interval:
    """What one answer proves: the server stamped ``date_s`` (whole seconds) between local ``t0_ns`` and ``t1_ns``."""
    return Interval(date_s * NS - t1_ns, (date_s + 1) * NS - t0_ns)


def send_at_ns(known: Interval, half_rtt_ns: int, not_before_ns: int) -> int:
    """The local time to send the next probe, not before ``not_before_ns``.

    A request sent at t reaches the server at about t + rtt/2, when the server's clock (if the offset were the
    interval's middle) reads t + rtt/2 + mid. Sent so that this is the server's next whole second, the Date tells
    whether the true offset is above or below the middle (give or take rtt/2).
    """
    tick_ns = -(-(not_before_ns + known.mid_ns + half_rtt_ns) // NS) * NS  # the first boundary after it
    return tick_ns - known.mid_ns - half_rtt_ns


def rtt_estimate_ns(rtts_ns: Sequence[int]) -> int:
    """The round trip the next probe will see: the median of all but the first (which paid for the TCP and TLS
    handshakes, where the later ones reuse the kept-alive connection)."""
    later = rtts_ns[1:] or rtts_ns
    return int(median(later))

"""Source selection: which sources tell the truth, and what the host clock's offset is.

This is RFC 5905's selection (Marzullo's intersection, as chrony's ``SRC_SelectSource`` applies it) over
*all* usable samples, NTP and HTTP alike, plus a separate check that the NTP class and the HTTP class agree
with each other (a spoofed NTP majority must never be trusted; research/time_anchors.md §8, T7).

The reported interval is sound against the largest tolerable number of liars: with ``n`` usable sources
and at most ``f = ⌊(n−1)/2⌋`` of them lying, the true offset is covered by at least ``q = n − f`` intervals,
so it lies in ``[l, u]`` = the lowest and highest points covered by ``q`` intervals. (Running RFC 5905's
loop only until the *first* ``f`` that succeeds gives a tighter interval that a colluding minority can push
off the truth; see ``tests/unit/test_consensus.py::test_minority_can_shift_max_depth_but_not_the_bound``.)
The point estimate is the middle of the region covered by the most intervals, where honest narrow sources
pin it down.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from timeguard.model import (
    ClassAgreement,
    Sample,
    SourceKind,
    SourceState,
    SourceVerdict,
    Status,
    Verdict,
)


@dataclass(frozen=True, slots=True)
class Selection:
    """The intersection over one set of intervals."""

    usable: int
    quorum: int  # intervals that must overlap: a strict majority
    depth: int  # the most intervals that overlap at one point
    best_lo_s: float | None  # the region covered by ``depth`` intervals (where the estimate sits)
    best_hi_s: float | None
    lo_s: float | None  # [lo, hi]: every point covered by ``quorum`` intervals; None without a majority
    hi_s: float | None

    @property
    def has_majority(self) -> bool:
        return self.lo_s is not None


def select(intervals: Sequence[tuple[float, float]]) -> Selection:
    """Marzullo's sweep over closed intervals ``(lo, hi)``."""
    n = len(intervals)
    quorum = n // 2 + 1
    if n == 0:
        return Selection(0, quorum, 0, None, None, None, None)
    # Starts sort before ends at the same point: closed intervals that touch do overlap.
    edges = sorted([(lo, 0) for lo, _ in intervals] + [(hi, 1) for _, hi in intervals])
    depth = 0
    max_depth = 0
    regions: list[tuple[float, float]] = []  # regions at max depth, in order
    region_start = 0.0
    quorum_lo: float | None = None
    quorum_hi: float | None = None
    for point, is_end in edges:
        if is_end:
            if depth == max_depth:
                regions.append((region_start, point))
            if depth >= quorum:
                quorum_hi = point  # the last end while at quorum is the highest quorum point
            depth -= 1
        else:
            depth += 1
            if depth > max_depth:
                max_depth = depth
                regions = []
            if depth == max_depth:
                region_start = point
            if depth >= quorum and quorum_lo is None:
                quorum_lo = point
    if max_depth < quorum:
        quorum_lo = quorum_hi = None
    best = _middle_region(regions, intervals)
    return Selection(n, quorum, max_depth, best[0], best[1], quorum_lo, quorum_hi)


def _middle_region(
    regions: list[tuple[float, float]], intervals: Sequence[tuple[float, float]]
) -> tuple[float, float]:
    # Several disjoint regions can share the top depth only when wide intervals span them; take the one
    # nearest the median of all midpoints, so the choice never depends on the order of the inputs.
    if len(regions) == 1:
        return regions[0]
    median = statistics.median((lo + hi) / 2 for lo, hi in intervals)
    return min(regions, key=lambda r: (abs((r[0] + r[1]) / 2 - median), r[0]))


def decide(
    samples: Iterable[Sample],
    *,
    warning_s: float,
    critical_s: float,
    min_sources: int = 1,
    monotonic_s: float = 0.0,
) -> Verdict:
    """The verdict over one round of samples (pure: no I/O, no clock reads)."""
    samples = tuple(samples)
    usable = [s for s in samples if s.usable]
    overall = select([_interval(s) for s in usable])
    ntp = _class_agreement(SourceKind.NTP, usable)
    http = _class_agreement(SourceKind.HTTP, usable)
    agree: bool | None = None
    if ntp.has_majority and http.has_majority:
        agree = _overlap(ntp.offset_lo_s, ntp.offset_hi_s, http.offset_lo_s, http.offset_hi_s)

    verdicts = tuple(_source_verdict(s, overall) for s in samples)
    offset = lo = hi = None
    if len(usable) < min_sources:
        status = Status.UNKNOWN
    elif agree is False:
        status = Status.SOURCES_INCONSISTENT
    elif not overall.has_majority:
        status = Status.NO_MAJORITY
    else:
        assert overall.best_lo_s is not None and overall.best_hi_s is not None
        offset = (overall.best_lo_s + overall.best_hi_s) / 2
        lo, hi = overall.lo_s, overall.hi_s
        magnitude = abs(offset)
        if magnitude >= critical_s:
            status = Status.CRITICAL
        elif magnitude >= warning_s:
            status = Status.WARNING
        else:
            status = Status.OK
    summary = _summary(
        status,
        offset=offset,
        lo=lo,
        hi=hi,
        overall=overall,
        ntp=ntp,
        http=http,
        agree=agree,
        total=len(samples),
        min_sources=min_sources,
    )
    return Verdict(
        status=status,
        summary=summary,
        offset_s=offset,
        offset_lo_s=lo,
        offset_hi_s=hi,
        sources=verdicts,
        usable=len(usable),
        agreeing=overall.depth,
        ntp=ntp,
        http=http,
        ntp_http_agree=agree,
        warning_s=warning_s,
        critical_s=critical_s,
        monotonic_s=monotonic_s,
    )


def _interval(sample: Sample) -> tuple[float, float]:
    assert sample.offset_lo_s is not None and sample.offset_hi_s is not None
    return sample.offset_lo_s, sample.offset_hi_s


def _overlap(a_lo: float | None, a_hi: float | None, b_lo: float | None, b_hi: float | None) -> bool:
    assert a_lo is not None and a_hi is not None and b_lo is not None and b_hi is not None
    return a_lo <= b_hi and b_lo <= a_hi


def _class_agreement(kind: SourceKind, usable: Sequence[Sample]) -> ClassAgreement:
    of_kind = [_interval(s) for s in usable if s.kind == kind]
    sel = select(of_kind)
    return ClassAgreement(kind, sel.usable, sel.depth, sel.lo_s, sel.hi_s)


def _source_verdict(sample: Sample, overall: Selection) -> SourceVerdict:
    if not sample.usable:
        assert sample.failure is not None
        return SourceVerdict(sample, sample.failure, sample.reason)
    lo, hi = _interval(sample)
    if not overall.has_majority:
        return SourceVerdict(
            sample,
            SourceState.FALSETICKER,
            f"no majority: at most {overall.depth} of {overall.usable} sources agree, "
            f"{overall.quorum} needed",
        )
    if _overlap(lo, hi, overall.lo_s, overall.hi_s):
        return SourceVerdict(sample, SourceState.TRUECHIMER, sample.reason)
    assert overall.lo_s is not None and overall.hi_s is not None
    return SourceVerdict(
        sample,
        SourceState.FALSETICKER,
        f"its interval [{lo:+.6f} s, {hi:+.6f} s] misses the majority's "
        f"[{overall.lo_s:+.6f} s, {overall.hi_s:+.6f} s]",
    )


def fmt_offset(seconds: float) -> str:
    """A signed offset a person reads at a glance: µs/ms resolution as the size needs, ``s`` beyond."""
    if not math.isfinite(seconds):
        return str(seconds)
    magnitude = abs(seconds)
    if magnitude < 1:
        return f"{seconds:+.6f} s"
    if magnitude < 1000:
        return f"{seconds:+.3f} s"
    days = seconds / 86400
    return f"{seconds:+.0f} s ({days:+.1f} d)" if abs(days) >= 1 else f"{seconds:+.0f} s"


def _summary(
    status: Status,
    *,
    offset: float | None,
    lo: float | None,
    hi: float | None,
    overall: Selection,
    ntp: ClassAgreement,
    http: ClassAgreement,
    agree: bool | None,
    total: int,
    min_sources: int,
) -> str:
    if status is Status.UNKNOWN:
        return (
            f"only {overall.usable} of {total} sources usable, {min_sources} needed: "
            "the clock cannot be checked"
        )
    if status is Status.SOURCES_INCONSISTENT:
        assert ntp.offset_lo_s is not None and ntp.offset_hi_s is not None
        assert http.offset_lo_s is not None and http.offset_hi_s is not None
        return (
            f"NTP sources ({ntp.agreeing} of {ntp.usable}) say offset [{fmt_offset(ntp.offset_lo_s)}, "
            f"{fmt_offset(ntp.offset_hi_s)}] but HTTPS sources ({http.agreeing} of {http.usable}) say "
            f"[{fmt_offset(http.offset_lo_s)}, {fmt_offset(http.offset_hi_s)}]: one class is lying"
        )
    if status is Status.NO_MAJORITY:
        return (
            f"no majority: at most {overall.depth} of {overall.usable} usable sources agree, "
            f"{overall.quorum} needed"
        )
    assert offset is not None and lo is not None and hi is not None
    direction = "ahead" if offset < 0 else "behind"
    classes = {True: "; NTP and HTTPS agree", False: "", None: ""}[agree]
    if agree is None:
        missing = [k.value.upper() for k, c in ((SourceKind.NTP, ntp), (SourceKind.HTTP, http)) if c.usable]
        classes = f"; only {'/'.join(missing) or 'no'} sources, no cross-check"
    return (
        f"host clock {direction} by {fmt_offset(abs(offset))[1:]} (offset {offset:+.6f} s, "
        f"true offset in [{lo:+.6f} s, {hi:+.6f} s]), "
        f"{overall.depth} of {overall.usable} usable sources agree{classes}"
    )

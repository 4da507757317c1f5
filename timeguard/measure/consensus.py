"""Source selection: which sources tell the truth, and what the host clock's offset is.

This is RFC 5905's selection (Marzullo's intersection, as chrony's ``SRC_SelectSource`` applies it) over
*all* usable samples, NTP and HTTP alike, plus a separate check that the trust classes (:class:`TrustClass`: each
source kind declares one) agree with each other: the same selection over each class alone, and every two classes'
majorities must overlap (a spoofed NTP majority must never be trusted; research/time_anchors.md §8, T7).

Trust classes, like chrony's default ``authselectmode mix``: an unauthenticated majority never outvotes
authenticated sources. When the authenticated sources (NTS, HTTPS) have a majority among themselves, their classes
agree with each other, and NTS is among them (NTS has a majority of its own), *they decide*: the verdict's
interval is their majority's, a plain-NTP source counts only where it agrees with it, and one that does not is a
falseticker ("outvoted by authenticated sources"), not a reason for SOURCES_INCONSISTENT. Authenticated classes
that disagree with each other (NTS against HTTPS) are SOURCES_INCONSISTENT. Without NTS the rule is the one
before it: HTTPS Date alone (one-second resolution) is too coarse to overrule NTP, so an NTP majority against
HTTPS is SOURCES_INCONSISTENT, and nothing is trusted or repaired.

The reported interval is sound against the largest tolerable number of liars: with ``n`` usable sources
and at most ``f = ⌊(n−1)/2⌋`` of them lying, the true offset is covered by at least ``q = n − f`` intervals,
so it lies in ``[l, u]`` = the lowest and highest points covered by ``q`` intervals. (Running RFC 5905's
loop only until the *first* ``f`` that succeeds gives a tighter interval that a colluding minority can push
off the truth; see ``tests/unit/test_consensus.py::test_minority_can_shift_max_depth_but_not_the_bound``.)
The point estimate is the middle of the region covered by the most intervals, where honest narrow sources
pin it down.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from timeguard.measure.median import median as median_of
from timeguard.model import (
    ClassAgreement,
    Sample,
    SourceState,
    SourceVerdict,
    Status,
    TrustClass,
    Verdict,
)
from timeguard.ranges import Range


@dataclass(frozen=True, slots=True)
class Selection:
    """The intersection over one set of intervals."""

    usable: int
    quorum: int  # intervals that must overlap: a strict majority
    depth: int  # the most intervals that overlap at one point
    best_lo_s: float | None  # the region covered by ``depth`` intervals (where the estimate sits)
    best_hi_s: float | None
    lo_s: float | None  # [lo, hi]: the hull of ``regions``; None without a majority
    hi_s: float | None
    #: Every point covered by ``quorum`` intervals, as disjoint closed intervals in order. With at most
    #: ⌊(n−1)/2⌋ liars the truth is in one of them; more than one means the majority is split.
    regions: tuple[tuple[float, float], ...] = ()

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
    quorum_regions: list[tuple[float, float]] = []
    quorum_start = 0.0
    for point, is_end in edges:
        if is_end:
            if depth == max_depth:
                regions.append((region_start, point))
            if depth == quorum:  # leaving the last point covered by a majority (until the next start)
                quorum_regions.append((quorum_start, point))
            depth -= 1
        else:
            depth += 1
            if depth > max_depth:
                max_depth = depth
                regions = []
            if depth == max_depth:
                region_start = point
            if depth == quorum:
                quorum_start = point
    best = _middle_region(regions, intervals)
    if not quorum_regions:
        return Selection(n, quorum, max_depth, best[0], best[1], None, None)
    return Selection(
        n, quorum, max_depth, best[0], best[1], quorum_regions[0][0], quorum_regions[-1][1], tuple(quorum_regions)
    )


def _middle_region(
    regions: list[tuple[float, float]], intervals: Sequence[tuple[float, float]]
) -> tuple[float, float]:
    # Several disjoint regions can share the top depth only when wide intervals span them; take the one
    # nearest the median of all midpoints, so the choice never depends on the order of the inputs.
    if len(regions) == 1:
        return regions[0]
    median = median_of((lo + hi) / 2 for lo, hi in intervals)
    return min(regions, key=lambda r: (abs((r[0] + r[1]) / 2 - median), r[0]))


def decide(
    samples: Iterable[Sample],
    *,
    warning_s: float | Range,
    critical_s: float | Range,
    min_sources: int = 1,
    monotonic_s: float = 0.0,
) -> Verdict:
    """The verdict over one round of samples (pure: no I/O, no clock reads).

    ``warning_s``/``critical_s`` are a number N (alert when |offset| > N) or a Nagios :class:`Range` over
    |offset|. The status is the worst that *any* point of the majority's regions would have: OK says that
    every offset the sources leave possible is within the warning threshold, not only the estimate.

    ``min_sources`` is capped at the number of samples given (the sources configured): a check of a
    single server is valid, and says that one source cannot be outvoted.
    """
    samples = tuple(samples)
    warning = warning_s if isinstance(warning_s, Range) else Range.upper(warning_s)
    critical = critical_s if isinstance(critical_s, Range) else Range.upper(critical_s)
    needed = max(min(min_sources, len(samples)), 1)
    usable = [s for s in samples if s.usable]
    classes = {
        c: _class_agreement(c, select([_interval(s) for s in usable if s.kind.trust_class is c])) for c in TrustClass
    }
    authenticated = select([_interval(s) for s in usable if s.kind.trust_class.authenticated])
    auth_agree, auth_disagreeing = _classes_agree(c for c in classes.values() if c.trust_class.authenticated)
    decides = auth_agree is not False and classes[TrustClass.NTS].has_majority and authenticated.has_majority
    if decides:
        judge = _AuthenticatedJudge(authenticated, usable)
        overall, bound = judge.admitted, authenticated
        agree, disagreeing = _deciding_classes_agree(classes, authenticated.regions)
    else:
        judge = None
        overall = bound = select([_interval(s) for s in usable])
        agree, disagreeing = (False, auth_disagreeing) if auth_agree is False else _classes_agree(classes.values())

    verdicts = tuple(_source_verdict(s, overall) if judge is None else judge.verdict(s) for s in samples)
    offset = lo = hi = None
    regions: tuple[tuple[float, float], ...] = ()
    witness: tuple[float, Range] | None = None
    agreeing_classes: tuple[TrustClass, ...] = ()
    if len(usable) < needed:
        status = Status.UNKNOWN
    elif agree is False:
        status = Status.SOURCES_INCONSISTENT
    elif not bound.has_majority:
        status = Status.NO_MAJORITY
    else:
        assert overall.best_lo_s is not None and overall.best_hi_s is not None
        lo, hi, regions = bound.lo_s, bound.hi_s, bound.regions
        offset = _clamp((overall.best_lo_s + overall.best_hi_s) / 2, regions)
        agreeing_classes = tuple(c.trust_class for c in classes.values()
                                 if c.has_majority and any(_overlap(*x, *y) for x in c.regions for y in regions))
        if not agree:  # one class alone (or none with a majority of its own): nothing confirms it
            agreeing_classes = agreeing_classes[:1] if len(agreeing_classes) == 1 else ()
        status = Status.OK
        for level, threshold in ((Status.CRITICAL, critical), (Status.WARNING, warning)):
            point = _alerting_point(threshold, regions)
            if point is not None:
                status = level
                # Explain only a status the estimate alone would not have: the interval reaches past it.
                witness = None if threshold.alerts(abs(offset)) else (point, threshold)
                break
    summary = _summary(
        status,
        offset=offset,
        regions=regions,
        overall=overall,
        classes=classes,
        disagreeing=disagreeing,
        agreeing_classes=agreeing_classes,
        outvoted=None if judge is None else judge.outvoted,
        usable=len(usable),
        total=len(samples),
        needed=needed,
        witness=witness,
        names=(warning, critical),
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
        classes=classes,
        classes_agree=agree,
        warning=warning,
        critical=critical,
        monotonic_s=monotonic_s,
        regions=regions,
        agreeing_classes=agreeing_classes,
        authenticated_decide=decides,
    )


class _AuthenticatedJudge:
    """The selection when the authenticated sources decide: their majority's regions bound the verdict; the
    unauthenticated sources that overlap them are admitted beside them (they may sharpen the estimate inside the
    bound, never move it out); the others are outvoted."""

    def __init__(self, authenticated: Selection, usable: Sequence[Sample]) -> None:
        self.regions = authenticated.regions
        admitted = [s for s in usable if s.kind.trust_class.authenticated or self._agrees(s)]
        self.admitted = select([_interval(s) for s in admitted])
        #: (outvoted, usable) plain-NTP sources
        unauthenticated = [s for s in usable if not s.kind.trust_class.authenticated]
        self.outvoted = (sum(not self._agrees(s) for s in unauthenticated), len(unauthenticated))

    def _agrees(self, sample: Sample) -> bool:
        return any(_overlap(*_interval(sample), *r) for r in self.regions)

    def verdict(self, sample: Sample) -> SourceVerdict:
        if not sample.usable:
            assert sample.failure is not None
            return SourceVerdict(sample, sample.failure, sample.reason)
        if self._agrees(sample):
            return SourceVerdict(sample, SourceState.TRUECHIMER, sample.reason)
        lo, hi = _interval(sample)
        if sample.kind.trust_class.authenticated:
            why = f"its interval [{lo:+.6f} s, {hi:+.6f} s] misses the authenticated majority's"
        else:
            why = f"outvoted by authenticated sources: its interval [{lo:+.6f} s, {hi:+.6f} s] misses their majority's"
        return SourceVerdict(sample, SourceState.FALSETICKER, f"{why} {fmt_regions(self.regions)}")


def _deciding_classes_agree(
    classes: Mapping[TrustClass, ClassAgreement], regions: Sequence[tuple[float, float]]
) -> tuple[bool | None, None]:
    """When the authenticated sources decide (they agree with each other), the classes agree unless fewer than two
    count: the authenticated ones with a majority, and plain NTP where its majority meets theirs (an outvoted NTP
    class is not a disagreement: it is outvoted)."""
    counted = [c for c in classes.values() if c.has_majority and (
        c.trust_class.authenticated or any(_overlap(*x, *y) for x in c.regions for y in regions))]
    return (True if len(counted) >= 2 else None), None


def _clamp(x: float, regions: Sequence[tuple[float, float]]) -> float:
    """``x``, or the point of ``regions`` nearest to it."""
    if any(lo <= x <= hi for lo, hi in regions):
        return x
    return min((min(max(x, lo), hi) for lo, hi in regions), key=lambda p: abs(p - x))


def _alerting_point(threshold: Range, regions: Sequence[tuple[float, float]]) -> float | None:
    """An offset of ``regions`` whose magnitude ``threshold`` alerts on (the largest such), or None.

    The alert set of a range over |x| changes only at ±start, ±end and 0, so a region alerts somewhere iff
    it alerts at one of its ends or at one of those points inside it: the check is exact, not sampled.
    """
    found: float | None = None
    for lo, hi in regions:
        if not threshold.alerts_for_offsets(lo, hi):
            continue
        edges = [threshold.start, threshold.end, -threshold.start, -threshold.end, 0.0]
        candidates = [lo, hi, *(x for x in edges if math.isfinite(x) and lo <= x <= hi)]
        for x in candidates:
            if threshold.alerts(abs(x)) and (found is None or abs(x) > abs(found)):
                found = x
    return found


def _interval(sample: Sample) -> tuple[float, float]:
    assert sample.offset_lo_s is not None and sample.offset_hi_s is not None
    return sample.offset_lo_s, sample.offset_hi_s


def _overlap(a_lo: float, a_hi: float, b_lo: float, b_hi: float) -> bool:
    return a_lo <= b_hi and b_lo <= a_hi


def _class_agreement(trust_class: TrustClass, sel: Selection) -> ClassAgreement:
    return ClassAgreement(trust_class, sel.usable, sel.depth, sel.lo_s, sel.hi_s, sel.regions)


def _classes_agree(
    classes: Iterable[ClassAgreement],
) -> tuple[bool | None, tuple[ClassAgreement, ClassAgreement] | None]:
    """Whether every two classes with a majority of their own overlap somewhere (None: fewer than two to
    compare), and the first pair that does not."""
    judged = [c for c in classes if c.has_majority]
    if len(judged) < 2:
        return None, None
    for a, b in itertools.combinations(judged, 2):
        if not any(_overlap(*x, *y) for x in a.regions for y in b.regions):
            return False, (a, b)
    return True, None


def fmt_regions(regions: Sequence[tuple[float, float]]) -> str:
    """``[-0.000028 s, +0.000031 s]``, or ``[…] or […]`` for a split majority."""
    return " or ".join(f"[{lo:+.6f} s, {hi:+.6f} s]" for lo, hi in regions)


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
    if any(_overlap(lo, hi, r_lo, r_hi) for r_lo, r_hi in overall.regions):
        return SourceVerdict(sample, SourceState.TRUECHIMER, sample.reason)
    return SourceVerdict(
        sample,
        SourceState.FALSETICKER,
        f"its interval [{lo:+.6f} s, {hi:+.6f} s] misses the majority's {fmt_regions(overall.regions)}",
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
    regions: Sequence[tuple[float, float]],
    overall: Selection,
    classes: dict[TrustClass, ClassAgreement],
    disagreeing: tuple[ClassAgreement, ClassAgreement] | None,
    agreeing_classes: Sequence[TrustClass],
    outvoted: tuple[int, int] | None,
    usable: int,
    total: int,
    needed: int,
    witness: tuple[float, Range] | None,
    names: tuple[Range, Range],
) -> str:
    if status is Status.UNKNOWN:
        return (
            f"only {usable} of {total} sources usable, {needed} needed: "
            "the clock cannot be checked"
        )
    if status is Status.SOURCES_INCONSISTENT:
        assert disagreeing is not None
        a, b = disagreeing
        assert a.offset_lo_s is not None and a.offset_hi_s is not None
        assert b.offset_lo_s is not None and b.offset_hi_s is not None
        return (
            f"{a.trust_class.label} sources ({a.agreeing} of {a.usable}) say offset [{fmt_offset(a.offset_lo_s)}, "
            f"{fmt_offset(a.offset_hi_s)}] but {b.trust_class.label} sources ({b.agreeing} of {b.usable}) say "
            f"[{fmt_offset(b.offset_lo_s)}, {fmt_offset(b.offset_hi_s)}]: one class is lying"
        )
    if status is Status.NO_MAJORITY:  # (never when the authenticated sources decide: they have a majority)
        return (
            f"no majority: at most {overall.depth} of {overall.usable} usable sources agree, "
            f"{overall.quorum} needed"
        )
    assert offset is not None and regions
    direction = "ahead" if offset < 0 else "behind"
    if len(agreeing_classes) >= 2:
        labels = [c.label for c in agreeing_classes]
        cross = f"; {', '.join(labels[:-1])} and {labels[-1]} agree"
    elif outvoted is not None:
        cross = f"; only {'/'.join(c.label for c in agreeing_classes)} sources confirm it"
    else:
        present = [c.value.upper() for c, agreement in classes.items() if agreement.usable]
        cross = f"; only {'/'.join(present) or 'no'} sources, no cross-check"
    if outvoted is not None:
        cross += "; the authenticated sources decide"
        if outvoted[0]:
            cross += f" ({outvoted[0]} of {outvoted[1]} NTP sources outvoted)"
    split = ""
    if len(regions) > 1:
        split = f": the majority is split into {len(regions)} regions and the sources cannot tell which holds"
    text = (
        f"host clock {direction} by {fmt_offset(abs(offset))[1:]} (offset {offset:+.6f} s, "
        f"true offset in {fmt_regions(regions)}{split}), "
        f"{overall.depth} of {usable} usable sources agree{cross}"
    )
    if usable == 1:
        text += "; a single source cannot be outvoted: if it is wrong, nothing here can tell"
    if witness is not None:
        point, threshold = witness
        which = "critical" if threshold is names[1] else "warning"
        text += f"; the true offset may be {point:+.6f} s, past the {which} threshold {threshold.text} s"
    return text

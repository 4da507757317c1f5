from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from timeguard.measure.consensus import _classes_agree, decide, fmt_offset, select
from timeguard.model import (
    ClassAgreement,
    Sample,
    SourceKind,
    SourceState,
    Status,
    TrustClass,
    verdict_record,
    verdict_summary,
)
from timeguard.ranges import Range
from timeguard.store.journal import CheckRecord


def ntp(name: str, offset: float, err: float = 0.001, kind: SourceKind = SourceKind.NTP) -> Sample:
    return Sample(name, kind, offset_s=offset, offset_lo_s=offset - err, offset_hi_s=offset + err)


def http(name: str, offset: float, err: float = 0.01) -> Sample:
    return ntp(name, offset, err, SourceKind.HTTP)


def nts(name: str, offset: float, err: float = 0.001, operator: str | None = None) -> Sample:
    return dataclasses.replace(ntp(name, offset, err, SourceKind.NTS), operator=operator)


def dead(name: str, kind: SourceKind = SourceKind.NTP) -> Sample:
    return Sample.failed(name, kind, SourceState.UNREACHABLE, "no reply within 2.0 s")


def states(verdict) -> dict[str, SourceState]:
    return {v.sample.name: v.state for v in verdict.sources}


def run(samples, **kw):
    kw.setdefault("warning_s", 0.5)
    kw.setdefault("critical_s", 5.0)
    return decide(samples, **kw)


def test_all_agree_is_ok_with_tight_estimate():
    v = run([ntp("a", 0.010), ntp("b", 0.0105), ntp("c", 0.0095), http("h1", 0.012), http("h2", 0.008)])
    assert v.status is Status.OK
    assert v.offset_lo_s <= 0.010 <= v.offset_hi_s
    assert abs(v.offset_s - 0.010) < 0.001  # pinned by the narrow NTP intervals
    assert v.ntp_http_agree is True
    assert set(states(v).values()) == {SourceState.TRUECHIMER}
    assert v.agreeing == 5
    assert v.trusted_now(1000.0) == pytest.approx(1000.0 + v.offset_s)
    assert "host clock behind" in v.summary and "NTP and HTTPS agree" in v.summary


def test_lying_minority_is_marked_falseticker():
    # T6: 2 of 5 at +5 s
    v = run([ntp("a", 0), ntp("b", 0), ntp("c", 0), ntp("liar1", 5.0), ntp("liar2", 5.0)])
    assert v.status is Status.OK
    s = states(v)
    assert s["liar1"] is s["liar2"] is SourceState.FALSETICKER
    assert s["a"] is SourceState.TRUECHIMER
    reason = next(x.reason for x in v.sources if x.sample.name == "liar1")
    assert "misses the majority" in reason and "[+4.999000 s, +5.001000 s]" in reason


def test_two_against_two_has_no_majority():
    v = run([ntp("a", 0), ntp("b", 0), ntp("c", 5), ntp("d", 5)])
    assert v.status is Status.NO_MAJORITY
    # check_ntp_time's rule: an offset that cannot be found is CRITICAL, UNKNOWN only when asked (-q)
    assert v.offset_s is None and v.status.exit_code == 2 and v.status.nagios_code(quiet=True) == 3
    assert all(x.state is SourceState.FALSETICKER for x in v.sources)
    assert "2 of 4" in v.summary and "3 needed" in v.summary


def test_scattered_liars_no_majority():
    # T8: 0, 0, +5, +10, -7
    v = run([ntp("a", 0), ntp("b", 0), ntp("c", 5), ntp("d", 10), ntp("e", -7)])
    assert v.status is Status.NO_MAJORITY


def test_colluding_ntp_majority_is_caught_by_https():
    # T7: chrony follows 3 of 5 colluding NTP servers; the HTTPS class disagrees -> no trust, exit 2.
    v = run(
        [ntp("a", 0), ntp("b", 0), ntp("c", 5), ntp("d", 5), ntp("e", 5), http("h1", 0), http("h2", 0)]
    )
    assert v.status is Status.SOURCES_INCONSISTENT
    assert v.status.exit_code == 2
    assert v.ntp_http_agree is False
    assert v.classes[TrustClass.NTP].has_majority and v.classes[TrustClass.HTTP].has_majority
    assert v.offset_s is None
    assert "one class is lying" in v.summary


def test_spoofed_ntp_majority_without_overall_majority_still_inconsistent():
    v = run([ntp("a", 5), ntp("b", 5), ntp("c", 5), http("h1", 0), http("h2", 0), http("h3", 0)])
    assert v.status is Status.SOURCES_INCONSISTENT


def test_one_lying_https_server_does_not_break_cross_check():
    v = run([ntp("a", 0), ntp("b", 0), ntp("c", 0), http("h1", 0), http("h2", 0), http("h3", 3600)])
    assert v.status is Status.OK and v.ntp_http_agree is True
    assert states(v)["h3"] is SourceState.FALSETICKER


def test_thresholds():
    assert run([ntp("a", 0.6), ntp("b", 0.6)]).status is Status.WARNING
    assert run([ntp("a", -6), ntp("b", -6)]).status is Status.CRITICAL
    v = run([ntp("a", -6), ntp("b", -6)])
    assert "host clock ahead by 6.000 s" in v.summary
    assert run([ntp("a", 0.6), ntp("b", 0.6)], warning_s=1).status is Status.OK


def test_unknown_when_too_few_usable():
    v = run([dead("a"), dead("b")])
    assert v.status is Status.UNKNOWN and v.status.exit_code == 2 and v.status.nagios_code(quiet=True) == 3
    assert states(v) == {"a": SourceState.UNREACHABLE, "b": SourceState.UNREACHABLE}
    assert "0 of 2" in v.summary
    v = run([ntp("a", 0), dead("b")], min_sources=2)
    assert v.status is Status.UNKNOWN


def test_unusable_and_unreachable_keep_their_reason():
    bad = Sample.failed("k", SourceKind.NTP, SourceState.UNUSABLE, "kiss-o'-death DENY", kiss_code="DENY")
    v = run([ntp("a", 0), ntp("b", 0), bad, dead("d")])
    verdicts = {x.sample.name: x for x in v.sources}
    assert verdicts["k"].state is SourceState.UNUSABLE and "DENY" in verdicts["k"].reason
    assert verdicts["d"].state is SourceState.UNREACHABLE
    assert v.status is Status.OK and v.usable == 2


def test_only_one_class_reports_no_cross_check():
    v = run([ntp("a", 0), ntp("b", 0)])
    assert v.ntp_http_agree is None
    assert "only NTP sources, no cross-check" in v.summary


def test_sample_contract():
    with pytest.raises(ValueError, match="outside its interval"):
        Sample("x", SourceKind.NTP, offset_s=1, offset_lo_s=-1, offset_hi_s=0)
    with pytest.raises(ValueError, match="needs offset"):
        Sample("x", SourceKind.NTP)


def test_select_touching_intervals_overlap():
    sel = select([(0, 1), (1, 2)])
    assert sel.depth == 2 and sel.lo_s == 1 and sel.hi_s == 1


def test_minority_can_shift_max_depth_but_not_the_bound():
    # Honest: two wide, one narrow around the truth 0. Two liars sit inside the wide ones at +0.7.
    # The point covered by the most intervals is the liars' region — indistinguishable from the mirror
    # case where the narrow one lies — but the reported interval still contains the truth.
    honest = [(-1, 1), (-1, 1), (-0.1, 0.1)]
    liars = [(0.5, 0.9), (0.5, 0.9)]
    sel = select(honest + liars)
    assert sel.best_lo_s == 0.5 and sel.best_hi_s == 0.9
    assert sel.lo_s <= 0 <= sel.hi_s


def test_fmt_offset():
    assert fmt_offset(0.000031) == "+0.000031 s"
    assert fmt_offset(-2.5) == "-2.500 s"
    assert fmt_offset(15552000) == "+15552000 s (+180.0 d)"


# --- property: any lying minority of ⌊(n−1)/2⌋ never moves the result outside the honest intersection ---

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
width = st.floats(min_value=0, max_value=100, allow_nan=False, allow_infinity=False)


@st.composite
def honest_and_liars(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    liars = draw(st.integers(min_value=0, max_value=(n - 1) // 2))
    truth = draw(finite)
    honest = []
    for _ in range(n - liars):
        below, above = draw(width), draw(width)
        honest.append((truth - below, truth + above))
    lying = []
    for _ in range(liars):
        a, b = draw(finite), draw(finite)
        lying.append((min(a, b), max(a, b)))
    order = draw(st.permutations(list(range(n))))
    everything = honest + lying
    return truth, honest, [everything[i] for i in order]


@given(honest_and_liars())
def test_lying_minority_never_moves_the_bound_off_the_honest_intersection(case):
    truth, honest, intervals = case
    sel = select(intervals)
    assert sel.has_majority  # honest sources alone are a strict majority
    honest_lo = max(lo for lo, _ in honest)
    honest_hi = min(hi for _, hi in honest)
    # the whole honest intersection (hence the truth) stays inside the reported interval ...
    assert sel.lo_s <= honest_lo <= honest_hi <= sel.hi_s
    assert sel.lo_s <= truth <= sel.hi_s
    # ... and the interval and estimate never leave what some honest source allows
    honest_min = min(lo for lo, _ in honest)
    honest_max = max(hi for _, hi in honest)
    assert honest_min <= sel.lo_s and sel.hi_s <= honest_max
    assert sel.lo_s <= sel.best_lo_s <= sel.best_hi_s <= sel.hi_s


@given(honest_and_liars())
def test_decide_flags_only_sources_that_cannot_be_honest(case):
    truth, _honest, intervals = case
    samples = [
        Sample(f"s{i}", SourceKind.NTP, offset_s=(lo + hi) / 2, offset_lo_s=lo, offset_hi_s=hi)
        for i, (lo, hi) in enumerate(intervals)
    ]
    v = decide(samples, warning_s=1e9, critical_s=2e9)
    assert v.status is Status.OK
    for verdict in v.sources:
        lo, hi = verdict.sample.offset_lo_s, verdict.sample.offset_hi_s
        if lo <= truth <= hi:  # every interval containing the truth is a truechimer
            assert verdict.state is SourceState.TRUECHIMER


@given(st.lists(st.tuples(finite, width), min_size=1, max_size=10), st.randoms())
def test_select_is_order_independent(raw, rnd):
    intervals = [(c - w, c + w) for c, w in raw]
    shuffled = intervals[:]
    rnd.shuffle(shuffled)
    assert select(intervals) == select(shuffled)


@given(st.lists(st.tuples(finite, width), min_size=2, max_size=10))
def test_no_majority_means_no_point_covered_by_a_strict_majority(raw):
    intervals = [(c - w, c + w) for c, w in raw]
    sel = select(intervals)
    assume(not sel.has_majority)
    for lo, _ in intervals:  # depth is maximal at some start point
        covered = sum(1 for a, b in intervals if a <= lo <= b)
        assert covered <= len(intervals) // 2


# --- a status is justified by every point of the interval it reports (issue 9, item 1) ---


def test_issue_case_wide_source_bridging_two_clusters_is_not_ok():
    # +0 s, +2.5 s, and +1.25 s with root dispersion 1.45 s (legal): the wide one overlaps both, so a strict
    # majority (2 of 3) covers two disjoint regions. The truth is in one of them; which, nobody can tell.
    v = run([ntp("zero", 0.0, 0.00003), ntp("plus", 2.5, 0.00004), ntp("wide", 1.25, 1.45 + 0.0001)])
    assert v.status is Status.WARNING, v.summary
    assert len(v.regions) == 2
    assert v.regions[0][0] <= 0 <= v.regions[0][1] and v.regions[1][0] <= 2.5 <= v.regions[1][1]
    assert (v.offset_lo_s, v.offset_hi_s) == (v.regions[0][0], v.regions[1][1])
    assert "or [+2.49996" in v.summary and "the majority is split into 2 regions" in v.summary
    assert "the true offset may be +2.500040 s, past the warning threshold 0.5 s" in v.summary
    assert set(states(v).values()) == {SourceState.TRUECHIMER}
    # the same with a critical threshold below 2.5 s: CRITICAL, not the estimate's OK
    assert run(v_samples := [ntp("z", 0.0), ntp("p", 2.5), ntp("w", 1.25, 1.45)], critical_s=2).status \
        is Status.CRITICAL
    assert run(v_samples, warning_s=3, critical_s=4).status is Status.OK


def test_issue_case_a_liar_with_an_absurd_interval_cannot_make_it_ok():
    # +0 s, +10 s and a −1000 s liar whose precision byte +60 claimed ±2^60 s: even if such a sample got
    # through (the NTP client rejects it, see test_ntp_packet.py), the verdict is not OK.
    v = run([ntp("a", 0.0), ntp("b", 10.0), ntp("liar", -1000.0, 2.0**60)])
    assert v.status is Status.CRITICAL
    assert v.regions == ((-0.001, 0.001), (9.999, 10.001))


def test_interval_reaching_past_the_threshold_is_not_ok_even_if_the_estimate_is():
    # Three agreeing sources, one narrow at 0: the estimate is 0, but two wide ones leave up to +0.7 s possible
    # at a strict majority (2 of 3) only where they overlap each other.
    v = run([ntp("a", 0.0, 0.001), ntp("b", 0.3, 0.4), ntp("c", 0.3, 0.4)])
    assert v.status is Status.WARNING
    assert v.offset_hi_s == pytest.approx(0.7)
    assert "may be +0.700000 s" in v.summary


def test_a_source_in_the_gap_of_a_split_majority_is_a_falseticker():
    # Two wide sources bridge two pairs; the gap source overlaps the hull of the majority but no region of it:
    # 4 of 7 cover 0 and 2, only 3 cover 1.
    v = run([ntp("l1", 0, 0.01), ntp("l2", 0, 0.01), ntp("r1", 2, 0.01), ntp("r2", 2, 0.01),
             ntp("bridge1", 1, 1.1), ntp("bridge2", 1, 1.1), ntp("gap", 1.0, 0.05)])
    assert v.regions == ((-0.01, 0.01), (1.99, 2.01))
    assert states(v)["gap"] is SourceState.FALSETICKER
    assert "misses the majority's [" in next(x.reason for x in v.sources if x.sample.name == "gap")
    assert " or [" in next(x.reason for x in v.sources if x.sample.name == "gap")


def test_class_agreement_needs_overlapping_regions_not_overlapping_hulls():
    # NTP majority split into [−0.01, 0.01] or [1.99, 2.01]; HTTPS says 1.0 ± 0.01: inside the NTP hull,
    # but where no NTP majority is. That is disagreement.
    samples = [ntp("l", 0, 0.01), ntp("r", 2, 0.01), ntp("w", 1, 1.1),
               http("h1", 1.0, 0.01), http("h2", 1.0, 0.01), http("h3", 1.0, 0.01)]
    v = run(samples)
    assert v.ntp_http_agree is False and v.status is Status.SOURCES_INCONSISTENT


def test_a_single_source_gives_a_verdict_that_says_it_cannot_be_outvoted():
    v = run([ntp("only", 0.01)], min_sources=2)  # the default min_sources, with one source configured
    assert v.status is Status.OK
    assert "a single source cannot be outvoted" in v.summary
    v = run([ntp("only", 0.01), dead("other")], min_sources=2)  # two configured, one answers: not enough
    assert v.status is Status.UNKNOWN and "only 1 of 2 sources usable, 2 needed" in v.summary


interval_st = st.tuples(
    st.floats(min_value=-20, max_value=20, allow_nan=False), st.floats(min_value=0, max_value=10, allow_nan=False)
)
threshold_st = st.one_of(
    st.floats(min_value=0, max_value=20, allow_nan=False).map(Range.upper),
    st.sampled_from(["~:0.5", "@0:0.5", "-1:1", "10", "10:", "1:3", "@2:4", "~:7", "0.25:", "@-1:1"]).map(
        Range.parse),
)


def _point_status(x: float, warning: Range, critical: Range) -> Status:
    if critical.alerts(abs(x)):
        return Status.CRITICAL
    return Status.WARNING if warning.alerts(abs(x)) else Status.OK


_RANK = {Status.OK: 0, Status.WARNING: 1, Status.CRITICAL: 2}


sample_st = st.one_of(
    st.tuples(interval_st, st.sampled_from(list(SourceKind))),
    st.sampled_from(list(SourceKind)),  # a source that did not answer
)


def build(raw) -> list[Sample]:
    """Samples from ``sample_st`` draws: an interval and a kind, or only a kind (a source that did not answer)."""
    return [ntp(f"s{i}", item[0][0], item[0][1], item[1]) if isinstance(item, tuple) else dead(f"s{i}", item)
            for i, item in enumerate(raw)]


@given(st.lists(sample_st, min_size=1, max_size=9), threshold_st, threshold_st, st.integers(1, 4), st.data())
def test_status_is_never_better_than_any_point_of_the_reported_interval(raw, warning, critical, min_sources, data):
    samples = build(raw)
    v = run(samples, warning_s=warning, critical_s=critical, min_sources=min_sources)
    if v.status not in _RANK:
        assert v.offset_s is None and v.regions == ()
        return
    # every point of every region, its ends included, is at most as good as the verdict ...
    for lo, hi in v.regions:
        points = [lo, hi, *(data.draw(st.floats(min_value=lo, max_value=hi), label="x") for _ in range(5))]
        edges = [e for r in (warning, critical) for e in (r.start, -r.start, r.end, -r.end)]
        points += [e for e in edges if lo <= e <= hi] + ([0.0] if lo <= 0 <= hi else [])
        for x in points:
            assert _RANK[_point_status(x, warning, critical)] <= _RANK[v.status], (x, v.summary)
    # ... and the verdict is no worse than some point makes it (it is the worst point, not a guess)
    witnesses = [x for lo, hi in v.regions
                 for x in [lo, hi, 0.0, *(e for r in (warning, critical) for e in (r.start, -r.start, r.end, -r.end))]
                 if lo <= x <= hi]
    assert max(_RANK[_point_status(x, warning, critical)] for x in witnesses) == _RANK[v.status]


@given(st.lists(interval_st, min_size=1, max_size=9), st.data())
def test_regions_are_exactly_the_points_a_strict_majority_covers(raw, data):
    intervals = [(c - w, c + w) for c, w in raw]
    sel = select(intervals)
    quorum = len(intervals) // 2 + 1

    def covered(x: float) -> int:
        return sum(1 for a, b in intervals if a <= x <= b)

    assert list(sel.regions) == sorted(sel.regions)
    for (_, a_hi), (b_lo, _) in zip(sel.regions, sel.regions[1:], strict=False):
        assert a_hi < b_lo  # disjoint, with a gap
    for lo, hi in sel.regions:
        for x in (lo, hi, (lo + hi) / 2, data.draw(st.floats(min_value=lo, max_value=hi))):
            assert covered(x) >= quorum
    # any interval end covered by a majority lies in a region (the depth is piecewise constant between ends)
    for x in (e for iv in intervals for e in iv):
        if covered(x) >= quorum:
            assert any(lo <= x <= hi for lo, hi in sel.regions), x
    assert sel.has_majority == bool(sel.regions)


def _pairwise(judged) -> bool | None:
    if len(judged) < 2:
        return None
    return all(any(x_lo <= y_hi and y_lo <= x_hi for x_lo, x_hi in a.regions for y_lo, y_hi in b.regions)
               for i, a in enumerate(judged) for b in judged[i + 1:])


@given(st.lists(sample_st, min_size=1, max_size=9), st.integers(1, 4))
def test_every_trust_class_is_judged_alone_and_against_every_other(raw, min_sources):
    """Each class's agreement is the selection over its own sources (each kind declares its class). Authenticated
    classes that miss each other are SOURCES_INCONSISTENT; when the authenticated sources decide (NTS has a majority
    of its own, and so have the authenticated together) an NTP class that misses them is outvoted, never a
    disagreement; otherwise every two classes with a majority must overlap, as before trust classes."""
    samples = build(raw)
    v = run(samples, min_sources=min_sources)
    assert list(v.classes) == list(TrustClass)
    for trust_class, agreement in v.classes.items():
        own = select([(s.offset_lo_s, s.offset_hi_s) for s in samples
                      if s.usable and s.kind.trust_class is trust_class])
        assert agreement.trust_class is trust_class
        assert (agreement.usable, agreement.agreeing, agreement.regions) == (own.usable, own.depth, own.regions)
        assert (agreement.offset_lo_s, agreement.offset_hi_s) == (own.lo_s, own.hi_s)
    judged = [c for c in v.classes.values() if c.has_majority]
    auth_agree = _pairwise([c for c in judged if c.trust_class.authenticated])
    authenticated = select([(s.offset_lo_s, s.offset_hi_s) for s in samples
                            if s.usable and s.kind.trust_class.authenticated])
    decides = auth_agree is not False and v.classes[TrustClass.NTS].has_majority and authenticated.has_majority
    assert v.authenticated_decide is decides
    if auth_agree is False:
        expected = False
    elif decides:  # the outvoted NTP class does not count; the others agree
        counted = [c for c in judged if c.trust_class.authenticated or _pairwise([c, ClassAgreement(
            TrustClass.NTS, 0, 0, authenticated.lo_s, authenticated.hi_s, authenticated.regions)])]
        expected = True if len(counted) >= 2 else None
    else:
        expected = _pairwise(judged)
    assert v.classes_agree is expected and v.ntp_http_agree is expected
    if expected is False:
        assert v.status in (Status.SOURCES_INCONSISTENT, Status.UNKNOWN)
        if v.status is Status.SOURCES_INCONSISTENT:
            first = "HTTPS" if auth_agree is False else "NTP"
            assert v.summary.startswith(f"{first} sources (") and " but " in v.summary
    else:
        assert v.status is not Status.SOURCES_INCONSISTENT
    if v.status.offset_found and v.status is not Status.SOURCES_INCONSISTENT:
        labels = [c.label for c in v.agreeing_classes]
        assert (f"{', '.join(labels[:-1])} and {labels[-1]} agree" in v.summary) is (len(labels) >= 2)
        assert (len(labels) >= 2) is (expected is True)


def test_classes_agree_pairwise_not_by_a_chain():
    """Three classes where the outer two miss each other do not agree, though each overlaps the middle one."""
    def agreement(lo: float, hi: float) -> ClassAgreement:
        return ClassAgreement(TrustClass.NTP, 1, 1, lo, hi, ((lo, hi),))

    chain = [agreement(0, 1), agreement(0.9, 2), agreement(1.9, 3)]
    agree, pair = _classes_agree(chain)
    assert agree is False and pair == (chain[0], chain[2])
    assert _classes_agree([agreement(0, 1), agreement(0.5, 2), agreement(0.9, 3)]) == (True, None)
    assert _classes_agree([agreement(0, 1), ClassAgreement(TrustClass.HTTP, 2, 1, None, None)]) == (None, None)


def test_a_source_kind_declares_its_trust_class():
    assert {kind: kind.trust_class for kind in SourceKind} == {SourceKind.NTP: TrustClass.NTP,
                                                               SourceKind.HTTP: TrustClass.HTTP,
                                                               SourceKind.NTS: TrustClass.NTS}
    assert [c.label for c in TrustClass] == ["NTP", "HTTPS", "NTS"]
    assert [c.authenticated for c in TrustClass] == [False, True, True]


@given(st.lists(sample_st, min_size=1, max_size=6))
def test_the_verdict_dicts_have_one_shape_for_every_reader(raw):
    """Events, hooks and the evidence rule read verdict_summary; the journal's CheckRecord, the metrics and
    check --json start from verdict_record: same keys, same values as the verdict's."""
    samples = build(raw)
    v = run(samples)
    summary = verdict_summary(v)
    outcome = {"status": v.status.value, "offset_s": v.offset_s, "offset_lo_s": v.offset_lo_s,
               "offset_hi_s": v.offset_hi_s, "ntp_http_agree": v.ntp_http_agree, "summary": v.summary}
    assert summary == {**outcome, "agreeing_classes": [c.value for c in v.agreeing_classes],
                       "witnesses": list(v.witnesses)}
    record = verdict_record(v)
    own = {f.name for f in dataclasses.fields(CheckRecord)} - {"wall_s", "monotonic_s", "boot_id"}
    assert set(record) == own and outcome.items() <= record.items()
    assert (record["usable"], record["agreeing"]) == (v.usable, v.agreeing)
    assert record["sources"] == [
        {"name": sv.sample.name, "kind": sv.sample.kind.value, "state": sv.state.value,
         "offset_s": sv.sample.offset_s, "reason": sv.reason,
         "authenticated": sv.sample.kind is not SourceKind.NTP, "operator": sv.sample.operator} for sv in v.sources]
    CheckRecord(wall_s=0.0, monotonic_s=0.0, boot_id="b", **record)  # the journal takes it as it is


def test_the_default_operator_of_a_host_is_its_last_two_labels_or_its_address():
    from timeguard.model import operator_of

    assert operator_of("time.cloudflare.com") == "cloudflare.com"
    assert operator_of("NTS.Netnod.se.") == "netnod.se"
    assert operator_of("ptbtime1.ptb.de") == operator_of("ptbtime2.ptb.de") == "ptb.de"
    assert operator_of("127.0.0.1") == "127.0.0.1" and operator_of("[::1]") == "::1"
    assert operator_of("localhost") == "localhost"


# --- trust classes: authenticated sources decide (chrony's authselectmode mix) ---


def test_spoofed_ntp_majority_beside_nts_and_https_is_outvoted():
    """Issue 13: three plain-NTP sources forged to +5 s against two NTS operators and an HTTPS server that agree
    on the truth: the authenticated sources decide, the NTP ones are falsetickers, and the verdict is OK."""
    spoofed = [ntp(f"ntp{i}", 5.0) for i in range(3)]
    honest = [nts("nts-a", 0.0002, operator="a.example"), nts("nts-b", -0.0001, operator="b.example"),
              http("https", 0.0, 0.5)]
    v = run(spoofed + honest)
    assert v.status is Status.OK and v.authenticated_decide
    assert v.offset_s is not None and abs(v.offset_s) < 0.002
    assert v.classes_agree is True and v.agreeing_classes == (TrustClass.HTTP, TrustClass.NTS)
    assert v.witnesses == ("http", "nts:a.example", "nts:b.example")
    for sv in v.sources[:3]:
        assert sv.state is SourceState.FALSETICKER
        assert sv.reason.startswith("outvoted by authenticated sources: its interval [+4.999000 s, +5.001000 s]")
    assert [state for name, state in states(v).items() if not name.startswith("ntp")] == [SourceState.TRUECHIMER] * 3
    assert ("3 of 6 usable sources agree; HTTPS and NTS agree; the authenticated sources decide (3 of 3 NTP sources "
            "outvoted)") in v.summary
    assert (v.offset_lo_s, v.offset_hi_s) == (pytest.approx(-0.0011), pytest.approx(0.0012))  # the NTS pair's


def test_authenticated_classes_that_disagree_are_inconsistent_whatever_ntp_says():
    v = run([ntp("n1", 0.0), ntp("n2", 0.0), ntp("n3", 0.0), nts("nts", 0.0, operator="a.example"),
             http("https", 3.0, 0.5)])
    assert v.status is Status.SOURCES_INCONSISTENT and v.classes_agree is False and not v.authenticated_decide
    assert v.summary.startswith("HTTPS sources (1 of 1) say offset [+2.500 s, +3.500 s] but NTS sources (1 of 1)")
    assert v.agreeing_classes == () and v.witnesses == ()


def test_https_alone_does_not_overrule_an_ntp_majority():
    """Without NTS the rule is the old one: HTTPS Date (one-second resolution) against an NTP majority is
    SOURCES_INCONSISTENT, not a decision for either (research/time_anchors.md §8, T7)."""
    v = run([ntp("n1", 5.0), ntp("n2", 5.0), ntp("n3", 5.0), http("h1", 0.0, 0.5), http("h2", 0.0, 0.5)])
    assert v.status is Status.SOURCES_INCONSISTENT and not v.authenticated_decide
    assert v.summary.startswith("NTP sources (3 of 3)")


def test_nts_alone_decides_against_ntp_but_is_one_witness():
    v = run([ntp("n1", 5.0), ntp("n2", 5.0), nts("t1", 0.0, operator="ptb.de"), nts("t2", 0.0, operator="ptb.de")])
    assert v.status is Status.OK and v.authenticated_decide and v.classes_agree is None
    assert v.agreeing_classes == (TrustClass.NTS,) and v.witnesses == ("nts:ptb.de",)
    assert "only NTS sources confirm it; the authenticated sources decide (2 of 2 NTP sources outvoted)" in v.summary


def test_ntp_that_agrees_with_nts_counts_and_sharpens_the_estimate_inside_the_bound():
    v = run([ntp("n1", 0.0004, 0.0001), ntp("n2", 0.0004, 0.0001), nts("t", 0.0, 0.001, operator="x.org")])
    assert v.status is Status.OK and v.authenticated_decide and v.classes_agree is True
    assert (v.offset_lo_s, v.offset_hi_s) == (-0.001, 0.001)  # the authenticated bound, not narrowed by NTP
    assert v.offset_s == pytest.approx(0.0004)  # where the admitted sources meet
    assert v.agreeing_classes == (TrustClass.NTP, TrustClass.NTS) and v.witnesses == ("ntp", "nts:x.org")
    assert "NTP and NTS agree; the authenticated sources decide" in v.summary and "outvoted" not in v.summary


def test_an_nts_source_without_an_operator_is_its_own_name_operator():
    v = run([nts("time.cloudflare.com", 0.0), nts("nts.netnod.se", 0.0), http("h", 0.0, 0.5)])
    assert v.witnesses == ("http", "nts:cloudflare.com", "nts:netnod.se")


auth_sample_st = st.tuples(interval_st, st.sampled_from([SourceKind.NTS, SourceKind.HTTP]))
plain_st = st.lists(interval_st, max_size=7)


@given(st.lists(auth_sample_st, min_size=1, max_size=6), plain_st, plain_st, threshold_st, threshold_st)
def test_unauthenticated_sources_never_move_the_verdict_outside_the_authenticated_majority(
        auth_raw, plain_a, plain_b, warning, critical):
    """When the authenticated sources decide, any plain-NTP sources — honest, forged, wide or narrow — leave the
    verdict's status and interval what the authenticated majority makes them, and the estimate inside it."""
    authenticated = build(auth_raw)
    regions = select([(s.offset_lo_s, s.offset_hi_s) for s in authenticated]).regions
    results = []
    for plain in (plain_a, plain_b, []):
        v = run(authenticated + [ntp(f"p{i}", x, w) for i, (x, w) in enumerate(plain)],
                warning_s=warning, critical_s=critical)
        results.append(v)
        if not v.authenticated_decide:
            return
        assert v.regions == regions and v.status is not Status.SOURCES_INCONSISTENT
        assert v.offset_s is not None and any(lo <= v.offset_s <= hi for lo, hi in regions)
        for sv in v.sources:
            touches = any(sv.sample.offset_lo_s <= hi and lo <= sv.sample.offset_hi_s for lo, hi in regions)
            assert (sv.state is SourceState.TRUECHIMER) is touches
    assert len({(v.status, v.regions, v.offset_lo_s, v.offset_hi_s) for v in results}) == 1

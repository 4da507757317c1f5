"""The repair's evidence rule with trust classes (issue 13): two independent witnesses, one of them authenticated.

A witness is a class of sources whose majority agrees with the verdict (plain NTP, HTTPS), except NTS, where each
operator is one. The rule reads the verdict summary, so these tests form verdicts with the real consensus."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.measure.consensus import decide
from timeguard.model import Sample, SourceKind, SourceState, Status, verdict_summary
from timeguard.repair.evidence import evidence_problem, witness_problem
from timeguard.repair.guard import host_ahead_s

GOOD = {"status": "OK", "offset_s": 0.0, "offset_lo_s": -0.001, "offset_hi_s": 0.001, "ntp_http_agree": True,
        "summary": "ok"}


def sample(name: str, kind: SourceKind, offset: float, err: float, operator: str | None = None) -> Sample:
    return Sample(name, kind, offset_s=offset, offset_lo_s=offset - err, offset_hi_s=offset + err, operator=operator)


def spoofed_ntp(offset: float = 5.0, n: int = 3) -> list[Sample]:
    return [sample(f"ntp{i}", SourceKind.NTP, offset, 0.001) for i in range(n)]


def summary_of(samples: list[Sample]) -> dict[str, object]:
    return verdict_summary(decide(samples, warning_s=0.5, critical_s=5.0))


@pytest.mark.parametrize("witnesses", [["ntp", "http"], ["http", "nts:netnod.se"],
                                       ["nts:cloudflare.com", "nts:netnod.se"], ["ntp", "nts:ptb.de"]])
def test_two_independent_witnesses_one_authenticated_repair(witnesses):
    assert evidence_problem({**GOOD, "witnesses": witnesses}) is None


@pytest.mark.parametrize(("witnesses", "reason"), [
    (["ntp"], "no repair: only plain NTP vouches for this time: anyone on the path can forge it"),
    (["nts:ptb.de"], "no repair: only NTS of ptb.de vouches for this time: a second independent source must agree"),
    (["nts:ptb.de", "nts:ptb.de"], "no repair: only NTS of ptb.de vouches"),  # two names of one operator: one witness
    (["http"], "no repair: only HTTPS vouches for this time"),
    ([], "no repair: no class of sources with a majority of its own vouches for this time"),
    ("ntp", "no repair: the verdict's witnesses ('ntp') are not a list of names"),
])
def test_what_is_missing_is_said(witnesses, reason):
    problem = evidence_problem({**GOOD, "witnesses": witnesses})
    assert problem is not None and problem.startswith(reason), problem


def test_a_summary_without_witnesses_is_judged_by_the_rule_it_was_made_under():
    assert witness_problem(GOOD) is None
    assert "did not both answer" in (witness_problem({**GOOD, "ntp_http_agree": None}) or "")
    assert evidence_problem({**GOOD, "ntp_http_agree": False}) == "no repair: NTP and HTTPS do not agree (ok)"
    assert evidence_problem({**GOOD, "ntp_http_agree": False, "witnesses": []}).startswith(
        "no repair: the classes of sources do not agree (ok)")


def test_a_spoofed_ntp_majority_beside_nts_and_https_is_outvoted_and_the_repair_allowed():
    """Issue 13's case, through the real consensus: the authenticated sources decide and vouch for the clock."""
    honest = [sample("nts-a", SourceKind.NTS, 0.0001, 0.001, "cloudflare.com"),
              sample("https", SourceKind.HTTP, 0.0, 0.4, "example.org")]
    verdict = summary_of(spoofed_ntp() + honest)
    assert verdict["status"] == "OK" and verdict["witnesses"] == ["http", "nts:cloudflare.com"]
    assert evidence_problem(verdict) is None
    # the same forgery with HTTPS as the only authenticated class: inconsistent, no repair (the rule before NTS)
    without_nts = summary_of(spoofed_ntp() + honest[1:])
    assert without_nts["status"] == "SOURCES_INCONSISTENT"
    assert "do not agree" in (evidence_problem(without_nts) or "")


def test_nts_names_of_one_operator_are_one_witness_and_plain_ntp_alone_never_repairs():
    one_operator = [sample(f"ptbtime{i}.ptb.de", SourceKind.NTS, 0.0, 0.001) for i in (1, 2, 3)]
    verdict = summary_of(spoofed_ntp() + one_operator)
    assert verdict["status"] == "OK" and verdict["witnesses"] == ["nts:ptb.de"]
    assert (evidence_problem(verdict) or "").startswith("no repair: only NTS of ptb.de vouches for this time")
    two_operators = [*one_operator[:1], sample("nts.netnod.se", SourceKind.NTS, 0.0, 0.001)]
    assert evidence_problem(summary_of(spoofed_ntp() + two_operators)) is None
    ntp_only = summary_of(spoofed_ntp(0.0))
    assert ntp_only["status"] == "OK" and ntp_only["witnesses"] == ["ntp"]
    assert (evidence_problem(ntp_only) or "").startswith("no repair: only plain NTP vouches for this time")


def test_the_guard_stops_on_authenticated_evidence_only():
    ahead = [sample(f"t{i}", SourceKind.NTS, -3600.0, 0.001, f"op{i}.org") for i in (1, 2)]
    assert host_ahead_s(summary_of(ahead), 1.0) == pytest.approx(3600.0 - 0.001)
    assert host_ahead_s(summary_of(spoofed_ntp(-3600.0)), 1.0) is None  # only plain NTP says the host is ahead
    assert host_ahead_s(summary_of(spoofed_ntp(-3600.0) + ahead[:1]), 1.0) is not None  # NTS and NTP agree


kinds = st.sampled_from(list(SourceKind))
operators = st.sampled_from(["a.org", "b.org", "c.org"])
samples_st = st.lists(st.tuples(kinds, st.floats(-10, 10), st.floats(0, 2), operators), min_size=1, max_size=8)


@given(samples_st)
def test_a_repair_is_never_allowed_without_an_authenticated_truechimer_and_a_second_witness(raw):
    samples = [dataclasses.replace(sample(f"s{i}", kind, x, w), operator=op) for i, (kind, x, w, op) in enumerate(raw)]
    v = decide(samples, warning_s=0.5, critical_s=5.0)
    if evidence_problem(verdict_summary(v), max_offset_s=1e9) is not None:
        return
    assert v.status in (Status.OK, Status.WARNING, Status.CRITICAL)
    true = [sv.sample for sv in v.sources if sv.state is SourceState.TRUECHIMER]
    authenticated = {(s.kind, s.operator if s.kind is SourceKind.NTS else None) for s in true
                     if s.kind.trust_class.authenticated}
    assert authenticated, "no authenticated source vouches"
    plain = any(s.kind is SourceKind.NTP for s in true)
    assert len(authenticated) + plain >= 2, (authenticated, plain)

"""The issue's scenarios with real programs, end to end through ``run_check``: NTS next to a spoofed plain-NTP
majority and next to HTTPS, judged by the trust-class consensus and the repair's evidence rule.

The spoofed NTP servers are chronyd under one libfaketime clock at +5 s (a plain NTP majority anyone on the path
could produce); the NTS servers are real chronyd NTS servers (honest, or under libfaketime at +5 s); HTTPS is the
in-test Date server with a test CA. The truth is 0: every honest server reads this machine's clock.
"""

from __future__ import annotations

import json

import pytest

from tests.support.fake_http import running
from timeguard import config
from timeguard.measure.check import run_check
from timeguard.model import SourceKind, SourceState, Status, verdict_summary
from timeguard.repair.evidence import evidence_problem

pytestmark = pytest.mark.real


def nts_entry(server, ca_bundle, operator: str) -> dict:
    return {"host": "localhost", "ke_port": server.nts_port, "ca_bundle": str(ca_bundle), "operator": operator}


def check(sources: dict, min_sources: int = 2):
    cfg = config.loads(json.dumps({"sources": {"ntp": [], "http": [], "nts": [], **sources}, "timeout_s": 4,
                                   "http": {"requests": 4}, "consensus": {"min_sources": min_sources}}))
    return run_check(cfg, with_local=False).verdict


def test_a_spoofed_plain_ntp_majority_beside_honest_nts_and_https_is_outvoted_and_the_repair_allowed(
        chrony_server, test_ca, fake_clock):
    fake_clock.set(5.0)
    liars = [chrony_server(clock=fake_clock) for _ in range(3)]
    nts = chrony_server(nts=test_ca)
    with running(tls=True) as https:
        verdict = check({
            "ntp": [{"host": "127.0.0.1", "port": s.port} for s in liars],
            "nts": [nts_entry(nts, test_ca.ca_bundle, "lab-a")],
            "http": [{"url": https.url, "ca_bundle": https.ca_bundle}],
        })
    assert verdict.status is Status.OK, verdict.summary
    assert abs(verdict.offset_s) < 0.05
    states = {sv.sample.kind: set() for sv in verdict.sources}
    for sv in verdict.sources:
        states[sv.sample.kind].add(sv.state)
    assert states[SourceKind.NTP] == {SourceState.FALSETICKER}
    assert states[SourceKind.NTS] == {SourceState.TRUECHIMER}
    assert evidence_problem(verdict_summary(verdict)) is None  # NTS + HTTPS: two witnesses, authenticated


def test_an_nts_server_lying_by_five_seconds_is_a_falseticker_beside_two_honest_operators(
        chrony_server, test_ca, fake_clock):
    fake_clock.set(5.0)
    liar = chrony_server(clock=fake_clock, nts=test_ca)
    honest = [chrony_server(nts=test_ca) for _ in range(2)]
    verdict = check({"nts": [nts_entry(liar, test_ca.ca_bundle, "liar"),
                             *(nts_entry(s, test_ca.ca_bundle, f"lab-{i}") for i, s in enumerate(honest))]})
    assert verdict.status is Status.OK, verdict.summary
    by_operator = {sv.sample.operator: sv for sv in verdict.sources}
    assert by_operator["liar"].state is SourceState.FALSETICKER
    assert by_operator["liar"].sample.offset_s == pytest.approx(5.0, abs=0.05)
    assert {by_operator[f"lab-{i}"].state for i in range(2)} == {SourceState.TRUECHIMER}
    assert evidence_problem(verdict_summary(verdict)) is None  # NTS of two operators

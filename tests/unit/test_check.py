from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from timeguard import config, report
from timeguard.check import Probe, measure_all, run_check
from timeguard.model import Sample, SourceKind, SourceState, Status

CFG = dataclasses.replace(config.load(None), timeout_s=0.5)


def good(name: str, offset: float, kind: SourceKind = SourceKind.NTP, err: float = 0.001) -> Probe:
    def measure(timeout_s: float) -> Sample:
        return Sample(name, kind, address="127.0.0.1:123", offset_s=offset, offset_lo_s=offset - err,
                      offset_hi_s=offset + err, delay_s=0.0002, stratum=2, requests=4, reason="best of 4 replies")

    return Probe(name, kind, measure)


def stuck(name: str, release: threading.Event) -> Probe:
    def measure(timeout_s: float) -> Sample:
        release.wait()  # like getaddrinfo that never returns: ignores timeout_s
        raise AssertionError("never reached in the test")

    return Probe(name, SourceKind.HTTP, measure)


def crashing(name: str) -> Probe:
    def measure(timeout_s: float) -> Sample:
        raise ZeroDivisionError("bug in a source")

    return Probe(name, SourceKind.NTP, measure)


def test_stuck_sources_are_abandoned_at_the_deadline():
    release = threading.Event()
    try:
        started = time.monotonic()
        samples = measure_all([good("a", 0), stuck("dns-stall-1", release), stuck("dns-stall-2", release)], 0.5)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert 0.5 <= elapsed < 0.5 + 0.2
    assert samples[0].usable
    assert samples[1].failure is SourceState.UNREACHABLE
    assert samples[1].reason == "no answer within 0.5 s (abandoned)"


def test_sources_are_told_to_finish_before_the_deadline():
    seen = []

    def measure(timeout_s: float) -> Sample:
        seen.append(timeout_s)
        return Sample.failed("x", SourceKind.NTP, SourceState.UNREACHABLE, "r")

    measure_all([Probe("x", SourceKind.NTP, measure)], 2.0)
    assert seen == [pytest.approx(1.95)]


def test_a_crashing_source_is_reported_and_the_others_still_count():
    result = run_check(CFG, probe_list=[good("a", 0.01), good("b", 0.01), crashing("c")], with_local=False)
    assert result.verdict.status is Status.OK
    bad = result.verdict.sources[2]
    assert bad.state is SourceState.UNREACHABLE
    assert bad.reason == "internal error: ZeroDivisionError: bug in a source"


def test_threshold_overrides():
    probes = [good("a", 0.7), good("b", 0.7)]
    assert run_check(CFG, probe_list=probes, with_local=False).verdict.status is Status.WARNING
    assert run_check(CFG, probe_list=probes, with_local=False, warning_s=1, critical_s=2).verdict.status is Status.OK
    assert run_check(CFG, probe_list=probes, with_local=False, warning_s=0.1, critical_s=0.5).verdict.status \
        is Status.CRITICAL


def test_reports_read_like_chronyc_json_and_nagios():
    probes = [good("a", 0.01), good("b", 0.0101), good("liar", 5.0), good("h", 0.012, SourceKind.HTTP, 0.01)]
    result = run_check(CFG, probe_list=probes)
    text = report.human(result)
    assert text.splitlines()[0].split() == ["KIND", "SOURCE", "OFFSET", "BOUND", "DELAY", "ST", "STATE", "WHY"]
    liar_line = next(line for line in text.splitlines() if " liar " in line)
    assert liar_line.startswith("x") and "falseticker" in liar_line and "misses the majority" in liar_line
    assert "Verdict: OK: host clock behind by" in text
    assert "Trusted time: " in text and "Local kernel: " in text

    data = json.loads(report.as_json(result))
    assert data["status"] == "OK" and data["exit_code"] == 0
    assert data["offset_lo_s"] <= data["offset_s"] <= data["offset_hi_s"]
    assert data["ntp_http_agree"] is True
    assert {s["name"]: s["state"] for s in data["sources"]} == {
        "a": "truechimer", "b": "truechimer", "liar": "falseticker", "h": "truechimer"}
    assert set(data["sources"][0]) >= {"name", "kind", "offset_s", "delay_s", "state", "reason"}
    assert data["local"]["kernel"]["state"].startswith("TIME_")

    line = report.nagios(result)
    assert line.startswith("TIMEGUARD OK - OK: host clock behind")
    perf = line.split(" | ")[1].split()
    assert perf[0].startswith("offset=0.010") and perf[0].endswith("s;0.5;5;0")
    assert perf[2] == "sources_agreeing=3;;;0;4"


def test_nagios_unknown_offset_is_U_and_no_majority_is_unknown():
    result = run_check(CFG, probe_list=[good("a", 0), good("b", 5)], with_local=False)
    assert result.verdict.status is Status.NO_MAJORITY
    line = report.nagios(result)
    assert line.startswith("TIMEGUARD UNKNOWN - NO_MAJORITY: ")
    assert "offset=U;0.5;5;0" in line


def test_offline_check_says_so():
    def dead(name: str) -> Probe:
        return Probe(name, SourceKind.NTP, lambda t: Sample.failed(
            name, SourceKind.NTP, SourceState.UNREACHABLE, "DNS: Name or service not known"))

    result = run_check(CFG, probe_list=[dead("a"), dead("b")], with_local=False)
    assert result.verdict.status is Status.UNKNOWN and result.verdict.status.exit_code == 2  # no offset: CRITICAL
    text = report.human(result)
    assert "No source answered: is this host offline" in text
    assert "DNS: Name or service not known" in text

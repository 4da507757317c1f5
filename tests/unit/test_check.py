from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from timeguard import config
from timeguard.cli import report
from timeguard.measure import check
from timeguard.measure.check import Probe, measure_all, parse_host, run_check
from timeguard.model import Authentication, Sample, SourceKind, SourceState, Status
from timeguard.ranges import Range

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
    assert text.splitlines()[0].split() == ["KIND", "AUTH", "SOURCE", "OFFSET", "BOUND", "DELAY", "ST", "STATE",
                                            "WHY"]
    liar_line = next(line for line in text.splitlines() if " liar " in line)
    assert liar_line.startswith("x") and "falseticker" in liar_line and "misses the majority" in liar_line
    assert liar_line.split()[1:3] == ["ntp", "-"]  # plain NTP: no authentication
    assert "Verdict: OK: host clock behind by" in text
    assert "Trusted time: " in text and "Local kernel: " in text

    data = json.loads(report.as_json(result))
    assert data["status"] == "OK" and data["exit_code"] == 0
    assert data["offset_lo_s"] <= data["offset_s"] <= data["offset_hi_s"]
    assert data["ntp_http_agree"] is True
    assert {s["name"]: s["state"] for s in data["sources"]} == {
        "a": "truechimer", "b": "truechimer", "liar": "falseticker", "h": "truechimer"}
    assert set(data["sources"][0]) >= {"name", "kind", "offset_s", "delay_s", "state", "reason"}
    assert set(data["sources"][0]) == {"name", "kind", "address", "offset_s", "offset_lo_s", "offset_hi_s", "delay_s",
                                       "stratum", "leap", "requests", "state", "reason", "kiss_code", "auth",
                                       "authenticated", "operator"}
    assert (data["sources"][0]["auth"], data["sources"][0]["authenticated"]) == (None, False)
    assert data["agreeing_classes"] == ["ntp", "http"] and data["witnesses"] == ["ntp", "http"]
    assert data["authenticated_decide"] is False
    # one entry per trust class, whether or not it has sources; the HTTPS one here is the single "h"
    assert set(data["classes"]) == {"ntp", "http", "nts"}
    assert data["classes"]["http"] == {"usable": 1, "agreeing": 1, "offset_lo_s": pytest.approx(0.002),
                                       "offset_hi_s": pytest.approx(0.022), "authenticated": True}
    assert data["classes"]["ntp"]["authenticated"] is False and data["classes"]["nts"]["authenticated"] is True
    assert data["classes"]["ntp"]["usable"] == 3 and data["classes"]["ntp"]["agreeing"] == 2
    assert data["local"]["kernel"]["state"].startswith("TIME_")

    line = report.nagios(result)
    assert line.startswith("TIMEGUARD OK - host clock behind")  # one status word, as check_ntp_time
    perf = line.split(" | ")[1].split()
    assert perf[0].startswith("offset=0.010") and perf[0].endswith("s;0.5;5")
    assert perf[2] == "sources_agreeing=3;;;0;4"


def test_nagios_unknown_offset_is_U_and_no_majority_is_critical_or_unknown_with_quiet():
    result = run_check(CFG, probe_list=[good("a", 0), good("b", 5)], with_local=False)
    assert result.verdict.status is Status.NO_MAJORITY
    line = report.nagios(result)
    assert line.startswith("TIMEGUARD CRITICAL - no majority: at most 1 of 2") and result.exit_code == 2
    assert "offset=U;0.5;5 " in line
    quiet = run_check(CFG, probe_list=[good("a", 0), good("b", 5)], with_local=False, quiet=True)
    assert report.nagios(quiet).startswith("TIMEGUARD UNKNOWN - no majority: ") and quiet.exit_code == 3
    assert json.loads(report.as_json(quiet))["exit_code"] == 3


@pytest.mark.parametrize("offset", [-0.799992, 0.799992, -6.25, 6.25, -0.000031, 0.0])
def test_nagios_line_keeps_the_offset_sign_and_names_its_state_once(offset: float):
    result = run_check(CFG, probe_list=[good("a", offset), good("b", offset)], with_local=False)
    line = report.nagios(result)
    state = ("OK", "WARNING", "CRITICAL", "UNKNOWN")[result.exit_code]
    head, perf = line.rstrip("\n").split(" | ")
    assert head.startswith(f"TIMEGUARD {state} - host clock ")
    assert all(word not in head[len(f"TIMEGUARD {state} - "):] for word in ("OK:", "WARNING:", "CRITICAL:"))
    assert perf.split()[0] == f"offset={offset:.6f}s;0.5;5"


def test_status_words_never_doubled_for_any_status():
    cases = {
        Status.SOURCES_INCONSISTENT: [good("a", 5), good("b", 5), good("h1", 0, SourceKind.HTTP),
                                      good("h2", 0, SourceKind.HTTP)],
        Status.UNKNOWN: [Probe("x", SourceKind.NTP, lambda t: Sample.failed("x", SourceKind.NTP,
                                                                           SourceState.UNREACHABLE, "timeout")),
                         good("y", 0)],
    }
    for status, probes in cases.items():
        result = run_check(CFG, probe_list=probes, with_local=False)
        assert result.verdict.status is status
        head = report.nagios(result).split(" | ")[0]
        assert head.count("CRITICAL") == 1 and status.value + ":" not in head, head
    assert "sources inconsistent: NTP sources" in report.nagios(run_check(
        CFG, probe_list=cases[Status.SOURCES_INCONSISTENT], with_local=False))


@pytest.mark.parametrize(("warning", "critical", "offset", "state"), [
    ("~:0.5", "@0:0.5", 2.5, 1),  # as check_ntp_time: |2.5| > 0.5 warns; not inside 0..0.5, so not critical
    ("-1:1", "10:", 2.5, 2),  # |2.5| < 10 is critical
    ("-1:1", "10:", -0.8, 2),
    ("-1:1", "~:5", -0.8, 0),
    ("0.5", "5", -0.8, 1),  # the magnitude is judged, not the signed value
    ("@0.7:0.9", "6", 0.8, 1),
])
def test_nagios_ranges_apply_to_the_offset_magnitude(warning, critical, offset, state):
    result = run_check(CFG, probe_list=[good("a", offset), good("b", offset)], with_local=False,
                       warning_s=Range.parse(warning), critical_s=Range.parse(critical))
    assert result.exit_code == state
    assert f"s;{warning};{critical} " in report.nagios(result)


@pytest.mark.parametrize(("text", "host", "port", "label"), [
    ("ntp.example", "ntp.example", 123, "ntp.example"),
    ("127.0.0.1:1123", "127.0.0.1", 1123, "127.0.0.1:1123"),
    ("[::1]:1123", "::1", 1123, "[::1]:1123"),
    ("[::1]", "::1", 123, "[::1]"),
    ("::1", "::1", 123, "[::1]"),
    ("fe80::1:2", "fe80::1:2", 123, "[fe80::1:2]"),
])
def test_parse_host_as_check_ntp_time_takes_it(text, host, port, label):
    server = parse_host(text)
    assert (server.host, server.port, server.label) == (host, port, label)


@pytest.mark.parametrize(("text", "why"), [
    ("[::1", "in brackets"), ("[::1]x", "in brackets"), ("host:", "no port"), ("[::1]:", "no port"),
    ("host:0", "1 to 65535"), ("host:65536", "1 to 65535"), ("host:ab", "1 to 65535"), (":123", "no host"),
    ("", "no host"), ("[]:123", "no host"),
])
def test_parse_host_errors_say_what(text, why):
    with pytest.raises(ValueError, match=why):
        parse_host(text)


def test_a_single_configured_source_is_valid_and_says_it_cannot_be_outvoted():
    cfg = config.loads("sources: {ntp: [{host: 127.0.0.1}], http: []}\n")
    assert cfg.consensus.min_sources == 2  # the default, unchanged: capped at the one source configured
    result = run_check(cfg, probe_list=[good("only", 0.01)], with_local=False)
    assert result.verdict.status is Status.OK and "a single source cannot be outvoted" in result.verdict.summary
    with pytest.raises(config.ConfigError, match="is 2 but only 1 sources are configured"):
        config.loads("sources: {ntp: [{host: 127.0.0.1}], http: []}\nconsensus: {min_sources: 2}\n")
    with pytest.raises(config.ConfigError, match="is 2 but only 0 sources are configured"):
        config.loads("sources: {ntp: [], http: []}\n")


def test_offline_check_says_so():
    def dead(name: str) -> Probe:
        return Probe(name, SourceKind.NTP, lambda t: Sample.failed(
            name, SourceKind.NTP, SourceState.UNREACHABLE, "DNS: Name or service not known"))

    result = run_check(CFG, probe_list=[dead("a"), dead("b")], with_local=False)
    assert result.verdict.status is Status.UNKNOWN and result.verdict.status.exit_code == 2  # no offset: CRITICAL
    text = report.human(result)
    assert "No source answered: is this host offline" in text
    assert "DNS: Name or service not known" in text


def test_human_report_of_a_split_majority_says_the_trusted_time_is_a_guess():
    result = run_check(CFG, probe_list=[good("zero", 0.0), good("plus", 2.5), good("wide", 1.25, err=1.45)],
                       with_local=False)
    text = report.human(result)
    assert "Verdict: WARNING: " in text and " or [+2.499000 s, +2.501000 s]" in text
    assert "a guess: the majority is split into 2 regions" in text
    assert json.loads(report.as_json(result))["regions"] == [[-0.001, 0.001], [2.499, 2.501]]


def authenticated(name: str, offset: float, kind: SourceKind, auth: Authentication, err: float) -> Probe:
    def measure(timeout_s: float) -> Sample:
        return Sample(name, kind, address="127.0.0.1:123", offset_s=offset, offset_lo_s=offset - err,
                      offset_hi_s=offset + err, delay_s=0.0002, requests=4, auth=auth, operator=f"{name}.example")

    return Probe(name, kind, measure)


def test_reports_show_how_each_source_is_authenticated_and_which_classes_decide():
    """Issue 13: a spoofed plain-NTP majority beside NTS and HTTPS: the table's AUTH column reads like chronyc
    authdata's Mode, --json carries each source's auth and operator, and Nagios names the classes that agree."""
    key = Authentication("nts", aead="AEAD_AES_SIV_CMAC_256", key_bits=256, cookies=8, cookie_bytes=100,
                         ke_age_s=12.5)
    probes = [good("n1", 5.0), good("n2", 5.0), good("n3", 5.0),
              authenticated("t1", 0.0, SourceKind.NTS, key, 0.001),
              authenticated("t2", 0.0001, SourceKind.NTS, key, 0.001),
              authenticated("h", 0.0, SourceKind.HTTP, Authentication("tls"), 0.3)]
    result = run_check(CFG, probe_list=probes, with_local=False)
    assert result.verdict.status is Status.OK and result.exit_code == 0
    rows = {line.split()[3]: line.split()[:3] for line in report.human(result).splitlines()[1:7]}
    assert rows == {"n1": ["x", "ntp", "-"], "n2": ["x", "ntp", "-"], "n3": ["x", "ntp", "-"],
                    "t1": ["*", "nts", "NTS"], "t2": ["*", "nts", "NTS"], "h": ["*", "http", "TLS"]}
    assert "outvoted by authenticated sources" in report.human(result)

    data = json.loads(report.as_json(result))
    by_name = {s["name"]: s for s in data["sources"]}
    assert by_name["t1"]["auth"] == key.to_dict() and by_name["t1"]["operator"] == "t1.example"
    assert by_name["h"]["auth"]["mode"] == "tls" and by_name["n1"]["auth"] is None
    assert [by_name[n]["authenticated"] for n in ("n1", "t1", "h")] == [False, True, True]
    assert data["agreeing_classes"] == ["http", "nts"] and data["authenticated_decide"] is True
    assert data["witnesses"] == ["http", "nts:t1.example", "nts:t2.example"]

    line = report.nagios(result)
    assert line.startswith("TIMEGUARD OK - host clock") and "; HTTPS and NTS agree; " in line.split(" | ")[0]
    assert " sources_agreeing=3;;;0;6 sources_usable=6;;;0;6" in line


def test_every_configured_source_says_who_runs_it():
    """The operator reaches the sample, answered or not (loopback port 9: nothing listens)."""
    cfg = config.loads("sources: {ntp: [{host: 127.0.0.1, port: 9, operator: Lab.Example}],\n"
                       "          http: [{url: 'https://127.0.0.1:9/'}]}")
    samples = measure_all(check.probes(cfg), 1.0)
    assert [(s.kind, s.operator) for s in samples] == [(SourceKind.NTP, "lab.example"), (SourceKind.HTTP, "127.0.0.1")]

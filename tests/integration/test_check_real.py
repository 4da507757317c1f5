"""`timeguard check` as a user runs it, against real chronyd and nginx servers on loopback.

Lying servers run under libfaketime (chronyd is correct for |offset| ≥ 1 s there). The host clock is real
and correct for these purposes: honest sources are this machine's own clock served back.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.fake_http import blackhole
from tests.support.realprogs import scratch_dir

TIMEOUT_S = 2.0


@pytest.fixture
def dead_ntp() -> Iterator[int]:
    """A UDP port that is bound but never answers (a blackholed NTP server)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def check(cfg: dict[str, Any], *args: str) -> tuple[int, str, str, float]:
    path = scratch_dir("check") / "timeguard.yaml"
    cfg = {"timeout_s": TIMEOUT_S, "state_dir": str(path.parent), **cfg}
    path.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "timeguard", "check", "--config", str(path), *args],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started


def ntp(server: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": server.port, "name": f"chrony:{server.port}"}


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in data["sources"]}


def test_honest_majority_rejects_a_liar_and_survives_dead_sources(chrony_server, nginx_server, test_ca, fake_clock,
                                                                 dead_ntp):
    honest = [chrony_server() for _ in range(3)]
    fake_clock.set(5)
    liar = chrony_server(clock=fake_clock)
    https = [nginx_server(tls=(test_ca.cert, test_ca.key)) for _ in range(2)]
    with blackhole() as hole:
        cfg = {
            "sources": {
                "ntp": [*(ntp(s) for s in honest), {**ntp(liar), "name": "liar"},
                        {"host": "127.0.0.1", "port": dead_ntp, "name": "dead"}],
                "http": [*({"url": h.url, "ca_bundle": str(test_ca.ca_bundle)} for h in https),
                         {"url": hole, "allow_plain_http": True, "name": "hole"}],
            },
        }
        code, out, err, elapsed = check(cfg, "--json")
    data = json.loads(out)
    sources = by_name(data)
    assert code == 0, err
    assert data["status"] == "OK" and data["ntp_http_agree"] is True
    assert data["offset_lo_s"] <= 0 <= data["offset_hi_s"]  # this host's clock is the truth here
    assert abs(data["offset_s"]) < 0.005
    assert sources["liar"]["state"] == "falseticker" and "misses the majority" in sources["liar"]["reason"]
    assert sources["liar"]["offset_s"] == pytest.approx(5.0, abs=0.01)
    assert sources["dead"]["state"] == "unreachable" and "no valid reply" in sources["dead"]["reason"]
    assert sources["hole"]["state"] == "unreachable"
    for server in honest:
        s = sources[f"chrony:{server.port}"]
        assert s["state"] == "truechimer" and s["stratum"] == 2 and s["delay_s"] < 0.01
    assert all(sources[h.url]["state"] == "truechimer" for h in https)
    # how each was authenticated, and by whom it is run (the evidence rule's operators)
    assert [sources[h.url]["auth"]["mode"] for h in https] == ["tls", "tls"] and sources["liar"]["auth"] is None
    assert sources["liar"]["operator"] == sources[https[0].url]["operator"] == "127.0.0.1"
    assert data["agreeing_classes"] == ["ntp", "http"] and data["witnesses"] == ["ntp", "http"]
    # one check, whatever is dead: bounded by the deadline (+ interpreter start-up, measured separately)
    assert elapsed < TIMEOUT_S + 0.2 + 1.0, elapsed
    assert data["duration_s"] <= TIMEOUT_S + 0.2


def test_spoofed_ntp_majority_is_caught_by_https(chrony_server, nginx_server, test_ca, fake_clock):
    fake_clock.set(5)
    liars = [chrony_server(clock=fake_clock) for _ in range(3)]
    honest = [chrony_server() for _ in range(2)]
    https = [nginx_server(tls=(test_ca.cert, test_ca.key)) for _ in range(2)]
    cfg = {"sources": {"ntp": [ntp(s) for s in liars + honest],
                       "http": [{"url": h.url, "ca_bundle": str(test_ca.ca_bundle)} for h in https]}}
    code, out, _, _ = check(cfg, "--json")
    data = json.loads(out)
    assert code == 2
    assert data["status"] == "SOURCES_INCONSISTENT" and data["ntp_http_agree"] is False
    assert data["classes"]["ntp"]["offset_lo_s"] > 4.9  # the NTP class alone would follow the liars (as chrony does)
    assert data["offset_s"] is None

    # HTTPS is the only authenticated class: one-second Dates do not overrule NTP, no class is trusted
    assert data["authenticated_decide"] is False and data["witnesses"] == []

    code, out, _, _ = check(cfg)  # the human table says which class is lying, and how each source is authenticated
    assert "Verdict: SOURCES_INCONSISTENT: NTP sources (3 of 5) say offset" in out and "one class is lying" in out
    auth = {line.split()[3]: line.split()[2] for line in out.splitlines()[1:8]}
    assert auth == {**{f"chrony:{s.port}": "-" for s in liars + honest}, **{h.url: "TLS" for h in https}}


def test_lying_https_server_is_a_falseticker(chrony_server, nginx_server, test_ca, fake_clock):
    fake_clock.set(-3)
    honest = [chrony_server() for _ in range(2)]
    good = nginx_server(tls=(test_ca.cert, test_ca.key))
    bad = nginx_server(clock=fake_clock, tls=(test_ca.cert, test_ca.key))
    cfg = {"sources": {"ntp": [ntp(s) for s in honest],
                       "http": [{"url": u, "ca_bundle": str(test_ca.ca_bundle)} for u in (good.url, bad.url)]}}
    code, out, _, _ = check(cfg, "--json")
    sources = by_name(json.loads(out))
    assert code == 0
    assert sources[bad.url]["state"] == "falseticker"
    # nginx under libfaketime serves a Date up to ~0.1 s off its fake clock (seen: -2.92 for -3)
    assert sources[bad.url]["offset_s"] == pytest.approx(-3.0, abs=0.15)
    assert sources[good.url]["state"] == "truechimer"


def test_untrusted_certificate_is_unreachable_with_a_tls_reason(chrony_server, nginx_server, test_ca):
    https = nginx_server(tls=(test_ca.cert, test_ca.key))
    cfg = {"sources": {"ntp": [ntp(chrony_server()), ntp(chrony_server())], "http": [{"url": https.url}]}}
    code, out, _, _ = check(cfg, "--json")
    source = by_name(json.loads(out))[https.url]
    assert code == 0  # the two NTP sources still decide; no cross-check without HTTPS
    assert source["state"] == "unreachable"
    assert "certificate" in source["reason"].lower()


def test_thresholds_and_nagios_output(chrony_server, fake_clock):
    fake_clock.set(2)
    # every source says the host is 2 s behind: the host clock is wrong, not the sources
    servers = [chrony_server(clock=fake_clock) for _ in range(3)]
    cfg = {"sources": {"ntp": [ntp(s) for s in servers], "http": []}}
    code, out, _, _ = check(cfg, "--nagios")
    assert code == 1 and out.startswith("TIMEGUARD WARNING - host clock behind by 2.0")
    assert re.search(r"\| offset=(1\.99|2\.00)\d+s;0\.5;5 ", out), out
    code, out, _, _ = check(cfg, "--nagios", "-w", "1", "-c", "1.5")
    assert code == 2 and out.startswith("TIMEGUARD CRITICAL - host clock behind by 2.0")
    code, _, err, _ = check(cfg, "-w", "3", "-c", "2")
    assert code == 3 and "critical (2 s) must be greater than warning (3 s)" in err
    code, _, err, _ = check(cfg, "-w", "abc")
    assert code == 3 and "not a number" in err


def test_unsynchronised_chrony_is_unusable(chrony_server):
    cfg = {"sources": {"ntp": [{**ntp(chrony_server(synchronised=False)), "name": "unsync"}, ntp(chrony_server())],
                       "http": []}, "consensus": {"min_sources": 1}}
    code, out, _, _ = check(cfg, "--json")
    source = by_name(json.loads(out))["unsync"]
    assert code == 0
    assert source["state"] == "unusable"
    assert "leap" in source["reason"] or "stratum" in source["reason"]


def test_default_config_offline_says_so_and_exits_2():
    # This machine has no route to the public servers of the embedded defaults, as on an isolated host.
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "timeguard", "check", "--timeout", "2"], capture_output=True,
                          text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
                          cwd=Path(__file__).parent)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr  # no offset found: CRITICAL, as check_ntp_time
    assert "Verdict: UNKNOWN: only 0 of 13 sources usable" in proc.stdout
    assert "No source answered: is this host offline" in proc.stdout
    assert elapsed < 2 + 0.2 + 1.5

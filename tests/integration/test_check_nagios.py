"""`timeguard check` as Icinga runs it, side by side with Icinga's own `check_ntp_time` (monitoring-plugins-basic)
on the same loopback servers, and the two wrong-OK cases of issue 9 reproduced with real NTP packets.

Servers are tests/support/fake_ntp.py on 127.0.0.1/::1, and chronyd under libfaketime; the host clock is the truth.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.test_check_real import check, ntp
from tests.support.fake_ntp import FakeNTPServer
from tests.support.require import need

CHECK_NTP_TIME = "/usr/lib/nagios/plugins/check_ntp_time"
#: check_ntp_time prints `NTP WARNING: Offset -0.7999883294 secs|offset=-0.799988s;0.500000;5.000000;`
ITS_LINE = re.compile(r"^NTP (OK|WARNING|CRITICAL|UNKNOWN): Offset (\S+) secs\|offset=(\S+)s;")
OUR_OFFSET = re.compile(r"\| offset=(\S+?)s;")


@pytest.fixture
def fake_ntp() -> Iterator[Callable[..., FakeNTPServer]]:
    servers: list[FakeNTPServer] = []

    def make(offset_s: float = 0.0, **attrs: Any) -> FakeNTPServer:
        server = FakeNTPServer(offset_s, host=attrs.pop("host", "127.0.0.1"))
        for name, value in attrs.items():
            setattr(server, name, value)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def check_ntp_time(host: str, port: int, *args: str) -> tuple[int, str]:
    need(os.access(CHECK_NTP_TIME, os.X_OK),
         "check_ntp_time is not installed (apt-get install monitoring-plugins-basic)")
    proc = subprocess.run([CHECK_NTP_TIME, "-H", host, "-p", str(port), "-t", "5", *args], capture_output=True,
                          text=True, timeout=30, check=False)
    return proc.returncode, proc.stdout


def hosts(*servers: Any) -> list[str]:
    return [arg for s in servers for arg in ("-H", f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}")]


# -- issue 9, item 1: a wrong OK ---------------------------------------------------------------------------


def test_a_wide_legal_source_bridging_two_clusters_is_not_ok(fake_ntp):
    # +0 s, +2.5 s, +1.25 s with root dispersion 1.45 s (root distance 1.45 ≤ 1.5: legal). Before: exit 0, OK,
    # "true offset in [−0.000028 s, +2.500038 s]".
    servers = [fake_ntp(0.0), fake_ntp(2.5), fake_ntp(1.25, root_dispersion_s=1.45)]
    code, out, err, _ = check({}, *hosts(*servers), "--json")
    data = json.loads(out)
    assert code == 1 and data["status"] == "WARNING", out + err
    assert [s["state"] for s in data["sources"]] == ["truechimer"] * 3  # all usable: the verdict decides
    (lo0, hi0), (lo1, hi1) = data["regions"]
    assert lo0 <= 0 <= hi0 < 0.01 and lo1 <= 2.5 <= hi1
    assert "the majority is split into 2 regions" in data["summary"]
    assert any(lo <= data["offset_s"] <= hi for lo, hi in data["regions"])  # the estimate: either one
    code, out, _, _ = check({}, *hosts(*servers), "--nagios", "-c", "2")  # the worst point is past critical
    assert code == 2 and out.startswith("TIMEGUARD CRITICAL - host clock ")


def test_a_liar_declaring_precision_plus_60_is_unusable(fake_ntp):
    # +0 s, +10 s and a −1000 s liar whose precision byte +60 claimed ±2^60 s. Before: exit 0, OK.
    servers = [fake_ntp(0.0), fake_ntp(10.0), fake_ntp(-1000.0, precision=60)]
    code, out, err, _ = check({}, *hosts(*servers), "--json")
    data = json.loads(out)
    liar = data["sources"][2]
    assert liar["state"] == "unusable" and "precision +60 (2^60 s" in liar["reason"], liar
    # what is left: two sources that disagree; no offset can be found: CRITICAL, as check_ntp_time; -q: UNKNOWN
    assert data["status"] == "NO_MAJORITY" and code == 2, out + err
    code, out, _, _ = check({}, *hosts(*servers), "--nagios", "-q")
    assert code == 3 and out.startswith("TIMEGUARD UNKNOWN - no majority: at most 1 of 2 usable sources agree")
    assert "offset=U;" in out


# -- issue 9, item 10: the same answer as check_ntp_time ----------------------------------------------------


@pytest.mark.parametrize(("offset", "warning", "critical"), [
    (-0.8, "0.5", "5"),
    (0.8, "0.5", "5"),
    (2.5, "~:0.5", "@0:0.5"),
    (-2.5, "-1:1", "10:"),
    (0.2, "0.5", "5"),
    (-6.25, "0.5", "5"),
    (0.05, "@0:0.1", "~:1"),
])
def test_same_sign_and_status_as_check_ntp_time(fake_ntp, offset, warning, critical):
    server = fake_ntp(offset)
    its_code, its_out = check_ntp_time(server.host, server.port, "-w", warning, "-c", critical)
    our_code, our_out, err, _ = check({}, *hosts(server), "--nagios", "-w", warning, "-c", critical)
    its = ITS_LINE.match(its_out)
    assert its is not None, its_out
    ours = OUR_OFFSET.search(our_out)
    assert ours is not None, our_out + err
    assert our_code == its_code, (its_out, our_out)
    assert our_out.startswith(f"TIMEGUARD {its.group(1)} - host clock ")
    assert float(ours.group(1)) == pytest.approx(float(its.group(3)), abs=0.005)
    assert (float(ours.group(1)) < 0) == (float(its.group(3)) < 0) == (offset < 0)
    assert float(ours.group(1)) == pytest.approx(offset, abs=0.005)


def test_an_unsynchronised_server_is_critical_or_unknown_with_q_like_check_ntp_time(fake_ntp):
    server = fake_ntp(0.0, leap=3)
    for extra, expected in (((), 2), (("-q",), 3)):
        its_code, its_out = check_ntp_time(server.host, server.port, *extra)
        our_code, our_out, err, _ = check({}, *hosts(server), "--nagios", *extra)
        assert its_code == our_code == expected, (its_out, our_out, err)
        state = ("OK", "WARNING", "CRITICAL", "UNKNOWN")[expected]
        assert its_out.startswith(f"NTP {state}: Offset unknown")
        assert our_out.startswith(f"TIMEGUARD {state} - offset unknown: only 0 of 1 sources usable")


def test_ipv6_server_in_brackets(fake_ntp):
    server = fake_ntp(-0.8, host="::1")
    its_code, its_out = check_ntp_time("::1", server.port, "-w", "0.5", "-c", "5")  # its defaults: 60 and 120
    our_code, our_out, err, _ = check({}, "-H", f"[::1]:{server.port}", "--nagios", "-w", "0.5", "-c", "5")
    assert its_code == our_code == 1, (its_out, our_out, err)
    assert f"[::1]:{server.port}" in check({}, "-H", f"[::1]:{server.port}")[1]
    ours = OUR_OFFSET.search(our_out)
    assert ours is not None and float(ours.group(1)) == pytest.approx(-0.8, abs=0.005)


def test_port_option_and_repeated_hosts(fake_ntp):
    a, b = fake_ntp(0.01), fake_ntp(0.01)
    code, out, err, _ = check({}, "-H", "127.0.0.1", "-p", str(a.port), "-H", f"127.0.0.1:{b.port}", "--json")
    data = json.loads(out)
    assert code == 0, out + err
    assert [s["name"] for s in data["sources"]] == [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    assert data["usable"] == 2 and "cannot be outvoted" not in data["summary"]
    code, _, err, _ = check({}, "-H", f"127.0.0.1:{a.port}", "-H", f"127.0.0.1:{a.port}")
    assert code == 3 and "names the same server twice" in err
    code, _, err, _ = check({}, "-H", "[::1")
    assert code == 3 and "TIMEGUARD UNKNOWN - -H '[::1': an IPv6 address in brackets" in err
    code, _, err, _ = check({}, "-H", "x", "-w", "1:0")
    assert code == 3 and "its start (1) is above its end (0)" in err


def test_same_status_as_check_ntp_time_on_chronyd(chrony_server, fake_clock):
    fake_clock.set(-2)  # chronyd's clock 2 s behind ours: the host is 2 s ahead, the offset is negative
    server = chrony_server(clock=fake_clock)
    its_code, its_out = check_ntp_time("127.0.0.1", server.port, "-w", "1", "-c", "3")
    our_code, our_out, err, _ = check({"sources": {"ntp": [ntp(server)], "http": []}}, "--nagios", "-w", "1",
                                      "-c", "3")
    its = ITS_LINE.match(its_out)
    ours = OUR_OFFSET.search(our_out)
    assert its is not None and ours is not None, (its_out, our_out, err)
    assert its_code == our_code == 1
    assert float(ours.group(1)) == pytest.approx(float(its.group(3)), abs=0.1)
    assert float(ours.group(1)) == pytest.approx(-2.0, abs=0.1)
    # a configuration with this single source is valid, and says what a single source cannot do
    assert "a single source cannot be outvoted" in our_out

"""query_ntp against a real UDP server on loopback that misbehaves on demand (tests/support/fake_ntp.py).

Each test asserts what a user would see: the state (usable / UNUSABLE / UNREACHABLE), the offset interval,
and the reason. Only 127.0.0.0/8 and ::1 are ever contacted.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from tests.support.fake_ntp import FakeNTPServer
from timeguard.measure import anchor, net
from timeguard.measure import ntp as ntp_module
from timeguard.measure.ntp import ntp_to_unix_ns, query_ntp
from timeguard.model import Sample, SourceKind, SourceState

NS = 1_000_000_000
#: Slack for "returns within the deadline": the promise is timeout + 50 ms.
DEADLINE_SLACK_S = 0.05


@pytest.fixture
def make_server() -> Iterator[Callable[..., FakeNTPServer]]:
    servers: list[FakeNTPServer] = []

    def make(*args: object, **kwargs: object) -> FakeNTPServer:
        server = FakeNTPServer(*args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server: Callable[..., FakeNTPServer]) -> FakeNTPServer:
    return make_server()


def query(server: FakeNTPServer, **kwargs: object) -> Sample:
    return query_ntp(server.host, server.port, **kwargs)  # type: ignore[arg-type]


def timed(server: FakeNTPServer, **kwargs: object) -> tuple[Sample, float]:
    start = time.monotonic()
    sample = query(server, **kwargs)
    return sample, time.monotonic() - start


def assert_contains(sample: Sample, true_offset_s: float) -> None:
    assert sample.usable, sample.reason
    assert sample.offset_lo_s is not None and sample.offset_hi_s is not None
    assert sample.offset_lo_s <= true_offset_s <= sample.offset_hi_s, sample


# -- honest servers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("offset_s", [0.0, 0.25, -0.3, 12.5])
def test_honest_server_sub_second_offsets(make_server, offset_s: float):
    server = make_server(offset_s)
    before = time.monotonic()
    sample = query(server, name="fake")
    after = time.monotonic()
    assert_contains(sample, offset_s)
    assert sample.offset_s == pytest.approx(offset_s, abs=0.005)
    assert (sample.name, sample.kind, sample.address) == ("fake", SourceKind.NTP, f"127.0.0.1:{server.port}")
    assert (sample.stratum, sample.leap, sample.requests, sample.reason) == (2, 0, 4, "best of 4 replies")
    assert sample.delay_s is not None and 0 <= sample.delay_s < 0.05
    assert sample.error_s is not None and sample.error_s < 0.05
    assert sample.monotonic_s is not None and before <= sample.monotonic_s <= after
    assert len(server.received) == 4


def test_ipv6_loopback(make_server):
    server = make_server(-0.3, host="::1")
    sample = query(server)
    assert_contains(sample, -0.3)
    assert sample.address == f"[::1]:{server.port}"
    assert sample.name == "::1"


def test_loopback_query_is_fast(server):
    query(server)  # warm-up (imports, first socket)
    durations = sorted(timed(server)[1] for _ in range(20))
    assert durations[10] < 0.05, durations  # p50 of 4 loopback exchanges; measured ~1 ms


def test_keeps_the_reply_with_the_least_delay(server):
    """NTP's clock filter: of four replies, the one with the smallest round trip is the most accurate."""
    server.offset_s = 0.25
    server.return_delays = [0.12, 0.02, 0.20, 0.08]  # return path only: each reply is off by −delay/2
    sample = query(server, timeout_s=2.0)
    assert_contains(sample, 0.25)
    assert sample.delay_s == pytest.approx(0.02, abs=0.008)
    assert sample.offset_s == pytest.approx(0.25 - 0.01, abs=0.004)
    assert (sample.requests, sample.reason) == (4, "best of 4 replies")


@pytest.mark.parametrize("return_delay_s", [0.05, 0.3])
def test_asymmetric_delay_interval_still_contains_the_truth(server, return_delay_s: float):
    server.offset_s = -0.3
    server.return_delay_s = return_delay_s
    sample = query(server, samples=2, timeout_s=2.0)
    assert_contains(sample, -0.3)
    # The estimate itself is off by half the asymmetry; only the interval is a guarantee.
    assert sample.offset_s == pytest.approx(-0.3 - return_delay_s / 2, abs=0.01)
    assert sample.delay_s == pytest.approx(return_delay_s, abs=0.01)


def test_late_replies_to_earlier_requests_are_still_used(server):
    """A reply slower than its request's share is not lost: it still matches its own nonce and T1."""
    server.return_delay_s = 0.35  # each request's share of 1.0 s is 0.25 s
    sample, elapsed = timed(server, samples=4, timeout_s=1.0)
    assert_contains(sample, 0.0)
    assert sample.delay_s == pytest.approx(0.35, abs=0.02)
    assert sample.requests == 4
    assert sample.reason.startswith("best of 3 replies to 4 requests")
    assert elapsed <= 1.0 + DEADLINE_SLACK_S


def test_leap_insert_announced_is_usable_and_said(server):
    server.leap = 1
    sample = query(server)
    assert sample.usable and sample.leap == 1
    assert "the server announces a leap second (insert)" in sample.reason


# -- the random nonce and the single wall-clock reading --------------------------------------------


def test_each_request_has_its_own_random_nonce_and_never_our_time(server):
    now_ns = time.time_ns()
    sample = query(server)
    assert sample.usable
    requests = [r.data for r in server.received]
    assert len(requests) == 4 and all(len(r) == 48 for r in requests)
    nonces = [int.from_bytes(r[40:48], "big") for r in requests]
    assert len(set(nonces)) == 4 and 0 not in nonces
    for r in requests:
        assert r[0] == 0x23 and r[1:40] == bytes(39)  # nothing else is sent: no ref/origin/receive time
    for nonce in nonces:
        # Read as a time, the transmit field is anywhere in 136 years, not our clock (T1 stays home).
        assert abs(ntp_to_unix_ns(nonce, near_unix_ns=now_ns) - now_ns) > 86_400 * NS


def test_the_wall_clock_is_anchored_before_the_exchange_so_a_step_mid_query_changes_nothing(server):
    calls: list[int] = []

    def stepping_wall_ns() -> int:
        calls.append(1)
        # Any reading once a request is on its way sees the host clock stepped an hour back.
        return time.time_ns() - (3600 * NS if server.received else 0)

    sample = query(server, wall_ns=stepping_wall_ns)
    assert_contains(sample, 0.0)
    assert 1 <= len(calls) <= anchor.TRIES


def test_an_anchor_off_by_its_uncertainty_still_holds_the_truth(server, monkeypatch):
    """A wall reading tied 2 ms wrong to the monotonic clock (the thread preempted between the two calls)
    makes every T1/T4 2 ms wrong; the anchor's uncertainty in the bound keeps an honest server truthful."""

    def skewed(wall_ns: Callable[[], int]) -> anchor.WallAnchor:
        return anchor.WallAnchor(wall_ns=wall_ns() + 2_000_000, mono_ns=time.monotonic_ns(), uncertainty_ns=2_000_000)

    monkeypatch.setattr(ntp_module, "read_anchor", skewed)
    sample = query(server)
    assert_contains(sample, 0.0)
    assert sample.offset_hi_s - sample.offset_lo_s >= 0.004


@pytest.mark.parametrize(
    "when",
    [
        datetime(2037, 6, 1, tzinfo=UTC),  # NTP era 1, where ntplib raises
        datetime(2036, 2, 7, 6, 28, 15, 999_000, tzinfo=UTC),  # T1 in era 0, the server's stamps in era 1
    ],
)
def test_host_clock_in_ntp_era_1(server, when: datetime):
    shift_ns = int(when.timestamp() * NS) - time.time_ns()

    def wall_ns() -> int:
        return time.time_ns() + shift_ns

    server.clock_ns = wall_ns
    server.offset_s = 0.25
    sample = query(server, wall_ns=wall_ns)
    assert_contains(sample, 0.25)
    assert sample.offset_s == pytest.approx(0.25, abs=0.005)


# -- checks on authentic replies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ({"leap": 3}, "leap indicator 3 (alarm): the server's clock is not synchronised"),
        ({"stratum": 16}, "stratum 16: the server is not synchronised"),
        ({"zero_transmit": True}, "transmit timestamp is zero"),
        ({"zero_receive": True}, "receive timestamp is zero"),
        ({"receive_after_transmit": True}, "is later than transmit timestamp"),
        ({"mode": 3}, "mode 3 in the reply (expected 4"),
        ({"version": 2}, "version 2 in the reply (expected 3 or 4)"),
        (
            {"root_delay_s": 2.0, "root_dispersion_s": 0.6},
            "root distance 1.600 s (root delay 2.000 s / 2 + root dispersion 0.600 s) exceeds the limit of 1.5 s",
        ),
        ({"receive_shift_s": -0.5}, "negative round-trip delay"),
        ({"precision": 60}, "precision +60 (2^60 s = 1.15e+18 s) is coarser than 2^-1 s"),
        ({"precision": 0}, "precision +0 (2^0 s = 1 s) is coarser than 2^-1 s"),
        ({"precision": 127}, "precision +127"),
    ],
)
def test_bad_reply_is_unusable_with_the_field_named(server, setup: dict, expected: str):
    for attribute, value in setup.items():
        setattr(server, attribute, value)
    sample, elapsed = timed(server, timeout_s=1.0)
    assert sample.failure is SourceState.UNUSABLE
    assert sample.offset_s is None
    assert sample.reason.startswith("reply rejected (4 of 4 replies): ")
    assert expected in sample.reason
    assert sample.requests == 4
    assert elapsed < 0.5  # authentic answers end each wait: no timeout is spent


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [
        (datetime(1990, 1, 1, tzinfo=UTC), "transmit timestamp claims 1990-01-01"),
        # 2099 is beyond the ±68 years an NTP timestamp can express around today: it reads as 1962.
        (datetime(2099, 1, 1, tzinfo=UTC), "before this release was built"),
        (datetime(2050, 1, 1, tzinfo=UTC), "implausibly far in the future"),
    ],
)
def test_implausible_server_time_is_unusable(server, claimed: datetime, expected: str):
    server.offset_s = claimed.timestamp() - time.time()
    sample = query(server, timeout_s=1.0)
    assert sample.failure is SourceState.UNUSABLE
    assert expected in sample.reason


@pytest.mark.parametrize(("precision", "root_dispersion_s"), [(-1, 0.0), (-6, 1.45), (-20, 1.5), (-128, 0.0)])
def test_every_legal_self_declared_error_widens_the_interval_to_cover_it(server, precision, root_dispersion_s):
    """The coarsest legal values stay usable, and the interval is at least as wide as the server says it errs."""
    server.offset_s, server.precision, server.root_dispersion_s = 1.25, precision, root_dispersion_s
    sample = query(server, timeout_s=1.0)
    assert_contains(sample, 1.25)
    assert sample.error_s is not None and sample.error_s >= root_dispersion_s + 2.0**precision - 2e-5


def test_root_distance_limit_is_a_parameter(server):
    server.root_delay_s, server.root_dispersion_s = 2.0, 0.6
    assert query(server, max_root_distance_s=3.0).usable


# -- Kiss-o'-Death -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("DENY", "the server refuses us: Kiss-o'-Death DENY (access denied); it must not be polled again"),
        ("RSTR", "the server refuses us: Kiss-o'-Death RSTR (access restricted); it must not be polled again"),
        ("RATE", "the server asked us to slow down: Kiss-o'-Death RATE; poll it less often"),
        ("XFOO", "Kiss-o'-Death XFOO (stratum 0)"),
    ],
)
def test_authentic_kiss_of_death(server, code: str, expected: str):
    server.kiss_code = code
    sample, elapsed = timed(server)
    assert sample.failure is SourceState.UNUSABLE
    assert sample.kiss_code == code
    assert expected in sample.reason
    assert sample.offset_s is None  # a kiss's timestamps are never used
    assert sample.requests == 1 and len(server.received) == 1  # obeyed at once: nothing more was sent
    assert elapsed < 0.5


@pytest.mark.parametrize("code", ["DENY", "RATE"])
def test_forged_kiss_of_death_is_ignored(server, code: str):
    """CVE-2015-7704: a KoD with a wrong origin must neither silence nor slow the server."""
    server.kiss_code, server.kiss_origin_ok = code, False
    sample, elapsed = timed(server, timeout_s=0.5)
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.kiss_code is None
    assert f"ignored 4 Kiss-o'-Death {code} replies with a wrong origin timestamp" in sample.reason
    assert elapsed <= 0.5 + DEADLINE_SLACK_S


def test_forged_kiss_followed_by_the_real_answer(server):
    server.kiss_code, server.kiss_origin_ok, server.answer_after_forgery = "DENY", False, True
    server.offset_s = 0.25
    sample = query(server)
    assert_contains(sample, 0.25)
    assert sample.kiss_code is None
    assert "ignored 4 Kiss-o'-Death DENY replies with a wrong origin timestamp" in sample.reason


# -- spoofing, wrong sources, damaged packets ------------------------------------------------------


def test_spoofed_reply_then_genuine_one(server):
    """The forgery (+1800 s, as ntplib accepted) comes first from the right address and port; the
    genuine answer right after it must still be taken."""
    server.spoof, server.answer_after_forgery = True, True
    sample = query(server)
    assert_contains(sample, 0.0)
    assert abs(sample.offset_s or 0) < 0.01
    assert "ignored 4 replies with a wrong origin timestamp (not an answer to our request" in sample.reason


def test_spoofed_reply_alone_is_unreachable(server):
    server.spoof = True
    sample, elapsed = timed(server, samples=1, timeout_s=0.3)
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason == (
        f"no valid reply within 0.3 s (1 request sent to 127.0.0.1:{server.port}); "
        "ignored 1 reply with a wrong origin timestamp (not an answer to our request: spoofed or stale)"
    )
    assert elapsed <= 0.3 + DEADLINE_SLACK_S


def test_reply_from_another_port_is_ignored(server):
    server.reply_from_other_port = True
    other = server.other_port()
    sample = query(server, samples=1, timeout_s=0.3)
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason == (
        f"no valid reply within 0.3 s (1 request sent to 127.0.0.1:{server.port}); "
        f"ignored 1 reply from 127.0.0.1:{other} (not the port asked)"
    )


def test_reply_from_another_address_is_ignored(server):
    server.reply_from_host = "127.0.0.2"
    sample = query(server, samples=2, timeout_s=0.3)
    assert sample.failure is SourceState.UNREACHABLE
    assert "ignored 2 replies from 127.0.0.2:" in sample.reason
    assert "(not the address asked)" in sample.reason


def test_truncated_reply_is_ignored(server):
    server.truncate_to = 40
    sample = query(server, timeout_s=0.4)
    assert sample.failure is SourceState.UNREACHABLE
    assert "ignored 4 replies truncated to 40 bytes (an NTP header has 48)" in sample.reason


def test_duplicated_reply_is_ignored_as_a_replay(server):
    server.duplicate = True
    sample = query(server)
    assert_contains(sample, 0.0)
    assert "repeating an answer already received (duplicate or replay)" in sample.reason


# -- deadlines: blackhole, DNS ----------------------------------------------------------------------


@pytest.mark.parametrize("timeout_s", [0.5, 2.0])
def test_blackhole_returns_unreachable_at_the_deadline(server, timeout_s: float):
    server.blackhole = True
    sample, elapsed = timed(server, timeout_s=timeout_s)
    assert timeout_s <= elapsed <= timeout_s + DEADLINE_SLACK_S
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason == f"no valid reply within {timeout_s:.1f} s (4 requests sent to {server.address})"
    assert sample.requests == 4 and len(server.received) == 4  # spread over the deadline, not all at once
    sent_at = [r.server_wall_ns for r in server.received]
    assert sent_at[-1] - sent_at[0] >= 0.7 * timeout_s * NS


@pytest.fixture
def stalled_dns(monkeypatch) -> Iterator[list[str]]:
    release = threading.Event()
    asked: list[str] = []
    real = socket.getaddrinfo

    def hang(host, *args, **kwargs):
        asked.append(host)
        release.wait(30)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(net.socket, "getaddrinfo", hang)
    yield asked
    release.set()
    deadline = time.monotonic() + 5
    while net._Lookup._pending and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.parametrize(("timeout_s", "dns_timeout_s", "dns_budget_s"), [(1.0, None, 0.5), (2.0, 0.2, 0.2)])
def test_stalled_dns_ends_within_its_own_deadline(
    stalled_dns, timeout_s: float, dns_timeout_s: float | None, dns_budget_s: float
):
    start = time.monotonic()
    sample = query_ntp("ntp.stalled.test", 123, timeout_s=timeout_s, dns_timeout_s=dns_timeout_s)
    elapsed = time.monotonic() - start
    assert dns_budget_s <= elapsed <= dns_budget_s + DEADLINE_SLACK_S
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason.startswith(f"DNS lookup of 'ntp.stalled.test' did not answer within {dns_budget_s:.1f} s")
    assert (sample.name, sample.requests) == ("ntp.stalled.test", 0)


def test_unknown_host_fails_fast_with_a_clear_reason(monkeypatch):
    def nxdomain(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(net.socket, "getaddrinfo", nxdomain)
    start = time.monotonic()
    sample = query_ntp("no-such-host.invalid", 123, timeout_s=2.0)
    assert time.monotonic() - start < 0.1
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason == "host name 'no-such-host.invalid' not found in DNS (check the spelling and the resolver)"


def test_host_name_is_resolved(server):
    """A name, not only a literal: 'localhost' comes from /etc/hosts, no DNS server involved."""
    addresses = net.resolve("localhost", server.port, timeout_s=1.0)
    if not any(a.ip == "127.0.0.1" for a in addresses) or addresses[0].ip != "127.0.0.1":
        pytest.skip(f"localhost does not resolve to 127.0.0.1 first here: {[str(a) for a in addresses]}")
    sample = query_ntp("localhost", server.port)
    assert_contains(sample, 0.0)
    assert (sample.name, sample.address) == ("localhost", f"127.0.0.1:{server.port}")


def test_next_address_is_tried_when_sending_to_the_first_fails(server, monkeypatch):
    """A host with an address we cannot send to (say IPv6 without a route) still gets asked on the next."""
    from timeguard.measure import ntp

    unsendable = net.ResolvedAddress(socket.AF_INET6, ("127.0.0.1", server.port, 0, 0))  # wrong family: no traffic
    good = net.ResolvedAddress(socket.AF_INET, ("127.0.0.1", server.port))
    monkeypatch.setattr(ntp, "resolve", lambda *args, **kwargs: (unsendable, good))
    sample = query_ntp("dual.test", server.port)
    assert_contains(sample, 0.0)
    assert sample.address == f"127.0.0.1:{server.port}"


def test_no_address_can_be_sent_to(server, monkeypatch):
    from timeguard.measure import ntp

    unsendable = net.ResolvedAddress(socket.AF_INET6, ("127.0.0.1", server.port, 0, 0))
    monkeypatch.setattr(ntp, "resolve", lambda *args, **kwargs: (unsendable,))
    sample = query_ntp("broken.test", server.port)
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason.startswith(f"could not send a request: 127.0.0.1:{server.port}: ")
    assert sample.requests == 0

"""The NTP client's pure parts: timestamps and eras, the request, every reply check, the interval, the
poll policy, and DNS with a deadline. Replies are built with the test server's own encoder
(tests/support/fake_ntp.py), so the client's encoder is never its own oracle.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime

import ntplib
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.support.fake_ntp import build_packet, to_ntp
from timeguard.measure import net
from timeguard.measure.net import ResolveError, resolve
from timeguard.measure.ntp import (
    DEFAULT_MAX_ROOT_DISTANCE_S,
    ERA_NS,
    LOCAL_READ_PRECISION_S,
    MAX_PRECISION_LOG2,
    Header,
    Ignored,
    Kiss,
    Measurement,
    Rejected,
    build_request,
    check_reply,
    kiss_reason,
    new_nonce,
    ntp_to_unix_ns,
    origin_of,
    unix_ns_to_ntp,
)

NS = 1_000_000_000
MS = 1_000_000
#: 2026-06-01T12:00:00Z, a plausible "now" for this release.
T1 = int(datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()) * NS
#: The first NTP era rollover: 2036-02-07T06:28:16Z.
ERA1_START_NS = int(datetime(2036, 2, 7, 6, 28, 16, tzinfo=UTC).timestamp()) * NS
NONCE = 0x0123_4567_89AB_CDEF


def reply(
    *,
    t2_ns: int,
    t3_ns: int,
    origin: int = NONCE,
    **fields: object,
) -> bytes:
    return build_packet(origin=origin, receive=to_ntp(t2_ns), transmit=to_ntp(t3_ns), **fields)  # type: ignore[arg-type]


def honest(offset_ns: int = 250 * MS, fwd_ns: int = 10 * MS, proc_ns: int = 1 * MS, ret_ns: int = 10 * MS):
    """(t2, t3, t4) for a request sent at T1 to a server ``offset_ns`` ahead of us."""
    t2 = T1 + fwd_ns + offset_ns
    t3 = t2 + proc_ns
    t4 = t3 - offset_ns + ret_ns
    return t2, t3, t4


def check(data: bytes, *, t4_ns: int, **kw: object):
    return check_reply(data, requests={NONCE: T1}, t4_ns=t4_ns, **kw)  # type: ignore[arg-type]


# -- timestamps and eras ----------------------------------------------------------------------------


def test_ntp_epoch_and_era_boundaries():
    assert unix_ns_to_ntp(0) == 2_208_988_800 << 32
    assert unix_ns_to_ntp(ERA1_START_NS) == 0  # era 1 begins: the seconds field wraps to zero
    assert unix_ns_to_ntp(ERA1_START_NS - NS // 2) == ((1 << 32) - 1) << 32 | (1 << 31)
    # Zero means 1900 only next to 1900; next to today it is the start of era 1, never 1900.
    assert ntp_to_unix_ns(0, near_unix_ns=T1) == ERA1_START_NS
    assert ntp_to_unix_ns(0, near_unix_ns=-2_208_988_800 * NS) == -2_208_988_800 * NS


def test_era_1_host_decodes_a_server_timestamp_correctly():
    in_2037 = int(datetime(2037, 3, 1, tzinfo=UTC).timestamp()) * NS
    stamp = unix_ns_to_ntp(in_2037 + 123_456_789)
    assert stamp >> 32 < 60_000_000  # early in era 1: a small seconds field, which ntplib cannot place
    assert ntp_to_unix_ns(stamp, near_unix_ns=in_2037) == in_2037 + 123_456_789
    # Across the rollover: a server one second into era 1 seen from a host one second before it.
    assert ntp_to_unix_ns(to_ntp(ERA1_START_NS + NS), near_unix_ns=ERA1_START_NS - NS) == ERA1_START_NS + NS


@given(
    unix_ns=st.integers(min_value=-(2**33) * NS, max_value=2**34 * NS),
    drift_ns=st.integers(min_value=-(2**31 - 1) * NS, max_value=(2**31 - 1) * NS),
)
def test_timestamp_round_trip_in_any_era(unix_ns: int, drift_ns: int):
    """Encode, then decode next to any clock within ±68 years: the same instant within 1 ns."""
    assert abs(ntp_to_unix_ns(unix_ns_to_ntp(unix_ns), near_unix_ns=unix_ns + drift_ns) - unix_ns) <= 1
    # The test server's independent (truncating) encoder agrees with the decoder too.
    assert abs(ntp_to_unix_ns(to_ntp(unix_ns), near_unix_ns=unix_ns + drift_ns) - unix_ns) <= 1


@given(timestamp=st.integers(min_value=0, max_value=2**64 - 1), near_ns=st.integers(-(2**34) * NS, 2**35 * NS))
def test_era_selection_picks_the_nearest_era(timestamp: int, near_ns: int):
    decoded = ntp_to_unix_ns(timestamp, near_unix_ns=near_ns)
    assert abs(decoded - near_ns) <= ERA_NS // 2
    # ...and it is the instant the timestamp names (to within the 1 ns the decoder rounds to).
    diff = (unix_ns_to_ntp(decoded) - timestamp) % 2**64
    assert min(diff, 2**64 - diff) <= 3


# -- the request -------------------------------------------------------------------------------------


def test_request_carries_only_the_nonce():
    data = build_request(NONCE)
    assert len(data) == 48
    assert data[0] == 0x23  # LI 0, VN 4, mode 3
    assert data[1:40] == bytes(39)  # no stratum, poll, precision, refid or timestamps: nothing about our clock
    assert int.from_bytes(data[40:48], "big") == NONCE
    # ntplib, an independent reading of the layout, sees the same.
    parsed = ntplib.NTPPacket()
    parsed.from_data(data)
    assert (parsed.leap, parsed.version, parsed.mode, parsed.orig_timestamp) == (0, 4, 3, 0)


def test_nonces_are_random_nonzero_and_unique():
    nonces = [new_nonce() for _ in range(1000)]
    assert len(set(nonces)) == 1000 and all(0 < n < 2**64 for n in nonces)
    assert max(nonces) > 2**63 // 2  # 64 random bits, not a counter or a timestamp-sized value
    assert new_nonce(exclude={1, 2, 3}) not in {1, 2, 3}


def test_header_layout_matches_ntplib():
    packet = ntplib.NTPPacket(version=3, mode=4, tx_timestamp=3_990_000_000.5)
    packet.leap, packet.stratum, packet.poll, packet.precision = 1, 3, 6, -23
    packet.root_delay, packet.root_dispersion = 0.25, 0.125
    packet.ref_id = int.from_bytes(b"GPS\0", "big")
    packet.recv_timestamp = 3_990_000_000.25
    h = Header.unpack(packet.to_data() + b"\x00" * 20)  # trailing extension/MAC bytes are ignored
    assert (h.leap, h.version, h.mode, h.stratum, h.poll, h.precision) == (1, 3, 4, 3, 6, -23)
    assert (h.root_delay_s, h.root_dispersion_s, h.root_distance_s) == (0.25, 0.125, 0.25)
    assert h.refid == b"GPS\0"
    assert h.transmit == 3_990_000_000 << 32 | 1 << 31
    assert h.receive == 3_990_000_000 << 32 | 1 << 30
    assert Header.unpack(h.pack()) == h
    with pytest.raises(ValueError, match="47-byte packet"):
        Header.unpack(bytes(47))


# -- checking replies --------------------------------------------------------------------------------


def test_honest_reply_gives_offset_delay_and_interval():
    t2, t3, t4 = honest()
    m = check(reply(t2_ns=t2, t3_ns=t3, precision=-20, root_delay_s=0.002, root_dispersion_s=0.001), t4_ns=t4)
    assert isinstance(m, Measurement)
    assert m.offset_s == pytest.approx(0.250, abs=2e-9)
    assert m.delay_s == pytest.approx(0.020, abs=2e-9)
    expected_error = 0.010 + 0.002 / 2 + 0.001 + 2**-20 + LOCAL_READ_PRECISION_S
    assert m.error_s == pytest.approx(expected_error, abs=2e-5)  # short format rounds to 15 µs
    assert (m.t1_ns, m.t4_ns, m.stratum, m.leap, m.refid) == (T1, t4, 2, 0, b"LOCL")


@given(
    offset_ms=st.floats(-5000, 5000),
    fwd_ms=st.floats(0, 500),
    ret_ms=st.floats(0, 500),
    proc_ms=st.floats(0, 50),
    root_delay_ms=st.floats(0, 1000),
    root_disp_ms=st.floats(0, 900),
)
def test_interval_always_contains_the_true_offset(
    *, offset_ms: float, fwd_ms: float, ret_ms: float, proc_ms: float, root_delay_ms: float, root_disp_ms: float
):
    """However asymmetric the two paths, θ ± λ holds the truth (RFC 5905: |error| ≤ δ/2)."""
    assume(root_delay_ms / 2 + root_disp_ms <= 1500)
    t2, t3, t4 = honest(round(offset_ms * MS), round(fwd_ms * MS), round(proc_ms * MS), round(ret_ms * MS))
    m = check(
        reply(t2_ns=t2, t3_ns=t3, root_delay_s=root_delay_ms / 1000, root_dispersion_s=root_disp_ms / 1000),
        t4_ns=t4,
    )
    assert isinstance(m, Measurement)
    assert m.offset_s - m.error_s <= offset_ms / 1000 <= m.offset_s + m.error_s
    assert m.delay_s == pytest.approx((fwd_ms + ret_ms) / 1000, abs=1e-6)


def test_reply_straddling_the_2036_rollover():
    """Host just before era 1, server just after: a correct offset, not a 136-year one."""
    t1 = ERA1_START_NS - 5 * MS
    t2, t3 = t1 + 3 * MS + 100 * MS, t1 + 4 * MS + 100 * MS  # server 100 ms ahead, already in era 1
    t4 = t1 + 7 * MS
    assert to_ntp(t3) >> 32 == 0
    m = check_reply(reply(t2_ns=t2, t3_ns=t3), requests={NONCE: t1}, t4_ns=t4)
    assert isinstance(m, Measurement)
    assert m.offset_s == pytest.approx(0.100, abs=2e-9)
    assert m.delay_s == pytest.approx(0.006, abs=2e-9)


def test_truncated_reply_is_ignored():
    t2, t3, t4 = honest()
    result = check(reply(t2_ns=t2, t3_ns=t3)[:40], t4_ns=t4)
    assert result == Ignored("replies truncated to 40 bytes (an NTP header has 48)")


def test_wrong_origin_is_ignored_not_rejected():
    """A spoofed reply must not end the wait: it is Ignored, so the loop keeps listening."""
    t2, t3, t4 = honest(1800 * NS)
    result = check(reply(t2_ns=t2, t3_ns=t3, origin=NONCE ^ 1), t4_ns=t4)
    assert isinstance(result, Ignored)
    assert "wrong origin timestamp" in result.why


def test_our_t1_as_origin_is_not_accepted():
    """Only the nonce authenticates: a server echoing our real T1 (which we never sent) is bogus."""
    t2, t3, t4 = honest()
    assert isinstance(check(reply(t2_ns=t2, t3_ns=t3, origin=unix_ns_to_ntp(T1)), t4_ns=t4), Ignored)


def test_duplicate_of_an_answered_request_is_ignored():
    t2, t3, t4 = honest()
    result = check_reply(reply(t2_ns=t2, t3_ns=t3), requests={}, t4_ns=t4, answered={NONCE})
    assert result == Ignored("replies repeating an answer already received (duplicate or replay)")


def test_reply_to_any_outstanding_request_is_matched_to_its_own_t1():
    t2, t3, t4 = honest()
    other_t1 = T1 - 500 * MS  # an earlier request, answered late
    m = check_reply(reply(t2_ns=t2, t3_ns=t3, origin=7), requests={NONCE: T1, 7: other_t1}, t4_ns=t4)
    assert isinstance(m, Measurement)
    assert (m.nonce, m.t1_ns) == (7, other_t1)
    assert m.delay_s == pytest.approx(0.520, abs=2e-9)


@pytest.mark.parametrize("code", ["DENY", "RSTR", "RATE", "XFOO"])
def test_kiss_of_death_with_our_nonce_is_authentic(code: str):
    t2, t3, t4 = honest()
    data = reply(t2_ns=t2, t3_ns=t3, leap=3, stratum=0, refid=code.encode())
    assert check(data, t4_ns=t4) == Kiss(NONCE, code, 3)


@pytest.mark.parametrize("code", ["DENY", "RATE"])
def test_kiss_of_death_with_a_wrong_origin_is_ignored(code: str):
    """CVE-2015-7704: an off-path attacker must not be able to silence or slow a server for us."""
    t2, t3, t4 = honest()
    result = check(reply(t2_ns=t2, t3_ns=t3, stratum=0, refid=code.encode(), origin=99), t4_ns=t4)
    assert isinstance(result, Ignored)
    assert f"Kiss-o'-Death {code} replies with a wrong origin" in result.why


def test_kiss_code_that_is_not_text_is_shown_in_hex():
    t2, t3, t4 = honest()
    assert check(reply(t2_ns=t2, t3_ns=t3, stratum=0, refid=b"\x01\x02\xff\x00"), t4_ns=t4) == Kiss(
        NONCE, "0x0102ff00", 0
    )


def test_kiss_reasons_tell_what_to_do():
    assert "refuses us" in kiss_reason("DENY") and "must not be polled again" in kiss_reason("DENY")
    assert "refuses us" in kiss_reason("RSTR") and "must not be polled again" in kiss_reason("RSTR")
    assert "asked us to slow down" in kiss_reason("RATE")
    assert "XFOO" in kiss_reason("XFOO") and "not used" in kiss_reason("XFOO")


@pytest.mark.parametrize(
    ("fields", "t_shift", "expected"),
    [
        ({"mode": 3}, {}, "mode 3 in the reply (expected 4"),
        ({"mode": 5}, {}, "mode 5 in the reply"),
        ({"version": 2}, {}, "version 2 in the reply (expected 3 or 4)"),
        ({"version": 5}, {}, "version 5"),
        ({"leap": 3}, {}, "leap indicator 3 (alarm): the server's clock is not synchronised"),
        ({"stratum": 16}, {}, "stratum 16: the server is not synchronised (usable: 1–15)"),
        ({"stratum": 200}, {}, "stratum 200"),
        (
            {"root_delay_s": 2.0, "root_dispersion_s": 0.6},
            {},
            "root distance 1.600 s (root delay 2.000 s / 2 + root dispersion 0.600 s) exceeds the limit of 1.5 s",
        ),
        ({}, {"t2": 2 * NS}, "receive timestamp 2026-06-01T12:00:02.260000Z is later than transmit timestamp"),
        ({}, {"t2": -NS}, "negative round-trip delay -0.980000 s"),
        ({}, {"both": int((datetime(1990, 1, 1, tzinfo=UTC).timestamp() - T1 / NS) * NS)}, "claims 1990-01-01"),
        ({}, {"both": int((datetime(2050, 1, 1, tzinfo=UTC).timestamp() - T1 / NS) * NS)}, "claims 2050-01-01"),
    ],
)
def test_each_check_rejects_with_the_field_and_value(fields: dict, t_shift: dict, expected: str):
    t2, t3, t4 = honest()
    t2 += t_shift.get("t2", 0) + t_shift.get("both", 0)
    t3 += t_shift.get("both", 0)
    result = check(reply(t2_ns=t2, t3_ns=t3, **fields), t4_ns=t4)
    assert isinstance(result, Rejected), result
    assert expected in result.reason
    assert result.nonce == NONCE


def test_implausible_server_time_names_the_claim():
    t2, t3, t4 = honest()
    shift = int((datetime(1990, 6, 1, tzinfo=UTC).timestamp() - T1 / NS) * NS)
    result = check(reply(t2_ns=t2 + shift, t3_ns=t3 + shift), t4_ns=t4)
    assert isinstance(result, Rejected)
    assert result.reason.startswith("transmit timestamp claims 1990-06-01")
    assert "before this release was built" in result.reason


def test_zero_transmit_and_zero_receive_are_rejected():
    """ntplib turned a zero transmit timestamp into an offset of −2e9 s."""
    t2, t3, t4 = honest()
    zero_xmt = build_packet(origin=NONCE, receive=to_ntp(t2), transmit=0)
    zero_rec = build_packet(origin=NONCE, receive=0, transmit=to_ntp(t3))
    r1, r2 = check(zero_xmt, t4_ns=t4), check(zero_rec, t4_ns=t4)
    assert isinstance(r1, Rejected) and r1.reason.startswith("transmit timestamp is zero")
    assert isinstance(r2, Rejected) and r2.reason.startswith("receive timestamp is zero")


def test_acceptable_edge_values():
    t2, t3, t4 = honest()
    for fields in ({"leap": 1}, {"leap": 2}, {"version": 3}, {"stratum": 1}, {"stratum": 15}):
        assert isinstance(check(reply(t2_ns=t2, t3_ns=t3, **fields), t4_ns=t4), Measurement), fields
    # Exactly at the limit is accepted; the limit is a parameter.
    at_limit = reply(t2_ns=t2, t3_ns=t3, root_delay_s=1.0, root_dispersion_s=1.0)  # 1.0 / 2 + 1.0
    assert isinstance(check(at_limit, t4_ns=t4), Measurement)
    assert isinstance(check(reply(t2_ns=t2, t3_ns=t3, root_dispersion_s=1.5), t4_ns=t4), Measurement)
    over = reply(t2_ns=t2, t3_ns=t3, root_delay_s=1.1, root_dispersion_s=1.0)
    assert isinstance(check(over, t4_ns=t4), Rejected)
    assert isinstance(check(over, t4_ns=t4, max_root_distance_s=2.0), Measurement)


def test_delay_a_hair_below_zero_is_clock_precision_not_an_error():
    """A sub-microsecond loopback exchange can come out slightly negative from reading precision."""
    t2 = T1 + 250 * MS
    t3 = t2 + 3_000  # 3 µs of server processing reported, while our round trip measured 2 µs
    t4 = T1 + 2_000
    m = check(reply(t2_ns=t2, t3_ns=t3, precision=-20), t4_ns=t4)
    assert isinstance(m, Measurement)
    assert m.raw_delay_s == pytest.approx(-1e-6, abs=1e-9)
    assert m.delay_s == 0.0  # clamped for λ and reporting


def test_origin_of():
    assert origin_of(build_packet(origin=42)) == 42
    assert origin_of(b"x" * 47) is None


# -- DNS with a deadline ----------------------------------------------------------------------------


def test_resolve_literals_without_dns():
    (v4,) = resolve("127.0.0.1", 123, timeout_s=0.1)
    assert (v4.family, v4.sockaddr, str(v4)) == (socket.AF_INET, ("127.0.0.1", 123), "127.0.0.1:123")
    for literal in ("::1", "[::1]"):
        (v6,) = resolve(literal, 123, timeout_s=0.1)
        assert (v6.family, v6.ip, v6.port, str(v6)) == (socket.AF_INET6, "::1", 123, "[::1]:123")
    assert v6.matches(("0:0::1", 123, 0, 0)) and not v6.matches(("::1", 124, 0, 0))


def test_resolve_localhost_from_the_hosts_file():
    addresses = resolve("localhost", 123, timeout_s=2.0)
    assert {a.ip for a in addresses} & {"127.0.0.1", "::1"}
    assert all(a.port == 123 for a in addresses)


@pytest.fixture
def stalled_dns(monkeypatch):
    """getaddrinfo that hangs until the test ends (as a resolver with an unreachable server does)."""
    release = threading.Event()
    calls: list[str] = []
    real = socket.getaddrinfo

    def hang(host, *args, **kwargs):
        calls.append(host)
        release.wait(30)
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(net.socket, "getaddrinfo", hang)
    yield calls
    release.set()
    deadline = time.monotonic() + 5
    while net._Lookup._pending and time.monotonic() < deadline:  # let the lookup threads finish
        time.sleep(0.01)


def test_resolve_stalled_dns_gives_up_at_its_deadline(stalled_dns):
    start = time.monotonic()
    with pytest.raises(ResolveError, match=r"DNS lookup of 'ntp\.stalled\.test' did not answer within 0\.2 s"):
        resolve("ntp.stalled.test", 123, timeout_s=0.2)
    assert 0.2 <= time.monotonic() - start < 0.3
    # A second attempt joins the lookup still running instead of piling up another thread.
    with pytest.raises(ResolveError):
        resolve("NTP.stalled.test", 123, timeout_s=0.05)
    assert stalled_dns == ["ntp.stalled.test"]


def test_resolve_unknown_name_is_a_clear_error(monkeypatch):
    def nxdomain(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(net.socket, "getaddrinfo", nxdomain)
    with pytest.raises(ResolveError, match=r"host name 'no-such\.invalid' not found in DNS"):
        resolve("no-such.invalid", 123, timeout_s=1)


def test_resolve_temporary_failure_says_so(monkeypatch):
    def again(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(net.socket, "getaddrinfo", again)
    with pytest.raises(ResolveError, match="failed temporarily"):
        resolve("flaky.test", 123, timeout_s=1)


@pytest.mark.parametrize(("host", "port", "message"), [("", 123, "empty host name"), ("a", 70000, "out of range")])
def test_resolve_bad_arguments(host: str, port: int, message: str):
    with pytest.raises(ResolveError, match=message):
        resolve(host, port, timeout_s=0.1)


# -- every error term a server declares about itself is bounded (issue 9, item 1) ---------------------


def test_precision_byte_plus_60_is_unusable_with_the_reason():
    """A liar declaring precision +60 (±2^60 s) would overlap every other source and vote everywhere."""
    t2, t3, t4 = honest()
    result = check(reply(t2_ns=t2, t3_ns=t3, precision=60), t4_ns=t4)
    assert isinstance(result, Rejected)
    assert result.reason == (
        "precision +60 (2^60 s = 1.15e+18 s) is coarser than 2^-1 s: a clock that coarse is never fit to serve "
        "time (RFC 5905 MAXDIST)"
    )


@given(
    precision=st.integers(min_value=-128, max_value=127),
    root_delay=st.integers(min_value=0, max_value=2**32 - 1),
    root_dispersion=st.integers(min_value=0, max_value=2**32 - 1),
    limit_s=st.sampled_from([0.5, DEFAULT_MAX_ROOT_DISTANCE_S, 3.0, 16.0]),
)
def test_self_declared_error_terms_are_bounded_or_the_reply_is_unusable(
    precision: int, root_delay: int, root_dispersion: int, limit_s: float
):
    """Whatever the precision, root delay and root dispersion bytes say, an accepted reply's interval is at
    most δ/2 + the root-distance limit + 2^MAX_PRECISION_LOG2 + our own reading precision wide, and a rejected
    one names the field."""
    t2, t3, t4 = honest()
    data = reply(t2_ns=t2, t3_ns=t3, precision=precision, root_delay_s=root_delay / 65536,
                 root_dispersion_s=root_dispersion / 65536)
    result = check(data, t4_ns=t4, max_root_distance_s=limit_s)
    distance_s = root_delay / 65536 / 2 + root_dispersion / 65536
    if precision > MAX_PRECISION_LOG2:
        assert isinstance(result, Rejected) and result.reason.startswith(f"precision {precision:+d} ")
    elif distance_s > limit_s:
        assert isinstance(result, Rejected) and result.reason.startswith("root distance ")
    else:
        assert isinstance(result, Measurement), result
        bound = result.delay_s / 2 + limit_s + 2.0**MAX_PRECISION_LOG2 + LOCAL_READ_PRECISION_S
        assert result.error_s <= bound + 1e-12

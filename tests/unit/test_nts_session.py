"""The NTS session's side of each exchange (measure/nts/source.py ``_Wrap``): cookies spent and asked back, replies
judged before any field is believed, crypto-NAKs told apart from unauthenticated kisses. Packets are built here
as a server builds them (extensions.py), keys are random: no network."""

from __future__ import annotations

import os
from collections import deque

from timeguard.measure.ntp import Header, Ignored, Kiss, Rejected
from timeguard.measure.nts.extensions import FieldType, authenticator, field, parse_fields
from timeguard.measure.nts.ke import KeResult, Validity
from timeguard.measure.nts.records import Aead
from timeguard.measure.nts.source import JAR_SIZE, NtsSession, _Wrap

C2S, S2C = os.urandom(32), os.urandom(32)


def wrap(cookies: int = JAR_SIZE) -> _Wrap:
    session = NtsSession("nts.example.net")
    session.ke = KeResult(Aead.AEAD_AES_SIV_CMAC_256, C2S, S2C, (), "nts.example.net", 123, Validity(0, 2**40),
                          "192.0.2.1:4460", 0.0)
    session.cookies = deque(bytes([i]) * 100 for i in range(cookies))
    return _Wrap(session, session.ke)


def server_reply(request: bytes, *, stratum: int = 2, refid: bytes = b"GPS\0", cookies: int = 1,
                 authenticated: bool = True, uid: bytes | None = None) -> tuple[bytes, Header]:
    req = Header.unpack(request)
    if uid is None:
        uid = next(f.body for f in parse_fields(request) if f.type == FieldType.UNIQUE_IDENTIFIER)
    header = Header(0, 4, 4, stratum, 0, -20, 0, 0, refid, 0, req.transmit, 1 << 32, 1 << 32).pack()
    packet = header + field(FieldType.UNIQUE_IDENTIFIER, uid)
    if authenticated:
        plaintext = b"".join(field(FieldType.COOKIE, b"n" * 100) for _ in range(cookies))
        packet += authenticator(packet, S2C, plaintext)
    return packet, Header.unpack(packet)


def test_each_request_spends_a_cookie_and_asks_for_what_the_jar_lacks():
    w = wrap(cookies=8)
    first = w.request(1)
    assert len(w.session.cookies) == 7
    assert sum(f.type == FieldType.COOKIE_PLACEHOLDER for f in parse_fields(first)) == 0  # one comes back with it
    w = wrap(cookies=3)
    second = w.request(2)
    assert sum(f.type == FieldType.COOKIE_PLACEHOLDER for f in parse_fields(second)) == 5  # 2 left + 1 + 5 = 8


def test_no_cookie_means_no_request():
    assert wrap(cookies=0).request(1) is None


def test_an_authentic_reply_refills_the_jar_up_to_its_size():
    w = wrap(cookies=3)
    request = w.request(5)
    data, header = server_reply(request, cookies=6)
    assert w.judge(data, header) is None
    assert len(w.session.cookies) == JAR_SIZE


def test_a_reply_to_another_identifier_or_key_is_rejected():
    w = wrap()
    request = w.request(5)
    data, header = server_reply(request, uid=b"u" * 32)
    judged = w.judge(data, header)
    assert isinstance(judged, Rejected) and "unique identifier does not match" in judged.reason
    data, header = server_reply(request)
    forged = data[:40] + b"\x01" + data[41:]
    judged = w.judge(forged, Header.unpack(forged))
    assert isinstance(judged, Rejected) and "authenticator does not verify" in judged.reason


def test_a_nak_with_our_identifier_is_a_kiss_and_counted():
    w = wrap()
    request = w.request(5)
    data, header = server_reply(request, stratum=0, refid=b"NTSN", authenticated=False)
    judged = w.judge(data, header)
    assert isinstance(judged, Kiss) and judged.code == "NTSN" and w.naks == 1


def test_unauthenticated_kisses_other_than_a_nak_and_naks_for_others_are_ignored():
    w = wrap()
    request = w.request(5)
    data, header = server_reply(request, stratum=0, refid=b"RATE", authenticated=False)
    judged = w.judge(data, header)
    assert isinstance(judged, Ignored) and "unauthenticated Kiss-o'-Death 'RATE'" in judged.why
    data, header = server_reply(request, stratum=0, refid=b"NTSN", authenticated=False, uid=b"x" * 32)
    assert isinstance(w.judge(data, header), Ignored) and w.naks == 0


def test_the_sample_carries_the_session_state():
    w = wrap(cookies=8)
    w.request(1)
    extra = w.sample_extra()
    auth = extra["auth"]
    assert (auth.mode, auth.aead, auth.key_bits, auth.cookies, auth.cookie_bytes) == (
        "nts", "AEAD_AES_SIV_CMAC_256", 256, 7, 100)
    assert extra["operator"] == "example.net"

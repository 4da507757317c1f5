"""NTS-KE records (RFC 8915 §4): the codec and the judgement of a response, over every class of malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.measure.nts.records import (
    Aead,
    KeRecordError,
    Record,
    RecordType,
    build_request,
    complete_length,
    iter_records,
    parse_response,
    u16_list,
)

EOM = Record(RecordType.END_OF_MESSAGE, True, b"")


def good(cookies: int = 2, *extra: Record) -> list[Record]:
    return [
        Record(RecordType.NEXT_PROTOCOL, True, u16_list([0])),
        Record(RecordType.AEAD, True, u16_list([15])),
        *[Record(RecordType.NEW_COOKIE, False, bytes([i + 1]) * 64) for i in range(cookies)],
        *extra,
        EOM,
    ]


def wire(records: list[Record]) -> bytes:
    return b"".join(r.pack() for r in records)


def test_the_request_is_ntpv4_aes_siv_and_end_of_message_all_critical():
    records = [r for _, r in iter_records(build_request())]
    assert [(r.type, r.critical, r.body) for r in records] == [
        (1, True, b"\0\0"), (4, True, b"\0\x0f"), (0, True, b"")]


def test_a_good_response_gives_its_cookies_server_and_port():
    data = wire(good(3, Record(RecordType.SERVER, True, b"ntp.example"), Record(RecordType.PORT, True, b"\x01\x7b")))
    response = parse_response(data)
    assert response.aead is Aead.AEAD_AES_SIV_CMAC_256
    assert len(response.cookies) == 3 and response.server == "ntp.example" and response.port == 379
    assert complete_length(data) == len(data)


@pytest.mark.parametrize(("records", "reason"), [
    ([Record(RecordType.ERROR, True, u16_list([2])), EOM], "Error 2 (Internal Server Error)"),
    ([Record(RecordType.ERROR, True, u16_list([99])), EOM], "Error 99 (unknown error)"),
    ([Record(RecordType.ERROR, True, b"\0"), EOM], "expected a 16-bit code"),
    (good(2, Record(RecordType.WARNING, True, u16_list([3]))), "Warning 3"),
    (good(2, Record(0x4000, True, b"")), "unknown critical record type 16384"),
    (good(0), "no cookie"),
    (good(2, Record(RecordType.NEW_COOKIE, False, b"")), "empty cookie"),
    (good(2)[1:], "no Next Protocol"),
    ([good()[0], *good()[2:]], "no AEAD"),
    ([good()[0], good()[0], *good()[1:]], "a second Next Protocol"),
    ([good()[0], Record(RecordType.AEAD, True, u16_list([15, 16])), *good()[2:]], "not exactly one"),
    ([good()[0], Record(RecordType.AEAD, True, b"\0"), *good()[2:]], "not a list of 16-bit ids"),
    ([Record(RecordType.NEXT_PROTOCOL, True, u16_list([0, 1])), *good()[1:]], "declined NTPv4"),
    (good(2, Record(RecordType.PORT, True, b"\0\0")), "port 0"),
    (good(2, Record(RecordType.SERVER, True, b"a b")), "is not a host name"),
    (good(2, Record(RecordType.SERVER, True, b"\xff")), "not ASCII"),
    (good(2)[:-1], "no End of Message"),
    ([*good(2), Record(RecordType.NEW_COOKIE, False, b"late")], "more data follows"),
    ([*good(2)[:-1], Record(RecordType.END_OF_MESSAGE, True, b"x")], "has a 1-byte body"),
])
def test_refused_responses_say_why(records, reason):
    with pytest.raises(KeRecordError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        parse_response(wire(records))


def test_an_unknown_non_critical_record_is_ignored():
    assert len(parse_response(wire(good(2, Record(0x4000, False, b"whatever")))).cookies) == 2


@given(st.data())
def test_any_truncation_is_incomplete_or_refused_never_a_crash(data):
    full = wire(good(3))
    cut = data.draw(st.integers(0, len(full) - 1))
    assert complete_length(full[:cut]) is None
    with pytest.raises(KeRecordError):
        parse_response(full[:cut])


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_or_parsed_never_a_crash(blob):
    try:
        response = parse_response(blob)
    except KeRecordError:
        return
    assert response.cookies  # anything accepted has what a session needs


@given(st.integers(0, 0xFFFF), st.binary(max_size=40))
def test_a_length_that_overruns_the_data_is_named(length, body):
    data = struct.pack("!HH", 0x8001, length) + body
    if length <= len(body):
        return
    with pytest.raises(KeRecordError, match="announced"):
        list(iter_records(data))


@given(st.lists(st.tuples(st.integers(0, 0x7FFF), st.booleans(), st.binary(max_size=20)), max_size=8))
def test_records_round_trip(items):
    records = [Record(t, c, b) for t, c, b in items]
    assert [r for _, r in iter_records(wire(records))] == records

"""NTS extension fields (RFC 8915 §5, RFC 7822): building a request, opening a reply, every malformed class refused."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.measure.ntp import build_request as ntp_header
from timeguard.measure.nts.extensions import (
    FieldError,
    FieldType,
    authenticator,
    build_request,
    field,
    open_reply,
    parse_fields,
)

C2S, S2C = os.urandom(32), os.urandom(32)
UID = bytes(range(32))


def reply(uid: bytes = UID, cookies: tuple[bytes, ...] = (b"c" * 100,), key: bytes = S2C,
          before: bytes = b"", after: bytes = b"") -> bytes:
    """A reply as a server builds it: header, UID, the authenticator encrypting the new cookies."""
    packet = ntp_header(12345) + field(FieldType.UNIQUE_IDENTIFIER, uid) + before
    plaintext = b"".join(field(FieldType.COOKIE, c) for c in cookies)
    return packet + authenticator(packet, key, plaintext) + after


def test_a_request_carries_uid_cookie_placeholders_and_an_authenticator_that_covers_them():
    packet = build_request(ntp_header(7), uid=UID, cookie=b"k" * 100, placeholders=3, c2s_key=C2S)
    fields = parse_fields(packet)
    assert [f.type for f in fields] == [0x0104, 0x0204, 0x0304, 0x0304, 0x0304, 0x0404]
    assert fields[0].body == UID and fields[1].body == b"k" * 100
    assert all(f.body == b"\0" * 100 for f in fields[2:5])
    assert len(packet) % 4 == 0
    # The server's side of the check: the client's authenticator opens with C2S over everything before it.
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    auth = fields[-1]
    nonce_len, ct_len = struct.unpack_from("!HH", auth.body)
    nonce, ct = auth.body[4 : 4 + nonce_len], auth.body[4 + nonce_len : 4 + nonce_len + ct_len]
    assert AESSIV(C2S).decrypt(ct, [packet[: auth.offset], nonce]) == b""


def test_an_authentic_reply_gives_its_cookies():
    assert open_reply(reply(cookies=(b"a" * 100, b"b" * 96)), uid=UID, s2c_key=S2C).cookies == (b"a" * 100, b"b" * 96)


@pytest.mark.parametrize(("data", "reason"), [
    (reply(key=os.urandom(32)), "authenticator does not verify"),
    (reply(uid=b"x" * 32), "unique identifier does not match"),
    (ntp_header(1) + field(FieldType.UNIQUE_IDENTIFIER, UID), "no Authenticator"),
    (reply(after=field(FieldType.AUTHENTICATOR, b"\0" * 36)), "2 Authenticator extension fields"),
    (reply(before=field(FieldType.UNIQUE_IDENTIFIER, UID)), "2 Unique Identifier fields"),
    (reply()[:-4], "truncated"),
    (reply() + b"\0\0", "stray bytes"),
    (reply() + struct.pack("!HH", 0x0104, 8) + b"\0" * 4, "length 8"),
    (reply() + struct.pack("!HH", 0x0104, 18) + b"\0" * 14, "length 18"),
])
def test_bad_replies_are_refused_with_their_reason(data, reason):
    with pytest.raises(FieldError, match=reason):
        open_reply(data, uid=UID, s2c_key=S2C)


@pytest.mark.parametrize(("body", "reason"), [
    (struct.pack("!HH", 0, 16) + b"\0" * 16, "nonce length 0"),
    (struct.pack("!HH", 16, 8) + b"\0" * 24, "ciphertext length 8"),
    (struct.pack("!HH", 16, 200) + b"\0" * 32, "its body has"),
])
def test_malformed_authenticator_bodies_are_named(body, reason):
    packet = ntp_header(1) + field(FieldType.UNIQUE_IDENTIFIER, UID) + field(FieldType.AUTHENTICATOR, body)
    with pytest.raises(FieldError, match=reason):
        open_reply(packet, uid=UID, s2c_key=S2C)


@given(st.integers(48, 400), st.binary(min_size=1, max_size=1))
def test_any_single_byte_changed_after_the_header_fails_authentication_or_parsing(position, byte):
    data = bytearray(reply())
    position = min(position, len(data) - 1)
    if data[position] == byte[0]:
        return
    data[position] = byte[0]
    with pytest.raises(FieldError):
        open_reply(bytes(data), uid=UID, s2c_key=S2C)


@given(st.integers(0, 47), st.integers(1, 255))
def test_any_header_change_fails_authentication(position, delta):
    data = bytearray(reply())
    data[position] = (data[position] + delta) % 256
    with pytest.raises(FieldError, match="authenticator does not verify"):
        open_reply(bytes(data), uid=UID, s2c_key=S2C)


@given(st.integers(0, 200))
def test_any_truncation_is_refused(cut):
    data = reply()
    if cut >= len(data) - 48:
        return
    with pytest.raises(FieldError):
        open_reply(data[: len(data) - 1 - cut], uid=UID, s2c_key=S2C)


@given(st.binary(max_size=200))
def test_arbitrary_extension_bytes_never_crash(blob):
    try:
        open_reply(ntp_header(1) + blob, uid=UID, s2c_key=S2C)
    except FieldError:
        return
    pytest.fail("random bytes authenticated")


@given(st.integers(0, 0xFFFF), st.binary(max_size=60))
def test_parse_fields_accepts_only_aligned_sized_fields_within_the_packet(kind, body):
    packet = ntp_header(1) + struct.pack("!HH", kind, 4 + len(body)) + body
    if len(body) % 4 == 0 and len(body) >= 12:
        assert parse_fields(packet)[0].body == body
    else:
        with pytest.raises(FieldError):
            parse_fields(packet)

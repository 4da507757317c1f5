"""NTS extension fields of NTP packets (RFC 8915 §5, RFC 7822): a pure codec and the AEAD around them.

A request is the 48-byte header followed by Unique Identifier (32 random bytes, echoed by the server), one Cookie,
Cookie Placeholders (one per extra cookie wanted) and the Authenticator, whose AES-SIV-CMAC-256 tag covers the
whole packet before it (associated data ``[packet_before_authenticator, nonce]``). A reply carries the identifier,
and an Authenticator whose encrypted part holds the new cookies. Every length rule is checked: a field is 4-byte
aligned, at least 16 bytes (RFC 7822), inside the packet; the authenticator's nonce and ciphertext lengths fit its
body. Nothing here does I/O; :class:`FieldError` says what is wrong.
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

HEADER_LEN = 48
UID_BYTES = 32
NONCE_BYTES = 16  # AES-SIV takes any nonce; 16 bytes is what chrony and RFC 8915's examples use
SIV_TAG_BYTES = 16
MIN_FIELD_LEN = 16  # RFC 7822 §3
_HEAD = struct.Struct("!HH")


class FieldType(enum.IntEnum):
    UNIQUE_IDENTIFIER = 0x0104
    COOKIE = 0x0204
    COOKIE_PLACEHOLDER = 0x0304
    AUTHENTICATOR = 0x0404


class FieldError(ValueError):
    """A packet whose extension fields are malformed, or whose authentication fails; the message says which."""


@dataclass(frozen=True, slots=True)
class Field:
    type: int
    body: bytes
    offset: int  # where the field starts in the packet


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def field(kind: int, body: bytes) -> bytes:
    """One extension field: the body zero-padded to 4 bytes and to the 16-byte minimum."""
    body = _pad4(body)
    body += b"\0" * max(MIN_FIELD_LEN - 4 - len(body), 0)
    return _HEAD.pack(kind, 4 + len(body)) + body


def parse_fields(data: bytes, start: int = HEADER_LEN) -> list[Field]:
    """The extension fields from ``start`` to the end of ``data``; raises FieldError for any length that breaks the
    rules (a packet must end exactly at the end of its last field: NTS packets carry no legacy MAC)."""
    fields = []
    offset = start
    while offset < len(data):
        left = len(data) - offset
        if left < 4:
            raise FieldError(f"{left} stray bytes after the last extension field at byte {offset}")
        kind, length = _HEAD.unpack_from(data, offset)
        if length < MIN_FIELD_LEN or length % 4:
            raise FieldError(
                f"extension field 0x{kind:04x} at byte {offset} has length {length} "
                f"(must be a multiple of 4, at least {MIN_FIELD_LEN})"
            )
        if length > left:
            raise FieldError(f"extension field 0x{kind:04x} at byte {offset} is truncated ({left} of {length} bytes)")
        fields.append(Field(kind, data[offset + 4 : offset + length], offset))
        offset += length
    return fields


def new_uid() -> bytes:
    return os.urandom(UID_BYTES)


def build_request(header: bytes, *, uid: bytes, cookie: bytes, placeholders: int, c2s_key: bytes) -> bytes:
    """An authenticated NTS request: ``header`` plus UID, cookie, ``placeholders`` cookie placeholders (each as long
    as the cookie, RFC 8915 §5.5) and the authenticator over all of it."""
    packet = header + field(FieldType.UNIQUE_IDENTIFIER, uid) + field(FieldType.COOKIE, cookie)
    packet += field(FieldType.COOKIE_PLACEHOLDER, b"\0" * len(cookie)) * placeholders
    return packet + authenticator(packet, c2s_key, b"")


def authenticator(packet: bytes, key: bytes, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """The Authenticator field for ``packet`` (everything before it), encrypting ``plaintext`` (fields)."""
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    ciphertext = AESSIV(key).encrypt(plaintext, [packet, nonce])
    body = struct.pack("!HH", len(nonce), len(ciphertext)) + _pad4(nonce) + _pad4(ciphertext)
    return field(FieldType.AUTHENTICATOR, body)


@dataclass(frozen=True, slots=True)
class Opened:
    """An authenticated reply: the cookies it carried (in its encrypted part)."""

    cookies: tuple[bytes, ...]


def find_uid(fields: list[Field]) -> bytes | None:
    uids = [f.body for f in fields if f.type == FieldType.UNIQUE_IDENTIFIER]
    return uids[0] if len(uids) == 1 else None


def has_authenticator(fields: list[Field]) -> bool:
    return any(f.type == FieldType.AUTHENTICATOR for f in fields)


def open_reply(data: bytes, *, uid: bytes, s2c_key: bytes) -> Opened:
    """Verify an NTS reply: exactly one authenticator, the request's unique identifier before it, the tag over
    everything before it; returns the cookies of its encrypted part. Raises FieldError with the reason."""
    fields = parse_fields(data)
    auths = [f for f in fields if f.type == FieldType.AUTHENTICATOR]
    if not auths:
        raise FieldError("no Authenticator extension field: the reply is not authenticated")
    if len(auths) > 1:
        raise FieldError(f"{len(auths)} Authenticator extension fields (exactly one allowed)")
    auth = auths[0]
    covered = [f for f in fields if f.offset < auth.offset]  # fields after the authenticator prove nothing
    uids = [f.body for f in covered if f.type == FieldType.UNIQUE_IDENTIFIER]
    if len(uids) != 1:
        raise FieldError(f"{len(uids)} Unique Identifier fields before the authenticator (exactly one required)")
    if uids[0] != uid:
        raise FieldError("unique identifier does not match our request (a reply to another request, or a replay)")
    nonce, ciphertext = _authenticator_parts(auth.body)
    try:
        plaintext = AESSIV(s2c_key).decrypt(ciphertext, [data[: auth.offset], nonce])
    except InvalidTag:
        raise FieldError("authenticator does not verify: the reply was forged or modified on the way") from None
    cookies = tuple(f.body for f in parse_fields(plaintext, 0) if f.type == FieldType.COOKIE)
    return Opened(cookies)


def _authenticator_parts(body: bytes) -> tuple[bytes, bytes]:
    # A field's body has at least 12 bytes (parse_fields), so the two lengths are always there.
    nonce_len, ct_len = struct.unpack_from("!HH", body)
    nonce_end = 4 + nonce_len + (-nonce_len % 4)
    if nonce_len == 0 or ct_len < SIV_TAG_BYTES:
        raise FieldError(f"Authenticator with nonce length {nonce_len} and ciphertext length {ct_len} "
                         f"(a nonce and at least the {SIV_TAG_BYTES}-byte tag are required)")
    if nonce_end + ct_len > len(body):
        raise FieldError(f"Authenticator announces {nonce_len}+{ct_len} bytes of nonce and ciphertext; "
                         f"its body has {len(body) - 4}")
    return body[4 : 4 + nonce_len], body[nonce_end : nonce_end + ct_len]

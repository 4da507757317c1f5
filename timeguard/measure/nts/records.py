"""NTS-KE records (RFC 8915 §4): a pure codec, and the judgement of a server's whole response.

A record is a 16-bit word (the critical bit and a 15-bit type), a 16-bit body length and the body. The client
sends Next Protocol (NTPv4), AEAD (AEAD_AES_SIV_CMAC_256) and End of Message; the server answers with the protocol
and algorithm it picked, cookies, optionally another NTP server and port, and End of Message, or an Error record.
Nothing here does I/O: :func:`parse_response` turns bytes into a :class:`KeResponse` or raises
:class:`KeRecordError` naming what was wrong, so every malformed case is tested without a network.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

CRITICAL = 0x8000
_HEAD = struct.Struct("!HH")
#: A response longer than this is refused: eight cookies of a few hundred bytes are a few KiB.
MAX_RESPONSE_BYTES = 65536
MAX_SERVER_NAME_BYTES = 255


class RecordType(enum.IntEnum):
    END_OF_MESSAGE = 0
    NEXT_PROTOCOL = 1
    ERROR = 2
    WARNING = 3
    AEAD = 4
    NEW_COOKIE = 5
    SERVER = 6
    PORT = 7


class Protocol(enum.IntEnum):
    NTPV4 = 0


class Aead(enum.IntEnum):
    """AEAD algorithms (IANA "AEAD Algorithms"); timeguard speaks only AES-SIV-CMAC-256, as every server must."""

    AEAD_AES_SIV_CMAC_256 = 15


#: RFC 8915 §4.1.3 error codes.
ERROR_NAMES = {0: "Unrecognized Critical Record", 1: "Bad Request", 2: "Internal Server Error"}
#: RFC 8915 §4.1.4 defines no warning codes; any is named by its number.
WARNING_NAMES: dict[int, str] = {}


class KeRecordError(ValueError):
    """A response that is not a valid NTS-KE answer; the message says what and where (record index)."""


@dataclass(frozen=True, slots=True)
class Record:
    type: int  # the 15-bit type
    critical: bool
    body: bytes

    def pack(self) -> bytes:
        if len(self.body) > 0xFFFF:
            raise ValueError(f"record body of {len(self.body)} bytes does not fit a 16-bit length")
        return _HEAD.pack((CRITICAL if self.critical else 0) | (self.type & 0x7FFF), len(self.body)) + self.body


def u16_list(values: list[int] | tuple[int, ...]) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


def build_request(aead: Aead = Aead.AEAD_AES_SIV_CMAC_256) -> bytes:
    """The client's request: NTPv4, one AEAD algorithm, End of Message (all critical, RFC 8915 §4)."""
    return b"".join(
        r.pack()
        for r in (
            Record(RecordType.NEXT_PROTOCOL, True, u16_list([Protocol.NTPV4])),
            Record(RecordType.AEAD, True, u16_list([aead])),
            Record(RecordType.END_OF_MESSAGE, True, b""),
        )
    )


def iter_records(data: bytes) -> Iterator[tuple[int, Record]]:
    """Split ``data`` into records (index, record); raises KeRecordError for a truncated header or body."""
    offset = index = 0
    while offset < len(data):
        if len(data) - offset < _HEAD.size:
            raise KeRecordError(f"record {index}: truncated header ({len(data) - offset} of 4 bytes)")
        word, length = _HEAD.unpack_from(data, offset)
        body = data[offset + 4 : offset + 4 + length]
        if len(body) != length:
            raise KeRecordError(f"record {index}: body of {length} bytes announced, only {len(body)} received")
        yield index, Record(word & 0x7FFF, bool(word & CRITICAL), body)
        offset += 4 + length
        index += 1


def complete_length(data: bytes) -> int | None:
    """The length of the message up to and including its End of Message record, or None while it is incomplete
    (a reader keeps reading until this says the message is whole)."""
    offset = 0
    while len(data) - offset >= _HEAD.size:
        word, length = _HEAD.unpack_from(data, offset)
        if len(data) - offset - 4 < length:
            return None
        offset += 4 + length
        if word & 0x7FFF == RecordType.END_OF_MESSAGE:
            return offset
    return None


@dataclass(frozen=True, slots=True)
class KeResponse:
    """What a server granted: the AEAD, its cookies, and the NTP server to use (None: the KE server's host)."""

    aead: Aead
    cookies: tuple[bytes, ...]
    server: str | None
    port: int | None


def _u16s(index: int, record: Record, what: str) -> list[int]:
    if len(record.body) % 2:
        raise KeRecordError(f"record {index} ({what}): body of {len(record.body)} bytes is not a list of 16-bit ids")
    return [v for (v,) in struct.iter_unpack("!H", record.body)]


def _code(index: int, record: Record, what: str) -> int:
    if len(record.body) != 2:
        raise KeRecordError(f"record {index} ({what}): body of {len(record.body)} bytes, expected a 16-bit code")
    return int.from_bytes(record.body, "big")


def parse_response(data: bytes, *, offered: tuple[Aead, ...] = (Aead.AEAD_AES_SIV_CMAC_256,)) -> KeResponse:
    """Judge a server's whole response (RFC 8915 §4.1); raises :class:`KeRecordError` saying why it is refused."""
    protocols: list[int] | None = None
    aead: list[int] | None = None
    cookies: list[bytes] = []
    server: str | None = None
    port: int | None = None
    ended = False
    for index, record in iter_records(data):
        kind = record.type
        if kind == RecordType.END_OF_MESSAGE:
            if record.body:
                raise KeRecordError(f"record {index} (End of Message): has a {len(record.body)}-byte body")
            ended = True
            if complete_length(data) != len(data):
                raise KeRecordError(f"record {index} (End of Message): more data follows it")
            break
        if kind == RecordType.ERROR:
            code = _code(index, record, "Error")
            name = ERROR_NAMES.get(code, "unknown error")
            raise KeRecordError(f"the server sent Error {code} ({name})")
        if kind == RecordType.WARNING:
            code = _code(index, record, "Warning")
            name = WARNING_NAMES.get(code, "no warning code is defined by RFC 8915")
            raise KeRecordError(f"the server sent Warning {code} ({name}); its keys and cookies are not used")
        if kind == RecordType.NEXT_PROTOCOL:
            if protocols is not None:
                raise KeRecordError(f"record {index}: a second Next Protocol record")
            protocols = _u16s(index, record, "Next Protocol")
        elif kind == RecordType.AEAD:
            if aead is not None:
                raise KeRecordError(f"record {index}: a second AEAD record")
            aead = _u16s(index, record, "AEAD")
        elif kind == RecordType.NEW_COOKIE:
            if not record.body:
                raise KeRecordError(f"record {index} (New Cookie): empty cookie")
            cookies.append(record.body)
        elif kind == RecordType.SERVER:
            server = _server_name(index, record)
        elif kind == RecordType.PORT:
            port = _code(index, record, "Port")
            if port == 0:
                raise KeRecordError(f"record {index} (Port): port 0")
        elif record.critical:
            raise KeRecordError(f"record {index}: unknown critical record type {kind} (a client must refuse it)")
        # an unknown non-critical record is ignored (RFC 8915 §4)
    if not ended:
        raise KeRecordError("no End of Message record: the response is incomplete")
    if protocols is None:
        raise KeRecordError("no Next Protocol record in the response")
    if protocols != [Protocol.NTPV4]:
        raise KeRecordError(f"the server offers protocols {protocols}, expected exactly [0] (NTPv4): it declined NTPv4")
    if aead is None:
        raise KeRecordError("no AEAD record in the response")
    if len(aead) != 1 or aead[0] not in offered:
        offered_ids = [int(a) for a in offered]
        raise KeRecordError(f"the server chose AEAD {aead}, not exactly one of those offered {offered_ids}")
    if not cookies:
        raise KeRecordError("the server sent no cookie")
    return KeResponse(Aead(aead[0]), tuple(cookies), server, port)


def _server_name(index: int, record: Record) -> str:
    try:
        name = record.body.decode("ascii")
    except UnicodeDecodeError:
        raise KeRecordError(f"record {index} (Server): not ASCII") from None
    if not name or len(record.body) > MAX_SERVER_NAME_BYTES or not name.isprintable() or any(c.isspace() for c in name):
        raise KeRecordError(f"record {index} (Server): {name!r} is not a host name or address")
    return name

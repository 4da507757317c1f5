"""timeguard's own NTP client exchange: one server, several samples, every RFC 5905/4330 check.

ntplib checks nothing (research/time_anchors.md §7): it accepted a Kiss-o'-Death, an unsynchronised
server, a spoofed origin (+1800 s) and a zero transmit timestamp (−2e9 s), and it blocks in DNS and
breaks past 2036. So the exchange is done here, following beevik/ntp and RFC 5905/4330:

* the request's transmit field carries a random 64-bit nonce, never our time: a reply counts only if
  it echoes that nonce (off-path spoofing, and CVE-2015-7704 for Kiss-o'-Death), and the request leaks
  nothing about the local clock;
* T1/T4 come from one wall-clock reading plus the monotonic clock, so a clock step during the
  exchange cannot corrupt the measurement, and the bound includes how well that reading is tied to
  the monotonic clock (measure/anchor.py);
* only packets from the exact address *and* port asked are looked at, and a stray packet never ends
  the wait;
* NTP timestamps are placed in the era nearest the local clock, so a host past 2036-02-07 still works;
* nothing here raises for a network problem: every failure is a :class:`Sample` with a reason.

The validation is a pure function of bytes (:func:`check_reply`); the socket loop is :func:`query_ntp`. NTS
(measure/nts/) runs this same exchange through a :class:`ReplyAuth`, which wraps each request in extension fields
and authenticates each reply before any check here believes a field of it.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from timeguard.measure.anchor import read_anchor
from timeguard.measure.net import ResolvedAddress, ResolveError, format_address, resolve
from timeguard.measure.sanity import implausible
from timeguard.model import Sample, SourceKind, SourceState
from timeguard.timefmt import iso

NTP_PORT = 123
HEADER_LEN = 48
#: Seconds from the NTP prime epoch (1900-01-01) to the UNIX epoch (1970-01-01).
NTP_UNIX_DELTA_S = 2_208_988_800
_NS = 1_000_000_000
#: One NTP era: the 32-bit seconds field wraps every 2^32 s (first on 2036-02-07T06:28:16Z).
ERA_NS = (1 << 32) * _NS
VERSION = 4
MODE_CLIENT = 3
MODE_SERVER = 4
LEAP_ALARM = 3  # "clock not synchronised"
MAX_STRATUM = 15  # 16 means unsynchronised (RFC 5905 MAXSTRAT)
DEFAULT_MAX_ROOT_DISTANCE_S = 1.5  # between RFC 5905's MAXDIST (1 s) and chrony's maxdistance (3 s)
#: The coarsest clock precision a server may declare: 2^-1 s. The precision byte is a signed log2 of seconds
#: that goes into every interval, so a server claiming +60 (2^60 s) would vote for every offset at once. RFC
#: 5905 counts a peer's precision in its dispersion, hence in its root distance, and a peer whose root
#: distance reaches MAXDIST (1 s) is never fit (§11.2.1, A.5.2 fit()): a precision of 2^0 s or more can
#: never be used. Real clocks declare −6 (a 60 Hz tick) to −32; the root distance bounds root delay and
#: root dispersion, the other two terms a server declares about itself.
MAX_PRECISION_LOG2 = -1
#: The uncertainty of one local clock reading (clock_gettime plus the interpreter around it).
LOCAL_READ_PRECISION_S = 1e-6
#: Kiss codes after which the server must never be asked again (RFC 5905 §7.4: "demobilize").
KISS_STOP = frozenset({"DENY", "RSTR"})
KISS_RATE = "RATE"
KISS_NTS_NAK = "NTSN"  # RFC 8915 §5.7: the server could not decrypt the cookie

# LI/VN/mode, stratum, poll, precision, root delay, root dispersion, refid, reference, origin, receive,
# transmit. Root delay/dispersion are NTP short format (unsigned 16.16 s); timestamps are 32.32.
_HEADER = struct.Struct("!BBbbII4sQQQQ")
_RECV_BUFSIZE = 4096  # a header plus extension fields (NTS: a UID, an authenticator, up to 8 cookies)


# --------------------------------------------------------------------------------------------------
# Timestamps


def unix_ns_to_ntp(unix_ns: int) -> int:
    """A UNIX time in nanoseconds as a 64-bit NTP timestamp (32.32, era number dropped)."""
    ntp_ns = (unix_ns + NTP_UNIX_DELTA_S * _NS) % ERA_NS  # Python's % keeps it in [0, ERA_NS)
    seconds, rem_ns = divmod(ntp_ns, _NS)
    fraction = ((rem_ns << 32) + _NS // 2) // _NS  # round to the nearest 2^-32 s
    if fraction >> 32:  # rounded up to a whole second
        seconds, fraction = (seconds + 1) % (1 << 32), 0
    return (seconds << 32) | fraction


def ntp_to_unix_ns(timestamp: int, *, near_unix_ns: int) -> int:
    """A 64-bit NTP timestamp as UNIX nanoseconds, in the era that puts it nearest ``near_unix_ns``.

    A timestamp says nothing about its era, so the only sound choice is the one closest to a clock we
    already have (RFC 5905 §6): within ±68 years of the local clock it is exact, which keeps a host
    beyond 2036-02-07 working where ntplib fails.
    """
    seconds, fraction = timestamp >> 32, timestamp & 0xFFFF_FFFF
    era0_unix_ns = seconds * _NS + ((fraction * _NS + (1 << 31)) >> 32) - NTP_UNIX_DELTA_S * _NS
    era = (near_unix_ns - era0_unix_ns + ERA_NS // 2) // ERA_NS
    return era0_unix_ns + era * ERA_NS


def _iso_ns(unix_ns: int) -> str:
    return iso(unix_ns / _NS, "microseconds")


# --------------------------------------------------------------------------------------------------
# Packets


@dataclass(frozen=True, slots=True)
class Header:
    """The 48-byte NTP header, fields as on the wire (RFC 5905 §7.3)."""

    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int  # log2 seconds, signed
    root_delay: int  # NTP short format: 16.16 seconds
    root_dispersion: int
    refid: bytes
    reference: int  # 64-bit timestamps
    origin: int
    receive: int
    transmit: int

    @property
    def root_delay_s(self) -> float:
        return self.root_delay / 65536

    @property
    def root_dispersion_s(self) -> float:
        return self.root_dispersion / 65536

    @property
    def root_distance_s(self) -> float:
        """Λ = δ_root/2 + ε_root: the server's own "maximum error due to all causes" (RFC 5905 §11.2)."""
        return self.root_delay_s / 2 + self.root_dispersion_s

    @property
    def precision_s(self) -> float:
        return math.ldexp(1.0, self.precision)

    def pack(self) -> bytes:
        return _HEADER.pack(
            (self.leap & 3) << 6 | (self.version & 7) << 3 | (self.mode & 7),
            self.stratum,
            self.poll,
            self.precision,
            self.root_delay,
            self.root_dispersion,
            self.refid,
            self.reference,
            self.origin,
            self.receive,
            self.transmit,
        )

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Decode the first 48 bytes; extension fields or a MAC after them are ignored."""
        if len(data) < HEADER_LEN:
            raise ValueError(f"{len(data)}-byte packet, shorter than the {HEADER_LEN}-byte NTP header")
        (lvm, stratum, poll, precision, root_delay, root_disp, refid, ref, org, rec, xmt) = _HEADER.unpack_from(data)
        return cls(
            leap=lvm >> 6,
            version=(lvm >> 3) & 7,
            mode=lvm & 7,
            stratum=stratum,
            poll=poll,
            precision=precision,
            root_delay=root_delay,
            root_dispersion=root_disp,
            refid=refid,
            reference=ref,
            origin=org,
            receive=rec,
            transmit=xmt,
        )


def build_request(nonce: int) -> bytes:
    """A client request (VN 4, mode 3) whose only non-zero field is the transmit nonce.

    Everything else stays zero on purpose: the request must not reveal the local time (beevik/ntp,
    draft-ietf-ntp-data-minimization), and the real T1 never leaves this process.
    """
    return Header(
        leap=0,
        version=VERSION,
        mode=MODE_CLIENT,
        stratum=0,
        poll=0,
        precision=0,
        root_delay=0,
        root_dispersion=0,
        refid=b"\0\0\0\0",
        reference=0,
        origin=0,
        receive=0,
        transmit=nonce,
    ).pack()


def new_nonce(exclude: Collection[int] = ()) -> int:
    """A random non-zero 64-bit transmit timestamp, not one already in use in this query.

    Zero is excluded because a server that does not echo the origin sends zero there.
    """
    while True:
        nonce = int.from_bytes(os.urandom(8), "big")  # what secrets.randbits reads, without hmac/hashlib
        if nonce and nonce not in exclude:
            return nonce


def origin_of(data: bytes) -> int | None:
    """The origin timestamp a reply echoes, or None when the packet is too short to have one."""
    return int.from_bytes(data[24:32], "big") if len(data) >= HEADER_LEN else None


# --------------------------------------------------------------------------------------------------
# Checking one reply (pure)


@dataclass(frozen=True, slots=True)
class Measurement:
    """An accepted reply: the four timestamps (UNIX ns) and what the server said about itself."""

    nonce: int
    t1_ns: int  # client transmit (local, never sent)
    t2_ns: int  # server receive
    t3_ns: int  # server transmit
    t4_ns: int  # client receive (local)
    leap: int
    stratum: int
    precision_s: float
    root_delay_s: float
    root_dispersion_s: float
    refid: bytes

    @property
    def offset_s(self) -> float:
        """θ = ((T2 − T1) + (T3 − T4)) / 2, computed in integers so no precision is lost at 2^31 s."""
        return ((self.t2_ns - self.t1_ns) + (self.t3_ns - self.t4_ns)) / 2 / _NS

    @property
    def raw_delay_s(self) -> float:
        """δ = (T4 − T1) − (T3 − T2), as measured (may be a hair below zero from clock precision)."""
        return ((self.t4_ns - self.t1_ns) - (self.t3_ns - self.t2_ns)) / _NS

    @property
    def delay_s(self) -> float:
        return max(self.raw_delay_s, 0.0)

    @property
    def error_s(self) -> float:
        """λ: the half-width of the interval that holds the true offset if the server is honest.

        δ/2 covers any asymmetry of the two paths; the root distance covers the server's own error
        against its reference; the two precisions cover the reading of each clock.
        """
        return (
            self.delay_s / 2
            + self.root_delay_s / 2
            + self.root_dispersion_s
            + self.precision_s
            + LOCAL_READ_PRECISION_S
        )


@dataclass(frozen=True, slots=True)
class Kiss:
    """An authentic Kiss-o'-Death (stratum 0, origin matched); its timestamps are discarded."""

    nonce: int
    code: str
    leap: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """An authentic reply (origin matched) that failed a check; the reason names the field and value."""

    nonce: int
    reason: str
    leap: int | None = None
    stratum: int | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A packet that is not an answer to any request of ours: it is counted and the wait goes on."""

    why: str  # completes "ignored N replies ..."


ReplyCheck = Measurement | Kiss | Rejected | Ignored


class ReplyAuth(Protocol):
    """What turns the plain exchange into an authenticated one (NTS, measure/nts/source.py): it builds each request
    (extension fields around the header) and judges each reply whose origin matched, before any other check."""

    kind: SourceKind

    def request(self, nonce: int) -> bytes | None:
        """The packet for a request whose transmit field is ``nonce``; None when it cannot be sent (no cookie)."""

    def judge(self, data: bytes, header: Header) -> ReplyCheck | None:
        """None when the reply (origin matched) is authentic; else what it is (Rejected, a NAK as Kiss, Ignored)."""

    def sample_extra(self) -> dict[str, Any]:
        """Fields every Sample of this exchange carries (``auth``, ``operator``)."""


def check_reply(
    data: bytes,
    *,
    requests: Mapping[int, int],
    t4_ns: int,
    answered: Collection[int] = (),
    max_root_distance_s: float = DEFAULT_MAX_ROOT_DISTANCE_S,
    auth: ReplyAuth | None = None,
) -> ReplyCheck:
    """Classify one received packet.

    ``requests`` maps each outstanding nonce to the local T1 (UNIX ns) of that request; ``answered``
    holds nonces already answered (a second answer is a duplicate or a replay); ``t4_ns`` is the local
    receive time, which also picks the NTP era.

    The origin check comes first and anything that fails it — including a Kiss-o'-Death — is only
    :class:`Ignored`: without it an off-path attacker could feed us a time or silence the server
    (CVE-2015-7704). With ``auth``, the reply must then be authentic before any field of it is believed.
    """
    if len(data) < HEADER_LEN:
        return Ignored(f"replies truncated to {len(data)} bytes (an NTP header has {HEADER_LEN})")
    h = Header.unpack(data)
    t1_ns = requests.get(h.origin)
    if t1_ns is None:
        what = f"Kiss-o'-Death {_kiss_code(h.refid)} replies" if h.stratum == 0 else "replies"
        if h.origin in answered:
            return Ignored(f"{what} repeating an answer already received (duplicate or replay)")
        return Ignored(f"{what} with a wrong origin timestamp (not an answer to our request: spoofed or stale)")
    nonce = h.origin

    def reject(reason: str) -> Rejected:
        return Rejected(nonce, reason, leap=h.leap, stratum=h.stratum)

    if auth is not None and (judged := auth.judge(data, h)) is not None:
        return judged

    if h.mode != MODE_SERVER:
        return reject(f"mode {h.mode} in the reply (expected {MODE_SERVER}, a server's answer)")
    if h.version not in (3, 4):
        return reject(f"version {h.version} in the reply (expected 3 or 4)")
    if h.stratum == 0:
        # Only now, with the origin matched, is a kiss authentic enough to act on (RFC 5905 §7.4).
        return Kiss(nonce, _kiss_code(h.refid), h.leap)
    if h.transmit == 0:
        return reject("transmit timestamp is zero: the server did not say what time it is")
    if h.receive == 0:
        return reject("receive timestamp is zero: the server did not say when it got our request")
    if h.leap == LEAP_ALARM:
        return reject(f"leap indicator {LEAP_ALARM} (alarm): the server's clock is not synchronised")
    if h.stratum > MAX_STRATUM:
        return reject(f"stratum {h.stratum}: the server is not synchronised (usable: 1–{MAX_STRATUM})")
    if h.precision > MAX_PRECISION_LOG2:
        return reject(
            f"precision {h.precision:+d} (2^{h.precision} s = {h.precision_s:.3g} s) is coarser than "
            f"2^{MAX_PRECISION_LOG2} s: a clock that coarse is never fit to serve time (RFC 5905 MAXDIST)"
        )
    if h.root_distance_s > max_root_distance_s:
        return reject(
            f"root distance {h.root_distance_s:.3f} s (root delay {h.root_delay_s:.3f} s / 2 + root "
            f"dispersion {h.root_dispersion_s:.3f} s) exceeds the limit of {max_root_distance_s:g} s"
        )
    t2_ns = ntp_to_unix_ns(h.receive, near_unix_ns=t4_ns)
    t3_ns = ntp_to_unix_ns(h.transmit, near_unix_ns=t4_ns)
    if t2_ns > t3_ns:
        return reject(f"receive timestamp {_iso_ns(t2_ns)} is later than transmit timestamp {_iso_ns(t3_ns)}")
    why = implausible(t3_ns / _NS)
    if why is not None:
        return reject(f"transmit timestamp {why}")
    m = Measurement(
        nonce=nonce,
        t1_ns=t1_ns,
        t2_ns=t2_ns,
        t3_ns=t3_ns,
        t4_ns=t4_ns,
        leap=h.leap,
        stratum=h.stratum,
        precision_s=h.precision_s,
        root_delay_s=h.root_delay_s,
        root_dispersion_s=h.root_dispersion_s,
        refid=h.refid,
    )
    # Each of the four readings may be off by its clock's precision; beyond that a negative delay
    # means the server's timestamps contradict our own measurement of the round trip.
    tolerance_s = 2 * (h.precision_s + LOCAL_READ_PRECISION_S)
    if m.raw_delay_s < -tolerance_s:
        return reject(
            f"negative round-trip delay {m.raw_delay_s:+.6f} s: the server spent longer between receive "
            f"and transmit ({(t3_ns - t2_ns) / _NS:.6f} s) than our whole round trip "
            f"({(t4_ns - t1_ns) / _NS:.6f} s)"
        )
    return m


def _kiss_code(refid: bytes) -> str:
    text = refid.rstrip(b"\0").decode("ascii", errors="replace")
    if text and text.isprintable() and "\ufffd" not in text:
        return text
    return "0x" + refid.hex()


def kiss_reason(code: str) -> str:
    """What a person should know about a Kiss-o'-Death code (RFC 5905 §7.4, RFC 4330 §8)."""
    if code in KISS_STOP:
        what = "access denied" if code == "DENY" else "access restricted"
        return f"the server refuses us: Kiss-o'-Death {code} ({what}); it must not be polled again"
    if code == KISS_RATE:
        return "the server asked us to slow down: Kiss-o'-Death RATE; poll it less often"
    if code == KISS_NTS_NAK:
        return ("crypto-NAK (Kiss-o'-Death NTSN): the NTS server cannot use our cookie (its keys rotated, or it "
                "restarted); a new key exchange is made at the next poll")
    return f"Kiss-o'-Death {code} (stratum 0): the server sent no time, its timestamps are not used"


# --------------------------------------------------------------------------------------------------
# The exchange (I/O)


@dataclass(frozen=True, slots=True)
class _Pending:
    t1_ns: int
    mono_send_ns: int


class _SendFailed(Exception):
    """The first request could not be sent to this address (try the next one)."""


def query_ntp(
    host: str,
    port: int = NTP_PORT,
    *,
    name: str | None = None,
    samples: int = 4,
    timeout_s: float = 2.0,
    dns_timeout_s: float | None = None,
    max_root_distance_s: float = DEFAULT_MAX_ROOT_DISTANCE_S,
    wall_ns: Callable[[], int] = time.time_ns,
    auth: ReplyAuth | None = None,
) -> Sample:
    """Ask one NTP server ``samples`` times and keep the reply with the least delay (the clock filter).

    ``timeout_s`` bounds the whole query, DNS included; DNS has its own smaller deadline
    (``dns_timeout_s``, default ``min(1 s, timeout_s / 2)``). Never raises for a network problem: the
    result is a usable :class:`Sample`, or one with ``failure`` UNUSABLE (the server answered, but not
    with a time we may use) or UNREACHABLE (no valid answer) and a reason. ``wall_ns`` anchors the
    query once (measure/anchor.py); every T1/T4 is that reading plus monotonic time elapsed since. ``auth``
    makes it an authenticated (NTS) exchange: same checks, requests and replies wrapped by it.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, not {samples}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s}")
    start = time.monotonic()
    deadline = start + timeout_s
    label = name or host
    kind = auth.kind if auth is not None else SourceKind.NTP
    dns_budget_s = min(1.0, timeout_s / 2) if dns_timeout_s is None else min(dns_timeout_s, timeout_s)
    try:
        addresses = resolve(host, port, timeout_s=dns_budget_s)
    except ResolveError as exc:
        return Sample.failed(label, kind, SourceState.UNREACHABLE, str(exc), **(auth.sample_extra() if auth else {}))

    send_errors: list[str] = []
    for address in addresses:
        try:
            sock = socket.socket(address.family, socket.SOCK_DGRAM)
        except OSError as exc:  # e.g. IPv6 disabled in this kernel or container: try the next address
            send_errors.append(f"{address}: {exc}")
            continue
        try:
            with sock:
                return _exchange(
                    sock,
                    address,
                    label=label,
                    samples=samples,
                    deadline=deadline,
                    timeout_s=timeout_s,
                    wall_ns=wall_ns,
                    max_root_distance_s=max_root_distance_s,
                    auth=auth,
                )
        except _SendFailed as exc:  # e.g. IPv6 address on a host without IPv6 routes: try the next
            send_errors.append(str(exc))
        except OSError as exc:
            return Sample.failed(
                label,
                kind,
                SourceState.UNREACHABLE,
                f"socket error talking to {address}: {exc}",
                address=str(address),
                **(auth.sample_extra() if auth is not None else {}),
            )
    return Sample.failed(
        label,
        kind,
        SourceState.UNREACHABLE,
        "could not send a request: " + "; ".join(send_errors),
        address=str(addresses[0]),
        **(auth.sample_extra() if auth is not None else {}),
    )


def _exchange(
    sock: socket.socket,
    address: ResolvedAddress,
    *,
    label: str,
    samples: int,
    deadline: float,
    timeout_s: float,
    wall_ns: Callable[[], int],
    max_root_distance_s: float,
    auth: ReplyAuth | None = None,
) -> Sample:
    kind = auth.kind if auth is not None else SourceKind.NTP

    def extra() -> dict[str, Any]:  # read at the end: an authenticated exchange reports its cookies after it
        return auth.sample_extra() if auth is not None else {}

    # The single wall-clock reading of this query. Everything after is monotonic, so a step of the
    # host clock in the middle of the exchange moves neither T1 nor T4 against each other; the anchor's
    # own uncertainty (a preemption between the two readings) widens the interval below.
    anchor = read_anchor(wall_ns)
    local_wall_ns = anchor.wall_at

    # Each request gets an equal share of what is left, so a server that drops one packet still
    # gets its other requests asked in time; a reply ends a share early.
    share_s = max(deadline - time.monotonic(), 0.0) / samples
    outstanding: dict[int, _Pending] = {}
    answered: set[int] = set()
    kept: list[tuple[Measurement, float]] = []
    rejected: list[Rejected] = []
    ignored: Counter[str] = Counter()
    sent = 0
    max_sends = samples
    send_error: str | None = None
    waiting_on: int | None = None  # nonce of the latest request, while unanswered
    slot_end = 0.0

    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if sent < max_sends and (waiting_on is None or now >= slot_end):
            nonce = new_nonce(exclude=outstanding.keys() | answered)
            packet = build_request(nonce) if auth is None else auth.request(nonce)
            if packet is None:  # an authenticated exchange out of cookies: keep what is on its way
                send_error = f"request {sent + 1} not sent: no NTS cookie left"
                max_sends = sent
                continue
            mono_send_ns = time.monotonic_ns()
            try:
                sock.sendto(packet, address.sockaddr)
            except OSError as exc:
                if sent == 0:
                    raise _SendFailed(f"{address}: {exc}") from exc
                send_error = f"sending request {sent + 1} failed: {exc}"
                max_sends = sent  # keep what we have; wait for the replies still on their way
                continue
            outstanding[nonce] = _Pending(local_wall_ns(mono_send_ns), mono_send_ns)
            sent += 1
            waiting_on = nonce
            slot_end = min(now + share_s, deadline)
            continue
        if sent >= max_sends:
            if not outstanding:
                break  # every request answered
            if kept and now >= slot_end:
                break  # a result in hand: stragglers may not hold it up past their share
            wait_until = slot_end if kept else deadline  # nothing valid yet: late replies are welcome
        else:
            wait_until = slot_end
        sock.settimeout(max(wait_until - now, 1e-4))
        try:
            data, source = sock.recvfrom(_RECV_BUFSIZE)
        except TimeoutError:
            continue
        except ConnectionRefusedError:
            # An ICMP port-unreachable is as easy to forge as a reply, so it never ends the wait.
            ignored[f"ICMP port-unreachable replies for {address}"] += 1
            continue
        mono_recv_ns = time.monotonic_ns()
        if not address.matches(source):
            if address.matches((source[0], address.port)):
                ignored[f"replies from {format_address(source)} (not the port asked)"] += 1
            else:
                ignored[f"replies from {format_address(source)} (not the address asked)"] += 1
            continue
        result = check_reply(
            data,
            requests={n: p.t1_ns for n, p in outstanding.items()},
            t4_ns=local_wall_ns(mono_recv_ns),
            answered=answered,
            max_root_distance_s=max_root_distance_s,
            auth=auth,
        )
        if isinstance(result, Ignored):
            ignored[result.why] += 1
            continue
        pending = outstanding.pop(result.nonce)
        answered.add(result.nonce)
        if result.nonce == waiting_on:
            waiting_on = None
        if isinstance(result, Kiss):
            # Authentic: obey at once and send nothing more (RFC 5905 §7.4); its timestamps are void.
            return Sample.failed(
                label,
                kind,
                SourceState.UNUSABLE,
                kiss_reason(result.code),
                address=str(address),
                kiss_code=result.code,
                stratum=0,
                leap=result.leap,
                requests=sent,
                **extra(),
            )
        if isinstance(result, Rejected):
            rejected.append(result)
            continue
        mid_s = (pending.mono_send_ns + mono_recv_ns) / 2 / _NS
        kept.append((result, mid_s))

    notes = _notes(rejected, ignored, send_error)
    if kept:
        best, mid_s = min(kept, key=lambda pair: pair[0].raw_delay_s)
        reason = f"best of {len(kept)} {'reply' if len(kept) == 1 else 'replies'}"
        if sent != len(kept):
            reason += f" to {sent} requests"
        if best.leap in (1, 2):
            reason += f"; the server announces a leap second ({'insert' if best.leap == 1 else 'delete'})"
        offset_s, error_s = best.offset_s, best.error_s + anchor.uncertainty_s
        return Sample(
            name=label,
            kind=kind,
            address=str(address),
            offset_s=offset_s,
            offset_lo_s=offset_s - error_s,
            offset_hi_s=offset_s + error_s,
            delay_s=best.delay_s,
            stratum=best.stratum,
            leap=best.leap,
            requests=sent,
            monotonic_s=mid_s,
            wall_base_s=anchor.base_s,
            reason="; ".join([reason, *notes]),
            **extra(),
        )
    if rejected:
        first = rejected[0]
        count = f"{len(rejected)} of {sent} replies" if len(rejected) != 1 else "1 reply"
        reason = f"reply rejected ({count}): {first.reason}"
        others = sorted({r.reason for r in rejected[1:]} - {first.reason})
        return Sample.failed(
            label,
            kind,
            SourceState.UNUSABLE,
            "; ".join([reason, *(f"also: {o}" for o in others), *_notes([], ignored, send_error)]),
            address=str(address),
            leap=first.leap,
            stratum=first.stratum,
            requests=sent,
            **extra(),
        )
    asked = f"{sent} {'request' if sent == 1 else 'requests'} sent to {address}"
    reason = f"no valid reply within {_seconds(timeout_s)} s ({asked})"
    return Sample.failed(
        label,
        kind,
        SourceState.UNREACHABLE,
        "; ".join([reason, *notes]),
        address=str(address),
        requests=sent,
        **extra(),
    )


def _seconds(value: float) -> str:
    """``2.0``, ``0.5``, ``0.25``: as precise as the figure someone configured, never ``2`` for 2.0."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def _notes(rejected: list[Rejected], ignored: Counter[str], send_error: str | None) -> list[str]:
    notes = [f"rejected {r.reason}" for r in rejected]
    notes += [f"ignored {n} {_singular(why) if n == 1 else why}" for why, n in ignored.items()]
    if send_error:
        notes.append(send_error)
    return notes


def _singular(why: str) -> str:
    # The counters are phrased for many ("replies ..."); one reads better as "reply".
    return why.replace("replies", "reply", 1)

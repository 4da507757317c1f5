"""A small NTP server for tests: real UDP on loopback, answering from ``clock_ns() + offset_s``, and able
to misbehave in every way a client must survive (TESTING.md "NTP, misbehaving").

Its packet encoding is written here on purpose rather than imported from timeguard, so a mistake in the
client's encoder cannot hide behind the same mistake in the server. Every behaviour is a plain attribute
that a test may change while the server runs; ``close()`` it in a fixture finaliser.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

NTP_DELTA_S = 2_208_988_800
_PACKET = struct.Struct("!BBbbII4sQQQQ")


def to_ntp(unix_ns: int) -> int:
    """UNIX ns → 64-bit NTP timestamp (era dropped), the fraction truncated as ntpd does."""
    ntp_ns = (unix_ns + NTP_DELTA_S * 1_000_000_000) % ((1 << 32) * 1_000_000_000)
    seconds, rem = divmod(ntp_ns, 1_000_000_000)
    return (seconds << 32) | ((rem << 32) // 1_000_000_000)


def to_short(seconds: float) -> int:
    """Seconds → NTP short format (16.16), saturating like a real server."""
    return max(0, min(round(seconds * 65536), 0xFFFF_FFFF))


def build_packet(
    *,
    leap: int = 0,
    version: int = 4,
    mode: int = 4,
    stratum: int = 2,
    poll: int = 6,
    precision: int = -20,
    root_delay_s: float = 0.0,
    root_dispersion_s: float = 0.0,
    refid: bytes = b"LOCL",
    reference: int = 0,
    origin: int = 0,
    receive: int = 0,
    transmit: int = 0,
) -> bytes:
    """One 48-byte NTP header; timestamps are 64-bit NTP values (use :func:`to_ntp`)."""
    return _PACKET.pack(
        (leap << 6) | (version << 3) | mode,
        stratum,
        poll,
        precision,
        to_short(root_delay_s),
        to_short(root_dispersion_s),
        refid.ljust(4, b"\0")[:4],
        reference,
        origin,
        receive,
        transmit,
    )


@dataclass(frozen=True)
class Received:
    """A request as the server saw it."""

    data: bytes
    source: tuple[object, ...]
    server_wall_ns: int


class FakeNTPServer:
    """Answers NTP client requests on ``host``:``port`` (port 0: ephemeral) from a daemon thread."""

    def __init__(
        self,
        offset_s: float = 0.0,
        *,
        leap: int = 0,
        stratum: int = 2,
        refid: bytes = b"LOCL",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        # What the server claims about itself.
        self.offset_s = offset_s  # server time = clock_ns() + offset_s: true − host, as timeguard reports it
        self.clock_ns: Callable[[], int] = time.time_ns  # inject a wall clock (e.g. one in 2037)
        self.leap = leap
        self.stratum = stratum
        self.refid = refid
        self.version = 4
        self.mode = 4
        self.precision = -20
        self.root_delay_s = 0.0
        self.root_dispersion_s = 0.0
        # Misbehaviour.
        self.kiss_code: str | None = None  # answer with a Kiss-o'-Death (stratum 0, refid = code)
        self.kiss_origin_ok = True  # False: the kiss carries a wrong origin (an off-path forgery)
        self.spoof = False  # send first a forged reply (wrong origin, time +1800 s)
        self.answer_after_forgery = False  # after a forged reply or kiss, also send the genuine one
        self.zero_transmit = False
        self.zero_receive = False
        self.receive_after_transmit = False  # T2 one second after T3
        self.receive_shift_s = 0.0  # move T2 (e.g. −0.5: claim more processing time than the round trip)
        self.truncate_to: int | None = None
        self.duplicate = False  # send every reply twice (a replay)
        self.reply_from_other_port = False  # reply from a second socket on the same address
        self.reply_from_host: str | None = None  # reply from a second socket on this address
        self.return_delay_s = 0.0  # hold each reply this long after stamping T3 (asymmetric path)
        self.return_delays: list[float] = []  # per-reply delays, consumed first, then return_delay_s
        self.processing_s = 0.0  # time between T2 and T3 that the server reports (honestly)
        self.blackhole = False
        # What happened.
        self.received: list[Received] = []
        self.replies_sent = 0

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._family = family
        self._host = host
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.port: int = self.sock.getsockname()[1]
        self._others: dict[tuple[str, int], socket.socket] = {}
        self._queue: list[tuple[float, int, bytes, tuple[object, ...], socket.socket]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"fake-ntp:{self.port}", daemon=True)
        self._thread.start()

    # -- helpers for tests --------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def address(self) -> str:
        return f"[{self._host}]:{self.port}" if ":" in self._host else f"{self._host}:{self.port}"

    def other_port(self) -> int:
        """The port the server replies from when ``reply_from_other_port`` is set."""
        return self._other_socket(self._host).getsockname()[1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        for other in self._others.values():
            other.close()

    def __enter__(self) -> FakeNTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the server ---------------------------------------------------------------------------------

    def _now_ns(self) -> int:
        return self.clock_ns() + round(self.offset_s * 1e9)

    def _other_socket(self, host: str) -> socket.socket:
        key = (host, 0)
        if key not in self._others:
            other = socket.socket(self._family, socket.SOCK_DGRAM)
            other.bind((host, 0))
            self._others[key] = other
        return self._others[key]

    def _serve(self) -> None:
        while not self._stop.is_set():
            timeout = 0.05
            if self._queue:
                timeout = max(0.0, min(timeout, self._queue[0][0] - time.monotonic()))
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if readable:
                try:
                    data, source = self.sock.recvfrom(2048)
                except OSError:
                    continue
                self._answer(data, source)
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, packet, dest, sock = heapq.heappop(self._queue)
                self._send(sock, packet, dest)

    def _send(self, sock: socket.socket, packet: bytes, dest: tuple[object, ...]) -> None:
        with contextlib.suppress(OSError):  # the client may be gone; a server does not care
            sock.sendto(packet, dest)
            self.replies_sent += 1

    def _answer(self, request: bytes, source: tuple[object, ...]) -> None:
        t2 = self._now_ns()
        self.received.append(Received(request, source, t2))
        if self.blackhole or len(request) < 48:
            return
        origin = int.from_bytes(request[40:48], "big")  # the client's transmit field, echoed
        sock = self.sock
        if self.reply_from_host is not None:
            sock = self._other_socket(self.reply_from_host)
        elif self.reply_from_other_port:
            sock = self._other_socket(self._host)
        delay_s = self.return_delays.pop(0) if self.return_delays else self.return_delay_s
        packets: list[bytes] = []
        forged_origin = int.from_bytes(os.urandom(8), "big") | 1
        if self.kiss_code is not None:
            kiss = build_packet(
                leap=3,
                version=self.version,
                mode=self.mode,
                stratum=0,
                refid=self.kiss_code.encode("ascii"),
                origin=origin if self.kiss_origin_ok else forged_origin,
                receive=to_ntp(t2),
                transmit=to_ntp(t2),
            )
            packets.append(kiss)
            if self.kiss_origin_ok or not self.answer_after_forgery:
                self._queue_packets(packets, delay_s, source, sock)
                return
        elif self.spoof:
            packets.append(
                build_packet(
                    stratum=1,
                    refid=b"GPS",
                    origin=forged_origin,
                    receive=to_ntp(t2 + 1800 * 10**9),
                    transmit=to_ntp(t2 + 1800 * 10**9),
                )
            )
            if not self.answer_after_forgery:
                self._queue_packets(packets, delay_s, source, sock)
                return
        if self.processing_s:
            time.sleep(self.processing_s)
        t3 = self._now_ns()
        receive = to_ntp(t2 + round(self.receive_shift_s * 1e9))
        if self.receive_after_transmit:
            receive = to_ntp(t3 + 10**9)
        if self.zero_receive:
            receive = 0
        reply = build_packet(
            leap=self.leap,
            version=self.version,
            mode=self.mode,
            stratum=self.stratum,
            precision=self.precision,
            root_delay_s=self.root_delay_s,
            root_dispersion_s=self.root_dispersion_s,
            refid=self.refid,
            reference=to_ntp(t3 - 16 * 10**9),
            origin=origin,
            receive=receive,
            transmit=0 if self.zero_transmit else to_ntp(t3),
        )
        if self.truncate_to is not None:
            reply = reply[: self.truncate_to]
        packets.append(reply)
        if self.duplicate:
            packets.append(reply)
        self._queue_packets(packets, delay_s, source, sock)

    def _queue_packets(
        self, packets: list[bytes], delay_s: float, dest: tuple[object, ...], sock: socket.socket
    ) -> None:
        if delay_s <= 0:
            for packet in packets:
                self._send(sock, packet, dest)
            return
        due = time.monotonic() + delay_s
        for packet in packets:
            heapq.heappush(self._queue, (due, next(self._seq), packet, dest, sock))

"""Loopback networking for the harness: free ports, a raw NTP query, an HTTP(S) readiness probe."""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import time
from typing import NamedTuple


def address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(kind: str = "udp", host: str = "127.0.0.1") -> int:
    """A port that is free right now on ``host`` (loopback). Racy by nature: starters retry on bind failure."""
    sock_type = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}[kind]
    with socket.socket(address_family(host), sock_type) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(kind: str, host: str, port: int) -> None:
    """Raise if something already holds ``port``: chronyd binds with SO_REUSEPORT, so a second chronyd on a taken
    port starts "fine" and the kernel then spreads queries over both servers (honest and lying answers mixed)."""
    try:
        with socket.socket(address_family(host), {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}[kind]) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise RuntimeError(f"{kind} port {host}:{port} is already in use ({exc.strerror})") from exc


NTP_EPOCH_DELTA = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class NtpReply(NamedTuple):
    leap: int
    version: int
    mode: int
    stratum: int
    offset_s: float
    delay_s: float


def _ntp_ts(raw: bytes) -> float:
    secs, frac = struct.unpack("!II", raw)
    return secs - NTP_EPOCH_DELTA + frac / 2**32


def ntp_query(host: str, port: int, timeout_s: float = 1.0) -> NtpReply:
    """One raw NTPv4 client exchange (no ntplib): enough to know a server is up and what it says."""
    t1 = time.time()
    secs = int(t1) + NTP_EPOCH_DELTA
    transmit = struct.pack("!II", secs, int((t1 % 1) * 2**32))
    packet = bytes([0x23]) + bytes(39) + transmit  # LI 0, VN 4, mode 3 (client)
    with socket.socket(address_family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(packet, (host, port))
        data, _ = sock.recvfrom(512)
    t4 = time.time()
    if len(data) < 48 or data[24:32] != transmit:
        raise OSError(f"bad NTP reply from {host}:{port} ({len(data)} bytes)")
    t2, t3 = _ntp_ts(data[32:40]), _ntp_ts(data[40:48])
    return NtpReply(
        leap=data[0] >> 6,
        version=(data[0] >> 3) & 7,
        mode=data[0] & 7,
        stratum=data[1],
        offset_s=((t2 - t1) + (t3 - t4)) / 2,
        delay_s=(t4 - t1) - (t3 - t2),
    )


def http_head(host: str, port: int, context: ssl.SSLContext | None) -> int:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=1)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=1, context=context)
    try:
        conn.request("HEAD", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def probe_context(tls: bool) -> ssl.SSLContext | None:
    if not tls:
        return None
    # Readiness only asks "is the TLS listener up?"; tests verify the certificate with the test CA themselves.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx

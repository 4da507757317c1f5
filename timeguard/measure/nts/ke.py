"""NTS Key Establishment (RFC 8915 §4): TLS 1.3, ALPN ``ntske/1``, keys from the TLS exporter, cookies.

pyOpenSSL, because the standard library's ``ssl`` has no ``export_keying_material`` (CPython PR 25255). The
connection is non-blocking and every wait (connect, handshake, write, read) is bounded by one deadline, so a KE
server that accepts and then says nothing costs the deadline, never more.

Certificates are judged as the HTTPS source judges them (measure/http.py): chain, signatures and the host name are
verified against the CA bundle (or the system store), but OpenSSL is told not to read the host clock
(X509_V_FLAG_NO_CHECK_TIME) — the host clock is what timeguard checks, and a host 180 days off must still verify.
Instead, a chain that expired before this release was built is refused here, and the source refuses a time outside
the chain's validity (measure/nts/source.py): an honest server never serves a time its own certificate does not
cover.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import time
import warnings
from dataclasses import dataclass
from typing import Any

from timeguard.measure.net import ResolvedAddress, ResolveError, resolve
from timeguard.measure.nts.records import Aead, KeRecordError, build_request, complete_length, parse_response
from timeguard.measure.sanity import EARLIEST_PLAUSIBLE_S
from timeguard.model import SourceState
from timeguard.timefmt import iso

with warnings.catch_warnings():  # pyOpenSSL's import touches cryptography's deprecated DSA names
    warnings.simplefilter("ignore")
    from OpenSSL import SSL

KE_PORT = 4460
ALPN = b"ntske/1"
EXPORTER_LABEL = b"EXPORTER-network-time-security"
KEY_BYTES = {Aead.AEAD_AES_SIV_CMAC_256: 32}
_X509_V_FLAG_NO_CHECK_TIME = 0x200000  # as in measure/http.py: validity times are judged without the host clock
_MAX_RESPONSE = 65536


class KeError(Exception):
    """The key exchange failed; ``state`` is UNREACHABLE (no answer) or UNUSABLE (an answer we refuse)."""

    def __init__(self, state: SourceState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Validity:
    """The verified chain's validity, every certificate's [notBefore, notAfter] intersected (UNIX seconds)."""

    not_before_s: float
    not_after_s: float

    def outside(self, server_time_s: float) -> str | None:
        """Why ``server_time_s`` cannot come from an honest holder of this chain, or None."""
        if self.not_before_s <= server_time_s <= self.not_after_s:
            return None
        return (f"the server's time {iso(server_time_s, 'seconds')} lies outside its certificate chain's validity "
                f"({iso(self.not_before_s, 'seconds')} to {iso(self.not_after_s, 'seconds')}): an honest server "
                "never serves a time its own certificate does not cover")


@dataclass(frozen=True, slots=True)
class KeResult:
    """What one key exchange gave: keys, cookies, the NTP server to ask, and when (monotonic)."""

    aead: Aead
    c2s_key: bytes
    s2c_key: bytes
    cookies: tuple[bytes, ...]
    ntp_host: str
    ntp_port: int
    validity: Validity
    address: str
    monotonic_s: float


def key_exchange(
    host: str,
    port: int = KE_PORT,
    *,
    ntp_port: int = 123,
    ca_bundle: str | None = None,
    timeout_s: float = 2.0,
) -> KeResult:
    """Run NTS-KE with ``host:port`` within ``timeout_s``; raises :class:`KeError` with a reason a person can act
    on. The NTP server is the one the KE server names (records Server/Port), else ``host:ntp_port``."""
    deadline = time.monotonic() + timeout_s
    try:
        addresses = resolve(host, port, timeout_s=min(1.0, timeout_s / 2), socktype=socket.SOCK_STREAM)
    except ResolveError as exc:
        raise KeError(SourceState.UNREACHABLE, f"NTS-KE: {exc}") from None
    sock, address = _connect(addresses, deadline, timeout_s)
    where = f"NTS-KE server {address}"
    try:
        sock.setblocking(False)
        # The request is one small write after the handshake: without NODELAY, Nagle waits for the server's delayed
        # ACK (40 ms on Linux) before sending it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        verify_errors: list[str] = []
        conn = SSL.Connection(_context(ca_bundle, verify_errors), sock)
        if not _is_ip(host):
            conn.set_tlsext_host_name(host.encode("idna"))
        conn.set_connect_state()
        try:
            _io(conn, conn.do_handshake, deadline, where, "the TLS handshake")
        except KeError as exc:
            if verify_errors:
                trust = f"CA bundle {ca_bundle}" if ca_bundle else "the system CA store; set ca_bundle for a private CA"
                raise KeError(exc.state, f"TLS certificate verification failed for {where}: {verify_errors[0]} "
                              f"(checked against {trust})") from None
            raise
        validity = _judge_peer(conn, host, where, ca_bundle)
        aead = Aead.AEAD_AES_SIV_CMAC_256
        _io(conn, lambda: conn.sendall(build_request(aead)), deadline, where, "sending the request")
        data = _read_response(conn, deadline, where)
        try:
            response = parse_response(data, offered=(aead,))
        except KeRecordError as exc:
            raise KeError(SourceState.UNUSABLE, f"{where}: {exc}") from None
        c2s, s2c = (conn.export_keying_material(EXPORTER_LABEL, KEY_BYTES[response.aead], _context_bytes(aead, d))
                    for d in (0, 1))
        with contextlib.suppress(SSL.Error):  # the answer is in: how the server closes does not matter
            conn.shutdown()
        return KeResult(
            aead=response.aead,
            c2s_key=c2s,
            s2c_key=s2c,
            cookies=response.cookies,
            ntp_host=response.server or host,
            ntp_port=response.port or ntp_port,
            validity=validity,
            address=str(address),
            monotonic_s=time.monotonic(),
        )
    finally:
        sock.close()


def _connect(addresses: tuple[ResolvedAddress, ...], deadline: float,
             timeout_s: float) -> tuple[socket.socket, ResolvedAddress]:
    """A TCP connection to the first address that takes one (IPv6 then IPv4, as the resolver orders them)."""
    errors = []
    for address in addresses:
        where = f"NTS-KE server {address}"
        try:
            sock = socket.socket(address.family, socket.SOCK_STREAM)
        except OSError as exc:  # e.g. IPv6 disabled here
            errors.append(f"{where}: {exc}")
            continue
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.connect(address.sockaddr)
            return sock, address
        except TimeoutError:
            errors.append(f"no TCP connection to {where} within {timeout_s:g} s")
        except ConnectionRefusedError:
            errors.append(f"connection refused by {where} (nothing listening?)")
        except OSError as exc:
            errors.append(f"cannot connect to {where}: {exc}")
        sock.close()
        if time.monotonic() >= deadline:
            break
    raise KeError(SourceState.UNREACHABLE, "; ".join(errors) or "no address to connect to")


def _context_bytes(aead: Aead, direction: int) -> bytes:
    """The exporter context (RFC 8915 §5.1): Next Protocol NTPv4 (0x0000), the AEAD id, 0x00 C2S / 0x01 S2C."""
    return (0).to_bytes(2, "big") + int(aead).to_bytes(2, "big") + bytes([direction])


#: OpenSSL verification errors a person meets with NTS-KE (X509_V_ERR_*); others are named by number.
_VERIFY_ERRORS = {
    2: "unable to get the issuer certificate",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "unable to get the local issuer certificate (the CA is not trusted)",
    21: "unable to verify the first certificate",
}


def _context(ca_bundle: str | None, verify_errors: list[str]) -> SSL.Context:
    def verify(_conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            subject = cert.to_cryptography().subject.rfc4514_string() or "?"
            verify_errors.append(f"{_VERIFY_ERRORS.get(errno, f'X509 error {errno}')} (certificate {subject!r}, "
                                 f"depth {depth})")
        return bool(ok)

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)  # RFC 8915 §3: TLS 1.3 or newer, nothing older
    ctx.set_verify(SSL.VERIFY_PEER, verify)
    ctx.set_alpn_protos([ALPN])
    try:
        if ca_bundle is None:
            ctx.set_default_verify_paths()
        elif os.path.isdir(ca_bundle):
            ctx.load_verify_locations(None, ca_bundle)
        else:
            ctx.load_verify_locations(ca_bundle)
    except SSL.Error as exc:
        raise KeError(SourceState.UNREACHABLE, f"cannot load the CA bundle {ca_bundle}: {_ssl_reason(exc)}") from None
    ctx.get_cert_store().set_flags(_X509_V_FLAG_NO_CHECK_TIME)
    return ctx


def _io(conn: SSL.Connection, step: Any, deadline: float, where: str, what: str) -> Any:
    """Run a non-blocking pyOpenSSL ``step`` to completion, waiting for the socket until ``deadline``."""
    while True:
        try:
            return step()
        except SSL.WantReadError:
            ready = (conn,), ()
        except SSL.WantWriteError:
            ready = (), (conn,)
        except SSL.Error as exc:
            raise KeError(SourceState.UNREACHABLE, f"{what} with {where} failed: {_ssl_reason(exc)}") from None
        except OSError as exc:
            raise KeError(SourceState.UNREACHABLE, f"{what} with {where} failed: {exc}") from None
        left = deadline - time.monotonic()
        if left <= 0 or not any(select.select(*ready, (), left)):
            raise KeError(SourceState.UNREACHABLE, f"{where} did not finish {what} in time (connected, then silent)")


def _recv(conn: SSL.Connection) -> bytes:
    try:
        return conn.recv(4096)
    except SSL.ZeroReturnError:  # closed cleanly (TLS close_notify)
        return b""
    except SSL.SysCallError as exc:
        if exc.args and exc.args[0] == -1:  # closed without close_notify ("Unexpected EOF")
            return b""
        raise


def _read_response(conn: SSL.Connection, deadline: float, where: str) -> bytes:
    """Everything up to End of Message, or what came before the server closed (parse_response judges it)."""
    data = b""
    while complete_length(data) is None:
        chunk = _io(conn, lambda: _recv(conn), deadline, where, "reading the response")
        if not chunk:
            break
        data += chunk
        if len(data) > _MAX_RESPONSE:
            raise KeError(SourceState.UNUSABLE, f"{where} sent more than {_MAX_RESPONSE} bytes")
    return data


def _judge_peer(conn: SSL.Connection, host: str, where: str, ca_bundle: str | None) -> Validity:
    version = conn.get_protocol_version_name()
    if version not in ("TLSv1.3",):
        raise KeError(SourceState.UNREACHABLE, f"{where} negotiated {version}; NTS-KE needs TLS 1.3")
    alpn = conn.get_alpn_proto_negotiated()
    if alpn != ALPN:
        got = alpn.decode("ascii", "replace") if alpn else "none"
        raise KeError(SourceState.UNREACHABLE, f"{where} did not agree to ALPN {ALPN.decode()} (negotiated: {got}): "
                      "not an NTS-KE server")
    chain = [c.to_cryptography() for c in (conn.get_verified_chain() or [])]
    if not chain:
        raise KeError(SourceState.UNREACHABLE, f"{where}: no verified certificate chain")
    if not _name_matches(chain[0], host):
        trust = f"CA bundle {ca_bundle}" if ca_bundle else "the system CA store"
        raise KeError(SourceState.UNREACHABLE, f"TLS certificate of {where} is not valid for {host!r} "
                      f"(checked against {trust}): {_names(chain[0])}")
    validity = Validity(max(c.not_valid_before_utc.timestamp() for c in chain),
                        min(c.not_valid_after_utc.timestamp() for c in chain))
    if validity.not_after_s < EARLIEST_PLAUSIBLE_S:
        raise KeError(SourceState.UNREACHABLE, f"TLS certificate chain of {where} expired "
                      f"{iso(validity.not_after_s, 'seconds')}, before this release was built "
                      f"({iso(EARLIEST_PLAUSIBLE_S, 'seconds')}): whoever holds its key could forge any time "
                      "(judged without the host clock)")
    return validity


def _sans(cert: Any) -> tuple[list[str], list[Any]]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress)


def _name_matches(cert: Any, host: str) -> bool:
    """RFC 6125 in short: an IP literal must be an IP SAN; a name a DNS SAN, ``*`` only as the whole left label."""
    names, ips = _sans(cert)
    literal = host.strip("[]")
    if _is_ip(literal):
        return ipaddress.ip_address(literal.split("%", 1)[0]) in ips
    wanted = host.rstrip(".").lower().encode("idna").decode("ascii")
    for pattern in (n.rstrip(".").lower() for n in names):
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def _names(cert: Any) -> str:
    names, ips = _sans(cert)
    listed = [*names, *map(str, ips)]
    return "it names " + ", ".join(listed) if listed else "it has no subjectAltName"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _ssl_reason(exc: SSL.Error) -> str:
    parts = []
    for item in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    text = "; ".join(parts) or str(exc) or type(exc).__name__
    if "protocol version" in text or "unsupported protocol" in text:
        text += " (NTS-KE needs TLS 1.3; the server offers an older version)"
    if "bad extension" in text:
        text += f" (the server answered with a TLS extension not offered, such as an ALPN other than {ALPN.decode()})"
    if "no application protocol" in text:
        text += f" (the server does not speak ALPN {ALPN.decode()}: not an NTS-KE server)"
    return text

"""The HTTP(S) ``Date`` source: a sub-second offset interval from one-second Date headers.

The method (research/time_anchors.md §3.1, "interval intersection"): a probe sent at local time t0 and
answered at t1 whose Date says D proves

    D − t1 ≤ offset < D + 1 − t0        (offset = true − host)

because the server stamped D at some moment between t0 and t1 and truncates to the second. Intersecting
the constraints of several probes, each sent so that the server's second should tick over in the middle of the
interval known so far, halves the interval per probe: 7 probes on loopback give about ±8 ms, and the interval is
a hard bound, not an estimate. An empty intersection proves the answers cannot all be true (a stepped server
clock, or a load balancer mixing servers) instead of averaging them into a wrong number. That arithmetic is pure
and lives in :mod:`timeguard.measure.narrowing`; this module does the I/O around it.

Local times are ``wall0 + (monotonic − mono0)`` from one wall-clock reading, so a host clock step during the
measurement cannot corrupt it; the result is the offset of the host clock as read at the start.

Certificates are judged without the host clock (research/time_anchors.md T15). The host clock is what timeguard
checks, so it must not decide whether a source may speak: a host 180 days ahead would see every 90-day certificate
"expired" and lose its HTTPS cross-check exactly when it needs it. OpenSSL still verifies the chain, its signatures
and the host name against the configured CA bundle (or the system store), but is told not to check validity times
(``X509_V_FLAG_NO_CHECK_TIME``); instead, with evidence that does not come from the host clock:

* no certificate of the verified chain may have expired before this release was built
  (:data:`timeguard.measure.sanity.EARLIEST_PLAUSIBLE_S`): whoever holds such a key could forge any Date;
  refused right after the handshake, before a request is sent;
* every Date the source measures must lie inside the validity of every certificate of the chain: an honest server
  never serves a time outside its own certificate's validity (so an expired certificate is still refused, and a
  stolen old key cannot move the source outside the period the certificate was valid for).

The chain is read with the private ``_sslobj.get_verified_chain()`` (present since Python 3.10; 3.13 made it public
as ``SSLSocket.get_verified_chain()``), which gives the chain OpenSSL verified, trust anchor included; where it is
missing only the leaf (``getpeercert()``) can be judged. Verification is never switched off: a source whose
certificate fails any of these checks gives no time at all.

The I/O is the standard library's (``http.client`` on a socket this module connects, ``ssl``), not requests: the
method needs control that requests does not give — the moment the request left and the moment the headers were in,
DNS with a deadline, certificate times judged against the server's Date, one TLS context per query with exactly the
configured CA bundle — and got it only by subclassing urllib3's connections, pools and requests' adapter, at ~5 MiB
of resident memory in the daemon. Names are resolved with :func:`timeguard.measure.net.resolve` (a deadline of its
own, one pending lookup per name shared by every caller); the socket goes to the resolved address while SNI, the
certificate's name check and ``Host`` keep the URL's host name. A proxy set in the environment (``HTTPS_PROXY``,
``NO_PROXY``…) is used as requests used it (:mod:`timeguard.measure.proxy`).

Nothing here raises for network, TLS or HTTP trouble: every failure is a :class:`Sample` with a reason.
"""

from __future__ import annotations

import http.client
import os
import queue
import re
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from timeguard.measure.anchor import read_anchor
from timeguard.measure.httpdate import HttpDateError, parse_http_date
from timeguard.measure.narrowing import NS as _NS
from timeguard.measure.narrowing import Interval, date_constraint, rtt_estimate_ns, send_at_ns
from timeguard.measure.net import ResolveError, resolve
from timeguard.measure.proxy import ProxyError, proxy_for, tunnel
from timeguard.measure.sanity import EARLIEST_PLAUSIBLE_S, implausible
from timeguard.model import Authentication, Sample, SourceKind, SourceState
from timeguard.timefmt import iso

__all__ = ["Connection", "query_http"]

#: Time the worker needs to wake up and send after its scheduled moment (a scheduling margin, not a bound).
_SEND_MARGIN_NS = 2_000_000
#: A probe is sent only if its answer is expected this long before the deadline.
_DEADLINE_GUARD_NS = 10_000_000
#: The body of a GET fallback is read (to keep the connection alive) only up to this size.
_MAX_BODY_BYTES = 1 << 20
_HEADERS = {
    "Cache-Control": "no-cache",
    "Pragma": "no-cache",
    "Accept": "*/*",
    "User-Agent": "timeguard (clock check; reads only the Date header)",
}
#: How every https:// sample was authenticated (the check table's AUTH column, --json's ``auth``).
_TLS = Authentication(mode="tls")
_INCONSISTENT = "Date headers inconsistent (server clock stepped, or a load balancer mixes servers)"
#: OpenSSL's X509_V_FLAG_NO_CHECK_TIME (1.1.0+; the ssl module has no name for it). ``SSLContext.verify_flags``
#: hands any bits to X509_VERIFY_PARAM_set_flags; tests/unit/test_http_certtime.py proves it takes effect.
_X509_V_FLAG_NO_CHECK_TIME = 0x200000
#: A certificate's name in an OpenSSL hashed directory: its subject hash and a sequence number.
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")
#: Characters left as they are in the request target (what requests' ``requote_uri`` leaves); others are %-encoded.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass(frozen=True, slots=True)
class _Send:
    """When a worker should send: ``at_mono_ns`` is the moment the request should leave."""

    at_mono_ns: int
    wake_early_ns: int = 0  # how much earlier than ``at`` to wake (the lateness seen so far)
    max_late_ns: int | None = None  # later than this, the split is off-centre: wait for the next second
    answer_ns: int = 0  # how long an answer takes, for "is there still time for the next second?"


@dataclass(frozen=True, slots=True)
class _Validity:
    """When the verified certificate chain is valid: every certificate's [notBefore, notAfter], intersected."""

    not_before_s: float
    not_after_s: float
    starts_with: str  # the certificate whose notBefore is the latest ("the server's certificate", "CA ...")
    ends_with: str  # the certificate whose notAfter is the earliest
    whole_chain: bool  # False: only the leaf could be read (no verified chain on this Python)


@dataclass(frozen=True, slots=True)
class _Answer:
    t0_mono_ns: int
    t1_mono_ns: int
    status: int
    date: str | None
    age: str | None
    late_ns: int  # t0 − the intended send moment
    deferred: int  # seconds skipped because the worker woke too late
    validity: _Validity | None = None  # of the certificate chain the answer came over (None: plain HTTP/unknown)


@dataclass(frozen=True, slots=True)
class _Failure:
    error: BaseException


def query_http(
    url: str,
    *,
    name: str | None = None,
    requests_count: int = 7,
    timeout_s: float = 5.0,
    ca_bundle: str | None = None,
    allow_plain_http: bool = False,
    wall_ns: Callable[[], int] = time.time_ns,
    connection: Connection | None = None,
) -> Sample:
    """Measure the host clock's offset against the ``Date`` headers of ``url``.

    ``requests_count`` probes at most (a HEAD answered 405/501 and retried as GET is not counted), all within
    ``timeout_s`` seconds in total (DNS, connects and the waits between probes included). HTTPS is verified
    against ``ca_bundle`` (a PEM file or an OpenSSL hashed directory, loaded into this query's own SSLContext) or
    the system store, with certificate validity judged against the server's Date and this release's build date,
    never the host clock (see the module docstring); ``http://`` is refused unless ``allow_plain_http``.
    ``wall_ns`` anchors the query once (measure/anchor.py). The probes of one query share one kept-alive
    connection (one TLS handshake); a ``connection`` passed in (a :class:`Connection` to the URL's origin, with its
    own CA bundle) is used instead and left open, so that several queries share it. If a probe is abandoned at the
    deadline it may hold that connection for up to ``timeout_s``; a later query waits for it within its own
    deadline.
    """
    start_mono_ns = time.monotonic_ns()
    deadline_ns = start_mono_ns + max(0, int(timeout_s * _NS))
    label = name or url

    def failed(state: SourceState, reason: str, **extra: Any) -> Sample:
        return Sample.failed(label, SourceKind.HTTP, state, reason, **extra)

    try:
        origin = _Origin.of(url)
    except ValueError as exc:
        return failed(SourceState.UNUSABLE, str(exc))
    scheme, host, address = origin.scheme, origin.host, origin.address
    if scheme == "http" and not allow_plain_http:
        return failed(
            SourceState.UNUSABLE,
            f"refused plain http:// ({url}): anyone on the path can forge its Date; "
            "use https://, or set allow_plain_http: true for this source (allow_plain_http=True in Python) "
            "if you trust the network",
            address=address,
        )
    if requests_count < 1:
        return failed(SourceState.UNUSABLE, f"requests_count must be at least 1, got {requests_count}")

    if connection is None:
        try:
            wire = Connection(url, ca_bundle=ca_bundle)
        except ProxyError as exc:
            return failed(SourceState.UNREACHABLE, f"{exc}; nothing was sent", address=address)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            detail = getattr(exc, "strerror", None) or str(exc)
            what = f"the CA bundle {ca_bundle}" if ca_bundle else "the system CA store"
            return failed(SourceState.UNREACHABLE, f"cannot load {what}: {detail}; nothing was sent", address=address)
    elif connection.origin != origin:
        return failed(
            SourceState.UNUSABLE,
            f"the connection passed in goes to {connection.origin.url_base}, not to the origin of {url}",
            address=address,
        )
    else:
        wire = connection
        ca_bundle = connection.ca_bundle

    # One wall-clock reading; every later local time is derived from the monotonic clock. The anchor's own
    # uncertainty is common to every constraint, so it widens the final interval once (see measure/anchor.py).
    anchor = read_anchor(wall_ns)
    local_ns = anchor.wall_at

    prober = _Prober(wire, origin.target(url), own=connection is None)

    known: Interval | None = None  # what the answers so far prove
    rtts_ns: list[int] = []
    lateness_ns: list[int] = []
    deferred = 0
    sent = 0
    measured = 0  # probes counted against requests_count
    method = "HEAD"
    notes: list[str] = []
    age_dropped: list[str] = []
    last_mid_mono_ns: int | None = None
    stop_note: str | None = None

    def result() -> Sample:
        """The interval achieved so far (there is at least one constraint)."""
        assert known is not None
        tail = "".join(f"; {note}" for note in notes)
        if deferred:
            tail += f"; {deferred} s spent waiting again after late wake-ups"
        if age_dropped:
            tail += f"; Age>0 dropped: {len(age_dropped)}"
        if stop_note:
            tail += f"; {stop_note}"
        return Sample(
            name=label,
            kind=SourceKind.HTTP,
            address=address,
            offset_s=known.mid_ns / _NS,
            offset_lo_s=(known.lo_ns - anchor.uncertainty_ns) / _NS,
            offset_hi_s=(known.hi_ns + anchor.uncertainty_ns) / _NS,
            delay_s=min(rtts_ns) / _NS,
            requests=sent,
            monotonic_s=None if last_mid_mono_ns is None else last_mid_mono_ns / _NS,
            wall_base_s=anchor.base_s,
            reason=f"{sent} requests, bound ±{(known.width_ns / 2 + anchor.uncertainty_ns) / 1e6:.1f} ms{tail}",
            auth=_TLS if scheme == "https" else None,  # allow_plain_http: nothing authenticated the Date
        )

    def refused(reason: str, state: SourceState = SourceState.UNUSABLE) -> Sample:
        """An answer arrived but cannot be used: the source fails with the requests and delay so far."""
        return failed(state, reason, address=address, requests=sent, delay_s=min(rtts_ns) / _NS)

    try:
        while measured < requests_count:
            now_mono = time.monotonic_ns()
            if known is None:
                send = _Send(now_mono)
            else:
                # A thread wakes up late by a fairly steady amount, plus spikes when the CPU is busy; aim
                # earlier by the steady part (the least lateness seen).
                wake_early = min(*lateness_ns, 5_000_000) if lateness_ns else 0
                rtt_ns = rtt_estimate_ns(rtts_ns)
                send_local = send_at_ns(known, rtt_ns // 2, local_ns(now_mono + wake_early + _SEND_MARGIN_NS))
                send_mono = anchor.mono_at(send_local)
                answer_ns = 2 * rtt_ns + _DEADLINE_GUARD_NS
                if send_mono + answer_ns > deadline_ns:
                    stop_note = f"stopped after {measured} of {requests_count}: the next would pass the timeout"
                    break
                send = _Send(
                    send_mono,
                    wake_early_ns=wake_early,
                    max_late_ns=known.max_late_ns(),
                    answer_ns=answer_ns,
                )

            outcome = prober.probe(method, send, deadline_ns)
            if outcome is None:  # no answer by the deadline; the worker is abandoned
                sent += 1
                reason = f"no answer within the {timeout_s:g} s timeout"
                if known is None:
                    return failed(
                        SourceState.UNREACHABLE,
                        f"{reason} ({_what_was_slow(url)}){wire.via}",
                        address=address,
                        requests=sent,
                    )
                stop_note = f"stopped: {reason}"
                break
            sent += 1
            if isinstance(outcome, _Failure):
                state, reason = _describe_failure(outcome.error, host, address, ca_bundle, timeout_s)
                if wire.proxy is not None and str(wire.proxy) not in reason:
                    reason += wire.via
                if known is None:
                    return failed(state, reason, address=address, requests=sent)
                stop_note = f"stopped: {reason}"
                break

            t0, t1 = outcome.t0_mono_ns, outcome.t1_mono_ns
            rtts_ns.append(t1 - t0)
            if send.max_late_ns is not None:
                lateness_ns.append(max(0, outcome.late_ns + send.wake_early_ns))
            deferred += outcome.deferred
            last_mid_mono_ns = (t0 + t1) // 2
            if method == "HEAD" and outcome.status in (405, 501):
                method = "GET"
                notes.append(f"HEAD refused ({outcome.status}), used GET")
                continue
            measured += 1
            if outcome.age is not None and outcome.age.strip() != "0":
                age_dropped.append(outcome.age)  # a cached answer: its Date is from an earlier moment
                continue
            if outcome.date is None:
                return refused(f"HTTP {outcome.status} answer has no Date header")
            try:
                date_s = parse_http_date(outcome.date)
            except HttpDateError as exc:
                return refused(f"unusable Date header: {exc.reason}")
            if scheme == "https" and outcome.validity is None:
                return refused(
                    f"cannot read the validity dates of the certificate of {address}, so its Date cannot be "
                    "checked against them"
                )
            if why := implausible(date_s):
                return refused(f"Date {outcome.date!r} {why}")
            if outcome.validity is not None and (why := _date_outside(outcome.validity, date_s, outcome.date)):
                return refused(why)
            proved = date_constraint(date_s, local_ns(t0), local_ns(t1))
            known = proved if known is None else known.intersect(proved)
            if known is None:
                return refused(
                    f"{_INCONSISTENT}: answer {measured} (Date {outcome.date!r}) contradicts the earlier ones")
    finally:
        prober.finish()

    if known is None:
        if age_dropped:
            return failed(
                SourceState.UNUSABLE,
                f"served from cache (Age: {age_dropped[-1]}) in all {len(age_dropped)} answers; "
                "use a URL the server answers itself",
                address=address,
                requests=sent,
                delay_s=min(rtts_ns) / _NS if rtts_ns else None,
            )
        return failed(SourceState.UNREACHABLE, stop_note or "no answer", address=address, requests=sent)
    return result()


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a URL's requests go: scheme, host (no brackets) and port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> _Origin:
        """Raises ValueError with the message a person reads for a URL that is not http(s)://host[:port]/…"""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError as exc:
            raise ValueError(f"invalid URL {url!r}: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"invalid URL {url!r}: expected https://host[:port]/path")
        return cls(scheme, host, port or (443 if scheme == "https" else 80))

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url_base(self) -> str:
        """``scheme://host[:port]``, the port left out where it is the scheme's own (as the URL would write it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")

    def target(self, url: str) -> str:
        """The request target of ``url``: path and query, %-encoded where needed (the fragment is not sent)."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return quote(path, safe=_TARGET_SAFE)


class Connection:
    """One kept-alive HTTP/1.1 connection to the origin of ``url``, reconnected when the server has closed it.

    For HTTPS it owns the TLS context of the source (``ca_bundle`` or the system store, validity times left to
    this module). Connecting resolves the name with a deadline, tries the addresses in the resolver's order, goes
    through the environment's proxy if one applies, and refuses a chain that expired before this release. One
    exchange at a time (a lock): a probe abandoned at a deadline keeps it until its socket timeout ends. Raises
    OSError/ssl.SSLError if the CA bundle cannot be loaded and :class:`ProxyError` for an unusable proxy setting.
    Use ``with`` or :meth:`close`.
    """

    def __init__(self, url: str, *, ca_bundle: str | None = None) -> None:
        self.origin = _Origin.of(url)
        self.ca_bundle = ca_bundle
        self.proxy = proxy_for(self.origin.scheme, self.origin.host, self.origin.port)
        self._tls = _tls_context(ca_bundle) if self.origin.scheme == "https" else None
        self._lock = threading.Lock()
        self._wire: _Wire | None = None
        self.connects = 0  # TCP connections opened (keep-alive shows as 1 for many exchanges)

    @property
    def via(self) -> str:
        """A suffix for reasons: which proxy the requests went through, if any."""
        return f"; through {self.proxy}" if self.proxy else ""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        wire = self._wire
        return wire is not None and wire.sock is not None

    def close(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

    def exchange(
        self, method: str, target: str, deadline_ns: int, at_mono_ns: int | None = None, deferred: int = 0
    ) -> tuple[_Answer, http.client.HTTPResponse]:
        """Send one request and read the answer's headers (the caller drains or closes the body, then releases).

        Socket operations time out a little before ``deadline_ns``, so that this module's own, more specific,
        timeout error comes first. ``t0``/``t1`` of the answer are when the request's first byte was handed to
        the kernel and when the headers were in; connecting (DNS, TCP, proxy, TLS) happens before ``t0``.
        The caller must call :meth:`release` with the response when done with it.
        """
        remaining_s = max(0.001, (deadline_ns - time.monotonic_ns()) / _NS - 0.02)
        if not self._lock.acquire(timeout=remaining_s):
            raise TimeoutError("the connection is still held by a probe abandoned at an earlier deadline")
        try:
            wire = self._wire
            if wire is None or wire.sock is None or _dropped(wire.sock):
                if wire is not None:
                    wire.close()
                wire = self._wire = _Wire(self, deadline_ns)
                wire.connect()
                self.connects += 1
            assert wire.sock is not None
            wire.sock.settimeout(max(0.001, (deadline_ns - time.monotonic_ns()) / _NS - 0.02))
            wire.tg_sent_ns = None
            headers = dict(_HEADERS)
            if self.proxy is not None and self._tls is None:  # plain http through the proxy: absolute form
                target = self.origin.url_base + target
                if self.proxy.authorization:
                    headers["Proxy-Authorization"] = self.proxy.authorization
            start = time.monotonic_ns()
            wire.request(method, target, headers=headers)
            response = wire.getresponse()
            t1 = time.monotonic_ns()
            t0 = wire.tg_sent_ns if wire.tg_sent_ns is not None else start
        except BaseException:
            self._drop()
            self._lock.release()
            raise
        answer = _Answer(
            t0,
            t1,
            response.status,
            response.getheader("Date"),
            response.getheader("Age"),
            late_ns=t0 - (at_mono_ns if at_mono_ns is not None else t0),
            deferred=deferred,
            validity=wire.tg_validity,
        )
        return answer, response

    def release(self, response: http.client.HTTPResponse) -> None:
        """Read a small body so the connection stays alive; a large, unsized or broken one drops the connection."""
        try:
            length = response.getheader("Content-Length", "")
            if response.length == 0 or (length.isdigit() and int(length) <= _MAX_BODY_BYTES):
                response.read()
        except Exception:  # noqa: BLE001, S110 — the Date is already measured; the next probe reconnects
            pass
        finally:
            if not response.isclosed():
                self._drop()  # unread bytes would be taken for the next answer
            response.close()
            self._lock.release()

    def _drop(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle kept-alive socket was closed by the server (readable while idle: EOF, or stray bytes)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class _ConnectTimeout(TimeoutError):
    """No TCP connection to any address of the host within the time left (not: refused, unreachable)."""


class _Wire(http.client.HTTPConnection):
    """``http.client``'s request writing and answer parsing, on a socket :meth:`connect` opens (see Connection).

    ``send`` records when the request's first byte is handed to the kernel; ``auto_open`` is off, so a request
    never connects inside the stamps.
    """

    auto_open = 0
    tg_sent_ns: int | None = None
    tg_validity: _Validity | None = None

    def __init__(self, owner: Connection, deadline_ns: int) -> None:
        origin = owner.origin
        super().__init__(origin.host, origin.port)
        self.default_port = 443 if origin.scheme == "https" else 80  # Host carries the port only if not this
        self._owner = owner
        self._deadline_ns = deadline_ns

    def send(self, data: Any) -> None:
        if self.tg_sent_ns is None:
            self.tg_sent_ns = time.monotonic_ns()
        super().send(data)

    def connect(self) -> None:
        owner, origin = self._owner, self._owner.origin
        proxy = owner.proxy
        sock = _open_tcp(*((proxy.host, proxy.port) if proxy else (origin.host, origin.port)), self._deadline_ns)
        try:
            sys.audit("http.client.connect", self, origin.host, origin.port)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if proxy is not None and owner._tls is not None:
                tunnel(sock, proxy, origin.host, origin.port)
            if owner._tls is not None:
                sock = owner._tls.wrap_socket(sock, server_hostname=origin.host)  # no SNI for an IP literal
                self.tg_validity = _validity(sock)
                if self.tg_validity is not None and (why := _expired_before_release(self.tg_validity)):
                    raise _CertTimeError(why)  # no request is sent over this connection
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _open_tcp(host: str, port: int, deadline_ns: int) -> socket.socket:
    """A TCP connection to ``host``'s addresses from :func:`net.resolve`, tried in the resolver's order.

    DNS waits at most the time left (net.resolve shares one lookup per name, so a resolver that hangs for good
    holds one thread per name, not one per probe). Each address gets the time still left; a refused or unreachable
    one passes to the next. Raises ResolveError, :class:`_ConnectTimeout`, or the last address's OSError.
    """

    def left_s() -> float:
        return (deadline_ns - time.monotonic_ns()) / _NS - 0.02

    addresses = resolve(host, port, timeout_s=max(left_s(), 0.001), socktype=socket.SOCK_STREAM)
    last_error: OSError | None = None
    for address in addresses:
        if (remaining_s := left_s()) <= 0:
            break
        try:
            sock = socket.socket(address.family, socket.SOCK_STREAM)
        except OSError as exc:  # e.g. IPv6 disabled in this kernel or container: try the next address
            last_error = exc
            continue
        try:
            sock.settimeout(remaining_s)
            sock.connect(address.sockaddr)
        except TimeoutError as exc:
            sock.close()
            raise _ConnectTimeout(f"connecting to {address} timed out") from exc
        except OSError as exc:  # refused, unreachable: the next address may work
            sock.close()
            last_error = exc
            continue
        return sock
    if last_error is None:
        raise _ConnectTimeout(f"no time left to connect to {host}")
    raise last_error


class _Prober:
    """Runs each probe in a daemon thread so that nothing (DNS, a TLS handshake or a server that drips bytes)
    outlives the deadline.

    Socket timeouts bound each operation, not the whole exchange. A worker hands its answer over as soon as the
    headers are in and only then reads the (small) body; the next worker waits for that, up to its send moment, so
    that it finds the kept-alive connection free. The connection is closed when the query is over and its last
    worker has ended (unless it was passed in: then it is left open).
    """

    def __init__(self, connection: Connection, target: str, own: bool) -> None:
        self._connection = connection
        self._target = target
        self._own = own
        self._lock = threading.Lock()
        self._active = 0  # workers still running (draining, or abandoned at the deadline)
        self._finished = False
        self._last: threading.Thread | None = None

    def probe(self, method: str, send: _Send, deadline_ns: int) -> _Answer | _Failure | None:
        answers: queue.SimpleQueue[_Answer | _Failure] = queue.SimpleQueue()
        with self._lock:
            self._active += 1
        worker = threading.Thread(
            target=self._run,
            args=(method, send, deadline_ns, answers, self._last),
            name="timeguard-http",
            daemon=True,
        )
        self._last = worker
        worker.start()
        try:
            return answers.get(timeout=max(0.0, (deadline_ns - time.monotonic_ns()) / _NS))
        except queue.Empty:
            return None

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            if self._active == 0 and self._own:
                self._connection.close()

    def _run(
        self,
        method: str,
        send: _Send,
        deadline_ns: int,
        answers: queue.SimpleQueue[Any],
        previous: threading.Thread | None,
    ) -> None:
        try:
            if previous is not None:
                previous.join(max(0.0, (send.at_mono_ns - send.wake_early_ns - time.monotonic_ns()) / _NS))
            at, deferred = send.at_mono_ns, 0
            while True:
                if (wait_ns := at - send.wake_early_ns - time.monotonic_ns()) > 0:
                    time.sleep(wait_ns / _NS)
                late = time.monotonic_ns() - at
                if send.max_late_ns is None or late <= send.max_late_ns:
                    break
                if at + _NS + send.answer_ns > deadline_ns:
                    break  # no time to wait for the next second: a late probe still proves something
                at += _NS  # the server's clock ticks at the same phase one second later
                deferred += 1
            try:
                answer, response = self._connection.exchange(method, self._target, deadline_ns, at, deferred)
            except Exception as exc:  # noqa: BLE001 — every failure becomes a Sample, never an exception
                answers.put(_Failure(exc))
                return
            answers.put(answer)
            self._connection.release(response)
        finally:
            with self._lock:
                self._active -= 1
                if self._finished and self._active == 0 and self._own:
                    self._connection.close()


def _tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context whose only trust is ``ca_bundle`` (or the system store), times left to us.

    ``ca_bundle`` is loaded here with ``load_verify_locations`` (a file, or an OpenSSL hashed directory); without
    it the system store (its hashed directory where that holds the whole store, see :func:`_system_capath`; else
    ``load_default_certs``, which honours SSL_CERT_FILE/SSL_CERT_DIR), or certifi's bundle (the one requests uses),
    if certifi is installed, on a host whose system store is empty. Chain, signatures and host
    name are verified as usual (``CERT_REQUIRED``, ``check_hostname``); only OpenSSL's validity-time check is off
    (X509_V_FLAG_NO_CHECK_TIME), because it reads the host clock: :func:`_expired_before_release` and
    :func:`_date_outside` judge the times instead. Raises OSError/ssl.SSLError if the bundle cannot be loaded.
    """
    if ca_bundle is None and (capath := _system_capath()) is not None:
        context = ssl.create_default_context(capath=capath)
    elif ca_bundle is None:
        context = ssl.create_default_context()
        if context.cert_store_stats().get("x509_ca", 0) == 0 and not ssl.get_default_verify_paths().capath:
            try:
                import certifi
            except ImportError:
                pass  # nothing to fall back on: verification fails and says "the system CA store"
            else:
                context.load_verify_locations(cafile=certifi.where())
    elif os.path.isdir(ca_bundle):
        context = ssl.create_default_context(capath=ca_bundle)
    else:
        context = ssl.create_default_context(cafile=ca_bundle)
    context.verify_flags |= _X509_V_FLAG_NO_CHECK_TIME
    return context


def _system_capath() -> str | None:
    """The system store's hashed directory, when it holds every CA of the store's bundle file; else None.

    ``load_default_certs`` parses the whole bundle file into every context: 144 CAs, 2.3 MiB resident on Debian,
    for each HTTPS source at once (each query has its own context). OpenSSL reads a hashed directory
    (``<subject hash>.0`` links) only for the certificates a chain needs. Where ca-certificates writes both (Debian,
    Ubuntu, Alpine: the bundle file lies in the hashed directory), they hold the same CAs; that is checked (the
    directory has at least as many hashed certificates as the file has certificates), else the store is loaded
    whole. ``load_default_certs`` trusts the file and the directory together, so the directory alone never trusts
    more.
    """
    paths = ssl.get_default_verify_paths()  # SSL_CERT_FILE/SSL_CERT_DIR included
    if not paths.capath or not paths.cafile:
        return None
    if os.path.dirname(os.path.realpath(paths.cafile)) != os.path.realpath(paths.capath):
        return None
    try:
        hashed = sum(1 for name in os.listdir(paths.capath) if _HASHED_NAME.fullmatch(name))
        with open(paths.cafile, "rb") as bundle:
            in_file = sum(line.startswith(b"-----BEGIN CERTIFICATE-----") for line in bundle)
    except OSError:
        return None
    return paths.capath if 0 < in_file <= hashed else None


class _CertTimeError(ssl.SSLCertVerificationError):
    """A verified chain whose validity dates rule it out; reported like OpenSSL's own verification failures."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.verify_message = message
        self.verify_code = 10  # X509_V_ERR_CERT_HAS_EXPIRED
        self.reason = "CERTIFICATE_VERIFY_FAILED"
        self.library = "SSL"


def _chain_info(sock: Any) -> tuple[list[dict[str, Any]], bool]:
    """The decoded certificates of the verified chain, leaf first, and whether that is the whole chain."""
    getter = getattr(getattr(sock, "_sslobj", None), "get_verified_chain", None)
    if getter is not None:
        try:
            infos = [cert.get_info() for cert in (getter() or [])]
        except (ssl.SSLError, ValueError, AttributeError, TypeError):
            infos = []
        if infos and all("notBefore" in info and "notAfter" in info for info in infos):
            return infos, True
    try:
        leaf = sock.getpeercert()
    except (ssl.SSLError, ValueError, AttributeError, OSError):
        leaf = None
    return ([leaf] if leaf else []), False


def _validity(sock: Any) -> _Validity | None:
    """The validity of the chain a verified TLS socket was accepted with; None if it cannot be read."""
    infos, whole = _chain_info(sock)
    spans: list[tuple[float, float, str]] = []
    for index, info in enumerate(infos):
        try:
            not_before = ssl.cert_time_to_seconds(info["notBefore"])
            not_after = ssl.cert_time_to_seconds(info["notAfter"])
        except (KeyError, ValueError, TypeError, OverflowError):
            return None
        spans.append((not_before, not_after, _cert_label(info, index)))
    if not spans:
        return None
    latest_start = max(spans, key=lambda span: span[0])
    earliest_end = min(spans, key=lambda span: span[1])
    return _Validity(latest_start[0], earliest_end[1], latest_start[2], earliest_end[2], whole)


def _cert_label(info: dict[str, Any], index: int) -> str:
    if index == 0:
        return "the server's certificate"
    fields = {key: value for rdn in info.get("subject", ()) for key, value in rdn}
    name = fields.get("commonName") or fields.get("organizationalUnitName") or fields.get("organizationName")
    return f"its CA certificate {name!r}" if name else f"its CA certificate #{index}"


def _expired_before_release(validity: _Validity) -> str | None:
    if validity.not_after_s >= EARLIEST_PLAUSIBLE_S:
        return None
    return (
        f"{validity.ends_with} expired {_iso(validity.not_after_s)}, before this release was built "
        f"({_iso(EARLIEST_PLAUSIBLE_S)}): whoever holds its key now could forge any Date "
        "(judged without the host clock)"
    )


def _date_outside(validity: _Validity, date_s: float, date: str | None) -> str | None:
    """Why a Date cannot come from an honest server holding this chain, or None (bounds inclusive, RFC 5280)."""
    honest = "an honest server never serves a time outside its own certificate's validity"
    if date_s > validity.not_after_s:
        return (
            f"the server's Date {date!r} is after {validity.ends_with} expired ({_iso(validity.not_after_s)}): "
            f"{honest} (an expired certificate, or a Date that lies)"
        )
    if date_s < validity.not_before_s:
        return (
            f"the server's Date {date!r} is before {validity.starts_with} became valid "
            f"({_iso(validity.not_before_s)}): {honest} (a Date that lies, or a certificate issued with a future "
            "start)"
        )
    return None


def _iso(seconds: float) -> str:
    return iso(seconds, "seconds")


def _what_was_slow(url: str) -> str:
    return f"DNS, connect or the server behind {url} did not finish in time"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (``__cause__``, ``__context__``, exceptions in its args)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (current.__cause__, current.__context__, *current.args):
            if isinstance(inner, BaseException):
                todo.append(inner)


def _describe_failure(
    exc: BaseException, host: str, address: str, ca_bundle: str | None, timeout_s: float
) -> tuple[SourceState, str]:
    """The state and a reason a person can act on, for an exception raised by a probe."""
    chain = list(_causes(exc))

    def find(kind: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
        return next((e for e in chain if isinstance(e, kind)), None)

    unreachable = SourceState.UNREACHABLE
    if verify_error := find(ssl.SSLCertVerificationError):
        detail = (verify_error.verify_message or str(verify_error)).rstrip(".")
        where = f"CA bundle {ca_bundle}" if ca_bundle else "the system CA store; pass ca_bundle for a private CA"
        reason = f"TLS certificate verification failed for {address}: {detail} (checked against {where})"
        if not isinstance(verify_error, _CertTimeError) and ("expired" in detail or "not yet valid" in detail):
            reason += "; a host clock far off also causes this"  # (OpenSSL's own time check is off: not expected)
        return unreachable, reason
    if tls_error := find(ssl.SSLError):
        detail = tls_error.reason or str(tls_error)
        return unreachable, f"TLS handshake with {address} failed: {detail} (is it really an HTTPS port?)"
    if proxy_error := find(ProxyError):
        return unreachable, str(proxy_error)
    if dns_error := find(ResolveError):
        return unreachable, str(dns_error)
    if gai := find(socket.gaierror):
        return unreachable, f"DNS: cannot resolve {host!r}: {gai.strerror or gai}"
    if find(ConnectionRefusedError):
        return unreachable, f"connection refused by {address} (nothing listening on that port?)"
    if find(ConnectionResetError):  # http.client's RemoteDisconnected too: closed without an answer
        return unreachable, f"connection reset by {address}"
    if find(_ConnectTimeout):
        return unreachable, f"no TCP connection to {address} within the {timeout_s:g} s timeout"
    if find(TimeoutError):
        return unreachable, f"connected to {address}, but no answer within the {timeout_s:g} s timeout"
    if bad_answer := find(http.client.HTTPException):
        return SourceState.UNUSABLE, f"bad HTTP answer from {address}: {type(bad_answer).__name__}: {bad_answer}"
    if os_error := find(OSError):
        return unreachable, f"cannot talk to {address}: {os_error}"
    return unreachable, f"unexpected error talking to {address}: {type(exc).__name__}: {exc}"

"""The HTTP(S) ``Date`` source: a sub-second offset interval from one-second Date headers.

The method (research/time_anchors.md §3.1, "interval intersection"): a probe sent at local time t0 and
answered at t1 whose Date says D proves

    D − t1 ≤ offset < D + 1 − t0        (offset = true − host)

because the server stamped D at some moment between t0 and t1 and truncates to the second. Intersecting
the constraints of several probes, each sent so that the server's second should tick over in the middle of the
interval known so far, halves the interval per probe: 7 probes on loopback give about ±8 ms, and the interval is
a hard bound, not an estimate. An empty intersection proves the answers cannot all be true (a stepped server
clock, or a load balancer mixing servers) instead of averaging them into a wrong number.

Local times are ``wall0 + (monotonic − mono0)`` from one wall-clock reading, so a host clock step during the
measurement cannot corrupt it; the result is the offset of the host clock as read at the start.

Nothing here raises for network, TLS or HTTP trouble: every failure is a :class:`Sample` with a reason.
"""

from __future__ import annotations

import queue
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions

from timeguard.model import Sample, SourceKind, SourceState
from timeguard.sanity import implausible
from timeguard.sources.httpdate import HttpDateError, parse_http_date

__all__ = ["query_http"]

_NS = 1_000_000_000
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
_INCONSISTENT = "Date headers inconsistent (server clock stepped, or a load balancer mixes servers)"


@dataclass(frozen=True, slots=True)
class _Send:
    """When a worker should send: ``at_mono_ns`` is the moment the request should leave."""

    at_mono_ns: int
    wake_early_ns: int = 0  # how much earlier than ``at`` to wake (the lateness seen so far)
    max_late_ns: int | None = None  # later than this, the split is off-centre: wait for the next second
    answer_ns: int = 0  # how long an answer takes, for "is there still time for the next second?"


@dataclass(frozen=True, slots=True)
class _Answer:
    t0_mono_ns: int
    t1_mono_ns: int
    status: int
    date: str | None
    age: str | None
    late_ns: int  # t0 − the intended send moment
    deferred: int  # seconds skipped because the worker woke too late


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
    session: requests.Session | None = None,
) -> Sample:
    """Measure the host clock's offset against the ``Date`` headers of ``url``.

    ``requests_count`` probes at most (a HEAD answered 405/501 and retried as GET is not counted), all within
    ``timeout_s`` seconds in total (DNS, connects and the waits between probes included). HTTPS is verified
    against ``ca_bundle`` or the system store; ``http://`` is refused unless ``allow_plain_http``.
    ``wall_ns`` is read exactly once. A ``session`` passed in is used (keep-alive) and left open; if a probe is
    abandoned at the deadline it may still be using that session for up to ``timeout_s``.
    """
    start_mono_ns = time.monotonic_ns()
    deadline_ns = start_mono_ns + max(0, int(timeout_s * _NS))
    label = name or url

    def failed(state: SourceState, reason: str, **extra: Any) -> Sample:
        return Sample.failed(label, SourceKind.HTTP, state, reason, **extra)

    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        return failed(SourceState.UNUSABLE, f"invalid URL {url!r}: {exc}")
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return failed(SourceState.UNUSABLE, f"invalid URL {url!r}: expected https://host[:port]/path")
    port = port or (443 if scheme == "https" else 80)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
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

    # One wall-clock reading; every later local time is derived from the monotonic clock.
    wall0_ns = wall_ns()
    mono0_ns = time.monotonic_ns()

    def local_ns(mono_ns: int) -> int:
        return wall0_ns + (mono_ns - mono0_ns)

    own_session = session is None
    http = session if session is not None else _timed_session()
    verify: str | bool = ca_bundle or True
    prober = _Prober(http, url, verify, own_session)

    lo_ns: int | None = None  # offset ≥ lo
    hi_ns: int | None = None  # offset < hi
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
        assert lo_ns is not None
        assert hi_ns is not None
        width_ns = hi_ns - lo_ns
        mid_ns = (lo_ns + hi_ns) // 2  # integers: exact even for offsets of years
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
            offset_s=mid_ns / _NS,
            offset_lo_s=lo_ns / _NS,
            offset_hi_s=hi_ns / _NS,
            delay_s=min(rtts_ns) / _NS,
            requests=sent,
            monotonic_s=None if last_mid_mono_ns is None else last_mid_mono_ns / _NS,
            reason=f"{sent} requests, bound ±{width_ns / 2 / 1e6:.1f} ms{tail}",
        )

    try:
        while measured < requests_count:
            now_mono = time.monotonic_ns()
            if lo_ns is None or hi_ns is None:
                send = _Send(now_mono)
            else:
                # Send so that the server's processing moment (≈ t0 + rtt/2) meets its second tick-over at
                # the interval's midpoint: the answer then tells which half holds the offset.
                half_rtt = _rtt_estimate(rtts_ns) // 2
                mid = (lo_ns + hi_ns) // 2
                # A thread wakes up late by a fairly steady amount, plus spikes when the CPU is busy; aim
                # earlier by the steady part (the least lateness seen).
                wake_early = min(*lateness_ns, 5_000_000) if lateness_ns else 0
                earliest = local_ns(now_mono + wake_early + _SEND_MARGIN_NS) + mid + half_rtt
                tick = -(-earliest // _NS) * _NS  # the first server second boundary after "earliest"
                send_mono = mono0_ns + (tick - mid - half_rtt - wall0_ns)
                answer_ns = 2 * _rtt_estimate(rtts_ns) + _DEADLINE_GUARD_NS
                if send_mono + answer_ns > deadline_ns:
                    stop_note = f"stopped after {measured} of {requests_count}: the next would pass the timeout"
                    break
                send = _Send(
                    send_mono,
                    wake_early_ns=wake_early,
                    # Sent later than an eighth of the interval, the answer would mostly repeat what is known.
                    max_late_ns=max((hi_ns - lo_ns) // 8, 1_000_000),
                    answer_ns=answer_ns,
                )

            outcome = prober.probe(method, send, deadline_ns)
            if outcome is None:  # no answer by the deadline; the worker is abandoned
                sent += 1
                reason = f"no answer within the {timeout_s:g} s timeout"
                if lo_ns is None:
                    return failed(
                        SourceState.UNREACHABLE, f"{reason} ({_what_was_slow(url)})", address=address, requests=sent
                    )
                stop_note = f"stopped: {reason}"
                break
            sent += 1
            if isinstance(outcome, _Failure):
                state, reason = _describe_failure(outcome.error, host, address, ca_bundle, timeout_s)
                if lo_ns is None:
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
                return failed(
                    SourceState.UNUSABLE,
                    f"HTTP {outcome.status} answer has no Date header",
                    address=address,
                    requests=sent,
                    delay_s=min(rtts_ns) / _NS,
                )
            try:
                date_s = parse_http_date(outcome.date)
            except HttpDateError as exc:
                return failed(
                    SourceState.UNUSABLE,
                    f"unusable Date header: {exc.reason}",
                    address=address,
                    requests=sent,
                    delay_s=min(rtts_ns) / _NS,
                )
            if why := implausible(date_s):
                return failed(
                    SourceState.UNUSABLE,
                    f"Date {outcome.date!r} {why}",
                    address=address,
                    requests=sent,
                    delay_s=min(rtts_ns) / _NS,
                )
            probe_lo = date_s * _NS - local_ns(t1)
            probe_hi = (date_s + 1) * _NS - local_ns(t0)
            lo_ns = probe_lo if lo_ns is None else max(lo_ns, probe_lo)
            hi_ns = probe_hi if hi_ns is None else min(hi_ns, probe_hi)
            if lo_ns >= hi_ns:
                return failed(
                    SourceState.UNUSABLE,
                    f"{_INCONSISTENT}: answer {measured} (Date {outcome.date!r}) contradicts the earlier ones",
                    address=address,
                    requests=sent,
                    delay_s=min(rtts_ns) / _NS,
                )
    finally:
        prober.finish()

    if lo_ns is None:
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


def _rtt_estimate(rtts_ns: list[int]) -> int:
    # The first exchange also paid for the TCP (and TLS) handshake; later ones on the kept-alive connection
    # show the RTT the next probe will see.
    later = rtts_ns[1:] or rtts_ns
    return int(statistics.median(later))


class _Prober:
    """Runs each probe in a daemon thread so that nothing (DNS, a server that drips bytes) outlives the deadline.

    requests' timeouts bound each socket operation, not the whole request, and name resolution has none. A
    worker hands its answer over as soon as the headers are in and only then reads the (small) body; the next
    worker waits for that, up to its send moment, so that it finds the kept-alive connection back in the pool.
    """

    def __init__(self, session: requests.Session, url: str, verify: str | bool, own_session: bool) -> None:
        self._session = session
        self._url = url
        self._verify = verify
        self._own_session = own_session
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
            if self._active == 0 and self._own_session:
                self._session.close()

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
                answer, response = self._exchange(method, at, deferred, deadline_ns)
            except Exception as exc:  # noqa: BLE001 — every failure becomes a Sample, never an exception
                answers.put(_Failure(exc))
                return
            answers.put(answer)
            _drain(response)
        finally:
            with self._lock:
                self._active -= 1
                if self._finished and self._active == 0 and self._own_session:
                    self._session.close()

    def _exchange(self, method: str, at: int, deferred: int, deadline_ns: int) -> tuple[_Answer, requests.Response]:
        t0 = time.monotonic_ns()
        # A little under the deadline, so that requests' own (more specific) timeout error comes first.
        remaining_s = max(0.001, (deadline_ns - t0) / _NS - 0.02)
        response = self._session.request(
            method,
            self._url,
            headers=_HEADERS,
            timeout=(remaining_s, remaining_s),
            verify=self._verify,
            allow_redirects=False,
            stream=True,
        )
        t1 = time.monotonic_ns()
        sent_ns, answered_ns = _wire_times(response)
        if sent_ns is not None and answered_ns is not None and t0 <= sent_ns <= answered_ns <= t1:
            t0, t1 = sent_ns, answered_ns  # tighter, and provably inside the outer bracket
        headers = response.headers
        answer = _Answer(
            t0, t1, response.status_code, headers.get("Date"), headers.get("Age"), late_ns=t0 - at, deferred=deferred
        )
        return answer, response


class _StampedConnection:
    """Records when urllib3 starts sending a request and when the answer's headers are in.

    ``requests`` spends about half a millisecond of Python before it sends and after it receives (environment
    proxies, netrc, cookies, hooks); stamping at the connection keeps that, and the TLS handshake of a new
    connection, out of the interval a probe proves. Mixed into urllib3's connection classes.
    """

    tg_sent_ns: int | None = None
    tg_answered_ns: int | None = None

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.tg_answered_ns = None
        self.tg_sent_ns = time.monotonic_ns()
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        self.tg_answered_ns = time.monotonic_ns()
        return response


class _StampedHTTPConnection(_StampedConnection, urllib3.connection.HTTPConnection):
    pass


class _StampedHTTPSConnection(_StampedConnection, urllib3.connection.HTTPSConnection):
    pass


class _StampedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _StampedHTTPConnection


class _StampedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _StampedHTTPSConnection


class _StampedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _StampedHTTPPool, "https": _StampedHTTPSPool}


def _timed_session() -> requests.Session:
    session = requests.Session()
    adapter = _StampedAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _wire_times(response: requests.Response) -> tuple[int | None, int | None]:
    """The connection-level stamps of this response, if it came through a :class:`_StampedConnection`.

    The caller accepts them only inside its own bracket, so a stale or missing stamp (a session passed in, a
    proxy, another urllib3) can only cost precision, never make the interval wrong.
    """
    connection = getattr(response.raw, "connection", None)
    return getattr(connection, "tg_sent_ns", None), getattr(connection, "tg_answered_ns", None)


def _drain(response: requests.Response) -> None:
    """Read a small body so the connection is kept alive; a large or unsized one drops the connection."""
    try:
        length = response.headers.get("Content-Length", "")
        if response.request.method == "HEAD" or (length.isdigit() and int(length) <= _MAX_BODY_BYTES):
            _ = response.content
    except Exception:  # noqa: BLE001, S110 — the Date is already measured; the next probe reconnects
        pass
    finally:
        response.close()


def _what_was_slow(url: str) -> str:
    return f"DNS, connect or the server behind {url} did not finish in time"


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (requests → urllib3 MaxRetryError.reason → socket/ssl errors)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args):
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
        if "expired" in detail or "not yet valid" in detail:
            reason += "; a host clock far off also causes this"
        return unreachable, reason
    if isinstance(exc, requests.exceptions.SSLError) or find(ssl.SSLError):
        tls_error = find(ssl.SSLError)
        detail = (tls_error.reason or str(tls_error)) if tls_error else str(exc)
        return unreachable, f"TLS handshake with {address} failed: {detail} (is it really an HTTPS port?)"
    if gai := find(socket.gaierror):
        return unreachable, f"DNS: cannot resolve {host!r}: {gai.strerror or gai}"
    if find(urllib3.exceptions.NameResolutionError):
        return unreachable, f"DNS: cannot resolve {host!r}"
    if find(ConnectionRefusedError):
        return unreachable, f"connection refused by {address} (nothing listening on that port?)"
    if find(ConnectionResetError):
        return unreachable, f"connection reset by {address}"
    # urllib3's NewConnectionError subclasses ConnectTimeoutError: only a real timeout is a timeout.
    connect_timeout = find(urllib3.exceptions.ConnectTimeoutError)
    if isinstance(exc, requests.exceptions.ConnectTimeout) or (
        connect_timeout is not None and not isinstance(connect_timeout, urllib3.exceptions.NewConnectionError)
    ):
        return unreachable, f"no TCP connection to {address} within the {timeout_s:g} s timeout"
    if isinstance(exc, requests.exceptions.Timeout) or find((urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return unreachable, f"connected to {address}, but no answer within the {timeout_s:g} s timeout"
    if isinstance(exc, requests.exceptions.ConnectionError):
        inner = find(OSError)
        return unreachable, f"cannot talk to {address}: {inner or exc}"
    if isinstance(exc, requests.exceptions.RequestException):
        return SourceState.UNUSABLE, f"bad HTTP answer from {address}: {exc}"
    return unreachable, f"unexpected error talking to {address}: {type(exc).__name__}: {exc}"

"""An NTS source: a session (keys and a cookie jar) that lives across checks, and one authenticated measurement.

The exchange itself is the plain NTP client's (measure/ntp.py: the nonce, T1/T4 from one anchor, best of N,
every RFC 5905 check, Kiss-o'-Death handling); this module only wraps its packets (:class:`_Wrap` is its
``ReplyAuth``): each request spends one cookie and asks for as many more as the jar lacks (placeholders), each
reply must carry the request's unique identifier and an authenticator that verifies before any field of it is
believed, and its encrypted part refills the jar. A new key exchange is made when there are no keys, the jar is
empty, or the server sent a crypto-NAK. So a daemon polling every 64 s makes one KE per session, not per round.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from timeguard.measure.ntp import (
    DEFAULT_MAX_ROOT_DISTANCE_S,
    KISS_NTS_NAK,
    Header,
    Ignored,
    Kiss,
    Rejected,
    ReplyCheck,
    query_ntp,
)
from timeguard.measure.ntp import build_request as ntp_header
from timeguard.measure.nts.extensions import (
    FieldError,
    build_request,
    find_uid,
    has_authenticator,
    new_uid,
    open_reply,
    parse_fields,
)
from timeguard.measure.nts.ke import KE_PORT, KeError, KeResult, key_exchange
from timeguard.model import Authentication, Sample, SourceKind, SourceState, operator_of
from timeguard.timefmt import fmt_duration

#: Cookies kept (RFC 8915 §5.7 suggests 8: what a server gives at KE, and what placeholders ask back up to).
JAR_SIZE = 8
#: A key exchange may use this share of a measurement's time; the rest is kept for the NTP requests.
KE_SHARE = 2 / 3


class NtsSession:
    """One configured NTS server: its keys and cookies, kept between measurements (thread-safe)."""

    def __init__(self, host: str, *, port: int = 123, ke_port: int = KE_PORT, ca_bundle: str | None = None,
                 name: str | None = None, operator: str | None = None) -> None:
        self.host, self.port, self.ke_port, self.ca_bundle = host, port, ke_port, ca_bundle
        self.label = name or host
        self.operator = operator or operator_of(host)
        self.ke: KeResult | None = None
        self.cookies: deque[bytes] = deque()
        self.key_exchanges = 0
        self.requests = 0  # NTP requests sent over all key exchanges (requests per KE = requests / key_exchanges)
        self._renewal = "first key exchange"  # why the next key exchange is made (the sample says it)
        self._kept: str | None = None  # adopted keys, said once by the next sample
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> tuple[str, int, int, str | None]:
        """What the keys belong to (measure/nts/keep.py matches kept keys by it)."""
        return self.host, self.port, self.ke_port, self.ca_bundle

    def export(self) -> dict[str, Any] | None:
        """The keys and unspent cookies, for measure/nts/keep.py; None without them (or while a measurement
        abandoned at its deadline still holds the session)."""
        if not self._lock.acquire(timeout=1.0):
            return None
        try:
            ke = self.ke
            if ke is None or not self.cookies:
                return None
            host, port, ke_port, ca_bundle = self.endpoint
            return {"host": host, "port": port, "ke_port": ke_port, "ca_bundle": ca_bundle, "aead": int(ke.aead),
                    "c2s_key": ke.c2s_key.hex(), "s2c_key": ke.s2c_key.hex(), "ntp_host": ke.ntp_host,
                    "ntp_port": ke.ntp_port, "address": ke.address, "not_before_s": ke.validity.not_before_s,
                    "not_after_s": ke.validity.not_after_s, "ke_age_s": round(time.monotonic() - ke.monotonic_s, 3),
                    "cookies": [c.hex() for c in self.cookies]}
        finally:
            self._lock.release()

    def adopt(self, ke: KeResult, cookies: list[bytes], age_s: float) -> bool:
        """Take keys kept from before a restart (measure/nts/keep.py); False when this session has its own."""
        with self._lock:
            if self.ke is not None:
                return False
            self.ke, self.cookies = ke, deque(cookies[:JAR_SIZE])
            self._kept = (f"keys and {len(self.cookies)} cookies kept from before the restart (key exchange with "
                          f"{ke.address} {fmt_duration(age_s)} before it)")
            return True

    def forget_keys(self, why: str = "new key exchange") -> None:
        self.ke = None
        self.cookies.clear()
        self._renewal = why

    def measure(self, *, samples: int = 4, timeout_s: float = 2.0,
                max_root_distance_s: float = DEFAULT_MAX_ROOT_DISTANCE_S,
                wall_ns: Callable[[], int] = time.time_ns) -> Sample:
        """One authenticated measurement within ``timeout_s`` (a key exchange first when needed); never raises for
        a network, TLS or protocol problem: the Sample says why it is unusable or unreachable."""
        # A measurement abandoned at a check's deadline (measure_all) may still hold the session: wait no longer than
        # this one may take, and say so.
        if not self._lock.acquire(timeout=timeout_s):
            return Sample.failed(self.label, SourceKind.NTS, SourceState.UNREACHABLE,
                                 f"the previous measurement of this source has not finished within {timeout_s:g} s",
                                 auth=Authentication(mode="nts"), operator=self.operator)
        try:
            return self._measure(samples, timeout_s, max_root_distance_s, wall_ns)
        finally:
            self._lock.release()

    def _measure(self, samples: int, timeout_s: float, max_root_distance_s: float,
                 wall_ns: Callable[[], int]) -> Sample:
        deadline = time.monotonic() + timeout_s
        notes = [self._kept] if self._kept else []
        self._kept = None
        if self.ke is None or not self.cookies:
            why = self._renewal if self.ke is None else "new key exchange: no cookie left"
            try:
                self.ke = key_exchange(self.host, self.ke_port, ntp_port=self.port, ca_bundle=self.ca_bundle,
                                       timeout_s=max(timeout_s * KE_SHARE, timeout_s - 1.0))
            except KeError as exc:
                self.forget_keys(why)
                return Sample.failed(self.label, SourceKind.NTS, exc.state, exc.reason,
                                     auth=Authentication(mode="nts"), operator=self.operator)
            self.key_exchanges += 1
            self.cookies = deque(self.ke.cookies[:JAR_SIZE])
            notes.append(f"{why} with {self.ke.address} ({len(self.ke.cookies)} cookies)")
        wrap = _Wrap(self, self.ke)
        sample = query_ntp(self.ke.ntp_host, self.ke.ntp_port, name=self.label, samples=samples,
                           timeout_s=max(round(deadline - time.monotonic(), 3), 0.01),
                           max_root_distance_s=max_root_distance_s, wall_ns=wall_ns, auth=wrap)
        self.requests += sample.requests
        if wrap.naks or sample.kiss_code == KISS_NTS_NAK:  # the server cannot read our cookies: KE next time
            self.forget_keys("new key exchange after a crypto-NAK")
        if sample.usable and sample.offset_s is not None:
            # The server's time (host clock + offset) must lie in the certificate's validity (measure/nts/ke.py).
            outside = self.ke.validity.outside(wall_ns() / 1e9 + sample.offset_s) if self.ke is not None else None
            if outside is not None:
                return Sample.failed(self.label, SourceKind.NTS, SourceState.UNUSABLE, outside,
                                     address=sample.address, requests=sample.requests, auth=sample.auth,
                                     operator=self.operator)
        if notes:
            sample = dataclasses.replace(sample, reason="; ".join([*notes, sample.reason]))
        return sample


class _Wrap:
    """The plain NTP exchange's ``ReplyAuth`` for one measurement of a session."""

    kind = SourceKind.NTS

    def __init__(self, session: NtsSession, ke: KeResult) -> None:
        self.session, self.ke = session, ke
        self.pending: dict[int, tuple[bytes, int]] = {}  # nonce -> that request's unique identifier, cookies asked
        self.in_flight = 0  # cookies the requests still unanswered should bring back
        self.naks = 0
        self.cookie_bytes: int | None = None

    def request(self, nonce: int) -> bytes | None:
        jar = self.session.cookies
        if not jar:
            return None
        cookie = jar.popleft()
        self.cookie_bytes = len(cookie)
        placeholders = max(0, min(JAR_SIZE - 1, JAR_SIZE - len(jar) - 1 - self.in_flight))
        self.in_flight += 1 + placeholders
        uid = new_uid()
        self.pending[nonce] = (uid, 1 + placeholders)
        return build_request(ntp_header(nonce), uid=uid, cookie=cookie, placeholders=placeholders,
                             c2s_key=self.ke.c2s_key)

    def judge(self, data: bytes, header: Header) -> ReplyCheck | None:
        nonce = header.origin
        uid, asked = self.pending[nonce]
        try:
            fields = parse_fields(data)
        except FieldError as exc:
            return Rejected(nonce, f"malformed NTS extension fields: {exc}", leap=header.leap, stratum=header.stratum)
        if header.stratum == 0 and not has_authenticator(fields):
            code = header.refid.rstrip(b"\0").decode("ascii", "replace")
            if code == KISS_NTS_NAK and find_uid(fields) == uid:
                self.naks += 1
                return Kiss(nonce, KISS_NTS_NAK, header.leap)
            # RFC 8915 §5.7: only a NAK may come unauthenticated; any other kiss could be anyone's.
            return Ignored(f"unauthenticated Kiss-o'-Death {code!r} replies (only an NTSN crypto-NAK may be)")
        try:
            opened = open_reply(data, uid=uid, s2c_key=self.ke.s2c_key)
        except FieldError as exc:
            return Rejected(nonce, str(exc), leap=header.leap, stratum=header.stratum)
        jar = self.session.cookies
        for cookie in opened.cookies:
            if len(jar) < JAR_SIZE:
                jar.append(cookie)
        self.in_flight = max(self.in_flight - asked, 0)
        return None

    def sample_extra(self) -> dict[str, Any]:
        return {
            "auth": Authentication(
                mode="nts",
                aead=self.ke.aead.name,
                key_bits=len(self.ke.c2s_key) * 8,
                cookies=len(self.session.cookies),
                cookie_bytes=self.cookie_bytes,
                ke_age_s=round(time.monotonic() - self.ke.monotonic_s, 3),
                naks=self.naks,
            ),
            "operator": self.session.operator,
        }

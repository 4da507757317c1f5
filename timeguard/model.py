"""The values that flow through timeguard (DESIGN.md "Data flow").

Sign convention everywhere: an offset is *true time − host time*. A positive offset means the host
clock is behind (as chrony's "System time ... slow", ntplib's ``offset``); ``trusted_now = host_now +
offset_s``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from timeguard.ranges import Range


class TrustClass(enum.StrEnum):
    """Sources that fail together: a class's majority is checked against every other class's, so one way of
    lying (a spoofed NTP path, a forged Date) cannot move the verdict unseen (``SOURCES_INCONSISTENT``)."""

    NTP = "ntp"  # plain NTP: unauthenticated, anyone on the path can move it
    HTTP = "http"  # HTTPS Date headers: authenticated by TLS, one-second resolution
    NTS = "nts"  # NTP with Network Time Security (RFC 8915): authenticated, NTP-grade precision

    @property
    def label(self) -> str:
        """How a person names the class: "NTP", "HTTPS", "NTS"."""
        return _CLASS_LABELS[self]

    @property
    def authenticated(self) -> bool:
        """Whether an on-path attacker can forge this class's answers (False) or not (True)."""
        return self is not TrustClass.NTP


_CLASS_LABELS = {TrustClass.NTP: "NTP", TrustClass.HTTP: "HTTPS", TrustClass.NTS: "NTS"}


class SourceKind(enum.StrEnum):
    """A protocol a source speaks; each declares its :class:`TrustClass` (a new kind: a member, its class here,
    its measuring module and its config)."""

    NTP = "ntp"
    HTTP = "http"
    NTS = "nts"

    @property
    def trust_class(self) -> TrustClass:
        return _TRUST_CLASSES[self]


_TRUST_CLASSES = {SourceKind.NTP: TrustClass.NTP, SourceKind.HTTP: TrustClass.HTTP, SourceKind.NTS: TrustClass.NTS}


@dataclass(frozen=True, slots=True)
class Authentication:
    """How one sample's answers were authenticated: the columns of ``chronyc authdata`` that apply."""

    mode: str  # "nts" (RFC 8915), "tls" (HTTPS Date)
    aead: str | None = None  # NTS: the negotiated AEAD algorithm, "AEAD_AES_SIV_CMAC_256"
    key_bits: int | None = None  # NTS: length of the C2S/S2C keys
    cookies: int | None = None  # NTS: cookies held after this exchange
    cookie_bytes: int | None = None  # NTS: length of the last cookie
    ke_age_s: float | None = None  # NTS: seconds since the key exchange these keys came from
    naks: int = 0  # NTS: crypto-NAKs (NTSN Kiss-o'-Death) received in this exchange

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "aead": self.aead, "key_bits": self.key_bits, "cookies": self.cookies,
                "cookie_bytes": self.cookie_bytes, "ke_age_s": self.ke_age_s, "naks": self.naks}


def operator_of(host: str) -> str:
    """The operator a host name most likely belongs to: its last two DNS labels (``time.cloudflare.com`` →
    ``cloudflare.com``, ``nts.netnod.se`` → ``netnod.se``), lower-cased; an IP address is its own operator.

    A heuristic for the default only (it cannot know public suffixes such as ``co.uk``): a config names the
    operator explicitly where it matters (``operator:`` on a source)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        ipaddress.ip_address(name)
    except ValueError:
        labels = [label for label in name.split(".") if label]
        return ".".join(labels[-2:]) if labels else name
    return name


class SourceState(enum.StrEnum):
    """What the consensus made of a source (the ``S`` column of ``chronyc sources``)."""

    TRUECHIMER = "truechimer"  # its interval overlaps the majority's: used
    FALSETICKER = "falseticker"  # it answered validly, but disagrees with the majority
    UNUSABLE = "unusable"  # it answered, but the answer failed a check (KoD, leap 3, bad Date, ...)
    UNREACHABLE = "unreachable"  # no valid answer at all (DNS, timeout, refused, TLS)


@dataclass(frozen=True, slots=True)
class Sample:
    """One source's measurement: an offset interval, or the reason there is none.

    ``offset_lo_s <= offset_s <= offset_hi_s``; the true offset lies in ``[offset_lo_s, offset_hi_s]``
    if the source is honest (for NTP: ± delay/2 + root distance; for HTTP: the Date-interval bound).
    ``monotonic_s`` is ``time.monotonic()`` at the middle of the exchange that produced it, so a
    later consumer can age it and correct it for local clock steps seen since.
    """

    name: str
    kind: SourceKind
    address: str | None = None  # "192.0.2.1:123", "[2001:db8::1]:123", or the URL's host:port
    offset_s: float | None = None
    offset_lo_s: float | None = None
    offset_hi_s: float | None = None
    delay_s: float | None = None
    stratum: int | None = None
    leap: int | None = None  # NTP leap indicator 0..3, when known
    requests: int = 0  # exchanges made (NTP packets sent, HTTP requests sent)
    monotonic_s: float | None = None
    #: The host's REALTIME − MONOTONIC (s) at the wall reading the offset is relative to (measure/anchor.py): the
    #: daemon compares it with its clocks read before the measurement, so a step in between re-bases it right.
    wall_base_s: float | None = None
    failure: SourceState | None = None  # UNUSABLE or UNREACHABLE when there is no offset
    reason: str = ""  # why it failed, or a note on a success ("3 of 4 replies", "Age>0 dropped: 1")
    kiss_code: str | None = None  # an authentic Kiss-o'-Death code (origin matched): DENY, RSTR, RATE, ...
    auth: Authentication | None = None  # how the answers were authenticated; None for plain NTP
    #: Who runs the source (``operator_of`` its host, or the config's ``operator:``): the evidence rule counts
    #: authenticated sources of *independent* operators, so two names of one operator are one witness.
    operator: str | None = None

    def __post_init__(self) -> None:
        if self.failure is None:
            if self.offset_s is None or self.offset_lo_s is None or self.offset_hi_s is None:
                raise ValueError(f"sample {self.name!r}: a usable sample needs offset_s and its interval")
            if not self.offset_lo_s <= self.offset_s <= self.offset_hi_s:
                raise ValueError(
                    f"sample {self.name!r}: offset {self.offset_s} outside its interval "
                    f"[{self.offset_lo_s}, {self.offset_hi_s}]"
                )
        elif self.failure not in (SourceState.UNUSABLE, SourceState.UNREACHABLE):
            raise ValueError(f"sample {self.name!r}: failure must be unusable or unreachable")

    @property
    def usable(self) -> bool:
        return self.failure is None

    @property
    def error_s(self) -> float | None:
        """Half-width of the interval (the ``±`` a person reads)."""
        if self.offset_lo_s is None or self.offset_hi_s is None:
            return None
        return (self.offset_hi_s - self.offset_lo_s) / 2

    @classmethod
    def failed(
        cls,
        name: str,
        kind: SourceKind,
        state: SourceState,
        reason: str,
        **extra: object,
    ) -> Sample:
        return cls(name=name, kind=kind, failure=state, reason=reason, **extra)  # type: ignore[arg-type]


class Status(enum.StrEnum):
    """The verdict of one cross-check. ``exit_code`` follows the Nagios plugin conventions, and
    ``check_ntp_time``'s rule for an offset that cannot be found: CRITICAL, or UNKNOWN when asked (``-q``)."""

    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    SOURCES_INCONSISTENT = "SOURCES_INCONSISTENT"
    NO_MAJORITY = "NO_MAJORITY"
    UNKNOWN = "UNKNOWN"

    @property
    def offset_found(self) -> bool:
        """Whether the sources gave an offset (SOURCES_INCONSISTENT is found out, and always CRITICAL)."""
        return self not in (Status.NO_MAJORITY, Status.UNKNOWN)

    @property
    def exit_code(self) -> int:
        return self.nagios_code()

    def nagios_code(self, *, quiet: bool = False) -> int:
        """0 OK, 1 WARNING, 2 CRITICAL; an offset that cannot be found is 2, or 3 (UNKNOWN) with ``quiet``."""
        if not self.offset_found:
            return 3 if quiet else 2
        return _EXIT_CODES[self]


_EXIT_CODES = {
    Status.OK: 0,
    Status.WARNING: 1,
    Status.CRITICAL: 2,
    Status.SOURCES_INCONSISTENT: 2,
}

#: The Nagios state names by exit code.
NAGIOS_STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclass(frozen=True, slots=True)
class SourceVerdict:
    """A sample with the state the selection gave it."""

    sample: Sample
    state: SourceState
    reason: str

    def brief_dict(self) -> dict[str, Any]:
        """What the journal keeps and the metrics show of a source."""
        s = self.sample
        return {"name": s.name, "kind": s.kind.value, "state": self.state.value, "offset_s": s.offset_s,
                "reason": self.reason, "authenticated": s.kind.trust_class.authenticated, "operator": s.operator}

    def to_dict(self) -> dict[str, Any]:
        """All of it (``check --json``)."""
        s = self.sample
        return {
            **self.brief_dict(),
            "address": s.address,
            "offset_lo_s": s.offset_lo_s,
            "offset_hi_s": s.offset_hi_s,
            "delay_s": s.delay_s,
            "stratum": s.stratum,
            "leap": s.leap,
            "requests": s.requests,
            "kiss_code": s.kiss_code,
            "auth": None if s.auth is None else s.auth.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ClassAgreement:
    """The selection run over one trust class of sources alone (only NTP, only HTTPS, only NTS)."""

    trust_class: TrustClass
    usable: int
    agreeing: int  # the largest number of mutually overlapping intervals
    offset_lo_s: float | None  # the class's majority interval (the hull of ``regions``), None without a majority
    offset_hi_s: float | None
    regions: tuple[tuple[float, float], ...] = ()  # every point covered by a majority of the class

    @property
    def has_majority(self) -> bool:
        return self.offset_lo_s is not None

    def to_dict(self) -> dict[str, Any]:
        return {"usable": self.usable, "agreeing": self.agreeing, "offset_lo_s": self.offset_lo_s,
                "offset_hi_s": self.offset_hi_s, "authenticated": self.trust_class.authenticated}


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Status
    summary: str  # one line a person reads: "offset +0.0031 s ± 0.0040 s, 6 of 7 sources agree"
    offset_s: float | None
    offset_lo_s: float | None
    offset_hi_s: float | None
    sources: tuple[SourceVerdict, ...]
    usable: int
    agreeing: int
    #: Every trust class, in :class:`TrustClass` order, with or without sources.
    classes: Mapping[TrustClass, ClassAgreement]
    #: Whether the majorities of the classes overlap, every pair of them; None when fewer than two classes have
    #: a majority of their own (nothing to compare). When the authenticated sources decide (``authenticated_decide``)
    #: an outvoted plain-NTP class does not count: it is outvoted, not a disagreement (consensus module docstring).
    classes_agree: bool | None
    warning: Range  # applied to |offset| at every point of ``regions``
    critical: Range
    monotonic_s: float = field(default=0.0)  # when the verdict was formed
    #: Every point covered by a strict majority of the usable intervals, as disjoint closed intervals in
    #: order (``offset_lo_s``/``offset_hi_s`` are their hull). More than one: the majority is split, and the
    #: true offset lies in one of them — which one, the sources cannot tell.
    regions: tuple[tuple[float, float], ...] = ()
    #: The classes whose majority agrees with the verdict, in :class:`TrustClass` order (empty without an offset,
    #: or when the classes are inconsistent). An outvoted plain-NTP class is not among them.
    agreeing_classes: tuple[TrustClass, ...] = ()
    #: Whether the authenticated sources decided (consensus module docstring): unauthenticated ones only count
    #: where they agree with them.
    authenticated_decide: bool = False

    @property
    def witnesses(self) -> tuple[str, ...]:
        """The independent confirmations of the verdict the repair's evidence rule counts: each agreeing class is
        one (``"ntp"``, ``"http"``: one on-path attacker can move all plain NTP; HTTPS Date alone is too coarse to
        count twice), except NTS, where each operator of an NTS truechimer is one (``"nts:netnod.se"``): two
        names of one operator are one witness."""
        out: list[str] = []
        for trust_class in self.agreeing_classes:
            if trust_class is not TrustClass.NTS:
                out.append(trust_class.value)
                continue
            operators = {sv.sample.operator or operator_of(sv.sample.name) for sv in self.sources
                         if sv.sample.kind.trust_class is trust_class and sv.state is SourceState.TRUECHIMER}
            out += [f"{trust_class.value}:{op}" for op in sorted(operators)]
        return tuple(out)

    @property
    def ntp_http_agree(self) -> bool | None:
        """The name the outputs (JSON, journal, hooks, metrics) have always given :attr:`classes_agree`."""
        return self.classes_agree

    @property
    def warning_s(self) -> float | None:
        """The plain threshold N of a warning range ``N`` (alert above N), else None."""
        return self.warning.simple_s

    @property
    def critical_s(self) -> float | None:
        return self.critical.simple_s

    @property
    def error_s(self) -> float | None:
        if self.offset_lo_s is None or self.offset_hi_s is None:
            return None
        return (self.offset_hi_s - self.offset_lo_s) / 2

    def trusted_now(self, host_now_s: float) -> float | None:
        """The true time implied by the verdict, given the host's wall time (seconds since the epoch)."""
        if self.offset_s is None:
            return None
        return host_now_s + self.offset_s


def _verdict_outcome(verdict: Verdict) -> dict[str, Any]:
    return {
        "status": verdict.status.value,
        "offset_s": verdict.offset_s,
        "offset_lo_s": verdict.offset_lo_s,
        "offset_hi_s": verdict.offset_hi_s,
        "ntp_http_agree": verdict.ntp_http_agree,
        "summary": verdict.summary,
    }


def verdict_summary(verdict: Verdict) -> dict[str, Any]:
    """What events, hooks, the daemon's log and the repair's evidence rule read of a verdict: the outcome, and
    who vouches for it (``agreeing_classes``; ``witnesses``, :attr:`Verdict.witnesses`)."""
    return {
        **_verdict_outcome(verdict),
        "agreeing_classes": [c.value for c in verdict.agreeing_classes],
        "witnesses": list(verdict.witnesses),
    }


def verdict_record(verdict: Verdict) -> dict[str, Any]:
    """The outcome with the counts and the sources in brief: what the journal keeps (a ``CheckRecord``'s fields),
    the metrics show and ``check --json`` starts from. Who vouches for a verdict is read live (the evidence rule
    judges the current verdict), so the journal does not keep it; the sources' states say it."""
    return {
        **_verdict_outcome(verdict),
        "usable": verdict.usable,
        "agreeing": verdict.agreeing,
        "sources": [sv.brief_dict() for sv in verdict.sources],
    }

"""One cross-check: every configured source queried at once, under one deadline, then the consensus.

Each source runs in its own daemon thread. A source that is stuck where no timeout reaches
(a resolver that never answers, a kernel that never answers connect) is abandoned at the deadline
and reported as unreachable, so one check never takes longer than ``timeout_s`` plus a few
milliseconds, however many sources are dead, blackholed or stuck in DNS.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from timeguard.config import Config, HttpServer, NtpServer, NtsServer
from timeguard.measure import consensus
from timeguard.model import Sample, SourceKind, SourceState, Verdict
from timeguard.ranges import Range
from timeguard.watch.localclock import LocalClockState, read_local_clock

#: How much earlier than the check's deadline each source is told to finish on its own.
SOURCE_MARGIN_S = 0.05


@dataclass(frozen=True, slots=True)
class CheckResult:
    verdict: Verdict
    local: LocalClockState | None
    duration_s: float
    host_time_s: float  # the host's wall time when the check finished (the verdict's offset applies to it)
    quiet: bool = False  # check_ntp_time -q: an offset that cannot be found is UNKNOWN (3), not CRITICAL (2)

    @property
    def exit_code(self) -> int:
        return self.verdict.status.nagios_code(quiet=self.quiet)


@dataclass(frozen=True, slots=True)
class Probe:
    """One source to query: its label, kind, and the call that measures it within a deadline."""

    name: str
    kind: SourceKind
    measure: Callable[[float], Sample]  # timeout_s -> Sample


def parse_host(text: str, default_port: int = 123) -> NtpServer:
    """``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6 address, as ``check_ntp_time -H`` takes
    a server; raises ValueError saying what is wrong."""
    raw = text.strip()
    port_text = ""
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: an IPv6 address in brackets is [ADDRESS] or [ADDRESS]:PORT")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"{text!r}: no port after the colon")
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
        if not port_text:
            raise ValueError(f"{text!r}: no port after the colon")
    else:
        host = raw  # a name, an IPv4 address, or a bare IPv6 address (several colons: no port)
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{text!r}: no host name or address")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port {port_text!r} is not a number from 1 to 65535")
        port = int(port_text)
    shown = f"[{host}]" if ":" in host else host
    return NtpServer(host=host, port=port, name=shown if port == 123 else f"{shown}:{port}")


def probes(cfg: Config) -> list[Probe]:
    """The configured sources as probes. Each source module is imported only when a source of its kind is
    configured: ``timeguard --help`` loads none, an NTP-only daemon never loads the HTTP source, and only NTS
    sources load pyOpenSSL."""
    out = []
    if cfg.sources.ntp:
        from timeguard.measure.ntp import query_ntp

        out += [Probe(ntp.label, SourceKind.NTP, _ntp_measure(query_ntp, ntp, cfg)) for ntp in cfg.sources.ntp]
    if cfg.sources.http:
        from timeguard.measure.http import query_http

        out += [Probe(h.label, SourceKind.HTTP, _http_measure(query_http, h, cfg)) for h in cfg.sources.http]
    if cfg.sources.nts:
        from timeguard.measure.nts.source import NtsSession

        out += [Probe(n.label, SourceKind.NTS, _nts_measure(NtsSession, n, cfg)) for n in cfg.sources.nts]
    return out


def _ntp_measure(query_ntp: Callable[..., Sample], server: NtpServer, cfg: Config) -> Callable[[float], Sample]:
    def measure(timeout_s: float) -> Sample:
        sample = query_ntp(
            server.host,
            server.port,
            name=server.label,
            samples=cfg.ntp.samples,
            timeout_s=timeout_s,
            max_root_distance_s=cfg.ntp.max_root_distance_s,
        )
        return dataclasses.replace(sample, operator=server.owner)

    return measure


#: The NTS sessions of the probes alive now, by their config entry: a reload that keeps an entry keeps its session
#: (the new probe is built while the old one still holds it), so a SIGHUP costs no key exchange.
_NTS_SESSIONS: weakref.WeakValueDictionary[NtsServer, Any] = weakref.WeakValueDictionary()


def nts_sessions() -> list[Any]:
    """The NTS sessions of the probes alive now (the daemon keeps their keys across a restart: nts/keep.py)."""
    return list(_NTS_SESSIONS.values())


def _nts_measure(session_type: Callable[..., Any], server: NtsServer, cfg: Config) -> Callable[[float], Sample]:
    """The probe keeps its session (keys, cookies): a daemon polling it makes one key exchange, not one per round."""
    session = _NTS_SESSIONS.get(server)
    if session is None:
        session = _NTS_SESSIONS[server] = session_type(
            server.host, port=server.port, ke_port=server.ke_port, ca_bundle=server.ca_bundle, name=server.label,
            operator=server.owner)

    def measure(timeout_s: float) -> Sample:
        return session.measure(samples=cfg.ntp.samples, timeout_s=timeout_s,
                               max_root_distance_s=cfg.ntp.max_root_distance_s)

    return measure


def _http_measure(
    query_http: Callable[..., Sample], server: HttpServer, cfg: Config
) -> Callable[[float], Sample]:
    def measure(timeout_s: float) -> Sample:
        sample = query_http(
            server.url,
            name=server.label,
            requests_count=cfg.http.requests,
            timeout_s=timeout_s,
            ca_bundle=server.ca_bundle,
            allow_plain_http=server.allow_plain_http,
        )
        return dataclasses.replace(sample, operator=server.owner)

    return measure


def measure_all(probe_list: list[Probe], timeout_s: float) -> list[Sample]:
    """Run every probe concurrently; whatever has not answered by the deadline is unreachable."""
    deadline = time.monotonic() + timeout_s
    results: list[Sample | None] = [None] * len(probe_list)

    def run(index: int, probe: Probe) -> None:
        try:
            results[index] = probe.measure(max(timeout_s - SOURCE_MARGIN_S, 0.01))
        except Exception as exc:  # noqa: BLE001 — a bug in one source must not cost the verdict of the others
            results[index] = Sample.failed(
                probe.name, probe.kind, SourceState.UNREACHABLE, f"internal error: {type(exc).__name__}: {exc}"
            )

    threads = [
        threading.Thread(target=run, args=(i, p), name=f"source:{p.name}", daemon=True)
        for i, p in enumerate(probe_list)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    return [
        result
        if result is not None
        else Sample.failed(
            probe.name, probe.kind, SourceState.UNREACHABLE, f"no answer within {timeout_s:g} s (abandoned)"
        )
        for probe, result in zip(probe_list, list(results), strict=True)
    ]


def run_check(
    cfg: Config,
    *,
    warning_s: float | Range | None = None,
    critical_s: float | Range | None = None,
    probe_list: list[Probe] | None = None,
    with_local: bool = True,
    quiet: bool = False,
) -> CheckResult:
    started = time.monotonic()
    local_box: list[LocalClockState] = []
    local_thread = None
    if with_local:
        local_thread = threading.Thread(target=lambda: local_box.append(read_local_clock()), daemon=True)
        local_thread.start()
    samples = measure_all(probe_list if probe_list is not None else probes(cfg), cfg.timeout_s)
    if local_thread is not None:
        local_thread.join(max(started + cfg.timeout_s - time.monotonic(), 0.05))
    verdict = consensus.decide(
        samples,
        warning_s=cfg.thresholds.warning_s if warning_s is None else warning_s,
        critical_s=cfg.thresholds.critical_s if critical_s is None else critical_s,
        min_sources=cfg.consensus.min_sources,
        monotonic_s=time.monotonic(),
    )
    return CheckResult(
        verdict=verdict,
        local=local_box[0] if local_box else None,
        duration_s=time.monotonic() - started,
        host_time_s=time.time(),
        quiet=quiet,
    )

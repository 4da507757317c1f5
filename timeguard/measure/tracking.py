"""Source tracking for the daemon: each source's latest answer, when it may be asked again, the latest verdict.

Samples are kept per source with the boot epoch (REALTIME − BOOTTIME) at which they were measured. Every
verdict re-bases them to the current host clock (a step of Δ since the measurement shifts the offset by −Δ)
and widens their interval by 15 ppm of their age (RFC 5905's PHI), so NTP answers from a minute ago and HTTP
answers from a quarter of an hour ago can be combined soundly. A sample older than a few of its class's
intervals no longer counts.

Polling follows one :class:`PollPolicy` per server, NTP and HTTP alike: the class's interval, never one server
more often than every 15 s, exponential back-off while it fails, and an NTP kiss-o'-death obeyed.

Not thread-safe: the agent holds its lock around every call; measuring happens outside, between
:meth:`Tracker.due` and :meth:`Tracker.record`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from timeguard.config import Config, DaemonOptions
from timeguard.measure import consensus
from timeguard.measure.check import Probe
from timeguard.measure.ntp import KISS_RATE, KISS_STOP, kiss_reason
from timeguard.model import Sample, SourceKind, SourceState, Verdict
from timeguard.watch.clockwatch import ClockReading

PHI = 15e-6  # RFC 5905: how fast an old sample's error grows (s/s)
SAMPLE_MAX_AGE_INTERVALS = 3  # a sample older than 3 of its class's intervals no longer counts


@dataclasses.dataclass(frozen=True, slots=True)
class Latest:
    """A source's latest answer and the clocks when its measurement started."""

    sample: Sample
    epoch_s: float  # boot epoch when the measurement started: what its offset is relative to
    monotonic_s: float


def rebase(latest: Latest, now: ClockReading, max_age_s: float) -> Sample:
    """The sample as it applies to the host clock *now*: shifted by the clock's steps and slews since it was
    measured, widened by PHI × age, or unreachable once too old."""
    sample = latest.sample
    age = now.monotonic_s - latest.monotonic_s
    if age > max_age_s:
        return Sample.failed(sample.name, sample.kind, SourceState.UNREACHABLE,
                             f"last answer {age:.0f} s ago is too old (limit {max_age_s:.0f} s)")
    if not sample.usable:
        return sample
    assert sample.offset_s is not None and sample.offset_lo_s is not None and sample.offset_hi_s is not None
    shift = now.boot_epoch_s - latest.epoch_s
    widen = PHI * max(age, 0.0)
    return dataclasses.replace(
        sample,
        offset_s=sample.offset_s - shift,
        offset_lo_s=sample.offset_lo_s - shift - widen,
        offset_hi_s=sample.offset_hi_s - shift + widen,
    )


#: A difference between the round's clocks and a sample's wall reading beyond this is a step between the two.
STEP_IN_MEASUREMENT_S = 0.001


def measured_epoch_s(sample: Sample, start: ClockReading) -> float:
    """The boot epoch ``sample``'s offset is relative to. ``start`` was read before the measurement, whose wall
    reading (the sample's anchor) came later — after DNS, a connect, a TLS handshake: a step of the host clock in
    between (chronyd stepping it, a person's ``date -s``) would otherwise re-base the sample by the step twice, and
    an honest answer would be off by the step's size. The anchor's REALTIME − MONOTONIC against ``start``'s shows
    such a step; within :data:`STEP_IN_MEASUREMENT_S` (slewing, reading noise) ``start``'s epoch stands."""
    if sample.wall_base_s is None:
        return start.boot_epoch_s
    moved = sample.wall_base_s - (start.realtime_s - start.monotonic_s)
    return start.boot_epoch_s + moved if abs(moved) > STEP_IN_MEASUREMENT_S else start.boot_epoch_s


#: RFC 4330 §10: a client "MUST NOT under any conditions use a poll interval less than 15 seconds".
MIN_POLL_INTERVAL_S = 15.0


class PollPolicy:
    """When one server may be asked again: never within 15 s, backing off on failure, obeying KoD.

    ``record(sample)`` after every query; ``next_poll_monotonic()`` says when the next is allowed
    (on the ``monotonic`` clock, injectable for tests), or None once the server told us to go away.
    """

    def __init__(
        self,
        *,
        interval_s: float = 64.0,
        max_interval_s: float = 1024.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s < MIN_POLL_INTERVAL_S:
            raise ValueError(
                f"poll interval {interval_s:g} s is below the {MIN_POLL_INTERVAL_S:g} s minimum of RFC 4330"
            )
        self._clock = monotonic
        self._base_s = interval_s
        self._max_s = max(max_interval_s, interval_s)
        self._floor_s = interval_s  # raised by RATE, never lowered again
        self._interval_s = interval_s
        self._failures = 0
        self._last_poll: float | None = None
        self._next = monotonic()  # the first query may go at once
        self._stop_reason: str | None = None

    @property
    def interval_s(self) -> float:
        return self._interval_s

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def stopped(self) -> bool:
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def next_poll_monotonic(self) -> float | None:
        """The earliest monotonic time the server may be queried again; None: never again."""
        if self._stop_reason is not None:
            return None
        if self._last_poll is None:
            return self._next
        return max(self._next, self._last_poll + MIN_POLL_INTERVAL_S)

    def due(self) -> bool:
        when = self.next_poll_monotonic()
        return when is not None and self._clock() >= when

    def record(self, sample: Sample) -> None:
        """Account for the query that produced ``sample`` (call it right after the query)."""
        now = self._clock()
        self._last_poll = now
        if self._stop_reason is not None:
            return
        if sample.kiss_code in KISS_STOP:
            self._stop_reason = kiss_reason(sample.kiss_code)
            return
        if sample.kiss_code == KISS_RATE:
            # "MUST reduce its polling ... immediately" (RFC 5905 §7.4), and not creep back up later.
            self._floor_s = min(max(self._floor_s, self._interval_s) * 2, self._max_s)
            self._interval_s = self._floor_s
        elif sample.usable:
            self._failures = 0
            self._interval_s = self._floor_s
        else:
            self._failures += 1
            self._interval_s = min(self._floor_s * 2 ** min(self._failures, 32), self._max_s)
        self._next = now + self._interval_s


def round_of(kind: SourceKind) -> SourceKind:
    """The daemon's round a source kind is polled in: NTS shares NTP's (same interval, one verdict per round, and a
    daemon without NTS sources runs no extra round)."""
    return SourceKind.NTP if kind is SourceKind.NTS else kind


def poll_interval_s(kind: SourceKind, daemon: DaemonOptions) -> float:
    """The configured interval of a source class."""
    return daemon.http_interval_s if kind is SourceKind.HTTP else daemon.ntp_interval_s  # NTS polls as NTP


def new_policy(interval_s: float) -> PollPolicy:
    """A server's poll policy: back-off up to 16 intervals (at least 1024 s, NTP's maxpoll 10)."""
    return PollPolicy(interval_s=interval_s, max_interval_s=max(1024.0, interval_s * 16))


@dataclasses.dataclass(frozen=True, slots=True)
class Due:
    """A source whose next poll is allowed at ``when_s`` (monotonic)."""

    probe: Probe
    when_s: float


class Tracker:
    def __init__(self) -> None:
        self.probes: list[Probe] = []
        self.policies: dict[str, PollPolicy] = {}
        self.latest: dict[str, Latest] = {}
        self.verdict: Verdict | None = None  # the newest verdict formed after a round
        self.verdict_epoch_s = 0.0  # boot epoch when ``verdict`` was formed: its offset is relative to it

    @property
    def classes(self) -> frozenset[SourceKind]:
        """The polling rounds the configured sources need (NTP, HTTP): an NTS source is polled in NTP's round."""
        return frozenset(round_of(p.kind) for p in self.probes)

    def set_probes(self, probes: Sequence[Probe], daemon: DaemonOptions) -> None:
        """The sources configured now. A source kept keeps its answer and its poll policy (with its back-off
        and KoD), unless its class's interval grew: then it starts afresh at the new interval."""
        self.probes = list(probes)
        names = {p.name for p in self.probes}
        self.latest = {k: v for k, v in self.latest.items() if k in names}
        old, self.policies = self.policies, {}
        for probe in self.probes:
            interval = poll_interval_s(probe.kind, daemon)
            policy = old.get(probe.name)
            if policy is None or policy.interval_s < interval:
                policy = new_policy(interval)
            self.policies[probe.name] = policy

    def due(self, kind: SourceKind, now_s: float, slack_s: float) -> list[Due]:
        """The sources of round ``kind`` (:func:`round_of`) that may be polled within ``slack_s`` of ``now_s``
        (monotonic); a server that sent a kiss-o'-death DENY/RSTR is never due again."""
        due = []
        for probe in self.probes:
            when = self.policies[probe.name].next_poll_monotonic() if round_of(probe.kind) is kind else None
            if when is not None and when <= now_s + slack_s:
                due.append(Due(probe, when))
        return due

    def record(self, name: str, sample: Sample, start: ClockReading) -> None:
        """A source's answer, measured from ``start``: kept as its latest, and accounted by its poll policy."""
        self.policies[name].record(sample)
        self.latest[name] = Latest(sample, measured_epoch_s(sample, start), start.monotonic_s)

    def samples(self, now: ClockReading, timeout_s: float) -> list[Sample]:
        """Every source's latest answer re-based to ``now`` (those that never answered are left out)."""
        samples = []
        for probe in self.probes:
            latest = self.latest.get(probe.name)
            if latest is not None:
                max_age = SAMPLE_MAX_AGE_INTERVALS * self.policies[probe.name].interval_s + timeout_s
                samples.append(rebase(latest, now, max_age))
        return samples

    def verdict_now(self, now: ClockReading, cfg: Config) -> Verdict:
        """The consensus of the samples as they apply to the clock ``now``."""
        return consensus.decide(self.samples(now, cfg.timeout_s), warning_s=cfg.thresholds.warning_s,
                                critical_s=cfg.thresholds.critical_s, min_sources=cfg.consensus.min_sources,
                                monotonic_s=now.monotonic_s)

    def trusted_now(self, now: ClockReading) -> float | None:
        """The true time at ``now`` according to the latest verdict, corrected for every step since it was
        formed; None without a verdict that found an offset."""
        verdict = self.verdict
        if verdict is None or verdict.offset_s is None:
            return None
        return now.realtime_s + verdict.offset_s - (now.boot_epoch_s - self.verdict_epoch_s)

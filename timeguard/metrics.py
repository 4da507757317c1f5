"""Prometheus metrics (optional extra ``timeguard[metrics]``): an HTTP endpoint on loopback and/or a
node_exporter textfile. Names follow research/style_ecosystem.md B8: ``timeguard_`` prefix, base units,
``_total`` counters, no timestamps on samples. The collector renders a snapshot the agent hands over after
every check and step, so a scrape never touches the agent's locks or the network.

The textfile is written the way node_exporter's README asks (a temp file in the same directory, renamed over
the old one) and is always mode 0644: the unit's ``UMask=0077`` would otherwise leave it unreadable to
node_exporter, which runs as another user. The directory must be writable by the unit: see ``ReadWritePaths=`` in
systemd/timeguard.service. Alert rules over these metrics: monitoring/.

Sign: every offset is *true time − host time*; positive means the host clock is behind (as ntplib and
chrony's "System time ... slow" report it; node_exporter's ``node_timex_offset_seconds`` is the kernel's own
pending correction, a different quantity).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from timeguard import __version__
from timeguard.hooks.outbox import OutboxStore
from timeguard.model import SourceState, Status, TrustClass, verdict_record
from timeguard.store.journal import JournalError

if TYPE_CHECKING:
    from timeguard.config import Config, MetricsOptions
    from timeguard.model import Verdict
    from timeguard.store.journal import Journal


class MetricsSource(Protocol):
    """What a snapshot is made of: the agent's counters and latest verdict (the agent is one; metrics sits beside
    it and never imports it)."""

    cfg: Config
    verdict: Verdict | None
    journal: Journal | None
    journal_errors: int
    steps_total: Mapping[str, int]
    hook_failures: Mapping[tuple[str, str], int]
    future_state_found: Mapping[tuple[str, str], int]

#: Every metric timeguard exports; tests fail if one is emitted that is not listed (Datadog's catalogue rule).
CATALOGUE = {
    "timeguard_build_info": "gauge",
    "timeguard_offset_seconds": "gauge",
    "timeguard_offset_lower_bound_seconds": "gauge",
    "timeguard_offset_upper_bound_seconds": "gauge",
    "timeguard_status": "gauge",
    "timeguard_ntp_http_agree": "gauge",
    "timeguard_sources_usable": "gauge",
    "timeguard_sources_agreeing": "gauge",
    "timeguard_source_offset_seconds": "gauge",
    "timeguard_source_state": "gauge",
    "timeguard_source_authenticated": "gauge",
    "timeguard_class_agrees": "gauge",
    "timeguard_clock_steps": "counter",
    "timeguard_journal_errors": "counter",
    "timeguard_last_check_timestamp_seconds": "gauge",
    "timeguard_alerts_pending": "gauge",
    "timeguard_alerts_dead": "gauge",
    "timeguard_hook_failures": "counter",
    "timeguard_future_state_found": "counter",
    "timeguard_scheduler_stopped_by_guard": "gauge",
}

#: The textfile's mode whatever the process's umask: node_exporter runs as another user and must read it.
TEXTFILE_MODE = 0o644

_NAN = float("nan")


def _num(value: float | None) -> float:
    return _NAN if value is None else float(value)


class _Snapshot(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {}

    def set(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._data = data

    def collect(self) -> Iterator[Any]:
        with self._lock:
            d = dict(self._data)
        info = GaugeMetricFamily("timeguard_build_info", "Always 1; the version is in the label", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        yield GaugeMetricFamily("timeguard_offset_seconds",
                                "Consensus offset of the host clock: true time minus host time (positive: host "
                                "behind); NaN without a verdict", value=_num(d.get("offset_s")))
        yield GaugeMetricFamily("timeguard_offset_lower_bound_seconds",
                                "Lower end of the interval that contains the true offset",
                                value=_num(d.get("offset_lo_s")))
        yield GaugeMetricFamily("timeguard_offset_upper_bound_seconds",
                                "Upper end of the interval that contains the true offset",
                                value=_num(d.get("offset_hi_s")))
        status = GaugeMetricFamily("timeguard_status", "1 for the current verdict status, 0 for the others",
                                   labels=["status"])
        for s in Status:
            status.add_metric([s.value], 1.0 if d.get("status") == s.value else 0.0)
        yield status
        agree = d.get("ntp_http_agree")
        yield GaugeMetricFamily("timeguard_ntp_http_agree",
                                "1 if the NTP and the HTTPS sources agree, 0 if not, NaN if not comparable",
                                value=_NAN if agree is None else float(agree))
        yield GaugeMetricFamily("timeguard_sources_usable", "Sources with a valid answer",
                                value=float(d.get("usable", 0)))
        yield GaugeMetricFamily("timeguard_sources_agreeing", "The most sources whose intervals overlap",
                                value=float(d.get("agreeing", 0)))
        per_offset = GaugeMetricFamily("timeguard_source_offset_seconds",
                                       "Offset one source measured (true minus host), NaN without an answer",
                                       labels=["source", "kind"])
        per_state = GaugeMetricFamily("timeguard_source_state", "1 for the source's current state",
                                      labels=["source", "kind", "state"])
        per_auth = GaugeMetricFamily("timeguard_source_authenticated",
                                     "1 if an on-path attacker cannot forge the source's answers (NTS, HTTPS), 0 for "
                                     "plain NTP", labels=["source", "kind"])
        for src in d.get("sources", []):
            per_offset.add_metric([src["name"], src["kind"]], _num(src["offset_s"]))
            for state in SourceState:
                per_state.add_metric([src["name"], src["kind"], state.value], 1.0 if src["state"] == state else 0.0)
            per_auth.add_metric([src["name"], src["kind"]], 1.0 if src.get("authenticated") else 0.0)
        yield per_offset
        yield per_state
        yield per_auth
        classes = GaugeMetricFamily("timeguard_class_agrees",
                                    "1 if the trust class's majority agrees with the verdict, 0 if it misses it "
                                    "(plain NTP outvoted by authenticated sources), NaN without a majority of its "
                                    "own or without a verdict offset", labels=["class", "authenticated"])
        for trust_class in TrustClass:
            classes.add_metric([trust_class.value, str(trust_class.authenticated).lower()],
                               _num(d.get("classes", {}).get(trust_class.value)))
        yield classes
        steps = CounterMetricFamily("timeguard_clock_steps", "Clock steps detected, by direction",
                                    labels=["direction"])
        for direction, count in sorted(d.get("steps", {}).items()):
            steps.add_metric([direction], float(count))
        yield steps
        yield CounterMetricFamily("timeguard_journal_errors",
                                  "Journal writes that failed (kept and retried) and damage found in the journal",
                                  value=float(d.get("journal_errors", 0)))
        yield GaugeMetricFamily("timeguard_last_check_timestamp_seconds",
                                "Host wall time of the last cross-check (compare with the trusted time)",
                                value=_num(d.get("last_check_wall_s")))
        outbox = d.get("outbox", {})
        for state in ("pending", "dead"):
            family = GaugeMetricFamily(f"timeguard_alerts_{state}",
                                       "Alert messages in the journal's outbox " + (
                                           "waiting to be delivered (queued or being retried)" if state == "pending"
                                           else "given up on (kept in the journal; see timeguard status)"),
                                       labels=["hook"])
            for hook, counts in sorted(outbox.items()):
                family.add_metric([hook], float(counts.get(state, 0)))
            yield family
        failures = CounterMetricFamily("timeguard_hook_failures", "Hook runs that failed since the daemon started "
                                       "(a failed repair is one of type celery_beat)", labels=["hook", "type"])
        for (hook, hook_type), count in sorted(d.get("hook_failures", {}).items()):
            failures.add_metric([hook, hook_type], float(count))
        yield failures
        found = CounterMetricFamily("timeguard_future_state_found", "Audits since the daemon started that found "
                                    "state stamped in the future (e.g. celery beat rows); target is where, "
                                    "without a password", labels=["hook", "target"])
        for (hook, target), count in sorted(d.get("future_state_found", {}).items()):
            found.add_metric([hook, target], float(count))
        yield found
        guarded = GaugeMetricFamily("timeguard_scheduler_stopped_by_guard", "1 while the forward-jump guard keeps "
                                    "this repair hook's scheduler stopped (the host clock was ahead; it is repaired "
                                    "and started once the clock is right), else 0", labels=["hook"])
        for hook, stopped in sorted(d.get("stopped_by_guard", {}).items()):
            guarded.add_metric([hook], float(stopped))
        yield guarded


class Metrics:
    def __init__(self, options: MetricsOptions, log: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self._textfile = options.textfile
        self._log = log
        self._write_lock = threading.Lock()  # the newest snapshot is the one renamed last
        self._server: Any = None
        if options.listen:
            host, _, port = options.listen.rpartition(":")
            self._server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
            log.info("metrics_listening", address=options.listen)
        self.write_textfile()

    def update(self, agent: MetricsSource) -> None:
        import time

        verdict = agent.verdict
        hooks = agent.cfg.hooks
        failures = {(h.name, h.type): 0 for h in hooks}  # every configured hook's series exists from the start
        failures.update(agent.hook_failures)
        data: dict[str, Any] = {
            "steps": dict(agent.steps_total),
            "journal_errors": agent.journal_errors,
            "hook_failures": failures,
            "future_state_found": dict(agent.future_state_found),
            "outbox": self._outbox(agent.journal, [h.name for h in hooks]),
            "stopped_by_guard": self._stopped_by_guard(agent.journal, hooks),
        }
        if verdict is not None:
            data.update(verdict_record(verdict), last_check_wall_s=time.time(), classes=class_agreement(verdict))
        self._snapshot.set(data)
        self.write_textfile()

    def _outbox(self, journal: Any, hooks: list[str]) -> dict[str, dict[str, int]]:
        """Pending and dead alert messages per hook, from the journal (so they survive restarts); every configured
        hook appears, with 0 when it has none."""
        counts: dict[str, dict[str, int]] = {name: {} for name in hooks}
        if journal is None:
            return counts
        try:
            counts.update(OutboxStore(journal).stats()["by_hook"])
        except JournalError as exc:
            self._log.error("metrics_outbox_unreadable", error=str(exc))
        return counts

    def _stopped_by_guard(self, journal: Any, hooks: Any) -> dict[str, int]:
        """1 per scheduler the guard keeps stopped (the journal's notes: they survive restarts), 0 for every other
        hook with ``guard: stop``."""
        stopped = {h.name: 0 for h in hooks if h.options.get("guard") == "stop"}
        if journal is None:
            return stopped
        try:
            stopped.update({name: 1 for name in journal.guards()})
        except JournalError as exc:
            self._log.error("metrics_guard_notes_unreadable", error=str(exc))
        return stopped

    def write_textfile(self) -> None:
        if self._textfile is None:
            return
        try:
            with self._write_lock:
                write_textfile(self._textfile, generate_latest(self.registry))
        except OSError as exc:
            self._log.error("metrics_textfile_failed", path=self._textfile, error=str(exc))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def class_agreement(verdict: Verdict) -> dict[str, float | None]:
    """Per trust class: 1.0 if its majority agrees with the verdict, 0.0 if it misses it, None (NaN) without a
    majority of its own or without a verdict offset (SOURCES_INCONSISTENT says which classes disagree)."""
    found = verdict.offset_s is not None
    return {c.value: (float(c in verdict.agreeing_classes) if found and agreement.has_majority else None)
            for c, agreement in verdict.classes.items()}


def write_textfile(path: str, body: bytes) -> None:
    """Replace ``path`` with ``body`` atomically, mode 0644: a temp file in the same directory (a name
    node_exporter ignores: not ``*.prom``), written, fsynced, chmodded, then renamed over ``path``. A reader sees
    the old file or the new one, never a part; a failure leaves the old file and no temp file behind."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), TEXTFILE_MODE)  # mkstemp makes it 0600; fchmod ignores the umask
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

"""The daemon's side of the Prometheus metrics (timeguard/metrics.py, optional: the ``metrics`` extra): started
when configured, handed a snapshot after every round and step, and never allowed to break detection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from timeguard.config import MetricsOptions

if TYPE_CHECKING:
    from timeguard.metrics import MetricsSource


class MetricsFeed:
    def __init__(self, options: MetricsOptions, log: Any) -> None:
        self._log = log
        self._metrics: Any = None
        if options.listen is None and options.textfile is None:
            return
        try:
            from timeguard.metrics import Metrics
        except ImportError as exc:
            log.error("metrics_unavailable", error=str(exc), hint="pip install 'timeguard[metrics]'")
            return
        self._metrics = Metrics(options, log)

    def update(self, snapshot: MetricsSource) -> None:
        if self._metrics is None:
            return
        try:
            self._metrics.update(snapshot)
        except Exception:  # noqa: BLE001 - metrics must never break detection
            self._log.exception("metrics_update_failed")

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()

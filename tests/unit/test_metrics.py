from __future__ import annotations

import math
import socket
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from timeguard import logs
from timeguard.config import MetricsOptions
from timeguard.consensus import decide
from timeguard.metrics import CATALOGUE, Metrics
from timeguard.model import Sample, SourceKind, SourceState


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_with(verdict) -> SimpleNamespace:
    return SimpleNamespace(verdict=verdict, steps_total={"backward": 2, "forward": 1}, journal_errors=3)


@pytest.fixture
def verdict():
    samples = [
        Sample("a", SourceKind.NTP, offset_s=0.01, offset_lo_s=0.009, offset_hi_s=0.011),
        Sample("b", SourceKind.NTP, offset_s=0.0101, offset_lo_s=0.0091, offset_hi_s=0.0111),
        Sample("h", SourceKind.HTTP, offset_s=0.012, offset_lo_s=0.002, offset_hi_s=0.022),
        Sample.failed("dead", SourceKind.NTP, SourceState.UNREACHABLE, "timeout"),
    ]
    return decide(samples, warning_s=0.5, critical_s=5)


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_http_endpoint_and_textfile_expose_exactly_the_catalogue(tmp_path, verdict):
    port = free_port()
    textfile = tmp_path / "timeguard.prom"
    metrics = Metrics(MetricsOptions(listen=f"127.0.0.1:{port}", textfile=str(textfile)), logs.get())
    try:
        metrics.update(agent_with(verdict))
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        metrics.close()
    scraped = families(body)
    assert {name: f.type for name, f in scraped.items()} == CATALOGUE  # nothing uncatalogued, nothing missing
    assert families(textfile.read_text()).keys() == scraped.keys()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in scraped.values() for s in f.samples}
    assert samples[("timeguard_offset_seconds", ())] == pytest.approx(verdict.offset_s)
    assert samples[("timeguard_status", (("status", "OK"),))] == 1
    assert samples[("timeguard_status", (("status", "CRITICAL"),))] == 0
    assert samples[("timeguard_clock_steps_total", (("direction", "backward"),))] == 2
    assert samples[("timeguard_journal_errors_total", ())] == 3
    assert samples[("timeguard_ntp_http_agree", ())] == 1
    assert samples[("timeguard_source_state", (("kind", "ntp"), ("source", "dead"), ("state", "unreachable")))] == 1
    assert math.isnan(samples[("timeguard_source_offset_seconds", (("kind", "ntp"), ("source", "dead")))])
    assert "true time minus host time" in body  # the sign is stated in HELP


def test_without_a_verdict_offsets_are_nan(tmp_path):
    textfile = tmp_path / "t.prom"
    metrics = Metrics(MetricsOptions(listen=None, textfile=str(textfile)), logs.get())
    metrics.update(agent_with(None))
    values = {s.name: s.value for f in families(textfile.read_text()).values() for s in f.samples}
    assert math.isnan(values["timeguard_offset_seconds"])
    assert math.isnan(values["timeguard_ntp_http_agree"])


def test_unwritable_textfile_is_logged_not_raised(tmp_path):
    from structlog.testing import capture_logs

    with capture_logs() as logged:
        metrics = Metrics(MetricsOptions(listen=None, textfile=str(tmp_path / "missing-dir" / "t.prom")), logs.get())
        metrics.update(agent_with(None))
    assert any(e["event"] == "metrics_textfile_failed" for e in logged)

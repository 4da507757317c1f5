from __future__ import annotations

import dataclasses
import math
import os
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.support.require import need_program
from tests.unit.test_agent import _Alert, _ScriptedAuditor, reading
from timeguard import config, logs
from timeguard.agent import Agent
from timeguard.config import HookSpec, MetricsOptions
from timeguard.daemon.recorder import Recorder
from timeguard.events import Event, EventKind
from timeguard.hooks import dispatch as dispatch_mod
from timeguard.hooks.api import AuditOutcome, AuditResult, DeliveryResult
from timeguard.hooks.outbox import Outbox
from timeguard.measure.consensus import decide
from timeguard.metrics import CATALOGUE, TEXTFILE_MODE, Metrics, write_textfile
from timeguard.model import Sample, SourceKind, SourceState
from timeguard.store.journal import Journal


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_with(verdict) -> SimpleNamespace:
    return SimpleNamespace(verdict=verdict, steps_total={"backward": 2, "forward": 1}, journal_errors=3,
                           hook_failures={}, future_state_found={}, cfg=SimpleNamespace(hooks=()), journal=None)


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


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


class _Receiver:
    """An outbox deliverer that answers what a real receiver might: 410 (dead at once) or 503 (retried)."""

    def __init__(self, name: str, result: DeliveryResult) -> None:
        self.name, self.result = name, result

    def deliver(self, delivery, *, trusted_now):
        return self.result


def test_alerts_hook_failures_and_future_state_reach_the_textfile(tmp_path, monkeypatch):
    """The daemon's own bookkeeping, not a stub: a scripted audit finds future state, the repair hook fails, and
    the outbox holds a dead and a pending alert. Every configured hook has its series from the start (0), so a
    rule's increase() sees the first failure."""
    monkeypatch.setattr(dispatch_mod, "find_type", lambda name: _ScriptedAuditor if name == "audit" else _Alert)
    hooks = (HookSpec("audit", "repair", None, 5.0, False, {}), HookSpec("alert", "pager", None, 5.0, False, {}))
    textfile = tmp_path / "timeguard.prom"
    cfg = dataclasses.replace(config.load(None), state_dir=str(tmp_path), hooks=hooks,
                              metrics=MetricsOptions(listen=None, textfile=str(textfile)))
    agent = Agent(cfg, probe_factory=lambda c: [], reader=lambda: reading(1e9, 100.0))
    agent.recorder = Recorder(Journal.in_state_dir(tmp_path), boot_id=agent.boot_id, log=agent.log)
    agent._start_hooks()
    where = "postgresql://beat:***@db.example/beat"
    _ScriptedAuditor.script[:] = [AuditResult(AuditOutcome.FOUND, "2 timestamp(s) in the future",
                                              {"database": where})]
    try:
        assert agent.hooks.dispatcher.auditors() == ["repair"]
        agent._audit_job()
        for hook in agent.hooks.dispatcher.hooks:
            while hook.pending:
                time.sleep(0.01)
        receivers = {"pager": _Receiver("pager", DeliveryResult(False, "410 Gone", permanent=True)),
                     "chat": _Receiver("chat", DeliveryResult(False, "503", retry_after_s=60))}
        outbox = Outbox(agent.recorder.journal, receivers, trusted_now=lambda: None, epoch="boot-now")
        for hook in ("pager", "chat"):
            outbox.enqueue(hook, Event(EventKind.ROLLBACK, "inc-1", 1e9, 100.0, "boot-now"), {"text": "rollback"})
        assert outbox.run_once() == 2
        metrics = Metrics(cfg.metrics, logs.get())
        metrics.update(agent.metrics_snapshot())
    finally:
        agent.hooks.stop(outbox=True)
        agent.recorder.journal.close()
    values = samples_of(textfile.read_text())
    assert values[("timeguard_hook_failures_total", (("hook", "repair"), ("type", "audit")))] == 1
    assert values[("timeguard_hook_failures_total", (("hook", "pager"), ("type", "alert")))] == 0  # it alerted
    assert values[("timeguard_future_state_found_total", (("hook", "repair"), ("target", where)))] == 1
    assert values[("timeguard_alerts_dead", (("hook", "pager"),))] == 1
    assert values[("timeguard_alerts_pending", (("hook", "pager"),))] == 0
    assert values[("timeguard_alerts_pending", (("hook", "chat"),))] == 1
    assert values[("timeguard_alerts_dead", (("hook", "chat"),))] == 0
    assert values[("timeguard_alerts_pending", (("hook", "repair"),))] == 0  # configured, nothing queued


def test_a_test_run_is_not_a_hook_failure(tmp_path):
    """`timeguard hooks test` runs are marked test: a failing one says nothing about production alerts."""
    from timeguard.hooks.api import HookRun, HookStatus

    agent = Agent(dataclasses.replace(config.load(None), state_dir=str(tmp_path)), probe_factory=lambda c: [])
    agent.recorder = Recorder(Journal.in_state_dir(tmp_path), boot_id=agent.boot_id, log=agent.log)
    agent._start_hooks()
    for test, dry_run, status in [(True, False, HookStatus.FAILED), (False, True, HookStatus.FAILED),
                                  (False, False, HookStatus.SKIPPED), (False, False, HookStatus.FAILED)]:
        agent.hooks.after_run(HookRun(hook="h", hook_type="webhook", event_id="e", incident_id="i",
                                      event_kind="rollback", status=status, summary="", details={}, output="",
                                      duration_s=0.0, dry_run=dry_run, test=test, wall_s=0.0, monotonic_s=0.0))
    agent.hooks.stop(outbox=True)
    agent.recorder.journal.close()
    assert agent.hooks.failures == {("h", "webhook"): 2}  # the failed dry run counts, the test run does not


@settings(max_examples=25, deadline=None)
@given(umask=st.integers(0, 0o777), old=st.booleans())
def test_textfile_is_0644_whatever_the_umask(umask, old):
    """node_exporter runs as another user; the unit's UMask=0077 must not hide the file from it."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "timeguard.prom")
        if old:
            with open(path, "w") as f:
                f.write("# old\n")
            os.chmod(path, 0o600)
        previous = os.umask(umask)
        try:
            write_textfile(path, b"timeguard_build_info 1\n")
        finally:
            os.umask(previous)
        assert stat.S_IMODE(os.stat(path).st_mode) == TEXTFILE_MODE
        assert os.listdir(directory) == ["timeguard.prom"]  # no temp file left


def test_a_failed_write_keeps_what_was_there_and_leaves_no_temp_file(tmp_path):
    from structlog.testing import capture_logs

    target = tmp_path / "timeguard.prom"
    target.mkdir()  # rename(2) over a non-empty directory fails
    (target / "keep").write_text("x")
    with capture_logs() as logged:
        metrics = Metrics(MetricsOptions(listen=None, textfile=str(target)), logs.get())
        metrics.update(agent_with(None))
    assert any(e["event"] == "metrics_textfile_failed" and e["path"] == str(target) for e in logged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timeguard.prom"]
    assert (target / "keep").read_text() == "x"


def test_a_reader_never_sees_a_partial_textfile(tmp_path, verdict):
    """What node_exporter does: read the file while the daemon rewrites it."""
    textfile = tmp_path / "timeguard.prom"
    metrics = Metrics(MetricsOptions(listen=None, textfile=str(textfile)), logs.get())
    metrics.update(agent_with(verdict))
    whole = textfile.read_text()
    stop, seen = threading.Event(), []

    def read() -> None:
        while not stop.is_set():
            seen.append(textfile.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(20):
            metrics.update(agent_with(verdict))
    finally:
        stop.set()
        reader.join()
    assert seen and all(text.endswith("\n") and families(text).keys() == families(whole).keys() for text in seen)


def test_promtool_accepts_the_textfile(tmp_path, verdict):
    """Prometheus's own linter (promtool check metrics): names, units, HELP/TYPE, _total counters."""
    promtool = need_program("promtool", "prometheus")
    textfile = tmp_path / "timeguard.prom"
    metrics = Metrics(MetricsOptions(listen=None, textfile=str(textfile)), logs.get())
    agent = agent_with(verdict)
    agent.cfg = SimpleNamespace(hooks=(HookSpec("webhook", "ops", None, 5.0, False, {}),))
    agent.hook_failures = {("ops", "webhook"): 2}
    agent.future_state_found = {("beat", "postgresql://beat:***@db/beat"): 1}
    metrics.update(agent)
    lint = subprocess.run([promtool, "check", "metrics"], stdin=textfile.open("rb"), capture_output=True,
                          text=True, timeout=60, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_a_scheduler_the_guard_keeps_stopped_is_1_from_the_journal(tmp_path, verdict):
    """From the journal's guard notes (they survive restarts); every ``guard: stop`` hook has its series."""
    from timeguard.store.journal import GuardNote, Journal

    textfile = tmp_path / "timeguard.prom"
    metrics = Metrics(MetricsOptions(listen=None, textfile=str(textfile)), logs.get())
    agent = agent_with(verdict)
    agent.cfg = SimpleNamespace(hooks=(HookSpec("celery_beat", "beat", None, 5.0, False, {"guard": "stop"}),
                                       HookSpec("celery_beat", "other", None, 5.0, False, {"guard": "stop"}),
                                       HookSpec("celery_beat", "alerting", None, 5.0, False, {})))
    with Journal.in_state_dir(tmp_path) as journal:
        journal.set_guard(GuardNote(hook="beat", target="celery_beat", where="sqlite:///x", stopped_wall_s=1.0,
                                    trusted_s=None, ahead_s=99.0, incident_id="i", start_command=None))
        agent.journal = journal
        metrics.update(agent)
    samples = {s.labels["hook"]: s.value for s in families(textfile.read_text())[
        "timeguard_scheduler_stopped_by_guard"].samples}
    assert samples == {"beat": 1.0, "other": 0.0}


def test_authenticated_sources_and_the_agreement_of_each_class(tmp_path):
    """Issue 13: a spoofed plain-NTP majority beside NTS and HTTPS: which sources are authenticated, and that the
    NTP class is outvoted (0) while HTTPS and NTS agree (1)."""
    def at(name: str, kind: SourceKind, offset: float, err: float) -> Sample:
        return Sample(name, kind, offset_s=offset, offset_lo_s=offset - err, offset_hi_s=offset + err, operator=name)

    outvoted = decide([at(f"n{i}", SourceKind.NTP, 5.0, 0.001) for i in range(3)]
                      + [at("t", SourceKind.NTS, 0.0, 0.001), at("h", SourceKind.HTTP, 0.0, 0.3)],
                      warning_s=0.5, critical_s=5)
    textfile = tmp_path / "t.prom"
    metrics = Metrics(MetricsOptions(listen=None, textfile=str(textfile)), logs.get())
    metrics.update(agent_with(outvoted))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families(textfile.read_text()).values() for s in f.samples}
    authenticated = {labels: v for (name, labels), v in samples.items() if name == "timeguard_source_authenticated"}
    assert authenticated == {**{(("kind", "ntp"), ("source", f"n{i}")): 0 for i in range(3)},
                             (("kind", "nts"), ("source", "t")): 1, (("kind", "http"), ("source", "h")): 1}
    classes = {dict(labels)["class"]: (dict(labels)["authenticated"], v)
               for (name, labels), v in samples.items() if name == "timeguard_class_agrees"}
    assert classes == {"ntp": ("false", 0), "http": ("true", 1), "nts": ("true", 1)}

    metrics.update(agent_with(None))  # no verdict: nothing agrees or disagrees
    values = [s.value for f in families(textfile.read_text()).values() for s in f.samples
              if s.name == "timeguard_class_agrees"]
    assert len(values) == 3 and all(math.isnan(v) for v in values)

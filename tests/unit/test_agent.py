from __future__ import annotations

import dataclasses
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from timeguard import config
from timeguard.agent import Agent
from timeguard.config import HookSpec
from timeguard.daemon.jobs import steady_interval
from timeguard.daemon.recorder import Recorder
from timeguard.events import Event, EventKind
from timeguard.hooks import dispatch as dispatch_mod
from timeguard.hooks.api import AuditOutcome, AuditResult, HookContext, HookResult
from timeguard.measure.check import Probe
from timeguard.model import Sample, SourceKind, SourceState
from timeguard.store.journal import Journal
from timeguard.watch.clockwatch import ClockReading


def reading(real: float, boot: float, mono: float | None = None) -> ClockReading:
    return ClockReading(realtime_s=real, boottime_s=boot, monotonic_s=boot if mono is None else mono)


def sample(offset: float, err: float = 0.001) -> Sample:
    return Sample("s", SourceKind.NTP, offset_s=offset, offset_lo_s=offset - err, offset_hi_s=offset + err)


def test_steady_interval_never_enumerates_or_waits_after_jumps():
    trigger = steady_interval(15)
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, now) == now  # (re)scheduled: fire at once
    assert trigger.get_next_fire_time(now, now + timedelta(seconds=1)) == now + timedelta(seconds=15)
    jumped = now + timedelta(days=180)
    assert trigger.get_next_fire_time(now, jumped) == jumped + timedelta(seconds=15)  # one run, not 1 million
    rolled_back = now - timedelta(days=180)
    assert trigger.get_next_fire_time(now, rolled_back) == rolled_back + timedelta(seconds=15)


@pytest.fixture
def agent(tmp_path):
    cfg = dataclasses.replace(config.load(None), state_dir=str(tmp_path))
    a = Agent(cfg, probe_factory=lambda c: [])
    a.boot_id = "boot-now"
    a.recorder = Recorder(Journal.in_state_dir(tmp_path), boot_id=a.boot_id, log=a.log)
    yield a
    a.recorder.journal.close()


def test_rollback_across_a_reboot_is_a_lower_bound(agent):
    agent.recorder.journal.set_floor(10_000.0, "boot-before", 500.0, "shutdown")
    agent.recorder.journal.set_meta({"last_clock": {"wall_s": 10_000.0, "boottime_s": 500.0, "boot_id": "boot-before"}})
    agent._check_while_down(reading(6_000.0, 20.0))
    [event] = agent.recorder.journal.events()
    assert event.kind is EventKind.ROLLBACK_WHILE_DOWN
    assert event.step_s == pytest.approx(-4000.0)
    assert event.detail["lower_bound"] is True and event.detail["previous_boot_id"] == "boot-before"
    assert agent.recorder.journal.floor().wall_s == 6_000.0  # lowered to the new truth once recorded


def test_same_boot_sees_a_rollback_the_floor_cannot(agent):
    # down for 2 h, clock set back 1 h meanwhile: the wall clock is still above the floor, the epoch is not
    agent.recorder.journal.set_floor(10_000.0, "boot-now", 500.0, "shutdown")
    agent.recorder.journal.set_meta({"last_clock": {"wall_s": 10_000.0, "boottime_s": 500.0, "boot_id": "boot-now"}})
    agent._check_while_down(reading(10_000.0 + 7200 - 3600, 500.0 + 7200))
    [event] = agent.recorder.journal.events()
    assert event.kind is EventKind.ROLLBACK_WHILE_DOWN and event.step_s == pytest.approx(-3600.0)
    assert event.detail["exact"] is True and event.detail["down_for_s"] == pytest.approx(7200.0)


def test_forward_jump_while_down_and_nothing_when_steady(agent):
    agent.recorder.journal.set_meta({"last_clock": {"wall_s": 10_000.0, "boottime_s": 500.0, "boot_id": "boot-now"}})
    agent._check_while_down(reading(10_100.0, 600.0))  # 100 s later, no step
    assert agent.recorder.journal.events() == []
    agent._check_while_down(reading(10_100.0 + 86400, 600.0))
    [event] = agent.recorder.journal.events()
    assert event.kind is EventKind.FORWARD_JUMP and event.detail["while_down"] is True


def _probe(name: str, kind: SourceKind, healthy: bool) -> Probe:
    def measure(_timeout_s: float) -> Sample:
        if not healthy:
            return Sample.failed(name, kind, SourceState.UNREACHABLE, "no answer")
        return dataclasses.replace(sample(0.001), name=name, kind=kind)

    return Probe(name, kind, measure)


@pytest.mark.parametrize("healthy", [True, False], ids=["healthy", "unreachable"])
@pytest.mark.parametrize("held", [SourceKind.NTP, SourceKind.HTTP])
@pytest.mark.parametrize("configured", [{SourceKind.NTP}, {SourceKind.HTTP}, {SourceKind.NTP, SourceKind.HTTP}],
                         ids=["ntp-only", "http-only", "both"])
def test_no_condition_before_every_configured_class_finished_its_first_round(agent, configured, held, healthy):
    """Issue 9 item 2, with the race made deterministic: the scheduler runs a round for both classes at start-up
    (one of them may have no sources). One class's round is held in its journal write, after its verdict was
    formed, until the other class's round is over; then it goes on to judge its (older, incomplete) verdict."""
    names = {SourceKind.NTP: ["n1", "n2", "n3"], SourceKind.HTTP: ["h1", "h2"]}
    agent._probe_factory = lambda cfg: [_probe(n, k, healthy) for k in sorted(configured) for n in names[k]]
    agent._rebuild_probes()
    other_done = threading.Event()
    record_check = agent.recorder.journal.record_check
    held_records = []

    def slow_record_check(record):
        if not held_records and threading.current_thread().name == f"round-{held.value}":
            held_records.append(record)
            assert other_done.wait(10)
        record_check(record)

    agent.recorder.journal.record_check = slow_record_check
    rounds = {k: threading.Thread(target=agent._run_checks, args=(k,), name=f"round-{k.value}")
              for k in (SourceKind.NTP, SourceKind.HTTP)}
    rounds[held].start()
    while not held_records:
        time.sleep(0.001)
    other = next(k for k in rounds if k is not held)
    rounds[other].start()
    rounds[other].join(10)
    other_done.set()
    rounds[held].join(10)

    kinds = [e.kind for e in agent.recorder.journal.events()]
    assert EventKind.RECOVERED not in kinds  # nothing had been raised that could recover
    if healthy:
        assert kinds == []
    else:  # a real condition, once both rounds are over: raised once, with the full verdict
        [event] = agent.recorder.journal.events()
        assert event.kind is EventKind.SOURCES_UNAVAILABLE
        assert f"0 of {sum(len(names[k]) for k in configured)}" in event.verdict["summary"]


def test_a_corrupt_journal_is_moved_aside_and_kept(tmp_path):
    from structlog.testing import capture_logs

    from timeguard import logs
    (tmp_path / "journal.sqlite").write_bytes(b"garbage" * 1000)
    with capture_logs() as logged:
        recorder = Recorder.open(str(tmp_path), boot_id="boot-now", log=logs.get())
    recorder.journal.close()
    assert recorder.errors == 1  # timeguard_journal_errors counts the salvage
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("journal.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage" * 1000  # nothing lost
    assert logged[0]["event"] == "journal_damaged" and logged[0]["moved_to"] == str(aside[0])
    assert Journal(tmp_path / "journal.sqlite").health()["ok"]  # a fresh journal in its place


def test_hooks_see_the_verdict_rebased_to_the_clock_now(agent):
    # measured while the host was 180 days ahead: true - host = -180 d
    ahead = reading(1000.0 + 15552000, 100.0)
    agent._probe_factory = lambda cfg: [_probe(n, SourceKind.NTP, True) for n in ("a", "b")]
    agent._rebuild_probes()
    for name in ("a", "b"):
        measured = dataclasses.replace(sample(-15552000.0), name=name)
        agent.tracker.record(name, measured, ahead)
    agent._reader = lambda: reading(1005.0, 105.0)  # 5 s later, after the rollback to the real time
    summary = agent._verdict_summary()
    assert summary["offset_s"] == pytest.approx(0.0, abs=0.01)  # the repair gate sees a correct clock now
    assert agent.trusted_now() is None  # no stored verdict yet: nothing claims a trusted time


class _ScriptedAuditor:
    """An auditing hook whose audits return (or raise) what the test scripted, in order."""

    default_on: ClassVar[frozenset[EventKind]] = frozenset({EventKind.FUTURE_STATE_FOUND})
    script: ClassVar[list[Any]] = []
    handled: ClassVar[list[tuple[str, Event]]] = []

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any]) -> _ScriptedAuditor:
        return cls(name)

    def audit(self, ctx: HookContext) -> AuditResult:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        self.handled.append((self.name, event))
        return HookResult.failed("database locked") if self.name == "repair" else HookResult.ok("alerted")


class _Alert(_ScriptedAuditor):
    audit = None  # type: ignore[assignment]  # not an auditor: only receives the events


def test_audit_raises_one_incident_retries_with_backoff_and_only_the_repair_sees_repeats(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatch_mod, "find_type", lambda name: _ScriptedAuditor if name == "audit" else _Alert)
    hooks = (HookSpec("audit", "repair", None, 5.0, False, {}), HookSpec("alert", "ops", None, 5.0, False, {}))
    cfg = dataclasses.replace(config.load(None), state_dir=str(tmp_path), hooks=hooks)
    cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, audit_retry_s=30, audit_interval_s=600))
    clock = {"mono": 100.0}
    a = Agent(cfg, probe_factory=lambda c: [], reader=lambda: reading(1e9 + clock["mono"], clock["mono"]))
    a.recorder = Recorder(Journal.in_state_dir(tmp_path), boot_id=a.boot_id, log=a.log)
    a._start_hooks()
    assert a.hooks.dispatcher is not None and a.hooks.dispatcher.auditors() == ["repair"]
    found = AuditResult(AuditOutcome.FOUND, "3 timestamp(s) in the future", {"counts": {"last_run_at": 3}})
    _ScriptedAuditor.script[:] = [
        AuditResult(AuditOutcome.SKIPPED, "no repair: NTP and HTTPS do not agree"),
        RuntimeError("cannot connect"), found, found, AuditResult(AuditOutcome.CLEAN, "nothing"),
    ]
    _ScriptedAuditor.handled.clear()

    def tick(at: float) -> None:
        clock["mono"] = at
        a._audit_job()
        for hook in a.hooks.dispatcher.hooks:  # let the hook workers finish what the tick queued
            while hook.pending:
                time.sleep(0.01)

    try:
        tick(100.0)  # due at once: skipped (clock not trusted) → retry in 30 s
        tick(129.0)  # not due yet: nothing runs
        assert len(_ScriptedAuditor.script) == 4
        tick(130.0)  # the error → retry in 60 s
        assert a.recorder.journal.meta()["audit:repair"]["outcome"] == "error"
        assert "cannot connect" in a.recorder.journal.meta()["audit:repair"]["summary"]
        tick(190.0)  # found: one event to every hook; the repair fails → retried after the back-off (120 s)
        [event] = a.recorder.journal.events(kinds=[EventKind.FUTURE_STATE_FOUND])
        assert event.detail["hook"] == "repair" and event.detail["counts"] == {"last_run_at": 3}
        assert sorted(name for name, _ in _ScriptedAuditor.handled) == ["ops", "repair"]
        tick(309.0)
        assert len(_ScriptedAuditor.script) == 2
        tick(310.0)  # found again: same incident, only the repair runs (a retry, not a second alert)
        second = a.recorder.journal.events(kinds=[EventKind.FUTURE_STATE_FOUND])
        assert len(second) == 2 and second[1].incident_id == event.incident_id and second[1].detail["finding"] == 2
        assert [name for name, _ in _ScriptedAuditor.handled[2:]] == ["repair"]
        tick(550.0)  # clean: the incident closes, next regular audit in 600 s
        assert a.recorder.journal.meta()["audit:repair"] == {"wall_s": 1e9 + 550.0, "outcome": "clean",
                                                             "summary": "nothing", "next_in_s": 600}
        assert a.hooks.audits.states["repair"].incident is None
        assert a.hooks.audits.states["repair"].next_due_s == 1150.0
    finally:
        a.hooks.stop(outbox=True)
        a.recorder.journal.close()


class _Detector:
    threshold_s = 0.5


@pytest.fixture
def reloading(agent, tmp_path, monkeypatch):
    """The agent with hooks started and a config file; ``loads`` scripts what config.load does in the worker."""
    from timeguard.daemon import reload as reload_mod

    path = tmp_path / "timeguard.yaml"
    path.write_text("")
    agent.config_path = agent.reloader.config_path = path
    agent.clockwatch = _Detector()
    agent._start_hooks()
    monkeypatch.setattr(reload_mod, "RELOAD_TIMEOUT_S", 0.3)
    script: list[Any] = []

    def load(_path, **_options):
        step = script.pop(0)
        if isinstance(step, threading.Event):
            step.wait(10)
            return dataclasses.replace(agent.cfg, origin="late")
        if isinstance(step, BaseException):
            raise step
        return step

    monkeypatch.setattr(config, "load", load)
    yield agent, script
    agent.hooks.stop(outbox=True)


def _reload(agent, timeout_s: float = 5.0) -> None:
    """SIGHUP as the loop handles it: start, then look each tick until done or refused."""
    agent.signals.reload = True
    agent._act_on_signals()
    deadline = time.monotonic() + timeout_s
    while agent.reloader.job is not None and time.monotonic() < deadline:
        time.sleep(0.01)
        agent.reloader.progress()
    assert agent.reloader.job is None


@pytest.mark.parametrize("failure", [
    RuntimeError("a validator's bug"), RecursionError("maximum recursion depth exceeded"), MemoryError(),
    KeyError("hooks"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    config.ConfigError("f.yaml", [config.ConfigProblem("thresholds.warning_s", "must be a number", 3)]),
], ids=lambda e: type(e).__name__)
def test_a_reload_that_fails_in_any_way_keeps_the_old_config(reloading, failure):
    from structlog.testing import capture_logs

    agent, script = reloading
    old_cfg, old_dispatcher = agent.cfg, agent.hooks.dispatcher
    script.append(failure)
    with capture_logs() as logged:
        _reload(agent)
    [refused] = [e for e in logged if e["event"] == "reload_refused"]
    assert refused["errors"] and refused["keeping"] == old_cfg.origin
    assert agent.cfg is old_cfg and agent.hooks.dispatcher is old_dispatcher
    # and the next good one is applied
    script.append(dataclasses.replace(old_cfg, origin="new.yaml"))
    _reload(agent)
    assert agent.cfg.origin == "new.yaml" and agent.hooks.dispatcher is not old_dispatcher


def test_a_reload_past_its_deadline_is_refused_and_its_late_result_never_applied(reloading):
    from structlog.testing import capture_logs

    agent, script = reloading
    old_cfg = agent.cfg
    stuck = [threading.Event() for _ in range(3)]
    script.extend(stuck[:2])
    with capture_logs() as logged:
        _reload(agent)  # the first: stuck, refused at the deadline
        _reload(agent)  # the second: stuck too
        _reload(agent)  # the third: refused at once, two are still stuck
    refused = [e for e in logged if e["event"] == "reload_refused"]
    assert len(refused) == 3 and "limit 0 s" in refused[0]["errors"][0]
    assert "2 earlier reloads are still stuck" in refused[2]["errors"][0]
    assert len(script) == 0 and agent.cfg is old_cfg
    for event in stuck[:2]:
        event.set()  # the stuck reads return now: nothing may come of them
    for thread in agent.reloader.stuck:
        thread.join(5)
    assert agent.cfg is old_cfg
    script.append(dataclasses.replace(old_cfg, origin="good.yaml"))
    _reload(agent)  # no longer stuck: reloads again
    assert agent.cfg.origin == "good.yaml"


def test_sighups_during_a_reload_are_one_more_reload_after_it(reloading):
    agent, script = reloading
    slow = threading.Event()
    script.extend([slow, dataclasses.replace(agent.cfg, origin="second.yaml")])
    agent.signals.reload = True
    agent._act_on_signals()
    first = agent.reloader.job
    for _ in range(5):  # a burst while the first reads
        agent.signals.on_signal(signal.SIGHUP, None)
        agent._act_on_signals()
        assert agent.reloader.job is first
    slow.set()
    first.worker.join(5)
    agent.reloader.progress()  # the first's late-ish result ("late") is applied: it was in time
    assert agent.cfg.origin == "late"
    _reload(agent)
    assert agent.cfg.origin == "second.yaml" and script == []

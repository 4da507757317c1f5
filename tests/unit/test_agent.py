from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from timeguard import config
from timeguard.agent import Agent, _Latest, rebase, steady_interval
from timeguard.clockwatch import ClockReading
from timeguard.events import EventKind
from timeguard.journal import Journal
from timeguard.model import Sample, SourceKind, SourceState


def reading(real: float, boot: float, mono: float | None = None) -> ClockReading:
    return ClockReading(realtime_s=real, boottime_s=boot, monotonic_s=boot if mono is None else mono)


def sample(offset: float, err: float = 0.001) -> Sample:
    return Sample("s", SourceKind.NTP, offset_s=offset, offset_lo_s=offset - err, offset_hi_s=offset + err)


def test_rebase_follows_the_step_and_widens_with_age():
    measured = reading(1000.0, 100.0)
    latest = _Latest(sample(0.002), measured.boot_epoch_s, measured.monotonic_s)
    now = reading(1000.0 + 60 - 3600, 160.0)  # 60 s later, after a -3600 s rollback
    rebased = rebase(latest, now, max_age_s=600)
    assert rebased.offset_s == pytest.approx(3600.002)  # true - host grew by the rollback
    widen = 15e-6 * 60
    assert rebased.offset_lo_s == pytest.approx(3600.001 - widen)
    assert rebased.offset_hi_s == pytest.approx(3600.003 + widen)


def test_rebase_drops_samples_that_are_too_old():
    latest = _Latest(sample(0.0), 900.0, 100.0)
    old = rebase(latest, reading(2000.0, 1100.0), max_age_s=300)
    assert old.failure is SourceState.UNREACHABLE and "too old" in old.reason


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
    a.journal = Journal.in_state_dir(tmp_path)
    a.boot_id = "boot-now"
    yield a
    a.journal.close()


def test_rollback_across_a_reboot_is_a_lower_bound(agent):
    agent.journal.set_floor(10_000.0, "boot-before", 500.0, "shutdown")
    agent.journal.set_meta({"last_clock": {"wall_s": 10_000.0, "boottime_s": 500.0, "boot_id": "boot-before"}})
    agent._check_while_down(reading(6_000.0, 20.0))
    [event] = agent.journal.events()
    assert event.kind is EventKind.ROLLBACK_WHILE_DOWN
    assert event.step_s == pytest.approx(-4000.0)
    assert event.detail["lower_bound"] is True and event.detail["previous_boot_id"] == "boot-before"
    assert agent.journal.floor().wall_s == 6_000.0  # lowered to the new truth once recorded


def test_same_boot_sees_a_rollback_the_floor_cannot(agent):
    # down for 2 h, clock set back 1 h meanwhile: the wall clock is still above the floor, the epoch is not
    agent.journal.set_floor(10_000.0, "boot-now", 500.0, "shutdown")
    agent.journal.set_meta({"last_clock": {"wall_s": 10_000.0, "boottime_s": 500.0, "boot_id": "boot-now"}})
    agent._check_while_down(reading(10_000.0 + 7200 - 3600, 500.0 + 7200))
    [event] = agent.journal.events()
    assert event.kind is EventKind.ROLLBACK_WHILE_DOWN and event.step_s == pytest.approx(-3600.0)
    assert event.detail["exact"] is True and event.detail["down_for_s"] == pytest.approx(7200.0)


def test_forward_jump_while_down_and_nothing_when_steady(agent):
    agent.journal.set_meta({"last_clock": {"wall_s": 10_000.0, "boottime_s": 500.0, "boot_id": "boot-now"}})
    agent._check_while_down(reading(10_100.0, 600.0))  # 100 s later, no step
    assert agent.journal.events() == []
    agent._check_while_down(reading(10_100.0 + 86400, 600.0))
    [event] = agent.journal.events()
    assert event.kind is EventKind.FORWARD_JUMP and event.detail["while_down"] is True


def test_conditions_are_recorded_on_transitions_only(agent):
    from timeguard.consensus import decide

    agent._probes = [type("P", (), {"kind": SourceKind.NTP})()]
    agent._rounds_done = {SourceKind.NTP}
    now = reading(1000.0, 10.0)

    def verdict(offset):
        return decide([sample(offset), dataclasses.replace(sample(offset), name="t")], warning_s=0.5, critical_s=5)

    for offset in (0.0, 0.0, 0.7, 0.8, 6.0, 0.0, 0.0):
        agent._transition(verdict(offset), now)
    kinds = [e.kind for e in agent.journal.events()]
    assert kinds == [EventKind.OFFSET_WARNING, EventKind.OFFSET_CRITICAL, EventKind.RECOVERED]
    events = agent.journal.events()
    assert len({e.incident_id for e in events}) == 1  # one condition incident until recovered
    assert events[0].trusted_time_s == pytest.approx(1000.7)


def test_a_corrupt_journal_is_moved_aside_and_kept(tmp_path):
    from structlog.testing import capture_logs

    from timeguard import logs
    from timeguard.agent import open_journal

    (tmp_path / "journal.sqlite").write_bytes(b"garbage" * 1000)
    with capture_logs() as logged:
        journal = open_journal(str(tmp_path), logs.get())
    journal.close()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("journal.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage" * 1000  # nothing lost
    assert logged[0]["event"] == "journal_corrupt_moved_aside" and logged[0]["moved_to"] == str(aside[0])
    assert Journal(tmp_path / "journal.sqlite").health()["ok"]  # a fresh journal in its place


def test_hooks_see_the_verdict_rebased_to_the_clock_now(agent):
    # measured while the host was 180 days ahead: true - host = -180 d
    ahead = reading(1000.0 + 15552000, 100.0)
    agent._probes = [type("P", (), {"kind": SourceKind.NTP, "name": n})() for n in ("a", "b")]
    agent._policies = {n: type("Pol", (), {"interval_s": 64.0})() for n in ("a", "b")}
    for name in ("a", "b"):
        measured = dataclasses.replace(sample(-15552000.0), name=name)
        agent._latest[name] = _Latest(measured, ahead.boot_epoch_s, ahead.monotonic_s)
    agent._reader = lambda: reading(1005.0, 105.0)  # 5 s later, after the rollback to the real time
    summary = agent._verdict_summary()
    assert summary["offset_s"] == pytest.approx(0.0, abs=0.01)  # the repair gate sees a correct clock now
    assert agent.trusted_now() is None  # no stored verdict yet: nothing claims a trusted time

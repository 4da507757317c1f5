"""The detector's policy, as properties over sequences of steps and verdicts (watch/detector.py is pure)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from timeguard.events import EventKind
from timeguard.measure.consensus import decide
from timeguard.model import Sample, SourceKind, SourceState, SourceVerdict, Status, Verdict
from timeguard.watch.clockwatch import ClockReading, StepKind, classify
from timeguard.watch.detector import CONDITIONS, Detector, leap_announced

NOW = ClockReading(realtime_s=1_000.0, boottime_s=10.0, monotonic_s=10.0)


def _sample(name: str, offset: float, err: float = 0.001) -> Sample:
    return Sample(name, SourceKind.NTP, offset_s=offset, offset_lo_s=offset - err, offset_hi_s=offset + err)


_BASE = decide([_sample("a", 0.25), _sample("b", 0.25)], warning_s=0.5, critical_s=5)


def verdict(status: Status, offset: float | None = 0.25) -> Verdict:
    """A verdict of ``status`` (a fresh object each time: the detector tells verdicts apart by identity)."""
    return dataclasses.replace(_BASE, status=status, offset_s=offset)


def _counter() -> object:
    ids = itertools.count()
    return lambda: f"inc-{next(ids)}"


def detector(classes: frozenset[SourceKind] = frozenset({SourceKind.NTP}), flap_window_s: float = 60.0) -> Detector:
    d = Detector(flap_window_s=flap_window_s, new_id=_counter())
    d.configure(classes)
    return d


statuses = st.sampled_from(list(Status))


# --------------------------------------------------------------------------------------------- conditions


@given(st.lists(statuses, max_size=30))
def test_a_condition_event_only_on_a_change_one_incident_until_recovered(sequence):
    d = detector()
    in_force, incident, open_incident = None, None, None
    for status in sequence:
        v = verdict(status)
        d.round_done(SourceKind.NTP, v)
        event = d.on_verdict(v, NOW, "boot")
        condition = CONDITIONS[status]
        if condition == in_force:
            assert event is None  # the same condition again (or OK again): nothing to say
            continue
        assert event is not None
        assert event.kind is (condition or EventKind.RECOVERED)
        assert event.detail == {"previous": None if in_force is None else in_force.value}
        assert event.verdict["status"] == status.value
        assert event.trusted_time_s == pytest.approx(NOW.realtime_s + 0.25)
        if open_incident is not None:
            assert event.incident_id == open_incident  # one incident from the first condition until recovered
        incident = event.incident_id
        open_incident = None if condition is None else incident
        in_force = condition


@settings(max_examples=200)
@given(configured=st.sets(st.sampled_from(list(SourceKind)), min_size=1),
       rounds=st.lists(st.tuples(st.sampled_from(list(SourceKind)), statuses), max_size=20))
def test_never_a_condition_before_every_configured_class_finished_its_first_round(configured, rounds):
    d = detector(frozenset(configured))
    seen: set[SourceKind] = set()
    for kind, status in rounds:
        seen.add(kind)
        v = verdict(status)
        d.round_done(kind, v)
        event = d.on_verdict(v, NOW, "boot")
        assert d.started == (configured <= seen)
        if not configured <= seen:
            assert event is None


@given(rounds=st.lists(statuses, min_size=1, max_size=8), data=st.data())
def test_a_newer_verdict_is_never_overridden_by_an_older_one(rounds, data):
    """Rounds finish their journal writes in any order: only the newest verdict formed is ever judged."""
    d = detector()
    formed = []
    for status in rounds:
        v = verdict(status)
        d.round_done(SourceKind.NTP, v)
        formed.append(v)
    order = data.draw(st.permutations(formed))
    events = [(v, d.on_verdict(v, NOW, "boot")) for v in order]
    assert all(e is None for v, e in events if v is not formed[-1])  # stale
    [(_, newest)] = [(v, e) for v, e in events if v is formed[-1]]
    assert (newest is None) == (CONDITIONS[formed[-1].status] is None)


def test_a_verdict_formed_before_the_last_class_answered_never_counts():
    """Issue 9: the NTP round's verdict (HTTP not answered yet) is judged after HTTP's round ended: stale, and
    HTTP's own verdict, formed with both, is the one that raises."""
    d = detector(frozenset({SourceKind.NTP, SourceKind.HTTP}))
    incomplete, complete = verdict(Status.UNKNOWN), verdict(Status.UNKNOWN)
    d.round_done(SourceKind.NTP, incomplete)
    d.round_done(SourceKind.HTTP, complete)
    assert d.on_verdict(incomplete, NOW, "boot") is None
    assert d.on_verdict(complete, NOW, "boot").kind is EventKind.SOURCES_UNAVAILABLE


@given(st.sets(st.sampled_from(list(SourceKind)), min_size=1), st.sets(st.sampled_from(list(SourceKind))))
def test_a_reload_keeps_the_first_rounds_of_the_classes_it_keeps(before, after):
    d = detector(frozenset(before))
    for kind in before:
        d.round_done(kind, verdict(Status.OK))
    assert d.started
    d.configure(after)
    assert d.started == (set(after) <= set(before))


# --------------------------------------------------------------------------------------------------- steps


def reading(epoch_s: float, boot_s: float, suspended_s: float = 0.0) -> ClockReading:
    return ClockReading(realtime_s=epoch_s + boot_s, boottime_s=boot_s, monotonic_s=boot_s - suspended_s)


@given(gaps=st.lists(st.floats(0, 600, allow_nan=False), min_size=1, max_size=15),
       window=st.floats(0, 300, allow_nan=False))
def test_steps_within_the_flap_window_share_one_incident(gaps, window):
    d = detector(flap_window_s=window)
    mono, previous, previous_mono = 100.0, None, 0.0
    for i, gap in enumerate(gaps):
        previous_mono, mono = mono, mono + gap
        step = classify(reading(1e9, mono - 0.1), reading(1e9 - 5, mono), threshold_s=0.5)
        assert step is not None
        event = d.on_step(dataclasses.replace(step, monotonic_s=mono), None, "boot")
        if i > 0 and mono - previous_mono <= window:
            assert event.incident_id == previous.incident_id
            assert event.detail["transition"] == previous.detail["transition"] + 1
        else:
            assert previous is None or event.incident_id != previous.incident_id
            assert event.detail["transition"] == 1
        previous = event


@settings(max_examples=300)
@example(epoch_change=-1.0, threshold=0.5, was_set=True, suspended=0.0, leap="insert", offset=0.1)  # a leap
@example(epoch_change=-1.0, threshold=0.5, was_set=True, suspended=0.0, leap=None, offset=0.1)  # a rollback
@example(epoch_change=0.0, threshold=0.5, was_set=True, suspended=60.0, leap=None, offset=None)  # a suspend
@given(epoch_change=st.floats(-86400 * 400, 86400 * 400, allow_nan=False),
       threshold=st.floats(0.05, 10), was_set=st.booleans(), suspended=st.floats(0, 3600),
       leap=st.sampled_from([None, "insert", "delete"]), offset=st.one_of(st.none(), st.floats(-1e7, 1e7)))
def test_classification_by_size_direction_suspend_and_leap(epoch_change, threshold, was_set, suspended, *, leap,
                                                           offset):
    midnight = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a leap can only be taken at a UTC midnight
    prev = reading(midnight - 1000.5, 1000.0)
    cur = reading(midnight - 1000.5 + epoch_change, 1001.0 + suspended, suspended)
    step = classify(prev, cur, threshold_s=threshold, clock_was_set=was_set, leap_pending=leap)
    if step is None:
        return
    v = None if offset is None else verdict(Status.OK, offset)
    event = Detector(flap_window_s=60).on_step(step, v, "boot")
    if step.kind is StepKind.SUSPEND:
        assert event is None  # the machine slept: the wall clock did not jump
        return
    assert event is not None and abs(event.step_s) > threshold
    assert event.step_s == step.step_s and event.wall_time_s - event.wall_before_s == pytest.approx(step.step_s)
    if event.kind is EventKind.LEAP:
        assert leap is not None and event.step_s == pytest.approx(-1.0 if leap == "insert" else 1.0, abs=0.05)
    else:
        assert event.kind is (EventKind.ROLLBACK if event.step_s < 0 else EventKind.FORWARD_JUMP)
    assert event.detail["detected_by"] == ("timerfd" if was_set else "poll")
    if offset is None:
        assert event.trusted_time_s is None and event.verdict is None
    else:
        assert event.trusted_time_s == pytest.approx(step.realtime_after_s + offset)


# ----------------------------------------------------------------------------------------------- while down


@given(epoch_change=st.floats(-1e8, 1e8, allow_nan=False), down_s=st.floats(0, 1e6), threshold=st.floats(0.05, 100))
def test_while_down_in_the_same_boot_the_step_is_exact(epoch_change, down_s, threshold):
    last = {"wall_s": 1e9 + 500.0, "boottime_s": 500.0, "boot_id": "boot"}
    now = reading(1e9 + epoch_change, 500.0 + down_s)
    event = Detector(flap_window_s=60).while_down(now, boot_id="boot", threshold_s=threshold, last_clock=last,
                                                  floor_wall_s=2e9, floor_boot_id="boot")  # the floor is not asked
    change = now.boot_epoch_s - (last["wall_s"] - last["boottime_s"])  # epoch_change, as the floats have it
    assert change == pytest.approx(epoch_change, abs=1e-6)
    if abs(change) <= threshold:
        assert event is None
        return
    assert event.step_s == change and event.wall_before_s == pytest.approx(now.realtime_s - change)
    assert event.detail["exact"] is True and event.detail["same_boot"] is True
    assert event.kind is (EventKind.ROLLBACK_WHILE_DOWN if change < 0 else EventKind.FORWARD_JUMP)


@given(wall=st.floats(0, 4e9), floor=st.one_of(st.none(), st.floats(0, 4e9)), threshold=st.floats(0.05, 100),
       same_boot_floor=st.booleans())
def test_after_a_reboot_only_a_rollback_below_the_floor_is_seen_as_a_lower_bound(wall, floor, threshold,
                                                                                 same_boot_floor):
    now = ClockReading(realtime_s=wall, boottime_s=20.0, monotonic_s=20.0)
    floor_boot = "boot" if same_boot_floor else "before"
    event = Detector(flap_window_s=60).while_down(now, boot_id="boot", threshold_s=threshold,
                                                  last_clock={"wall_s": 1.0, "boottime_s": 1.0, "boot_id": "before"},
                                                  floor_wall_s=floor, floor_boot_id=floor_boot)
    if floor is None or wall >= floor - threshold:
        assert event is None  # a forward jump across a reboot is indistinguishable from downtime
        return
    assert event.kind is EventKind.ROLLBACK_WHILE_DOWN and event.step_s == pytest.approx(wall - floor)
    assert event.detail["lower_bound"] is True and event.detail["same_boot"] is same_boot_floor


# ---------------------------------------------------------------------------------------------------- leap


@given(st.lists(st.tuples(st.sampled_from([0, 1, 2, None]), st.sampled_from(list(SourceState)),
                          st.sampled_from(list(SourceKind))), max_size=9))
def test_a_leap_is_announced_by_a_strict_majority_of_the_agreeing_ntp_sources(sources):
    svs = tuple(SourceVerdict(dataclasses.replace(_sample(f"s{i}", 0.0), kind=kind, leap=leap), state, "")
                for i, (leap, state, kind) in enumerate(sources))
    leaps = [leap for leap, state, kind in sources if state is SourceState.TRUECHIMER and kind is SourceKind.NTP]
    expected = ("insert" if leaps.count(1) * 2 > len(leaps) else "delete" if leaps.count(2) * 2 > len(leaps)
                else None)
    assert leap_announced(dataclasses.replace(_BASE, sources=svs)) == expected
    assert leap_announced(None) is None

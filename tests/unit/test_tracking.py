"""Source tracking (measure/tracking.py): samples re-based across clock steps and aged, the latest answer per
source, and the poll policy every source follows, NTP and HTTP alike."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard import config
from timeguard.measure.check import Probe
from timeguard.measure.tracking import (
    MIN_POLL_INTERVAL_S,
    PHI,
    SAMPLE_MAX_AGE_INTERVALS,
    Latest,
    PollPolicy,
    Tracker,
    measured_epoch_s,
    rebase,
)
from timeguard.model import Sample, SourceKind, SourceState
from timeguard.watch.clockwatch import ClockReading


def reading(real: float, boot: float, mono: float | None = None) -> ClockReading:
    return ClockReading(realtime_s=real, boottime_s=boot, monotonic_s=boot if mono is None else mono)


def sample(offset: float, err: float = 0.001) -> Sample:
    return Sample("s", SourceKind.NTP, offset_s=offset, offset_lo_s=offset - err, offset_hi_s=offset + err)


# ------------------------------------------------------------------------------------------------- rebase


@given(step=st.one_of(st.just(0.0), st.floats(-4e7, 4e7).filter(lambda x: abs(x) > 0.01)),
       before=st.booleans(), delay=st.floats(0.0, 6.0), truth=st.floats(-1e3, 1e3))
def test_a_step_between_the_rounds_clock_reading_and_the_wall_reading_is_rebased_once(step, before, delay, truth):
    """The round reads the clocks, then a source resolves, connects and reads the wall clock (its anchor) ``delay``
    s later; the host clock steps by ``step`` before or after that reading. The sample's offset is relative to
    the wall as read at its anchor: re-based to the clocks after the step, it is true − host *now* (``truth``, the
    offset before the step, minus the step) — the step counted once, not twice or never (CI: an honest server
    read as +180 d after a rollback during the daemon's first round)."""
    start = reading(1_000_000.0, 100.0)
    anchor_mono = start.monotonic_s + delay
    wall_at_anchor = start.realtime_s + delay + (step if before else 0.0)
    true_at_anchor = start.realtime_s + delay + truth
    measured = dataclasses.replace(sample(true_at_anchor - wall_at_anchor),
                                   wall_base_s=wall_at_anchor - anchor_mono)
    latest = Latest(measured, measured_epoch_s(measured, start), start.monotonic_s)
    after = reading(start.realtime_s + delay + 1.0 + step, start.boottime_s + delay + 1.0)
    rebased = rebase(latest, after, max_age_s=1e9)
    assert rebased.offset_s == pytest.approx(truth - step, abs=1e-6 * max(1.0, abs(step)) + 1e-9)


def test_a_sample_without_its_wall_reading_keeps_the_rounds_epoch():
    start = reading(1000.0, 100.0)
    assert measured_epoch_s(sample(0.0), start) == start.boot_epoch_s
    slewed = dataclasses.replace(sample(0.0), wall_base_s=start.realtime_s - start.monotonic_s + 0.0004)
    assert measured_epoch_s(slewed, start) == start.boot_epoch_s  # within the slew allowance: no step


def test_rebase_follows_the_step_and_widens_with_age():
    measured = reading(1000.0, 100.0)
    latest = Latest(sample(0.002), measured.boot_epoch_s, measured.monotonic_s)
    now = reading(1000.0 + 60 - 3600, 160.0)  # 60 s later, after a -3600 s rollback
    rebased = rebase(latest, now, max_age_s=600)
    assert rebased.offset_s == pytest.approx(3600.002)  # true - host grew by the rollback
    widen = 15e-6 * 60
    assert rebased.offset_lo_s == pytest.approx(3600.001 - widen)
    assert rebased.offset_hi_s == pytest.approx(3600.003 + widen)


def test_rebase_drops_samples_that_are_too_old():
    latest = Latest(sample(0.0), 900.0, 100.0)
    old = rebase(latest, reading(2000.0, 1100.0), max_age_s=300)
    assert old.failure is SourceState.UNREACHABLE and "too old" in old.reason


@given(offset=st.floats(-1e8, 1e8), err=st.floats(1e-6, 10), steps=st.floats(-1e8, 1e8),
       age=st.floats(0, 1e5), max_age=st.floats(0, 1e5))
def test_rebase_keeps_the_true_time_and_only_widens(offset, err, steps, age, max_age):
    """Whatever the clock did since (steps of Δ in total), true time = host + offset still holds, the interval
    only grows (by PHI per second of age) and a sample older than the limit no longer counts."""
    measured = reading(1e9, 1000.0)
    latest = Latest(sample(offset, err), measured.boot_epoch_s, measured.monotonic_s)
    now = reading(1e9 + age + steps, 1000.0 + age)
    age = now.monotonic_s - measured.monotonic_s  # as the floats have it
    rebased = rebase(latest, now, max_age_s=max_age)
    if age > max_age:
        assert rebased.failure is SourceState.UNREACHABLE and not rebased.usable
        return
    shift = now.boot_epoch_s - measured.boot_epoch_s
    true_time_then = measured.realtime_s + offset
    assert now.realtime_s + rebased.offset_s == pytest.approx(true_time_then + age, abs=1e-6 * max(1, abs(shift)))
    width_then = 2 * err
    width_now = rebased.offset_hi_s - rebased.offset_lo_s
    assert width_now == pytest.approx(width_then + 2 * PHI * age, rel=1e-6, abs=1e-6)
    assert rebased.offset_lo_s <= rebased.offset_s <= rebased.offset_hi_s


def test_an_unusable_sample_stays_as_it_was():
    failed = Sample.failed("s", SourceKind.HTTP, SourceState.UNUSABLE, "bad Date")
    assert rebase(Latest(failed, 900.0, 100.0), reading(2000.0, 150.0), max_age_s=300) is failed


# ----------------------------------------------------------------------------------------------- tracker


def _probe(name: str, kind: SourceKind) -> Probe:
    return Probe(name, kind, lambda _timeout_s: sample(0.0))


def _daemon(ntp_s: float = 64.0, http_s: float = 900.0) -> config.DaemonOptions:
    return dataclasses.replace(config.load(None).daemon, ntp_interval_s=ntp_s, http_interval_s=http_s)


@given(ntp_s=st.floats(15, 86400), http_s=st.floats(15, 86400))
def test_every_source_follows_its_class_interval_and_is_due_at_once(ntp_s, http_s):
    tracker = Tracker()
    tracker.set_probes([_probe("n", SourceKind.NTP), _probe("h", SourceKind.HTTP)], _daemon(ntp_s, http_s))
    assert tracker.policies["n"].interval_s == ntp_s and tracker.policies["h"].interval_s == http_s
    for policy in tracker.policies.values():  # backs off up to 16 intervals, and at least to 1024 s
        assert policy._max_s == max(1024.0, policy.interval_s * 16)
    now = max(p.next_poll_monotonic() for p in tracker.policies.values())  # made one after the other
    assert [d.probe.name for d in tracker.due(SourceKind.NTP, now, 0.0)] == ["n"]
    assert [d.probe.name for d in tracker.due(SourceKind.HTTP, now, 0.0)] == ["h"]
    assert tracker.classes == {SourceKind.NTP, SourceKind.HTTP}


def test_nts_sources_are_polled_in_the_ntp_round_at_its_interval():
    tracker = Tracker()
    tracker.set_probes([_probe("s", SourceKind.NTS), _probe("h", SourceKind.HTTP)], _daemon(64.0, 900.0))
    assert tracker.policies["s"].interval_s == 64.0
    now = max(p.next_poll_monotonic() for p in tracker.policies.values())
    assert [d.probe.name for d in tracker.due(SourceKind.NTP, now, 0.0)] == ["s"]
    assert tracker.due(SourceKind.NTS, now, 0.0) == []  # no round of its own
    assert tracker.classes == {SourceKind.NTP, SourceKind.HTTP}  # the rounds the detector waits for


@given(polls=st.lists(st.tuples(st.floats(0, 3000), st.booleans()), min_size=1, max_size=20),
       kind=st.sampled_from(list(SourceKind)), slack=st.floats(0, 10))
def test_a_server_is_never_due_more_often_than_every_15_s(polls, kind, slack):
    """Through the tracker, for NTP and HTTP alike: polled only when due, never twice within 15 s."""
    tracker = Tracker()
    tracker.set_probes([_probe("s", kind)], _daemon(15.0, 15.0))
    clock = {"now": 1000.0}
    tracker.policies["s"] = PollPolicy(interval_s=15.0, monotonic=lambda: clock["now"])
    last = None
    for wait, healthy in polls:
        clock["now"] += wait
        due = tracker.due(kind, clock["now"], slack)
        if not due:
            continue
        clock["now"] = max(clock["now"], due[0].when_s)  # the round sleeps until the poll is allowed
        # (last + 15) − last may be 15 − 1 ulp in floating point: a picosecond is not a poll too early
        assert last is None or clock["now"] - last >= MIN_POLL_INTERVAL_S - 1e-9
        last = clock["now"]
        answer = sample(0.0) if healthy else Sample.failed("s", kind, SourceState.UNREACHABLE, "x")
        tracker.record("s", answer, reading(1e9 + clock["now"], clock["now"]))


def test_a_reload_keeps_answers_and_back_off_of_the_sources_it_keeps():
    tracker = Tracker()
    tracker.set_probes([_probe("a", SourceKind.NTP), _probe("b", SourceKind.NTP)], _daemon(64.0))
    for name in ("a", "b"):
        tracker.record(name, Sample.failed(name, SourceKind.NTP, SourceState.UNREACHABLE, "x"), reading(1e9, 10.0))
    backed_off = tracker.policies["a"]
    assert backed_off.interval_s == 128
    tracker.set_probes([_probe("a", SourceKind.NTP)], _daemon(64.0))  # b removed
    assert tracker.policies["a"] is backed_off and set(tracker.latest) == {"a"}
    tracker.set_probes([_probe("a", SourceKind.NTP)], _daemon(300.0))  # the interval grew past the back-off
    assert tracker.policies["a"] is not backed_off and tracker.policies["a"].interval_s == 300.0


def test_samples_older_than_three_intervals_no_longer_count():
    cfg = config.load(None)
    tracker = Tracker()
    tracker.set_probes([_probe("a", SourceKind.NTP)], _daemon(64.0))
    tracker.record("a", sample(0.01), reading(1e9, 100.0))
    limit = SAMPLE_MAX_AGE_INTERVALS * 64.0 + cfg.timeout_s
    [fresh] = tracker.samples(reading(1e9 + limit, 100.0 + limit), cfg.timeout_s)
    [stale] = tracker.samples(reading(1e9 + limit + 1, 100.0 + limit + 1), cfg.timeout_s)
    assert fresh.usable and not stale.usable and "too old" in stale.reason


@given(offset=st.floats(-1e7, 1e7), step=st.floats(-1e7, 1e7), later=st.floats(0, 1e4))
def test_trusted_now_follows_every_step_since_the_verdict(offset, step, later):
    from timeguard.measure.consensus import decide

    tracker = Tracker()
    assert tracker.trusted_now(reading(1e9, 100.0)) is None  # no verdict: no trusted time
    formed = reading(1e9, 100.0)
    tracker.verdict = decide([sample(offset), dataclasses.replace(sample(offset), name="t")], warning_s=1,
                             critical_s=2)
    tracker.verdict_epoch_s = formed.boot_epoch_s
    now = reading(1e9 + later + step, 100.0 + later)
    true_now = formed.realtime_s + offset + later
    assert tracker.trusted_now(now) == pytest.approx(true_now, abs=1e-6 * max(1.0, abs(step), abs(offset)))


# ------------------------------------------------------------------------------------------- poll policy


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ok() -> Sample:
    return Sample(name="s", kind=SourceKind.NTP, offset_s=0.0, offset_lo_s=-0.01, offset_hi_s=0.01)


def failed(kiss: str | None = None) -> Sample:
    state = SourceState.UNUSABLE if kiss else SourceState.UNREACHABLE
    return Sample.failed("s", SourceKind.NTP, state, "x", kiss_code=kiss)


def test_poll_policy_first_poll_at_once_then_the_interval():
    clock = FakeClock()
    policy = PollPolicy(interval_s=64, monotonic=clock)
    assert policy.next_poll_monotonic() == 1000.0 and policy.due()
    policy.record(ok())
    assert policy.next_poll_monotonic() == 1064.0 and not policy.due()
    clock.now = 1064.0
    assert policy.due()


def test_poll_policy_refuses_intervals_below_15_s():
    with pytest.raises(ValueError, match="below the 15 s minimum of RFC 4330"):
        PollPolicy(interval_s=10)
    assert MIN_POLL_INTERVAL_S == 15.0


def test_poll_policy_never_polls_within_15_s_even_if_asked_early():
    clock = FakeClock()
    policy = PollPolicy(interval_s=15, monotonic=clock)
    for _ in range(5):
        policy.record(ok())
        nxt = policy.next_poll_monotonic()
        assert nxt is not None and nxt - clock.now >= 15.0
        clock.now += 1  # a caller that records more often than allowed is still held to 15 s
    assert policy.next_poll_monotonic() == clock.now - 1 + 15


def test_poll_policy_backs_off_exponentially_on_failures_with_a_cap():
    clock = FakeClock()
    policy = PollPolicy(interval_s=64, max_interval_s=1024, monotonic=clock)
    intervals = []
    for _ in range(7):
        policy.record(failed())
        intervals.append(policy.interval_s)
    assert intervals == [128, 256, 512, 1024, 1024, 1024, 1024]
    assert policy.failures == 7
    policy.record(ok())  # recovery returns to the normal interval
    assert (policy.interval_s, policy.failures) == (64, 0)


def test_poll_policy_rate_kiss_doubles_the_interval_for_good():
    clock = FakeClock()
    policy = PollPolicy(interval_s=64, monotonic=clock)
    policy.record(failed("RATE"))
    assert policy.interval_s == 128 and policy.next_poll_monotonic() == 1128
    policy.record(ok())
    assert policy.interval_s == 128  # not back to 64: the server asked us to slow down
    policy.record(failed("RATE"))
    assert policy.interval_s == 256
    for _ in range(10):
        policy.record(failed("RATE"))
    assert policy.interval_s == 1024


@pytest.mark.parametrize("code", ["DENY", "RSTR"])
def test_poll_policy_stops_for_good_on_deny_or_rstr(code: str):
    clock = FakeClock()
    policy = PollPolicy(monotonic=clock)
    policy.record(failed(code))
    assert policy.stopped and policy.next_poll_monotonic() is None and not policy.due()
    assert policy.stop_reason is not None and code in policy.stop_reason
    clock.now += 10**6
    policy.record(ok())  # nothing brings it back
    assert policy.next_poll_monotonic() is None


def test_poll_policy_other_kiss_codes_back_off_like_failures():
    policy = PollPolicy(interval_s=64, monotonic=FakeClock())
    policy.record(failed("XFOO"))
    assert (policy.interval_s, policy.stopped) == (128, False)

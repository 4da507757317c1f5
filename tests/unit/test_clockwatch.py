"""clockwatch: step classification on synthetic readings (exhaustive), glitch confirmation, the detector's
robustness, and the two host-safe real checks (clock reads, an armed timerfd that does not fire).

Real clock steps are only ever made inside a QEMU guest: tests/integration/test_clockwatch_qemu.py.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.require import need
from timeguard.watch import clockwatch
from timeguard.watch.clockwatch import (
    DEFAULT_MAX_SLEW_PPM,
    GLITCH_2_32_S,
    ClockReading,
    ClockSetWatcher,
    ClockStep,
    StepDetector,
    StepKind,
    classify,
    confirm,
    read_clocks,
    slew_allowance_s,
)

T0 = 1_795_458_982.25  # a wall time in 2026 (exactly representable offsets keep the arithmetic honest)
BOOT0 = 1_000.0
DAY = 86_400
CHRONY_MAXSLEW_PPM = 83_333.333  # chrony's default maxslewrate: 83 ms/s
KERNEL_PLL_PPM = 500.0


def reading(realtime_s: float, boottime_s: float, monotonic_s: float | None = None) -> ClockReading:
    return ClockReading(realtime_s, boottime_s, boottime_s if monotonic_s is None else monotonic_s)


def after(prev: ClockReading, elapsed_s: float, *, step_s: float = 0.0, slew_ppm: float = 0.0) -> ClockReading:
    """``prev`` advanced by ``elapsed_s`` of BOOTTIME; the wall clock slewed at ``slew_ppm``, stepped by ``step_s``."""
    return ClockReading(
        prev.realtime_s + elapsed_s * (1 + slew_ppm * 1e-6) + step_s,
        prev.boottime_s + elapsed_s,
        prev.monotonic_s + elapsed_s,
    )


BASE = reading(T0, BOOT0)

# --------------------------------------------------------------------------------------------------------
# classify: steps
# --------------------------------------------------------------------------------------------------------

STEP_SIZES = [0.75, 1.0, 2.5, GLITCH_2_32_S, 59.0, 3600.0, 7200.0, 86_400.0, 180 * DAY, 10 * 365 * DAY]


@pytest.mark.parametrize("clock_was_set", [False, True])
@pytest.mark.parametrize("size_s", STEP_SIZES)
def test_rollback_reported_with_exact_epoch_change(size_s: float, clock_was_set: bool) -> None:
    cur = after(BASE, 1.0, step_s=-size_s)
    step = classify(BASE, cur, clock_was_set=clock_was_set)
    assert step is not None
    assert step.kind is StepKind.ROLLBACK
    assert step.step_s == cur.boot_epoch_s - BASE.boot_epoch_s  # exactly Δepoch, not a rounded figure
    assert step.step_s == pytest.approx(-size_s, abs=1e-6)
    assert step.realtime_after_s - step.realtime_before_s == pytest.approx(step.step_s, abs=1e-6)
    assert step.realtime_after_s == cur.realtime_s
    assert step.detected_by == ("timerfd" if clock_was_set else "poll")
    assert step.boottime_s == cur.boottime_s
    assert step.monotonic_s == cur.monotonic_s
    assert step.suspended_s == 0.0


@pytest.mark.parametrize("clock_was_set", [False, True])
@pytest.mark.parametrize("size_s", STEP_SIZES)
def test_forward_jump_reported_with_exact_epoch_change(size_s: float, clock_was_set: bool) -> None:
    cur = after(BASE, 1.0, step_s=size_s)
    step = classify(BASE, cur, clock_was_set=clock_was_set)
    assert step is not None
    assert step.kind is StepKind.FORWARD_JUMP
    assert step.step_s == cur.boot_epoch_s - BASE.boot_epoch_s
    assert step.step_s == pytest.approx(size_s, abs=1e-6)


def test_no_change_is_nothing_with_or_without_timerfd() -> None:
    cur = after(BASE, 1.0)
    assert classify(BASE, cur) is None
    assert classify(BASE, cur, clock_was_set=True) is None  # e.g. clock_settime to the same time


def test_step_below_threshold_is_nothing() -> None:
    assert classify(BASE, after(BASE, 1.0, step_s=-0.4), clock_was_set=True) is None
    assert classify(BASE, after(BASE, 1.0, step_s=0.4), clock_was_set=True) is None


def test_polling_needs_threshold_plus_slew_allowance() -> None:
    # 10 s between polls: a slew at 100 000 ppm could move the epoch by 1 s, so 1.4 s is not provably a step
    assert slew_allowance_s(10.0) == pytest.approx(1.0)
    assert classify(BASE, after(BASE, 10.0, step_s=-1.4)) is None
    step = classify(BASE, after(BASE, 10.0, step_s=-1.6))
    assert step is not None
    assert step.kind is StepKind.ROLLBACK
    # ... while the kernel saying "the clock was set" removes the doubt
    step = classify(BASE, after(BASE, 10.0, step_s=-1.4), clock_was_set=True)
    assert step is not None
    assert step.detected_by == "timerfd"


def test_threshold_005_with_clock_was_set() -> None:
    step = classify(BASE, after(BASE, 1.0, step_s=-0.06), threshold_s=0.05, clock_was_set=True)
    assert step is not None
    assert step.kind is StepKind.ROLLBACK
    assert step.step_s == pytest.approx(-0.06, abs=1e-6)
    assert classify(BASE, after(BASE, 1.0, step_s=-0.04), threshold_s=0.05, clock_was_set=True) is None
    # polling 0.1 s apart: allowance 0.01 s on top of 0.05
    assert classify(BASE, after(BASE, 0.1, step_s=0.055), threshold_s=0.05) is None
    assert classify(BASE, after(BASE, 0.1, step_s=0.07), threshold_s=0.05) is not None


@pytest.mark.parametrize("bad", [0.049, 0.0, -1.0, math.nan, math.inf])
def test_threshold_validated_with_a_clear_message(bad: float) -> None:
    with pytest.raises(ValueError, match=r"threshold_s=.* at least 0\.05 s"):
        classify(BASE, after(BASE, 1.0), threshold_s=bad)
    with pytest.raises(ValueError, match=r"at least 0\.05"):
        StepDetector(threshold_s=bad, read=lambda: BASE)


def test_other_arguments_validated() -> None:
    with pytest.raises(ValueError, match="max_slew_ppm"):
        classify(BASE, after(BASE, 1.0), max_slew_ppm=-1.0)
    with pytest.raises(ValueError, match="leap_pending"):
        classify(BASE, after(BASE, 1.0), leap_pending="yes")
    with pytest.raises(ValueError, match="out of order"):
        classify(after(BASE, 1.0), BASE)


def test_default_slew_bound_is_chrony_maxslewrate_plus_margin() -> None:
    assert DEFAULT_MAX_SLEW_PPM > CHRONY_MAXSLEW_PPM
    assert DEFAULT_MAX_SLEW_PPM <= 100_000  # Linux cannot slew faster (tick ±10 %)


# --------------------------------------------------------------------------------------------------------
# classify: suspend, slews
# --------------------------------------------------------------------------------------------------------


def test_suspend_60s_is_no_rollback_and_reported_only_as_suspend_info() -> None:
    # realtime and boottime both +60, monotonic +0: the machine slept 60 s; resume fires the timerfd
    cur = ClockReading(BASE.realtime_s + 60, BASE.boottime_s + 60, BASE.monotonic_s)
    assert classify(BASE, cur) is None  # polling: nothing at all
    step = classify(BASE, cur, clock_was_set=True)
    assert step is not None
    assert step.kind is StepKind.SUSPEND
    assert step.step_s == 0.0
    assert step.suspended_s == pytest.approx(60.0)
    assert step.realtime_before_s == step.realtime_after_s == cur.realtime_s
    assert "suspend of 60.000 s" in step.describe()


def test_suspend_with_a_step_on_resume_is_the_step() -> None:
    # resumed and then the clock was stepped back 1 h before we looked: the rollback matters, suspend is context
    cur = ClockReading(BASE.realtime_s + 60 - 3600, BASE.boottime_s + 60, BASE.monotonic_s)
    step = classify(BASE, cur, clock_was_set=True)
    assert step is not None
    assert step.kind is StepKind.ROLLBACK
    assert step.step_s == pytest.approx(-3600.0)
    assert step.suspended_s == pytest.approx(60.0)


def test_resume_without_suspend_time_is_nothing() -> None:
    assert classify(BASE, after(BASE, 1.0), clock_was_set=True) is None


@pytest.mark.parametrize("elapsed_s", [1.0, 10.0, 100.0])
@pytest.mark.parametrize("ppm", [CHRONY_MAXSLEW_PPM, -CHRONY_MAXSLEW_PPM, KERNEL_PLL_PPM, -KERNEL_PLL_PPM])
def test_slews_are_never_steps(ppm: float, elapsed_s: float) -> None:
    cur = after(BASE, elapsed_s, slew_ppm=ppm)
    assert abs(cur.boot_epoch_s - BASE.boot_epoch_s) == pytest.approx(abs(ppm) * 1e-6 * elapsed_s, abs=1e-6)
    assert classify(BASE, cur) is None


def test_slewed_sequence_of_ticks_never_steps() -> None:
    prev = BASE
    for _ in range(1000):  # 1000 one-second ticks of chrony slewing at full rate: 83 s moved, no step
        cur = after(prev, 1.0, slew_ppm=CHRONY_MAXSLEW_PPM)
        assert classify(prev, cur) is None
        prev = cur
    assert prev.boot_epoch_s - BASE.boot_epoch_s == pytest.approx(83.333, abs=1e-3)


# --------------------------------------------------------------------------------------------------------
# classify: leap seconds
# --------------------------------------------------------------------------------------------------------

MIDNIGHT = (int(T0) // DAY + 1) * DAY  # a UTC midnight


def leap_insertion(detected_after_s: float = 0.003) -> tuple[ClockReading, ClockReading]:
    """23:59:59.5 then the kernel replays 23:59:59 at midnight (23:59:60); detected ``detected_after_s`` later."""
    prev = reading(MIDNIGHT - 0.5, BOOT0)
    cur = reading(MIDNIGHT - 1.0 + detected_after_s, BOOT0 + 0.5 + detected_after_s)
    return prev, cur


def test_leap_insertion_at_23_59_60_with_leap_pending_is_leap() -> None:
    prev, cur = leap_insertion()
    step = classify(prev, cur, clock_was_set=True, leap_pending="insert")
    assert step is not None
    assert step.kind is StepKind.LEAP
    assert step.step_s == pytest.approx(-1.0, abs=1e-6)


def test_leap_insertion_without_leap_pending_is_a_rollback_of_one_second() -> None:
    prev, cur = leap_insertion()
    step = classify(prev, cur, clock_was_set=True)
    assert step is not None
    assert step.kind is StepKind.ROLLBACK
    assert step.step_s == pytest.approx(-1.0, abs=1e-6)


def test_leap_insertion_seen_late_by_polling_is_leap() -> None:
    prev, cur = leap_insertion(detected_after_s=4.0)
    step = classify(prev, cur, leap_pending="insert")
    assert step is not None
    assert step.kind is StepKind.LEAP


def test_leap_deletion_is_leap() -> None:
    prev = reading(MIDNIGHT - 1.5, BOOT0)  # 23:59:58.5; 23:59:59 is skipped
    cur = reading(MIDNIGHT + 0.002, BOOT0 + 0.502)
    step = classify(prev, cur, clock_was_set=True, leap_pending="delete")
    assert step is not None
    assert step.kind is StepKind.LEAP
    assert step.step_s == pytest.approx(1.0, abs=1e-6)
    assert classify(prev, cur, clock_was_set=True, leap_pending="insert").kind is StepKind.FORWARD_JUMP  # type: ignore[union-attr]


def test_minus_one_second_at_noon_with_leap_pending_is_a_rollback() -> None:
    prev = reading(MIDNIGHT - DAY / 2, BOOT0)
    cur = after(prev, 0.5, step_s=-1.0)
    assert classify(prev, cur, clock_was_set=True, leap_pending="insert").kind is StepKind.ROLLBACK  # type: ignore[union-attr]


@pytest.mark.parametrize("size_s", [-0.9, -1.1, -2.0, -3600.0])
def test_wrong_size_at_midnight_with_leap_pending_is_a_rollback(size_s: float) -> None:
    prev = reading(MIDNIGHT - 0.5, BOOT0)
    cur = after(prev, 0.5, step_s=size_s)
    assert classify(prev, cur, clock_was_set=True, leap_pending="insert").kind is StepKind.ROLLBACK  # type: ignore[union-attr]


def test_minus_one_second_just_after_midnight_when_prev_already_past_it_is_a_rollback() -> None:
    # the leap instant was before ``prev``: a −1 s step now cannot be that leap
    prev = reading(MIDNIGHT + 2.0, BOOT0)
    cur = after(prev, 0.5, step_s=-1.0)
    assert classify(prev, cur, clock_was_set=True, leap_pending="insert").kind is StepKind.ROLLBACK  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------------
# hypothesis: slews within the allowance never step; anything beyond always does, with the right sign
# --------------------------------------------------------------------------------------------------------

readings = st.builds(
    reading,
    realtime_s=st.floats(1e9, 4e9),
    boottime_s=st.floats(0.0, 1e7),
)
elapsed = st.floats(0.0, 10_000.0)
thresholds = st.floats(0.05, 1000.0)
slews_ppm = st.floats(0.0, DEFAULT_MAX_SLEW_PPM)


@given(prev=readings, elapsed_s=elapsed, ppm=slews_ppm, negative=st.booleans(), threshold_s=thresholds)
def test_any_slew_within_allowance_is_never_a_step(
    prev: ClockReading, elapsed_s: float, ppm: float, negative: bool, threshold_s: float
) -> None:
    cur = after(prev, elapsed_s, slew_ppm=-ppm if negative else ppm)
    assert classify(prev, cur, threshold_s=threshold_s) is None


@given(
    prev=readings,
    elapsed_s=elapsed,
    ppm=st.floats(-DEFAULT_MAX_SLEW_PPM, DEFAULT_MAX_SLEW_PPM),
    excess_s=st.floats(1e-4, 1e9),
    negative=st.booleans(),
    threshold_s=thresholds,
    clock_was_set=st.booleans(),
)
def test_any_step_beyond_threshold_plus_allowance_is_a_step_with_the_right_sign(  # noqa: PLR0917 - hypothesis
    prev: ClockReading,
    elapsed_s: float,
    ppm: float,
    excess_s: float,
    negative: bool,
    threshold_s: float,
    clock_was_set: bool,
) -> None:
    # the step must beat the threshold plus the allowance even after the slew in the same interval ate into it
    size_s = threshold_s + 2 * slew_allowance_s(elapsed_s) + excess_s
    step_s = -size_s if negative else size_s
    cur = after(prev, elapsed_s, step_s=step_s, slew_ppm=ppm)
    step = classify(prev, cur, threshold_s=threshold_s, clock_was_set=clock_was_set)
    assert step is not None
    assert step.kind is (StepKind.ROLLBACK if negative else StepKind.FORWARD_JUMP)
    assert step.step_s == cur.boot_epoch_s - prev.boot_epoch_s
    assert math.copysign(1.0, step.step_s) == (-1.0 if negative else 1.0)


# --------------------------------------------------------------------------------------------------------
# Glitch confirmation
# --------------------------------------------------------------------------------------------------------


def test_confirm_agrees_with_a_persisting_step_and_not_with_a_reverting_one() -> None:
    stepped = after(BASE, 1.0, step_s=-3600.0)
    agreed, fresh = confirm(stepped, lambda: after(stepped, 1e-6))
    assert agreed
    assert fresh.boottime_s > stepped.boottime_s
    glitch = after(BASE, 1.0, step_s=GLITCH_2_32_S)
    agreed, _ = confirm(glitch, lambda: after(BASE, 1.000001))
    assert not agreed


def scripted(readings_: list[ClockReading]) -> Callable[[], ClockReading]:
    it: Iterator[ClockReading] = iter(readings_)
    return lambda: next(it)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_glitch_of_2_pow_32_ns_that_reverts_on_reread_is_dropped_and_counted(sign: float) -> None:
    t1 = after(BASE, 1.0)
    glitch = after(BASE, 2.0, step_s=sign * GLITCH_2_32_S)
    reread = after(BASE, 2.000001)
    t3 = after(BASE, 3.0)
    det = StepDetector(read=scripted([BASE, t1, glitch, reread, t3]))
    assert det.poll() == []
    assert det.poll() == []  # the glitch
    assert det.glitches_dropped == 1
    assert "gone on an immediate re-read" in (det.last_error or "")
    assert det.last_reading == reread  # the clean re-read, never the glitch, became the baseline
    assert det.poll() == []
    assert det.last_reading == t3


def test_glitch_that_persists_is_a_step() -> None:
    t1 = after(BASE, 1.0)
    glitch = after(BASE, 2.0, step_s=GLITCH_2_32_S)
    reread = after(glitch, 1e-6)
    det = StepDetector(read=scripted([BASE, t1, glitch, reread]))
    assert det.poll() == []
    steps = det.poll()
    assert [s.kind for s in steps] == [StepKind.FORWARD_JUMP]
    assert steps[0].step_s == pytest.approx(GLITCH_2_32_S, abs=1e-6)
    assert det.glitches_dropped == 0
    assert det.last_reading == reread


def test_real_step_hidden_behind_a_transient_is_reported_in_the_same_tick() -> None:
    t1 = after(BASE, 1.0)
    glitch = after(BASE, 2.0, step_s=GLITCH_2_32_S)
    stepped_reread = after(BASE, 2.000001, step_s=-3600.0)  # neither the glitch nor the old epoch
    stepped_confirm = after(stepped_reread, 1e-6)
    det = StepDetector(read=scripted([BASE, t1, glitch, stepped_reread, stepped_confirm]))
    det.poll()
    steps = det.poll()
    assert det.glitches_dropped == 1
    assert [s.kind for s in steps] == [StepKind.ROLLBACK]
    assert steps[0].step_s == pytest.approx(-3600.0, abs=1e-6)
    assert det.last_reading == stepped_confirm


def test_two_transients_in_a_row_keep_the_baseline_and_the_timerfd_signal(pipe_watcher: PipeWatcher) -> None:
    t1 = after(BASE, 1.0)
    glitches = [after(BASE, 2.0 + i * 1e-6, step_s=(-1) ** i * GLITCH_2_32_S) for i in range(3)]
    stepped = after(BASE, 3.0, step_s=-3600.0)
    det = StepDetector(pipe_watcher, read=scripted([BASE, t1, *glitches, stepped, after(stepped, 1e-6)]))  # type: ignore[arg-type]
    assert det.poll() == []
    pipe_watcher.fire()
    assert det.poll() == []
    assert det.glitches_dropped == 2
    assert det.last_reading == t1
    steps = det.poll()  # the timer fired during the unsettled tick: that is remembered
    assert [(s.kind, s.detected_by) for s in steps] == [(StepKind.ROLLBACK, "timerfd")]


# --------------------------------------------------------------------------------------------------------
# StepDetector: never raises, polling, timerfd path (with a pipe standing in for the timerfd)
# --------------------------------------------------------------------------------------------------------


class PipeWatcher:
    """Quacks like ClockSetWatcher; ``fire()`` makes it readable as a clock set would."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.closed = False

    def fire(self) -> None:
        os.write(self.w, b"x")

    def fileno(self) -> int:
        return self.r

    def consume(self) -> bool:
        try:
            return bool(os.read(self.r, 64))
        except BlockingIOError:
            return False

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)
        self.closed = True


@pytest.fixture
def pipe_watcher() -> Iterator[PipeWatcher]:
    w = PipeWatcher()
    yield w
    w.close()


def test_detector_never_raises_on_bad_reads() -> None:
    def broken() -> ClockReading:
        raise OSError(22, "Invalid argument")

    det = StepDetector(read=broken)
    assert det.last_reading is None
    assert det.poll() == []
    assert det.wait(0) == []
    assert det.read_errors == 3
    assert "Invalid argument" in (det.last_error or "")


def test_detector_ignores_non_finite_readings() -> None:
    nan = reading(math.nan, BOOT0 + 1)
    det = StepDetector(read=scripted([BASE, nan, after(BASE, 2.0)]))
    assert det.poll() == []
    assert det.read_errors == 1
    assert det.poll() == []
    assert det.last_reading == after(BASE, 2.0)


def test_detector_first_good_read_becomes_the_baseline() -> None:
    calls: Iterator[ClockReading | OSError] = iter(
        [OSError("no"), BASE, after(BASE, 1.0, step_s=-3600), after(BASE, 1.00001, step_s=-3600)]
    )

    def flaky() -> ClockReading:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    det = StepDetector(read=flaky)
    assert det.poll() == []  # baseline from the first good read, no step against nothing
    assert [s.kind for s in det.poll()] == [StepKind.ROLLBACK]


def test_detector_boottime_going_back_is_ignored_then_rebaselined() -> None:
    later = after(BASE, 100.0)
    bogus = [after(BASE, 1.0 + i) for i in range(3)]  # earlier than ``later``: the baseline was the bad reading
    det = StepDetector(read=scripted([later, *bogus, after(bogus[-1], 1.0)]))
    assert det.poll() == []
    assert det.poll() == []
    assert det.poll() == []
    assert det.rebaselines == 1
    assert det.last_reading == bogus[-1]
    assert det.poll() == []
    assert det.read_errors == 3


def test_detector_reports_step_once_then_tracks_the_new_epoch() -> None:
    stepped = after(BASE, 1.0, step_s=-3600.0)
    seq = [BASE, stepped, after(stepped, 1e-6), after(stepped, 1.0), after(stepped, 2.0)]
    det = StepDetector(read=scripted(seq))
    steps = det.poll()
    assert len(steps) == 1
    assert steps[0].detected_by == "poll"
    assert det.poll() == []
    assert det.poll() == []


def test_detector_polling_wait_sleeps_then_polls() -> None:
    det = StepDetector(read=read_clocks)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="timeout_s"):
            det.wait(bad)
    t0 = time.monotonic()
    assert det.wait(0.05) == []
    assert 0.04 <= time.monotonic() - t0 < 1.0


def test_detector_wait_returns_at_once_when_the_clock_is_set(pipe_watcher: PipeWatcher) -> None:
    stepped = after(BASE, 0.2, step_s=7200.0)
    det = StepDetector(pipe_watcher, read=scripted([BASE, stepped, after(stepped, 1e-6)]))  # type: ignore[arg-type]
    pipe_watcher.fire()
    t0 = time.monotonic()
    steps = det.wait(5.0)
    assert time.monotonic() - t0 < 1.0
    assert [(s.kind, s.detected_by) for s in steps] == [(StepKind.FORWARD_JUMP, "timerfd")]


def test_detector_timerfd_wakeup_on_resume_is_suspend_info(pipe_watcher: PipeWatcher) -> None:
    resumed = ClockReading(BASE.realtime_s + 60, BASE.boottime_s + 60, BASE.monotonic_s + 0.01)
    det = StepDetector(pipe_watcher, read=scripted([BASE, resumed]))  # type: ignore[arg-type]
    pipe_watcher.fire()
    steps = det.wait(5.0)
    assert [s.kind for s in steps] == [StepKind.SUSPEND]
    assert steps[0].suspended_s == pytest.approx(59.99)
    assert det.last_reading == resumed


def test_detector_watcher_failure_falls_back_to_polling(pipe_watcher: PipeWatcher) -> None:
    class Broken(PipeWatcher):
        def consume(self) -> bool:
            raise OSError(9, "Bad file descriptor")

    broken = Broken()
    try:
        stepped = after(BASE, 1.0, step_s=-3600.0)
        det = StepDetector(broken, read=scripted([BASE, stepped, after(stepped, 1e-6)]))  # type: ignore[arg-type]
        steps = det.poll()
        assert [(s.kind, s.detected_by) for s in steps] == [(StepKind.ROLLBACK, "poll")]
        assert det.read_errors == 1
    finally:
        broken.close()


def test_detector_leap_source_consulted_only_near_midnight() -> None:
    calls: list[float] = []

    def source() -> str | None:
        calls.append(time.monotonic())
        return "insert"

    noon = reading(MIDNIGHT - DAY / 2, BOOT0)
    det = StepDetector(read=scripted([noon, after(noon, 1.0), after(noon, 2.0)]), leap_pending=source)
    det.poll()
    det.poll()
    assert calls == []


def test_detector_uses_leap_pending_seen_before_the_kernel_cleared_it() -> None:
    answers = iter(["insert", None])
    prev, cur = leap_insertion()
    det = StepDetector(
        read=scripted([reading(prev.realtime_s - 1, BOOT0 - 1), prev, cur, after(cur, 1e-6)]),
        leap_pending=lambda: next(answers),
    )
    assert det.poll() == []  # saw "insert"
    steps = det.poll()  # the source now says None (daemon cleared STA_INS), the step is still the leap
    assert [s.kind for s in steps] == [StepKind.LEAP]


def test_detector_leap_source_failure_is_not_fatal() -> None:
    def source() -> str | None:
        raise PermissionError("adjtimex: EPERM (ProtectClock=yes)")

    prev, cur = leap_insertion()
    det = StepDetector(read=scripted([prev, cur, after(cur, 1e-6)]), leap_pending=source)
    assert [s.kind for s in det.poll()] == [StepKind.ROLLBACK]
    assert "EPERM" in (det.last_error or "")


def test_describe_names_kind_size_and_times() -> None:
    step = classify(BASE, after(BASE, 1.0, step_s=-3600.0), clock_was_set=True)
    assert isinstance(step, ClockStep)
    text = step.describe()
    assert "rollback of -3600.000000 s" in text
    assert "2026-" in text
    assert "timerfd" in text


def test_tick_costs_microseconds() -> None:
    det = StepDetector()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        det.poll()
    per_tick_us = (time.perf_counter() - t0) / n * 1e6
    assert per_tick_us < 200, per_tick_us  # typically ~4 µs; generous for a loaded CI box


# --------------------------------------------------------------------------------------------------------
# Real, host-safe: reads and an armed timerfd (nothing here sets any clock)
# --------------------------------------------------------------------------------------------------------


def test_read_clocks_boot_epoch_stable_to_1ms_over_100_reads() -> None:
    need(hasattr(time, "CLOCK_BOOTTIME"), "CLOCK_BOOTTIME is Linux-only")
    epochs = []
    for _ in range(100):
        r = read_clocks()
        assert r.boottime_s >= r.monotonic_s - 1e-6
        epochs.append(r.boot_epoch_s)
        time.sleep(0.001)
    assert max(epochs) - min(epochs) < 1e-3
    assert abs(read_clocks().realtime_s - time.time()) < 0.1


BACKENDS = [
    "ctypes",
    pytest.param("os", marks=pytest.mark.skipif(sys.version_info < (3, 13), reason="os.timerfd_* is Python ≥ 3.13")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_clock_set_watcher_arms_on_the_host_without_firing(backend: str) -> None:
    need(sys.platform.startswith("linux"), "timerfd is Linux-only")
    with ClockSetWatcher(backend=backend) as watcher:  # type: ignore[arg-type]
        assert watcher.backend == backend
        assert watcher.fileno() >= 0
        assert watcher.consume() is False
        time.sleep(0.2)
        assert watcher.consume() is False
    assert watcher.closed
    with pytest.raises(ValueError, match="closed"):
        watcher.fileno()


def test_clock_set_watcher_os_backend_refused_before_3_13() -> None:
    if sys.version_info >= (3, 13):
        pytest.skip("os.timerfd_create exists here")
    with pytest.raises(OSError, match=r"Python ≥ 3\.13"):
        ClockSetWatcher(backend="os")


def test_clock_set_watcher_unavailable_raises_actionable_oserror(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoTimerfd:
        def __getattr__(self, name: str) -> object:
            raise AttributeError(f"undefined symbol: {name}")

    monkeypatch.setattr(clockwatch, "_libc", None)
    monkeypatch.setattr(clockwatch.ctypes, "CDLL", lambda *a, **k: NoTimerfd())
    with pytest.raises(OSError, match=r"detected by polling") as info:
        ClockSetWatcher(backend="ctypes")
    assert "timerfd" in str(info.value)
    det = StepDetector.open(read=lambda: BASE) if sys.version_info < (3, 13) else None
    if det is not None:
        assert det.watcher is None
        assert "polling" in (det.watcher_error or "")
        det.close()


def test_step_detector_open_owns_and_closes_its_watcher() -> None:
    need(sys.platform.startswith("linux"), "timerfd is Linux-only")
    with StepDetector.open() as det:
        assert det.watcher is not None, det.watcher_error
        assert det.poll() == []
        t0 = time.monotonic()
        assert det.wait(0.1) == []
        assert 0.09 <= time.monotonic() - t0 < 1.0
    assert det.watcher.closed


# ---------------------------------------------------------------------------------------------- the boot id


@given(st.binary(max_size=64))
def test_read_boot_id_is_the_kernels_text_or_one_unknown_value(content: bytes) -> None:
    """Whatever the file holds: its text stripped, else (empty, not text) the one UNKNOWN_BOOT_ID."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        path = Path(tmp) / "boot_id"
        path.write_bytes(content)
        mp.setattr(clockwatch, "BOOT_ID_PATH", path)
        try:
            expected = content.decode().strip() or clockwatch.UNKNOWN_BOOT_ID
        except UnicodeDecodeError:
            expected = clockwatch.UNKNOWN_BOOT_ID
        assert clockwatch.read_boot_id() == expected


def test_an_unreadable_boot_id_is_the_same_for_the_outbox_the_daemon_and_status(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox writes its rows under its epoch and `status` counts this boot's rows by its own boot id: with no
    readable boot id both must still name the same boot (the outbox used to say "unknown-boot", status "unknown")."""
    from pathlib import Path

    from timeguard.cli import status
    from timeguard.hooks.outbox import Outbox
    from timeguard.store.journal import Journal

    monkeypatch.setattr(clockwatch, "BOOT_ID_PATH", Path(str(tmp_path)) / "missing")
    with Journal(Path(str(tmp_path)) / "journal.sqlite") as journal:
        epoch = Outbox(journal, {}, trusted_now=lambda: None).epoch
    assert epoch == clockwatch.read_boot_id() == clockwatch.UNKNOWN_BOOT_ID
    assert status.read_boot_id is clockwatch.read_boot_id

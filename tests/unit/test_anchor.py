"""The wall-clock anchor: a reading bracketed by two monotonic ones, the tightest of a few tries."""

from __future__ import annotations

import time
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from timeguard.measure.anchor import GOOD_ENOUGH_NS, TRIES, WallAnchor, read_anchor


def scripted(gaps: list[int], wall_at_ns: int = 1_800_000_000 * 10**9) -> tuple[Iterator[int], list[int]]:
    """A monotonic clock whose every bracket is ``gaps[i]`` wide, the wall reading at a known instant inside."""
    readings: list[int] = []
    now = 1_000_000
    for gap in gaps:
        readings += [now, now + gap]
        now += gap + 1_000
    return iter(readings), readings


@given(st.lists(st.integers(min_value=0, max_value=50_000_000), min_size=TRIES, max_size=TRIES))
def test_the_tightest_bracket_is_kept_and_its_midpoint_is_within_the_uncertainty(gaps: list[int]) -> None:
    mono, readings = scripted(gaps)
    walls = iter(range(10**18, 10**18 + 100))
    tied = read_anchor(lambda: next(walls), mono_ns=lambda: next(mono))
    good = [i for i, gap in enumerate(gaps) if (gap + 1) // 2 <= GOOD_ENOUGH_NS]
    tried = good[0] + 1 if good else TRIES
    best = min(range(tried), key=lambda i: gaps[i])
    assert tied.uncertainty_ns == (gaps[best] + 1) // 2
    assert tied.wall_ns == 10**18 + best
    before, after = readings[2 * best], readings[2 * best + 1]
    # wherever in the bracket the wall clock was read, the midpoint is within the uncertainty of it
    assert abs(tied.mono_ns - before) <= tied.uncertainty_ns and abs(after - tied.mono_ns) <= tied.uncertainty_ns


def test_a_tight_first_bracket_is_taken_at_once() -> None:
    calls = []
    read_anchor(lambda: calls.append(1) or time.time_ns(), mono_ns=iter([0, 10, 100, 10_000_000]).__next__)
    assert len(calls) == 1


def test_derived_times_round_trip() -> None:
    tied = WallAnchor(wall_ns=5_000, mono_ns=100, uncertainty_ns=7)
    assert tied.wall_at(150) == 5_050 and tied.mono_at(5_050) == 150
    assert tied.uncertainty_s == 7e-9


def test_the_real_clocks_give_a_tight_anchor() -> None:
    tied = read_anchor()
    assert tied.uncertainty_ns < 10_000_000
    assert abs(tied.wall_at(time.monotonic_ns()) - time.time_ns()) < 50_000_000

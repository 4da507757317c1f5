"""Nagios threshold ranges as the Monitoring Plugins guidelines define them and check_ntp_time applies them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.ranges import Range, RangeError, magnitudes


@pytest.mark.parametrize(("text", "ok", "alert"), [
    # the guidelines' table: "10" alerts outside 0..10, "10:" below 10, "~:10" above 10, "10:20" outside,
    # "@10:20" inside
    ("10", [0, 5, 10], [-1, 10.001, 11]),
    ("10:", [10, 11, 1e9], [9.999, 0, -1]),
    ("~:10", [-1e9, 0, 10], [10.001, 11]),
    ("10:20", [10, 15, 20], [9.9, 20.1]),
    ("@10:20", [9.9, 20.1, 0], [10, 15, 20]),
    ("-1:1", [-1, 0, 1], [-1.1, 1.1]),
    ("@0:0.5", [0.51, 2], [0, 0.25, 0.5]),
    (":0.5", [0, 0.5], [0.6, -0.1]),
    (" 0.5 ", [0.5], [0.6]),
])
def test_guideline_examples(text: str, ok: list[float], alert: list[float]):
    r = Range.parse(text)
    assert [r.alerts(x) for x in ok] == [False] * len(ok)
    assert [r.alerts(x) for x in alert] == [True] * len(alert)
    assert r.text == text.strip()


@pytest.mark.parametrize(("text", "why"), [
    ("", "is not a threshold range"), ("@", "is not a threshold range"), ("abc", "'abc' is not a number"),
    ("1:x", "'x' is not a number"), ("5:1", "its start (5) is above its end (1)"), ("nan", "not a finite number"),
    ("inf", "not a finite number"), ("~", "'~' is not a number"), ("0:-inf", "not a finite number"),
])
def test_bad_ranges_say_what(text: str, why: str):
    with pytest.raises(RangeError, match=why.replace("(", r"\(").replace(")", r"\)")):
        Range.parse(text)


def test_simple_threshold_and_config_numbers():
    assert Range.parse("0.5").simple_s == 0.5 and Range.upper(0.5) == Range.parse("0.5")
    assert Range.parse("10:").simple_s is None and Range.parse("@0:1").simple_s is None
    assert Range.parse("~:1").simple_s is None
    with pytest.raises(RangeError):
        Range.upper(math.nan)


bound = st.floats(min_value=-50, max_value=50, allow_nan=False)
range_st = st.builds(
    lambda a, b, inside, lo_inf, hi_inf: Range(-math.inf if lo_inf else min(a, b), math.inf if hi_inf else max(a, b),
                                                inside, "x"),
    bound, bound, st.booleans(), st.booleans(), st.booleans(),
)


@given(range_st, bound, bound, st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=20))
def test_an_interval_alerts_iff_one_of_its_points_does(r: Range, a: float, b: float, fractions: list[float]):
    lo, hi = min(a, b), max(a, b)
    # the points where the answer can change, plus arbitrary ones
    points = [lo, hi, *(lo + f * (hi - lo) for f in fractions)]
    points += [x for x in (r.start, r.end) if lo <= x <= hi]
    pointwise = any(r.alerts(x) for x in points)
    assert r.alerts_within(lo, hi) == pointwise
    # and by magnitude, as check_ntp_time judges an offset
    m_lo, m_hi = magnitudes(lo, hi)
    assert m_lo == min(abs(x) for x in [lo, hi, *([0.0] if lo <= 0 <= hi else [])])
    assert m_hi == max(abs(lo), abs(hi))
    assert r.alerts_for_offsets(lo, hi) == r.alerts_within(m_lo, m_hi)

"""timeguard.measure.median agrees with statistics.median (which the daemon no longer imports)."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.measure.median import median


@given(st.lists(st.integers(-(10**18), 10**18), min_size=1, max_size=50))
def test_the_median_of_integers_is_the_statistics_median(values):
    assert median(values) == statistics.median(values)


@given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=50))
def test_the_median_of_floats_is_the_statistics_median(values):
    assert median(iter(values)) == statistics.median(values)


def test_examples_and_the_empty_set():
    assert median([3, 1, 2]) == 2
    assert median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError, match="empty"):
        median([])

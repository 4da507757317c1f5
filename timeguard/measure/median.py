"""The median, as :func:`statistics.median` computes it, without importing :mod:`statistics`.

``statistics`` imports ``fractions`` and ``decimal`` (the ``_decimal`` extension): ~0.6 MiB of a daemon's resident
memory that nothing else in it uses, for the one function the sources need.
"""

from __future__ import annotations

from collections.abc import Iterable


def median(values: Iterable[float]) -> float:
    """The middle value, or the mean of the two middle values of an even count; ValueError when empty."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no median of an empty set of values")
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2

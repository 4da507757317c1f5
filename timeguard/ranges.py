"""Nagios threshold ranges (the Monitoring Plugins Development Guidelines, "Threshold and ranges").

``-w``/``-c`` of ``timeguard check`` take them exactly as ``check_ntp_time`` does, and — as it does — apply them
to the *magnitude* of the offset, so ``-w 0.5`` alerts on an offset of −0.8 s as well as on +0.8 s:

=============  ==========================================
``10``         alert if |offset| < 0 or > 10 (outside 0…10)
``10:``        alert if |offset| < 10 (outside 10…∞)
``~:10``       alert if |offset| > 10 (outside −∞…10)
``10:20``      alert if |offset| < 10 or > 20
``@10:20``     alert if 10 ≤ |offset| ≤ 20 (inside)
=============  ==========================================

A verdict is an interval, not a point: :meth:`Range.alerts_within` says whether *any* offset of an interval
would alert, which is what a status must be justified by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class RangeError(ValueError):
    """A threshold that is not a Nagios range; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class Range:
    start: float  # -inf for "~"
    end: float  # +inf when nothing follows the ":"
    inside: bool  # "@": alert inside [start, end] instead of outside
    text: str  # as given (whitespace stripped): what perfdata and messages show

    @classmethod
    def parse(cls, text: str) -> Range:
        raw = text.strip()
        body = raw[1:] if raw.startswith("@") else raw
        if not body:
            raise RangeError(f"{text!r} is not a threshold range (e.g. 0.5, ~:0.5, @0:0.5, -1:1, 10:)")
        if ":" in body:
            lo_text, _, hi_text = body.partition(":")
            start = -math.inf if lo_text == "~" else _number(lo_text or "0", text)
            end = math.inf if hi_text == "" else _number(hi_text, text)
        else:
            start, end = 0.0, _number(body, text)
        if start > end:
            raise RangeError(f"threshold range {text!r}: its start ({start:g}) is above its end ({end:g})")
        return cls(start, end, raw.startswith("@"), raw)

    @classmethod
    def upper(cls, seconds: float) -> Range:
        """``N``: alert above ``seconds`` (a threshold from the configuration file)."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise RangeError(f"threshold {seconds!r} must be a finite number ≥ 0")
        return cls(0.0, float(seconds), False, f"{seconds:g}")

    @property
    def simple_s(self) -> float | None:
        """The number N when the range is the plain ``N`` (alert above N), else None."""
        return self.end if (not self.inside and self.start == 0 and math.isfinite(self.end)) else None

    def alerts(self, value: float) -> bool:
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def alerts_within(self, lo: float, hi: float) -> bool:
        """Whether some value of the closed interval ``[lo, hi]`` alerts."""
        if lo > hi:
            raise ValueError(f"empty interval [{lo}, {hi}]")
        if self.inside:
            return lo <= self.end and hi >= self.start
        return lo < self.start or hi > self.end

    def alerts_for_offsets(self, lo: float, hi: float) -> bool:
        """Whether some offset of ``[lo, hi]`` alerts, judged by its magnitude as check_ntp_time does."""
        return self.alerts_within(*magnitudes(lo, hi))


def magnitudes(lo: float, hi: float) -> tuple[float, float]:
    """``{|x| : lo ≤ x ≤ hi}`` as an interval."""
    if lo <= 0 <= hi:
        return 0.0, max(-lo, hi)
    return min(abs(lo), abs(hi)), max(abs(lo), abs(hi))


def _number(part: str, whole: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise RangeError(f"threshold range {whole!r}: {part!r} is not a number") from None
    if not math.isfinite(value):
        raise RangeError(f"threshold range {whole!r}: {part!r} is not a finite number (use ~ or leave it empty)")
    return value

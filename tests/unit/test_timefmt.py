"""One timestamp formatter (timeguard.timefmt.iso): every place that shows a UTC time spells it through it, and
none of them raises on a value a broken clock or a hostile packet can produce."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from timeguard.hooks.command import _iso as command_iso
from timeguard.measure.ntp import _iso_ns
from timeguard.repair.target import fmt_utc
from timeguard.timefmt import iso

REPRESENTABLE = st.floats(min_value=-62_135_596_800 + 86_400, max_value=253_402_300_799 - 86_400)


@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30)))
def test_no_formatter_raises_on_any_value(value):
    for text in (iso(value), fmt_utc(value), command_iso(value)):
        assert isinstance(text, str)
    if value is not None and not isinstance(value, float):
        assert isinstance(_iso_ns(value), str)


@given(REPRESENTABLE)
def test_every_spelling_is_the_same_instant(seconds):
    exact = iso(seconds, "microseconds")
    assert exact.endswith("Z")
    parsed = datetime.fromisoformat(exact.replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - datetime.fromtimestamp(seconds, UTC).timestamp()) < 1e-6
    # the command hook's variables: Python's own isoformat; the repair's reports: to the second, a space
    assert command_iso(seconds) == datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")
    if datetime.fromtimestamp(seconds, UTC).year >= 1000:  # strftime (the repair's former spelling) drops the
        assert fmt_utc(seconds) == datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")  # year's 0
    assert fmt_utc(seconds) == iso(seconds, "seconds").replace("T", " ")


def test_none_and_out_of_range():
    assert iso(None) == fmt_utc(None) == "-" and command_iso(None) == ""
    assert fmt_utc(1e20) == iso(1e20) == "100000000000000000000.000000 s since the epoch"

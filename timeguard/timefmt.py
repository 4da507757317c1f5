"""UTC timestamps for people and logs — one formatter, safe for any value a broken clock can produce."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(seconds: float | None, timespec: str = "milliseconds", *, none: str = "-", utc: str = "Z",
        sep: str = "T") -> str:
    """``2026-11-23T20:46:32.915Z``; ``none`` for None; a plain number when the value is not a representable date.
    ``utc``: how UTC is written (``"+00:00"``: Python's isoformat, as the command hook's variables have it);
    ``sep``: between date and time (``" "`` in the repair's reports)."""
    if seconds is None:
        return none
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(sep, timespec).replace("+00:00", utc)
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.6f} s since the epoch"


def fmt_duration(seconds: float) -> str:
    """``3 days``, ``5 h``, ``12 min``, ``4.2 s``: a length of time for a person (its sign dropped)."""
    s = abs(seconds)
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.0f} h"
    if s >= 120:
        return f"{s / 60:.0f} min"
    return f"{s:.1f} s"

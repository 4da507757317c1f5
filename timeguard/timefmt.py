"""UTC timestamps for people and logs — one formatter, safe for any value a broken clock can produce."""

from __future__ import annotations

from datetime import UTC, datetime


def iso(seconds: float | None, timespec: str = "milliseconds", *, none: str = "-") -> str:
    """``2026-11-23T20:46:32.915Z``; ``none`` for None; a plain number when the value is not a representable date."""
    if seconds is None:
        return none
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.6f} s since the epoch"

"""Plausibility bounds for a time a source claims, independent of the (possibly wrong) host clock.

Like systemd's TIME_EPOCH and tlsdate's RECENT_COMPILE_DATE: nothing timeguard ever sees can be earlier
than the release it runs, and a claim decades ahead is a broken or hostile source, not the time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from timeguard.timefmt import iso

#: The start of the year this release was built in; bump at every release.
EARLIEST_PLAUSIBLE_S = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
#: 20 years after the build year (systemd resets clocks more than 15 years past its build time).
LATEST_PLAUSIBLE_S = datetime(2046, 1, 1, tzinfo=UTC).timestamp()


def implausible(claimed_s: float) -> str | None:
    """Why a claimed UNIX time cannot be the real time, or None when it can."""
    if claimed_s < EARLIEST_PLAUSIBLE_S:
        return f"claims {_iso(claimed_s)}, before this release was built ({_iso(EARLIEST_PLAUSIBLE_S)})"
    if claimed_s >= LATEST_PLAUSIBLE_S:
        return f"claims {_iso(claimed_s)}, implausibly far in the future (limit {_iso(LATEST_PLAUSIBLE_S)})"
    return None


def _iso(seconds: float) -> str:
    return iso(seconds, "seconds")

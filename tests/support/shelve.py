"""celerybeat-schedule shelves for tests and benchmarks: written with celery's own classes, as beat writes them
(celery/beat.py PersistentScheduler.setup_schedule: keys entries, tz, utc_enabled, __version__)."""

from __future__ import annotations

import datetime as dt
import shelve
from collections.abc import Mapping
from pathlib import Path
from typing import Any

UTC = dt.UTC


def entry(name: str, last_run_s: float, count: int = 0, *, every_s: float = 60.0, tz: Any = UTC) -> Any:
    from celery.beat import ScheduleEntry
    from celery.schedules import schedule

    return ScheduleEntry(name, f"tasks.{name}", dt.datetime.fromtimestamp(last_run_s, tz), count,
                         schedule(dt.timedelta(seconds=every_s)))


def open_shelve(base: Path, flag: str = "c") -> shelve.Shelf[Any]:
    """The test's own shelve (its data written by the test: S301's untrusted-pickle warning does not apply)."""
    return shelve.open(str(base), flag=flag, writeback=flag != "r")  # noqa: S301


def write_shelve(base: Path, entries: Mapping[Any, Any], *, tz: str | None = "UTC",
                 utc_enabled: bool = True) -> list[Path]:
    """A shelve at ``base`` holding ``entries`` (name → ScheduleEntry or anything picklable); its files."""
    import celery

    with open_shelve(base) as db:
        db["entries"] = dict(entries)
        db["tz"] = tz
        db["utc_enabled"] = utc_enabled
        db["__version__"] = celery.__version__
    return sorted(p for p in base.parent.iterdir() if p.name.startswith(base.name + ".") or p.name == base.name)


def read_entries(base: Path) -> dict[str, Any]:
    with open_shelve(base, "r") as db:
        return dict(db["entries"])


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative name, with its bytes (a store left as it was compares equal)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}

"""The repair hook and a verdict that has not arrived yet (timeguard/repair/hook.py): a step right after start-up.

A real django-celery-beat schema on SQLite; the verdicts are what the daemon's ``_verdict_summary`` returns over
time (None before any source answered, then NTP alone, then both classes). The evidence rule is the same: waiting
changes when it is applied, never what it accepts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.dcb_schema import PREFIX, beat_database
from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookContext, HookStatus
from timeguard.repair.hook import CeleryBeatHook, verdict_pending

pytestmark = pytest.mark.real

NOW = 1_780_000_000.0
FUTURE = NOW + 180 * 86400.0
GOOD = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": True}
NTP_ONLY = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": None}
BEHIND = {"status": "CRITICAL", "offset_s": 3 * 86400.0, "offset_lo_s": 3 * 86400.0 - 0.1,
          "offset_hi_s": 3 * 86400.0 + 0.1, "ntp_http_agree": True}


@pytest.fixture
def db(tmp_path: Path) -> Any:
    with beat_database("sqlite", tmp_path) as database:
        database.add_task("interval-future", last_run_at=FUTURE, date_changed=FUTURE)
        database.set_last_update(FUTURE)
        yield database


class Verdicts:
    """The daemon's verdict as time goes on: ``steps`` = [(seconds after the start, verdict), …]."""

    def __init__(self, steps: list[tuple[float, Mapping[str, Any] | None]]) -> None:
        self.started = time.monotonic()
        self.steps = steps
        self.calls = 0

    def __call__(self) -> Mapping[str, Any] | None:
        self.calls += 1
        elapsed = time.monotonic() - self.started
        current = None
        for at, verdict in self.steps:
            if elapsed >= at:
                current = verdict
        return current


def _run(db: Any, verdicts: Verdicts, *, timeout_s: float = 5.0, cancelled: Any = None) -> Any:
    hook = CeleryBeatHook.from_config("beat", {"database_url": db.url, "beat_max_interval_s": 0,
                                               "wait_margin_s": 0})
    hook.timeout_s = timeout_s
    ev = Event(kind=EventKind.ROLLBACK, incident_id="inc", wall_time_s=NOW, monotonic_s=1.0, boot_id="b")
    ctx = HookContext(dry_run=False, trusted_now=lambda: NOW, verdict=verdicts(), hostname="h",
                      current_verdict=verdicts, cancelled=cancelled or (lambda: False))
    return hook.handle(ev, ctx)


def test_pending_is_no_verdict_or_one_class_only() -> None:
    assert verdict_pending(None) and verdict_pending(NTP_ONLY)
    assert not verdict_pending(GOOD) and not verdict_pending(BEHIND)
    assert not verdict_pending({**GOOD, "ntp_http_agree": False})


def test_the_hook_waits_for_the_first_verdict_and_repairs(db: Any) -> None:
    result = _run(db, Verdicts([(0.0, None), (0.3, NTP_ONLY), (0.6, GOOD)]))
    assert result.status is HookStatus.CHANGED, result.summary
    assert 0.5 <= result.details["waited_for_verdict_s"] < 2.0, result.details
    assert db.sql(f"SELECT count(*) FROM {PREFIX}periodictask WHERE last_run_at > :t",  # noqa: S608
                  {"t": db.stamp(NOW + 600)})[0][0] == 0


def test_a_verdict_that_arrives_refusing_is_final(db: Any) -> None:
    result = _run(db, Verdicts([(0.0, None), (0.3, BEHIND)]))
    assert result.status is HookStatus.SKIPPED and "behind the sources" in result.summary, result.summary
    assert "waited" in result.summary


def test_no_verdict_within_timeout_is_skipped_and_says_how_long_it_waited(db: Any) -> None:
    started = time.monotonic()
    result = _run(db, Verdicts([(0.0, NTP_ONLY)]), timeout_s=0.5)
    took = time.monotonic() - started
    assert result.status is HookStatus.SKIPPED, result.summary
    assert "did not both answer" in result.summary and "waited 0.5 s" in result.summary, result.summary
    assert 0.5 <= took < 3.0


def test_a_refusing_verdict_at_once_does_not_wait(db: Any) -> None:
    verdicts = Verdicts([(0.0, BEHIND)])
    result = _run(db, verdicts, timeout_s=30)
    assert result.status is HookStatus.SKIPPED and "waited" not in result.summary
    assert verdicts.calls == 1  # the context's own verdict only


def test_stopping_ends_the_wait(db: Any) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    result = _run(db, Verdicts([(0.0, None)]), timeout_s=30, cancelled=stop.is_set)
    assert result.status is HookStatus.SKIPPED and time.monotonic() - started < 3

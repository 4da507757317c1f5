"""The daemon's periodic jobs (cross-checks, audits, journal upkeep) on APScheduler, safe across clock steps.

APScheduler computes its sleeps from the wall clock, so a 180-day rollback would stall it for 180 days
(research/harness.md §1d): every job runs on a :func:`steady_interval`, and after every detected step the agent
re-arms every job from the new "now" (:meth:`Jobs.rearm`), which also runs them at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any


def steady_interval(seconds: float) -> Any:
    """An APScheduler trigger with a fixed period that survives wall-clock jumps.

    APScheduler's IntervalTrigger, after a forward jump, makes the scheduler enumerate every missed fire time
    (180 days at 15 s is ~1 million datetimes, seconds of CPU under the job-store lock); after a backward jump it
    waits for the wall clock to catch up. This one resumes the period from "now" in both cases, and fires at
    once when (re)scheduled.
    """
    from apscheduler.triggers.base import BaseTrigger

    period = timedelta(seconds=seconds)

    class SteadyInterval(BaseTrigger):
        __slots__ = ()

        def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
            if previous_fire_time is None:
                return now
            following = previous_fire_time + period
            if following <= now or following > now + period:  # jumped forward / backward: restart from now
                return now + period
            return following

        def __str__(self) -> str:
            return f"steady interval[{period}]"

    return SteadyInterval()


class Jobs:
    """Jobs by id, each with a period asked anew at every (re)arm (a reload may change it); each runs at once
    when added or re-armed, never twice at the same time, and a missed run is run once, late."""

    def __init__(self, log: Any) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._log = log
        self._periods: dict[str, Callable[[], float]] = {}
        self._scheduler = BackgroundScheduler(
            timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )

    def add(self, job_id: str, func: Callable[..., None], period_s: Callable[[], float], *args: Any,
            failed: str, **context: Any) -> None:
        """``func(*args)`` every ``period_s()``; an exception is logged as ``failed`` (with ``context``) and the
        next run comes on schedule."""

        def run() -> None:
            try:
                func(*args)
            except Exception:  # noqa: BLE001 - logged; the next run comes on schedule
                self._log.exception(failed, **context)

        self._periods[job_id] = period_s
        self._scheduler.add_job(run, steady_interval(period_s()), id=job_id, next_run_time=datetime.now(UTC))

    def start(self) -> None:
        self._scheduler.start()

    def rearm(self, reason: str) -> None:
        """A fresh trigger from the new "now" for every job: they run at once and keep their period. Done in a
        thread of its own: APScheduler's job-store lock must never delay the caller (the detection loop)."""

        def rearm() -> None:
            for job_id, period_s in self._periods.items():
                self._scheduler.reschedule_job(job_id, trigger=steady_interval(period_s()))
            self._log.info("jobs_rearmed", reason=reason)

        threading.Thread(target=rearm, name="rearm-jobs", daemon=True).start()

    def close(self) -> None:
        self._scheduler.shutdown(wait=False)


def journal_upkeep(journal: Any, daemon: Any, *, trusted_now_s: float | None, stop: Callable[[], bool],
                   log: Any) -> bool:
    """The journal's periodic upkeep; False when it found the journal damaged (a journal error to count).

    First ``PRAGMA quick_check`` (0.2 s for 100,000 events): damage that appeared while running is logged at error
    every pass (the file is salvaged at the next start; detection goes on, refused writes are kept in memory). Then
    retention (daemon.events_retention_days, events_max) in small batches: the detection loop's writes wait for one
    batch at most. The age rule needs a trusted time: while there is none, only the count rule applies (a clock
    far ahead must not empty the journal)."""
    from timeguard.store.journal import JournalError

    try:
        problems = journal.integrity_problems()
        if problems:
            log.error("journal_damaged", error="; ".join(problems), path=str(journal.path),
                      note="salvaged into a new journal at the next start; `timeguard status` shows it")
            return False
        removed = journal.prune_events(max_events=daemon.events_max, retention_s=daemon.events_retention_days * 86400,
                                       now_s=trusted_now_s, pause_s=0.05, stop=stop)
    except JournalError as exc:
        log.error("journal_prune_failed", error=str(exc))
        return True
    if removed:
        log.info("journal_pruned", events=removed)
    return True

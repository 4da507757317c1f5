"""The script the APScheduler target runs in the APPLICATION's interpreter (through :mod:`timeguard.repair.apprun`).

A job's ``job_state`` is ``pickle.dumps(Job.__getstate__())`` (APScheduler 3.11: apscheduler/jobstores/sqlalchemy.py
``update_job`` :127, redis.py ``update_job`` :92, job.py ``__getstate__`` :260): its trigger, and the application's
own objects in ``args``/``kwargs``. Unpickling it imports and runs the application's classes (``__reduce__``,
``__setstate__``): code execution, in timeguard's process with its secrets, and the classes timeguard would find
are not the application's (other versions, or none). So only the application's interpreter — the same APScheduler
the scheduler runs, the same code — unpickles, decides and re-pickles; timeguard moves bytes.

Input: a file of JSON lines (its path in ``args["jobs_file"]``: a store of any size, not limited by argv, written
and read a line at a time): ``{"now": epoch_s, "tolerance_s": s, "rewrite": bool, "list_max": n or null}``, then one
``[id, column_epoch_s, base64 job_state]`` per job.
Answer: ``changes`` (how many) and ``jobs`` — ``[id, verdict, name, column, new_epoch_s, why, base64 new job_state
or null]`` per job that is not kept, verdict one of ``change`` (its next_run_time lies beyond what its trigger allows
from now; only the first ``list_max`` listed when given: a plan lists the first ones and counts them all),
``note`` (left as it is on purpose, with why) and ``unreadable`` (does not unpickle, or is not an APScheduler 3 job
state).

The rule per trigger (research/celery_beat.md §4, "Repair specification" §4):

* ``IntervalTrigger``: a stored time more than one interval (+ tolerance) ahead is poisoned. The new next run is
  now (the job runs once at once, then every interval after it: ``get_next_fire_time(previous, now)`` is
  previous + interval, triggers/interval.py :75-77). Its ``start_date`` defaults to creation + interval, so a
  trigger made during the false period holds a future ``start_date`` too: ``get_next_fire_time(None, now)``
  (:78-79) — what ``resume_job`` and ``reschedule_job`` call, schedulers/base.py :635, :606 — would return it
  again. A ``start_date`` beyond the tolerance is set
  to now as well.
* ``DateTrigger`` (a one-off): left as it is and reported. Its run date may be one the application chose on
  purpose ("in 30 days"); running it early is worse than a person deciding.
* any other trigger (``CronTrigger``, ``CalendarIntervalTrigger``, combinations, the application's own):
  ``trigger.get_next_fire_time(None, now)`` — for cron the first fire time from ``max(now, start_date)``; a stored
  time beyond it (+ tolerance) is poisoned and replaced by it; no further fire time → reported, left.

A job whose stored time is now or past (the screen reads those too) but whose pickled time lies beyond the
tolerance was brought back by a column-only edit (``UPDATE … SET next_run_time``, a ``ZADD``): the scheduler
finds it due, ``_get_run_times`` on the pickled time yields nothing, and it spins (research §4). It is repaired by
the same rule, both written. Any other disagreement between the two is reported and left.

The stored ``next_run_time`` keeps its time zone (the scheduler's); the new state is pickled with the highest
protocol, as the job stores do by default.
"""

from __future__ import annotations

SCRIPT = r'''
import base64, pickle
from datetime import datetime, timedelta, timezone
try:
    lines = open(args["jobs_file"], encoding="utf-8")
    batch = json.loads(lines.readline())
except Exception:
    failed("jobs_file")
try:
    from apscheduler.triggers.date import DateTrigger
    from apscheduler.triggers.interval import IntervalTrigger
except Exception:
    failed("no_apscheduler")
now = datetime.fromtimestamp(batch["now"], timezone.utc)
tol = timedelta(seconds=batch["tolerance_s"])
rewrite = batch["rewrite"]

def last_line(exc):
    text = "%s: %s" % (type(exc).__name__, exc)
    return text.strip().splitlines()[-1][:200] if text.strip() else type(exc).__name__

def one(job_id, column, raw):
    try:
        state = pickle.loads(base64.b64decode(raw))
    except Exception as exc:
        return [job_id, "unreadable", job_id, None, "does not unpickle in the application's interpreter: "
                + last_line(exc), None]
    if not isinstance(state, dict) or "trigger" not in state or "next_run_time" not in state:
        return [job_id, "unreadable", job_id, None, "not an APScheduler 3 job state (%s)" % type(state).__name__,
                None]
    name = str(state.get("name") or "")
    name = job_id if name in ("", job_id) else "%s (%s)" % (job_id, name)  # the name is often the function's
    trigger, stored = state["trigger"], state["next_run_time"]
    if not isinstance(stored, datetime) or stored.tzinfo is None:
        return [job_id, "unreadable", name, None, "its pickled next_run_time is %r, not an aware datetime"
                % (stored,), None]
    edited = ""
    if abs(stored.timestamp() - column) > 0.001:
        shown = datetime.fromtimestamp(column, timezone.utc).isoformat()
        if column > stored.timestamp() or stored <= now + tol:
            return [job_id, "note", name, None, "the stored next run (%s) and the one in its pickled state (%s) "
                    "disagree: left as it is" % (shown, stored.isoformat()), None]
        # The column brought back by hand, the pickled time still in the future: the scheduler finds the job due
        # and runs nothing (research §4: it spins). Repaired like a poisoned job, both written.
        edited = "stored next run %s but %s in its pickled state (a column-only edit: the scheduler spins); " % (
            shown, stored.isoformat())
    if stored <= now + tol:
        return [job_id, "keep", name, None, "due, or not beyond the tolerance", None]
    fresh_start = False
    if isinstance(trigger, DateTrigger):
        return [job_id, "note", name, None, "a one-off job (date trigger) due %s: its run date may be the "
                "application's choice, so it is left as it is" % stored.isoformat(), None]
    try:
        if isinstance(trigger, IntervalTrigger):
            if stored <= now + trigger.interval + tol:
                return [job_id, "keep", name, None, "within one interval of now", None]
            new = now
            fresh_start = trigger.start_date is not None and trigger.start_date > now + tol
            why = "more than one interval (%s) ahead: due now, then every interval" % trigger.interval
        else:
            new = trigger.get_next_fire_time(None, now)
            if new is None:
                return [job_id, "note", name, None, "its trigger (%s) fires no more from now: left as it is"
                        % trigger, None]
            if stored <= new + tol:
                return [job_id, "keep", name, None, "agrees with its trigger", None]
            why = "its trigger (%s) next fires %s" % (trigger, new.isoformat())
    except Exception as exc:
        return [job_id, "unreadable", name, None, "its trigger fails: " + last_line(exc), None]
    new = new.astimezone(stored.tzinfo)
    why = edited + why
    blob = None
    if rewrite:
        if fresh_start:
            trigger.start_date = now.astimezone(trigger.timezone)
            why += "; its start_date (from the false period) set to now"
        state["next_run_time"] = new
        try:
            blob = base64.b64encode(pickle.dumps(state, pickle.HIGHEST_PROTOCOL)).decode("ascii")
        except Exception as exc:
            return [job_id, "unreadable", name, None, "does not pickle again: " + last_line(exc), None]
    return [job_id, "change", name, new.timestamp(), why, blob]

listed, changes, limit = [], 0, batch.get("list_max")
for line in lines:
    if not line.strip():
        continue
    job = json.loads(line)
    row = one(*job)
    if row[1] == "keep":
        continue
    if row[1] == "change":
        changes += 1
        if limit is not None and changes > limit:
            continue
    listed.append(row[:3] + [job[1]] + row[3:])
answer(changes=changes, jobs=listed)
'''

"""Small commands the test harness runs in a subprocess (``python -m beatproject.tools CMD``), printing JSON.

* ``create-tasks``: the seed schedule: ``every-1s``, ``every-2s`` (interval), ``every-minute`` (crontab ``*``)
  and ``clocked-once`` (a one-off clocked task at ``TG_BEAT_CLOCKED_AT``, ISO, default now + 1 day).
* ``state``: every periodic task's ``last_run_at``, ``date_changed``, ``enabled``, ``total_run_count`` and
  ``periodictasks.last_update``, as read through the ORM (aware UTC ISO strings).
* ``naive-repair POLL_S``: the naive-script peer of benchmarks/bench_beat_resume.py — what one writes by hand
  after reading about the bug, trusting the local clock. Started ahead (Django imported), it waits for a line on
  stdin, then: ``last_run_at := now`` for every task in the future, ``last_update := stored value + 1 ms`` (past
  what beat last read, so it reloads at its next poll), and after POLL_S the same again (beat's reload may have
  written back what it held from the false period). Prints what it did.
"""

import datetime as dt
import json
import os
import sys

import django


def _iso(value: dt.datetime | None, column: str = "date_changed") -> str | None:
    """Aware UTC ISO. Under USE_TZ=False the ORM returns naive values in the conventions of research §1.8:
    ``last_run_at`` naive UTC (DJANGO_CELERY_BEAT_TZ_AWARE=False: beat's utcnow()), the rest naive TIME_ZONE."""
    if value is None:
        return None
    if value.tzinfo is None:
        from zoneinfo import ZoneInfo

        from django.conf import settings

        value = value.replace(tzinfo=dt.UTC if column == "last_run_at" else ZoneInfo(settings.TIME_ZONE))
    return value.astimezone(dt.UTC).isoformat()


def create_tasks() -> dict[str, object]:
    from django.conf import settings
    from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

    every1, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    every2, _ = IntervalSchedule.objects.get_or_create(every=2, period=IntervalSchedule.SECONDS)
    cron, _ = CrontabSchedule.objects.get_or_create(
        minute="*", hour="*", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    clocked_at = os.environ.get("TG_BEAT_CLOCKED_AT")
    when = (dt.datetime.fromisoformat(clocked_at) if clocked_at
            else dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    if not settings.USE_TZ:  # a naive project stores naive local times
        from zoneinfo import ZoneInfo

        when = when.astimezone(ZoneInfo(settings.TIME_ZONE)).replace(tzinfo=None)
    clocked = ClockedSchedule.objects.create(clocked_time=when)
    specs = [
        ("every-1s", "beatproject.tasks.tick", {"interval": every1}, '["1s"]', False),
        ("every-2s", "beatproject.tasks.tick", {"interval": every2}, '["2s"]', False),
        ("every-minute", "beatproject.tasks.minute", {"crontab": cron}, "[]", False),
        ("clocked-once", "beatproject.tasks.once", {"clocked": clocked}, "[]", True),
    ]
    for name, task, schedule, args, one_off in specs:
        PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "args": args, "one_off": one_off, "enabled": True, **schedule}
        )
    return {"created": [s[0] for s in specs], "clocked_at": _iso(when)}


def state() -> dict[str, object]:
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    tasks = {
        t.name: {
            "task": t.task,
            "enabled": t.enabled,
            "last_run_at": _iso(t.last_run_at, "last_run_at"),
            "date_changed": _iso(t.date_changed),
            "total_run_count": t.total_run_count,
            "one_off": t.one_off,
        }
        for t in PeriodicTask.objects.order_by("name")
    }
    row = PeriodicTasks.objects.filter(ident=1).first()
    return {"tasks": tasks, "last_update": _iso(row.last_update) if row else None}


def naive_repair() -> dict[str, object]:
    import time

    from django.utils import timezone
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    poll_s = float(sys.argv[2])
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    rounds = []
    for _ in range(2):
        now = timezone.now()
        changed = PeriodicTask.objects.filter(last_run_at__gt=now).update(last_run_at=now)
        stored = PeriodicTasks.last_change()
        bumped = max(now, stored + dt.timedelta(milliseconds=1)) if stored else now
        PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": bumped})
        rounds.append({"tasks": changed, "last_update": _iso(bumped)})
        time.sleep(poll_s)
    return {"rounds": rounds}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beatproject.settings")
    django.setup()
    commands = {"create-tasks": create_tasks, "state": state, "naive-repair": naive_repair}
    print(json.dumps(commands[sys.argv[1]]()), flush=True)


if __name__ == "__main__":
    main()

"""The command-line reader of ``timeguard discover`` over classes of input: every spelling of a beat celery accepts
(click: ``-S x``, ``-Sx``, ``--scheduler=x``, clustered flags), the embedded beat, the older forms, quoting, values
that are missing or not numbers, and garbage — which is never a beat and never an exception."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.host.argv import DATABASE, OTHER, REDBEAT, SHELVE, parse, scheduler_kind

VENV = "/srv/app/.venv/bin"


@pytest.mark.parametrize(("line", "form", "interpreter", "script"), [
    # the celery script, run through its shebang (the kernel puts the interpreter first)
    (f"{VENV}/python {VENV}/celery -A proj beat", "celery beat", f"{VENV}/python", f"{VENV}/celery"),
    # the script exec'ed directly (a frozen or wrapper celery: no interpreter in argv)
    ("celery -A proj beat", "celery beat", None, "celery"),
    (f"{VENV}/python3.11 -m celery -A proj beat", "celery beat", f"{VENV}/python3.11", None),
    (f"{VENV}/python -u -W ignore -X dev -mcelery -A proj beat", "celery beat", f"{VENV}/python", None),
    ("python3 -m celery.__main__ --app proj beat", "celery beat", "python3", None),
    ("/usr/bin/pypy3 -m celery -A proj beat", "celery beat", "/usr/bin/pypy3", None),
    (f"{VENV}/python {VENV}/celery -A proj worker -B -l info", "celery worker -B", f"{VENV}/python",
     f"{VENV}/celery"),
    ("celery -A proj worker --beat", "celery worker -B", None, "celery"),
    ("celery -A proj worker -EB -l info", "celery worker -B", None, "celery"),  # clustered short flags
    ("python manage.py celery beat", "manage.py celery beat", "python", "manage.py"),
    ("python /srv/app/manage.py celerybeat", "manage.py celerybeat", "python", "/srv/app/manage.py"),
    ("/usr/bin/python /usr/bin/celerybeat -f /var/log/beat.log", "celerybeat", "/usr/bin/python",
     "/usr/bin/celerybeat"),
    # setproctitle rewrote the title into one string
    ("[celery beat] -A proj beat -S django", "celery beat", None, None),
])
def test_every_spelling_of_a_beat_is_found(line, form, interpreter, script):
    argv = [line] if line.startswith("[") else shlex.split(line)
    command = parse(argv)
    assert command is not None, line
    assert (command.form, command.interpreter, command.script) == (form, interpreter, script)
    assert command.problems == ()


@pytest.mark.parametrize("line", [
    "celery -A proj worker -l info",  # a worker without the embedded beat
    "celery -A proj worker -Q beat",  # "beat" as the value of another option
    "celery -A proj worker -n beat@host",
    "celery -A beat flower",
    "celery -A proj inspect ping",
    "celery",
    "python -c 'import celery; celery beat'",
    "python -m http.server",
    "python /srv/app/manage.py runserver",
    "/usr/sbin/cron -f",
    "beat",
    "bash -c 'celery -A proj beat'",  # a shell that will run it: the beat is its child, found on its own
])
def test_what_runs_no_beat_is_not_one(line):
    assert parse(shlex.split(line)) is None


@pytest.mark.parametrize(("args", "scheduler", "kind"), [
    ("-S django", "django", DATABASE),
    ("-Sdjango", "django", DATABASE),
    ("--scheduler django_celery_beat.schedulers:DatabaseScheduler", "django_celery_beat.schedulers:DatabaseScheduler",
     DATABASE),
    ("--scheduler=django_celery_beat.schedulers.DatabaseScheduler",
     "django_celery_beat.schedulers.DatabaseScheduler", DATABASE),
    ("-S celery.beat:PersistentScheduler", "celery.beat:PersistentScheduler", SHELVE),
    ("-S redbeat.RedBeatScheduler", "redbeat.RedBeatScheduler", REDBEAT),
    ("-S redbeat.schedulers:RedBeatScheduler", "redbeat.schedulers:RedBeatScheduler", REDBEAT),
    ("-S myproj.sched:LockedScheduler", "myproj.sched:LockedScheduler", OTHER),
    ("-S django -S redbeat.RedBeatScheduler", "redbeat.RedBeatScheduler", REDBEAT),  # click: the last one wins
    ("", None, None),
])
def test_the_scheduler_in_each_spelling(args, scheduler, kind):
    command = parse(shlex.split(f"celery -A proj beat -l info {args}"))
    assert command is not None
    assert command.scheduler == scheduler
    assert scheduler_kind(command.scheduler) == kind


def test_the_embedded_beat_takes_the_worker_spellings():
    command = parse(shlex.split("celery -A proj worker -B -S /var/lib/worker.state --scheduler django "
                                "-s /var/lib/beat-schedule"))
    assert command is not None
    # a worker's -S is its --statedb, not the scheduler
    assert (command.scheduler, command.schedule_file) == ("django", "/var/lib/beat-schedule")
    command = parse(shlex.split("celery -A proj worker -B --schedule-filename=/tmp/s"))
    assert command is not None and command.schedule_file == "/tmp/s"


@pytest.mark.parametrize(("args", "seconds"), [
    ("--max-interval 1", 1.0), ("--max-interval=1", 1.0), ("--max-interval 0.5", 0.5), ("--max-interval=30", 30.0),
    ("", None),
])
def test_max_interval(args, seconds):
    command = parse(shlex.split(f"celery -A proj beat -S django {args}"))
    assert command is not None and command.max_interval_s == seconds and command.problems == ()


@pytest.mark.parametrize(("args", "problem"), [
    ("--max-interval", "--max-interval has no value"),
    ("--max-interval abc", "--max-interval 'abc' is not a number"),
    ("--max-interval=", "--max-interval '' is not a number"),
    ("--max-interval -5", "--max-interval '-5' is not a positive number of seconds"),
    ("--max-interval nan", "--max-interval 'nan' is not a positive number of seconds"),
    ("--max-interval inf", "--max-interval 'inf' is not a positive number of seconds"),
    ("-S", "-S has no value"),
])
def test_a_missing_or_bad_value_is_a_problem_not_an_error(args, problem):
    command = parse(shlex.split(f"celery -A proj beat {args}"))
    assert command is not None and command.form == "celery beat"
    assert command.problems == (problem,)
    assert command.max_interval_s is None


def test_app_workdir_broker_and_schedule_in_every_spelling():
    for line in ("celery -A proj --workdir /srv/app -b redis://h/0 beat -s /var/lib/s",
                 "celery --app=proj --workdir=/srv/app --broker=redis://h/0 beat --schedule=/var/lib/s",
                 "celery -Aproj --workdir /srv/app -bredis://h/0 beat -s/var/lib/s",
                 "celery -q -C --skip-checks -A proj --workdir /srv/app -b redis://h/0 beat -s /var/lib/s"):
        command = parse(shlex.split(line))
        assert command is not None, line
        assert (command.app, command.workdir, command.broker, command.schedule_file) == (
            "proj", "/srv/app", "redis://h/0", "/var/lib/s"), line


def test_quoted_values_with_spaces_stay_one_value():
    command = parse(shlex.split("celery -A 'my proj.app:app' beat -s '/var/lib/my beat/schedule'"))
    assert command is not None
    assert (command.app, command.schedule_file) == ("my proj.app:app", "/var/lib/my beat/schedule")


def test_options_after_the_double_dash_are_configuration_not_options():
    command = parse(shlex.split("celery -A proj beat -- -S django"))
    assert command is not None and command.scheduler is None


@given(st.lists(st.text(max_size=30), max_size=12))
def test_garbage_never_raises(argv):
    command = parse(argv)
    assert command is None or command.form


@given(st.lists(st.sampled_from(["-S", "-s", "--max-interval", "--max-interval=", "-A", "-B", "beat", "worker",
                                 "--", "=", "x", "1", "-", "--scheduler", "-BS", "celery"]), max_size=10))
def test_any_mix_of_option_tokens_after_celery_never_raises(tokens):
    command = parse(["celery", *tokens])
    assert command is None or command.form in ("celery beat", "celery worker -B")

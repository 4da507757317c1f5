"""A process's command line → the ``celery beat`` it runs, if any (pure: no /proc, no I/O).

The spellings understood, as celery 5's click parser reads them (``celery/bin/celery.py``, ``bin/beat.py``,
``bin/worker.py``, ``bin/base.py``):

* ``celery -A proj beat [-S SCHED] [-s FILE] [--max-interval N]`` — through the ``celery`` script (its shebang
  interpreter is argv[0]), ``python -m celery …`` or a ``celery`` executable run directly;
* ``celery -A proj worker -B`` — a worker with the beat embedded (``--scheduler``, ``-s/--schedule-filename``);
* the older forms ``celerybeat …`` (celery 3), ``manage.py celery beat …`` and ``manage.py celerybeat …``
  (django-celery);
* a title rewritten by setproctitle: ``[celery beat] -A proj beat …`` (celery/apps/beat.py set_process_title).

Option values are read in every form click accepts: ``-S x``, ``-Sx``, ``--scheduler x``, ``--scheduler=x``,
clustered short flags (``-BE``). A value that is missing or not a number is a ``problem``, never an exception.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

#: Which scheduler a name given to -S / --scheduler / beat_scheduler means (celery resolves it with
#: symbol_by_name, ``module:Class`` or ``module.Class``; ``django`` is django-celery-beat's entry point in
#: ``celery.beat_schedulers``).
DATABASE = "django_celery_beat.DatabaseScheduler"
SHELVE = "celery.PersistentScheduler"
REDBEAT = "redbeat.RedBeatScheduler"
OTHER = "other"
UNKNOWN = "unknown"  # not on the command line, and the environment and files that would say were unreadable

_SCHEDULERS = {
    "django": DATABASE,
    "django_celery_beat.schedulers:DatabaseScheduler": DATABASE,
    "django_celery_beat.schedulers.DatabaseScheduler": DATABASE,
    "celery.beat:PersistentScheduler": SHELVE,
    "celery.beat.PersistentScheduler": SHELVE,
    "redbeat.RedBeatScheduler": REDBEAT,
    "redbeat:RedBeatScheduler": REDBEAT,
    "redbeat.schedulers:RedBeatScheduler": REDBEAT,
    "redbeat.schedulers.RedBeatScheduler": REDBEAT,
}

#: celery's global options (before the subcommand) that take a value; the rest are flags.
_GLOBAL_VALUE = {"-A": "app", "--app": "app", "-b": "broker", "--broker": "broker", "--result-backend": None,
                 "--loader": None, "--config": None, "--workdir": "workdir"}
_GLOBAL_FLAGS = {"-C", "--no-color", "-q", "--quiet", "--version", "--skip-checks"}
#: The daemon options every celery subcommand has (bin/base.py DaemonOption).
_DAEMON_VALUE = {"-f": None, "--logfile": None, "--pidfile": None, "--uid": None, "--gid": None, "--umask": None,
                 "--executable": None}
_BEAT_VALUE = {**_DAEMON_VALUE, "-s": "schedule", "--schedule": "schedule", "-S": "scheduler",
               "--scheduler": "scheduler", "--max-interval": "max_interval", "-n": None, "--hostname": None,
               "-l": None, "--loglevel": None,
               # celery 3 / django-celery spellings of the same options
               "--schedule-filename": "schedule", "--max_interval": "max_interval", "-A": "app", "--app": "app",
               "--workdir": "workdir", "-b": "broker", "--broker": "broker"}
_BEAT_FLAGS = {"--detach", "--enable-remote-control", "--no-enable-remote-control", "-D", "-q", "--quiet"}
_WORKER_VALUE = {**_DAEMON_VALUE, "-n": None, "--hostname": None, "-S": None, "--statedb": None, "-l": None,
                 "--loglevel": None, "-O": None, "--optimization": None, "--prefetch-multiplier": None,
                 "-c": None, "--concurrency": None, "-P": None, "--pool": None, "--time-limit": None,
                 "--soft-time-limit": None, "--max-tasks-per-child": None, "--pool-start-method": None,
                 "--max-memory-per-child": None, "-Q": None, "--queues": None, "-X": None, "--exclude-queues": None,
                 "-I": None, "--include": None, "--heartbeat-interval": None, "--autoscale": None,
                 "-s": "schedule", "--schedule-filename": "schedule", "--schedule": "schedule",
                 "--scheduler": "scheduler", "-A": "app", "--app": "app", "--workdir": "workdir",
                 "-b": "broker", "--broker": "broker"}
_WORKER_FLAGS = {"-D", "--detach", "--disable-prefetch", "-E", "--task-events", "--events", "--purge", "--discard",
                 "--without-gossip", "--without-mingle", "--without-heartbeat", "-B", "--beat"}
#: Python's own options that take a value (``python -W error -m celery``); ``-c`` and ``-m`` end them.
_PYTHON_VALUE = {"-W", "-X", "--check-hash-based-pycs"}
_PYTHON_RE = re.compile(r"^(python|pypy)[0-9.]*[a-z]?(-dbg)?$")


@dataclass(frozen=True, slots=True)
class BeatCommand:
    """What one command line says about the beat it runs."""

    form: str  # "celery beat", "celery worker -B", "celerybeat", "manage.py celery beat", "manage.py celerybeat"
    interpreter: str | None = None  # argv[0] when it is a Python (the celery script's shebang), as written
    script: str | None = None  # the celery script or manage.py as written (relative to the process's cwd)
    app: str | None = None  # -A / --app
    scheduler: str | None = None  # -S / --scheduler, as written
    schedule_file: str | None = None  # -s / --schedule
    max_interval_s: float | None = None  # --max-interval
    workdir: str | None = None  # --workdir (celery chdirs there before anything else)
    broker: str | None = None  # -b / --broker
    problems: tuple[str, ...] = field(default=())  # values that are missing or not numbers


def scheduler_kind(name: str | None) -> str | None:
    """DATABASE, SHELVE, REDBEAT or OTHER for a scheduler name as celery accepts it; None for no name."""
    if name is None:
        return None
    return _SCHEDULERS.get(name.strip(), OTHER)


def parse(cmdline: list[str]) -> BeatCommand | None:
    """The beat a command line runs, or None when it runs none (not celery, a worker without -B, another
    subcommand, garbage)."""
    argv = [a for a in cmdline if isinstance(a, str)]
    if len(argv) == 1 and " " in argv[0]:
        argv = argv[0].split()  # a title set by setproctitle is one string: "[celery beat] -A proj beat …"
    if not argv:
        return None
    if argv[:2] == ["[celery", "beat]"]:
        return _celery(argv[2:], interpreter=None, script=None, prefix="celery")
    interpreter, rest = skip_python(argv)
    if not rest:
        return None
    program, args = rest[0], rest[1:]
    name = os.path.basename(program)
    if program == "-m":
        if not args or args[0] not in ("celery", "celery.__main__"):
            return None
        return _celery(args[1:], interpreter=interpreter, script=None, prefix="celery")
    if name == "celery":
        return _celery(args, interpreter=interpreter, script=program, prefix="celery")
    if name == "celerybeat":
        return _options("celerybeat", args, _BEAT_VALUE, _BEAT_FLAGS, interpreter=interpreter, script=program)
    if name in ("manage.py", "django-admin", "django-admin.py"):
        if args[:1] == ["celerybeat"]:
            return _options("manage.py celerybeat", args[1:], _BEAT_VALUE, _BEAT_FLAGS, interpreter=interpreter,
                            script=program)
        if args[:1] == ["celery"]:
            return _celery(args[1:], interpreter=interpreter, script=program, prefix="manage.py celery")
    return None


def is_python(path: str) -> bool:
    """Whether a program's name is a Python interpreter's (python3, python3.11, pypy3, python3-dbg)."""
    return bool(_PYTHON_RE.match(os.path.basename(path)))


def skip_python(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the interpreter if argv[0] is one, what follows its own options: ``-m``+module or the script)."""
    if not is_python(argv[0]):
        return None, argv
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-m":
            return argv[0], argv[i:]
        if arg.startswith("-m") and len(arg) > 2:  # -mcelery
            return argv[0], ["-m", arg[2:], *argv[i + 1:]]
        if arg == "-c" or arg.startswith("-c") or arg == "-":
            return argv[0], []  # code on the command line: not a celery we can read
        if arg in _PYTHON_VALUE:
            i += 2
            continue
        if arg.startswith("-") and arg != "--":
            i += 1
            continue
        if arg == "--":
            i += 1
        return argv[0], argv[i:]
    return argv[0], []


def _celery(args: list[str], *, interpreter: str | None, script: str | None, prefix: str) -> BeatCommand | None:
    """``celery [global options] SUBCOMMAND [options]``: a beat for ``beat``, or ``worker`` with -B."""
    found = _Found()
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg == "-":
            sub = args[i + 1:]
            if arg == "beat":
                return _options(f"{prefix} beat", sub, _BEAT_VALUE, _BEAT_FLAGS, interpreter=interpreter,
                                script=script, found=found)
            if arg == "worker":
                command = _options(f"{prefix} worker -B", sub, _WORKER_VALUE, _WORKER_FLAGS,
                                   interpreter=interpreter, script=script, found=found)
                return command if command.form.endswith("-B") else None
            return None
        i = found.read(args, i, _GLOBAL_VALUE, _GLOBAL_FLAGS)
    return None


def _options(form: str, args: list[str], values: dict[str, str | None], flags: set[str], *,
             interpreter: str | None, script: str | None, found: _Found | None = None) -> BeatCommand:
    reader = _Found(found.values, found.problems) if found is not None else _Found()
    i = 0
    while i < len(args):
        if args[i] == "--":
            break  # what follows is configuration (key=value), not options
        i = reader.read(args, i, values, flags)
    found_values, problems = reader.values, reader.problems
    if form.endswith("worker -B") and "beat" not in found_values:
        return BeatCommand(form=form.removesuffix(" -B"))  # a plain worker: the caller drops it
    max_interval: float | None = None
    if "max_interval" in found_values:
        text = found_values["max_interval"]
        try:
            max_interval = float(text)
        except ValueError:
            problems.append(f"--max-interval {text!r} is not a number")
        else:
            if not 0 < max_interval < float("inf"):
                problems.append(f"--max-interval {text!r} is not a positive number of seconds")
                max_interval = None
    return BeatCommand(form=form, interpreter=interpreter, script=script, app=found_values.get("app"),
                       scheduler=found_values.get("scheduler"), schedule_file=found_values.get("schedule"),
                       max_interval_s=max_interval, workdir=found_values.get("workdir"),
                       broker=found_values.get("broker"), problems=tuple(problems))


class _Found:
    """The option values kept while reading one command line, and what was wrong with it."""

    def __init__(self, found: dict[str, str] | None = None, problems: list[str] | None = None) -> None:
        self.values = dict(found or {})
        self.problems = list(problems or [])

    def read(self, args: list[str], i: int, values: dict[str, str | None], flags: set[str]) -> int:
        """Read the option at ``args[i]`` (its value kept when it is one we want); the next index."""
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name == "--beat" and name in flags:
                self.values["beat"] = "1"
            if name in values:
                if eq:
                    self._keep(values[name], value)
                    return i + 1
                return self._take(args, i, name, values[name])
            return i + 1  # a flag, or an option we do not know: its value (if any) is read as a positional
        if arg.startswith("-") and len(arg) > 1:
            # -S x, -Sx, and clustered short flags ending in a value option: -BS x, -BSx
            for j in range(1, len(arg)):
                name = f"-{arg[j]}"
                if name in values:
                    if j + 1 < len(arg):
                        self._keep(values[name], arg[j + 1:].removeprefix("="))
                        return i + 1
                    return self._take(args, i, name, values[name])
                if name not in flags:
                    return i + 1  # not one of ours: skip the token
                if name == "-B":
                    self.values["beat"] = "1"
        return i + 1

    def _take(self, args: list[str], i: int, name: str, key: str | None) -> int:
        if i + 1 >= len(args):
            self.problems.append(f"{name} has no value")
            return i + 1
        self._keep(key, args[i + 1])
        return i + 2

    def _keep(self, key: str | None, value: str) -> None:
        if key is not None:
            self.values[key] = value  # click: the last occurrence wins

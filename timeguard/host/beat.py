"""Every ``celery beat`` running on this host, and what it runs: scheduler, max interval, app, Django settings,
database, interpreter, working directory, systemd unit — from /proc (psutil) and the project's files, never by
running the application.

Where each answer comes from, first found wins (celery's own order, celery/bin/beat.py and click's
auto_envvar_prefix="CELERY"):

* scheduler: ``-S/--scheduler`` → ``$CELERY_BEAT_SCHEDULER`` (``$CELERY_WORKER_SCHEDULER`` for ``worker -B``) →
  the app's configuration in its files (timeguard.host.project) → celery's default PersistentScheduler;
* max interval: ``--max-interval`` → ``$CELERY_BEAT_MAX_INTERVAL`` → ``beat_max_loop_interval`` in the files →
  the scheduler's default: DatabaseScheduler 5 s (django_celery_beat/schedulers.py DEFAULT_MAX_INTERVAL),
  PersistentScheduler and RedBeat 300 s (celery/beat.py DEFAULT_MAX_INTERVAL; RedBeatScheduler keeps it);
* schedule file (shelve): ``-s/--schedule`` → ``$CELERY_BEAT_SCHEDULE`` → ``celerybeat-schedule``, relative to
  the process's working directory (``--workdir`` has already been applied to it);
* the app: ``-A/--app`` → ``$APP`` → ``$CELERY_APP``.

Another user's process shows its command line to everyone, but its environment, working directory and open
files only to root and to that user: such a beat is listed with ``problems`` saying what could not be read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from timeguard.host import argv as argvmod
from timeguard.host import process, project
from timeguard.host.argv import DATABASE, OTHER, REDBEAT, SHELVE, UNKNOWN, BeatCommand
from timeguard.host.systemd import environment_file, missing_from, systemd_unit
from timeguard.secrets import redact_url

DEFAULT_MAX_INTERVAL_S = {DATABASE: 5.0, SHELVE: 300.0, REDBEAT: 300.0}
DEFAULT_SCHEDULE_FILE = "celerybeat-schedule"
#: The suffixes a dbm flavour adds to a shelve's name (dbm.dumb .dat/.dir/.bak, Berkeley DB .db).
SHELVE_SUFFIXES = ("", ".db", ".dat", ".dir", ".bak")
#: Environment variables worth showing: they locate the project's settings, database and broker.
_ENV_DATABASE_RE = re.compile(r"(^|_)DATABASE_URL$")
#: Set by the repair's reading of the settings itself (django.settings, django.path).
_NOT_SETTINGS_INPUTS = frozenset({"DJANGO_SETTINGS_MODULE", "PYTHONPATH"})


@dataclass
class Beat:
    """One running beat. ``*_from`` fields say where a value was read (``command line``, ``environment $X``,
    ``path:line``, ``default``)."""

    pid: int
    user: str | None
    uid: int | None
    uptime_s: float | None
    command: list[str]
    form: str
    scheduler: str  # argv.DATABASE, SHELVE, REDBEAT or OTHER
    scheduler_name: str  # as written, or celery's default
    scheduler_from: str
    max_interval_s: float | None  # what beat sleeps at most (None: an unknown scheduler's own default)
    max_interval_from: str
    max_interval_given: bool  # set explicitly (command line, environment, file), not the scheduler's default
    app: str | None = None
    app_from: str | None = None
    interpreter: str | None = None
    interpreter_from: str | None = None
    cwd: str | None = None
    settings: str | None = None
    settings_from: str | None = None
    database: str | None = None  # redacted
    database_from: str | None = None
    broker: str | None = None  # redacted
    schedule_file: str | None = None  # the shelve's path (PersistentScheduler only)
    schedule_file_open: bool | None = None  # the process holds it open (None: could not look)
    unit: str | None = None  # the systemd system unit it runs in
    user_unit: str | None = None  # a systemd --user unit (not stoppable with systemctl as root)
    environment_file: str | None = None  # the unit's EnvironmentFile=, if systemctl says
    #: Variables the project's settings read that the beat's environment has: the repair's reading of the settings
    #: needs them too (names only here; their values stay in ``settings_values``, never printed).
    settings_environment: list[str] = field(default_factory=list)
    settings_values: dict[str, str] = field(default_factory=dict, repr=False)
    #: It sees another root directory than timeguard (a container, a chroot): its paths are not this host's.
    other_root: bool | None = None
    inspectable: bool = True
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["settings_values"]  # may hold passwords
        return out


# --------------------------------------------------------------------------------------------- the scan


def find_beats(pids: Iterable[int] | None = None) -> list[Beat]:
    """Every beat among ``pids`` (default: every process), in pid order. A process running inside another beat
    of the same command line (a worker's pool, the embedded beat's child) is its parent's, not a second beat."""
    import psutil

    beats = []
    for proc, cmdline, parsed in process.scan(lambda _proc, cmdline: argvmod.parse(cmdline), pids):
        try:
            beats.append(inspect_beat(proc, cmdline, parsed))
        except psutil.NoSuchProcess:
            continue  # it ended while we looked
    return beats


def inspect_beat(proc: Any, cmdline: list[str], cmd: BeatCommand) -> Beat:
    """Everything this user may read about one beat process."""
    pid = proc.pid
    seen = process.view(proc)
    problems: list[str] = [*(f"command line: {p}" for p in cmd.problems), *seen.problems]
    uid, user, env, cwd, roots = seen.uid, seen.user, seen.env, seen.cwd, seen.roots
    denied = not seen.inspectable

    app, app_from = _first((cmd.app, "command line"), (env.get("APP"), "environment $APP"),
                           (env.get("CELERY_APP"), "environment $CELERY_APP"))
    app_files = project.app_files(app, roots)
    settings, settings_from = _settings_of(cmd, env, cwd, app_files)
    settings_files = project.module_files(settings, roots) if settings else []
    config_files = project.with_star_imports(app_files + settings_files, roots)
    scheduler_name, scheduler_from = _scheduler_of(cmd, env, config_files, denied)
    kind = UNKNOWN if scheduler_name == "?" else argvmod.scheduler_kind(scheduler_name) or OTHER
    max_interval, max_from, given = _max_interval_of(cmd, env, config_files, kind, problems)

    beat = Beat(pid=pid, user=user, uid=uid, uptime_s=process.uptime_s(pid),
                command=[process.redact_arg(a) for a in cmdline],
                form=cmd.form,
                scheduler=kind, scheduler_name=scheduler_name, scheduler_from=scheduler_from,
                max_interval_s=max_interval, max_interval_from=max_from, max_interval_given=given,
                app=app, app_from=app_from, cwd=cwd, settings=settings, settings_from=settings_from,
                inspectable=seen.inspectable, problems=problems)
    beat.interpreter, beat.interpreter_from = process.interpreter(proc, cmd.interpreter, cmd.script, cwd, env)
    for name, value in sorted(env.items(), key=lambda item: (item[0] != "DATABASE_URL", item[0])):
        if _ENV_DATABASE_RE.search(name) and value:
            beat.database, beat.database_from = redact_url(value), f"environment ${name}"
            break
    broker = cmd.broker or env.get("CELERY_BROKER_URL") or env.get("BROKER_URL")
    if kind == REDBEAT:  # RedBeat's own Redis, else the broker (redbeat/schedulers.py RedBeatConfig)
        found = project.redbeat_redis_url(config_files, env)
        broker = found.value if found is not None else broker
    beat.broker = redact_url(broker) if broker else None
    if kind == SHELVE:
        beat.schedule_file, beat.schedule_file_open = _schedule_file(proc, cmd, cwd, env)
    if settings:
        for name in project.environment_names(config_files):
            if name in env and name not in _NOT_SETTINGS_INPUTS:
                beat.settings_environment.append(name)
                beat.settings_values[name] = env[name]
    beat.other_root = process.other_root(pid)
    beat.unit, beat.user_unit = systemd_unit(pid)
    unit_file = environment_file(beat.unit) if beat.unit else None
    # the unit's file serves the hook when it assigns every variable the settings read (an Environment= line or
    # a wrapper script may set others: then they come from the beat's environment, see snippet.make)
    if unit_file is not None and not missing_from(unit_file, beat.settings_environment):
        beat.environment_file = unit_file
    return beat


def _settings_of(cmd: BeatCommand, env: dict[str, str], cwd: str | None,
                 app_files: list[Path]) -> tuple[str | None, str | None]:
    """The Django settings module: the environment's, else the first ``setdefault`` that runs — manage.py's for
    the manage.py forms, else the app's; the project's manage.py names the settings it uses by default when the
    app sets none."""
    if env.get("DJANGO_SETTINGS_MODULE"):
        return env["DJANGO_SETTINGS_MODULE"], "environment $DJANGO_SETTINGS_MODULE"
    manage = _manage_py(cmd, cwd)
    found = project.settings_module(manage + app_files if cmd.form.startswith("manage.py") else app_files + manage)
    return (found.value, found.where) if found is not None else (None, None)


def _scheduler_of(cmd: BeatCommand, env: dict[str, str], config_files: list[Path],
                  denied: bool) -> tuple[str, str]:
    """(the scheduler's name, where it was read): ``?`` when only unreadable places could say."""
    sub = "WORKER" if cmd.form.endswith("worker -B") else "BEAT"
    name, where = _first((cmd.scheduler, "command line"),
                         (env.get(f"CELERY_{sub}_SCHEDULER") if cmd.form.startswith("celery ") else None,
                          f"environment $CELERY_{sub}_SCHEDULER"))
    if name is not None and where is not None:
        return name, where
    found = project.scheduler(config_files, env)
    if found is not None:
        return found.value, found.where
    if denied:
        return "?", "not on the command line; the environment and the app's files could not be read"
    if not config_files:
        return ("celery.beat:PersistentScheduler", "celery's default; the app's files were not found, and their "
                "configuration may name another")
    return "celery.beat:PersistentScheduler", "celery's default"


def _max_interval_of(cmd: BeatCommand, env: dict[str, str], config_files: list[Path], kind: str,
                     problems: list[str]) -> tuple[float | None, str, bool]:
    """(beat's max interval, where it was read, whether it was set rather than the scheduler's default)."""
    text, where = _first(
        (None if cmd.max_interval_s is None else repr(cmd.max_interval_s), "command line"),
        (env.get("CELERY_BEAT_MAX_INTERVAL") if cmd.form == "celery beat" else None,
         "environment $CELERY_BEAT_MAX_INTERVAL"))
    if text is None:
        found = project.max_loop_interval(config_files, env)
        if found is not None:
            text, where = found.value, found.where
    value = _positive(text)
    if value is not None:
        return value, where or "", True
    if text is not None:
        problems.append(f"max interval {text!r} ({where}) is not a positive number; using the default")
    default = DEFAULT_MAX_INTERVAL_S.get(kind)
    return default, "the scheduler's default" if default is not None else "unknown (the scheduler's own)", False


def _manage_py(cmd: BeatCommand, cwd: str | None) -> list[Path]:
    """The project's manage.py (it sets DJANGO_SETTINGS_MODULE for itself): the one on the command line, else the
    one in the working directory."""
    script = cmd.script if cmd.script and os.path.basename(cmd.script) == "manage.py" else "manage.py"
    if not os.path.isabs(script):
        if not cwd:
            return []
        script = os.path.join(cwd, script)
    return [Path(script)] if os.path.isfile(script) else []


def _first(*pairs: tuple[str | None, str]) -> tuple[str | None, str | None]:
    for value, where in pairs:
        if value:
            return value, where
    return None, None


def _positive(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 < value < float("inf") else None


# ----------------------------------------------------------------------------------------- details


def _schedule_file(proc: Any, cmd: BeatCommand, cwd: str | None, env: dict[str, str]) -> tuple[str | None, bool | None]:
    """The shelve's path (absolute when the cwd is known) and whether the process has it open."""
    import psutil

    name = cmd.schedule_file
    if not name and cmd.form.startswith("celery "):
        name = env.get("CELERY_WORKER_SCHEDULE_FILENAME" if cmd.form.endswith("-B") else "CELERY_BEAT_SCHEDULE")
    name = name or DEFAULT_SCHEDULE_FILE
    path = name if os.path.isabs(name) or not cwd else os.path.normpath(os.path.join(cwd, name))
    try:
        open_paths = {f.path for f in proc.open_files()}
    except psutil.Error:
        return path, None
    return path, any(path + suffix in open_paths for suffix in SHELVE_SUFFIXES)

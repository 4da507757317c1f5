"""Django settings as the celery_beat repair's source of truth: the ``django:`` option.

::

    django:
      settings: proj.settings            # DJANGO_SETTINGS_MODULE
      python: /srv/app/.venv/bin/python  # the application's own interpreter (its virtualenv)
      path: [/srv/app]                   # put first on sys.path (the project directory); also the working directory
      environment_file: /etc/app.env     # systemd EnvironmentFile= syntax, as the application's unit reads it
      user: app                          # run the probe as this user (timeguard must be root)
      database_alias: default            # the DATABASES alias django-celery-beat uses
      timeout_s: 30

timeguard never imports Django into itself: :func:`probe` runs *that* interpreter (with timeguard's environment,
or, as another ``user``, only PATH and the locale; then the environment file) with a small script
(:data:`PROBE`) that sets Django up as the application does and prints one JSON line — the database of the alias,
``USE_TZ``, ``TIME_ZONE``, ``DJANGO_CELERY_BEAT_TZ_AWARE``, the real table names of django-celery-beat's models
(their prefix) and beat's ``beat_max_loop_interval`` (``CELERY_BEAT_MAX_LOOP_INTERVAL``; unset: the
DatabaseScheduler's default, 5 s). Like a secret, this is resolved only where the repair runs (the target's
``open()``); ``config validate`` checks the option's shape (:func:`shape_problems`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from timeguard.repair import dburl
from timeguard.repair.apprun import AppInterpreter, last_line
from timeguard.repair.target import RepairError
from timeguard.secrets import redact_text

DEFAULT_TIMEOUT_S = 30.0
TIMEOUT_RANGE_S = (1.0, 600.0)
KEYS = ("settings", "python", "path", "environment_file", "user", "database_alias", "timeout_s")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

#: The option's JSON Schema (``config schema``); :func:`shape_problems` is the check that says why.
DJANGO_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["settings", "python"],
    "properties": {
        "settings": {"type": "string", "description": "the settings module (DJANGO_SETTINGS_MODULE), e.g. "
                                                      "proj.settings"},
        "python": {"type": "string", "description": "the application's interpreter, e.g. /srv/app/.venv/bin/python"},
        "path": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                 "description": "directories put first on sys.path (the project directory; the first is the "
                                "working directory)"},
        "environment_file": {"type": "string", "description": "variables the settings read, in systemd "
                                                              "EnvironmentFile= syntax"},
        "user": {"type": "string", "description": "read the settings as this user (timeguard must be root)"},
        "database_alias": {"type": "string", "description": "the DATABASES alias of django-celery-beat's tables "
                                                            "(default: default)"},
        "timeout_s": {"type": "number", "minimum": TIMEOUT_RANGE_S[0], "maximum": TIMEOUT_RANGE_S[1],
                      "description": "reading the settings may take this long (default 30)"},
    },
}

#: Runs in the application's interpreter (after apprun's prelude: args, answer, failed); args: {alias}.
PROBE = r'''
import os
try:
    import django
except Exception:
    failed("no_django")
from django.conf import settings
try:
    settings.INSTALLED_APPS
except Exception:
    failed("settings")
try:
    import django_celery_beat
except Exception:
    failed("no_django_celery_beat")
try:
    django.setup()
except Exception:
    failed("setup")
from django.apps import apps
try:
    task = apps.get_model("django_celery_beat", "PeriodicTask")._meta.db_table
    tasks = apps.get_model("django_celery_beat", "PeriodicTasks")._meta.db_table
except LookupError:
    failed("not_installed_app")
alias = args["alias"]
if alias not in settings.DATABASES:
    answer(error="alias", detail=", ".join(sorted(settings.DATABASES)))
db = settings.DATABASES[alias]
entry = {k: (str(db.get(k)) if db.get(k) is not None else "") for k in ("ENGINE", "NAME", "USER", "PASSWORD",
                                                                       "HOST", "PORT")}
entry["OPTIONS"] = {str(k): v for k, v in dict(db.get("OPTIONS") or {}).items()
                    if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
if entry["ENGINE"].endswith(("sqlite3", "spatialite")) and entry["NAME"] and entry["NAME"] != ":memory:":
    entry["NAME"] = os.path.abspath(entry["NAME"])
interval, interval_set = None, False
for name in ("CELERY_BEAT_MAX_LOOP_INTERVAL", "CELERYBEAT_MAX_LOOP_INTERVAL"):
    if getattr(settings, name, None) is not None:
        interval, interval_set = getattr(settings, name), True
        break
if interval is None:
    try:
        from django_celery_beat.schedulers import DEFAULT_MAX_INTERVAL as interval
    except Exception:
        interval = 5
answer(database=entry, use_tz=bool(settings.USE_TZ), time_zone=str(settings.TIME_ZONE or "UTC"),
       tz_aware=bool(getattr(settings, "DJANGO_CELERY_BEAT_TZ_AWARE", True)), task_table=task, tasks_table=tasks,
       beat_max_interval_s=interval, beat_max_interval_set=interval_set,
       django=django.get_version(), django_celery_beat=getattr(django_celery_beat, "__version__", "?"))
'''


class DjangoSettingsError(RepairError):
    """The settings could not be read: what and where, naming the option to fix (never a password)."""


@dataclass(frozen=True, slots=True)
class DjangoSource:
    """The ``django:`` option: how to read the application's settings."""

    settings: str
    python: str
    path: tuple[str, ...] = ()
    environment_file: str | None = None
    user: str | None = None
    database_alias: str = "default"
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def from_option(cls, value: Any, key: str = "django") -> tuple[DjangoSource | None, list[tuple[str, str]]]:
        """The option's shape checked (no file is looked at): the source, or None and the problems (keys like
        ``django.python``)."""
        problems = shape_problems(value, key)
        if problems:
            return None, problems
        path = value.get("path", ())
        return cls(settings=value["settings"], python=value["python"],
                   path=(path,) if isinstance(path, str) else tuple(path),
                   environment_file=value.get("environment_file"), user=value.get("user"),
                   database_alias=value.get("database_alias", "default"),
                   timeout_s=float(value.get("timeout_s", DEFAULT_TIMEOUT_S))), []

    def describe(self) -> str:
        return f"{self.settings} in {self.python}"

    def interpreter(self) -> AppInterpreter:
        return AppInterpreter(python=self.python, path=self.path, environment_file=self.environment_file,
                              user=self.user, timeout_s=self.timeout_s, key="django")


def shape_problems(value: Any, key: str = "django") -> list[tuple[str, str]]:
    """What is wrong with the ``django:`` mapping's shape (types, absolute paths, a module name), in order."""
    if not isinstance(value, Mapping):
        return [(key, "must be a mapping: {settings: proj.settings, python: /srv/app/.venv/bin/python, "
                      "path: [/srv/app]}")]
    problems: list[tuple[str, str]] = []
    for name in value:
        if name not in KEYS:
            problems.append((f"{key}.{name}", f"unknown option of django (its options: {', '.join(KEYS)})"))
    settings = value.get("settings")
    if not isinstance(settings, str) or not _MODULE.fullmatch(settings):
        problems.append((f"{key}.settings", "is required: the settings module, as DJANGO_SETTINGS_MODULE "
                                            "(e.g. proj.settings)"))
    python = value.get("python")
    if not isinstance(python, str) or not os.path.isabs(python):
        problems.append((f"{key}.python", "is required: the absolute path of the application's interpreter "
                                          "(e.g. /srv/app/.venv/bin/python)"))
    path = value.get("path", [])
    entries = [path] if isinstance(path, str) else path
    if not isinstance(entries, list) or not all(isinstance(p, str) and os.path.isabs(p) for p in entries):
        problems.append((f"{key}.path", "must be an absolute directory or a list of them (the project directory)"))
    for name in ("environment_file",):
        if name in value and (not isinstance(value[name], str) or not os.path.isabs(value[name])):
            problems.append((f"{key}.{name}", "must be an absolute file path"))
    for name in ("user", "database_alias"):
        if name in value and (not isinstance(value[name], str) or not value[name].strip()):
            problems.append((f"{key}.{name}", "must be non-empty text"))
    if "timeout_s" in value:
        t = value["timeout_s"]
        low, high = TIMEOUT_RANGE_S
        if isinstance(t, bool) or not isinstance(t, int | float) or not low <= t <= high:
            problems.append((f"{key}.timeout_s", f"must be a number of seconds from {low:g} to {high:g}"))
    return problems


@dataclass(frozen=True, slots=True)
class DjangoSettings:
    """What the probe read: the repair's options as the application's settings give them."""

    database_url: str  # holds the password: never shown (CeleryBeatRepair redacts it)
    use_tz: bool
    time_zone: str
    tz_aware: bool
    table_prefix: str
    beat_max_interval_s: float
    versions: str

    def repair_options(self) -> dict[str, Any]:
        return {"use_tz": self.use_tz, "time_zone": self.time_zone, "tz_aware": self.tz_aware,
                "table_prefix": self.table_prefix, "beat_max_interval_s": self.beat_max_interval_s}


def probe(source: DjangoSource) -> DjangoSettings:
    """Run the application's interpreter on its settings and read them; DjangoSettingsError saying what failed."""
    answer = source.interpreter().run(PROBE, {"alias": source.database_alias}, error=DjangoSettingsError,
                                      doing=f"reading the settings {source.settings}",
                                      env={"DJANGO_SETTINGS_MODULE": source.settings})
    error = answer.get("error")
    if error is not None:
        raise DjangoSettingsError(_error_message(source, str(error), str(answer.get("detail", ""))))
    try:
        return _settings(source, answer)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, dburl.DatabaseUrlError):
            raise DjangoSettingsError(f"django.settings {source.settings}: {exc}") from None
        raise DjangoSettingsError(f"django: the settings probe in {source.python} gave an incomplete answer "
                                  f"({type(exc).__name__}: {exc})") from None


def _error_message(source: DjangoSource, error: str, detail: str) -> str:
    detail = redact_text(last_line(detail))
    messages = {
        "no_django": f"django.python {source.python}: Django is not installed in that interpreter ({detail}); "
                     "give the application's own interpreter (its virtualenv's bin/python)",
        "settings": f"django.settings {source.settings} does not import in {source.python}: {detail}",
        "no_django_celery_beat": f"django.python {source.python}: django_celery_beat is not installed in that "
                                 f"interpreter ({detail})",
        "setup": f"django.settings {source.settings}: django.setup() failed: {detail}",
        "not_installed_app": f"django.settings {source.settings}: django_celery_beat is not in INSTALLED_APPS",
        "alias": f"django.database_alias {source.database_alias!r} is not in DATABASES (its aliases: {detail})",
    }
    return messages.get(error, f"django: the settings probe failed ({error}: {detail})")


def _settings(source: DjangoSource, answer: Mapping[str, Any]) -> DjangoSettings:
    url = dburl.from_django(answer["database"], alias=source.database_alias)
    task, tasks = str(answer["task_table"]), str(answer["tasks_table"])
    if not task.endswith("periodictask") or tasks != task[: -len("periodictask")] + "periodictasks":
        raise DjangoSettingsError(f"django.settings {source.settings}: django-celery-beat's tables are named "
                                  f"{task!r} and {tasks!r}: the repair needs one prefix before periodictask(s)")
    interval = answer["beat_max_interval_s"]
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
        raise DjangoSettingsError(f"django.settings {source.settings}: CELERY_BEAT_MAX_LOOP_INTERVAL "
                                  f"{interval!r} is not a number of seconds from 0 to 3600")
    return DjangoSettings(database_url=url, use_tz=bool(answer["use_tz"]), time_zone=str(answer["time_zone"]),
                          tz_aware=bool(answer["tz_aware"]), table_prefix=task[: -len("periodictask")],
                          beat_max_interval_s=float(interval),
                          versions=f"Django {answer.get('django')}, django-celery-beat "
                                   f"{answer.get('django_celery_beat')}")

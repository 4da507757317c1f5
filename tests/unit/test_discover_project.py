"""What ``timeguard discover`` reads from a project's files (never importing them), from /proc/PID/cgroup and from a
command line shown to the user: the settings module a celery app sets for itself, the scheduler and max interval
its configuration names, the systemd unit, passwords masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from timeguard.host import project
from timeguard.host.process import redact_arg as _redact
from timeguard.host.systemd import environment_files, missing_from, unit_from_cgroup


def make_project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CELERY_PY = """import os
from celery import Celery

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'proj.settings.production')
app = Celery('proj')
app.config_from_object('django.conf:settings', namespace='CELERY')
"""


def test_the_settings_module_a_celery_app_sets_for_itself(tmp_path: Path):
    root = make_project(tmp_path, {"proj/__init__.py": "from .celery import app\n", "proj/celery.py": CELERY_PY})
    files = project.app_files("proj", [str(root)])
    assert files == [root / "proj/__init__.py", root / "proj/celery.py"]
    found = project.settings_module(files)
    assert found == project.Found("proj.settings.production", f"{root / 'proj/celery.py'}:4")


@pytest.mark.parametrize(("app", "expected"), [
    ("proj", ["proj/__init__.py", "proj/celery.py"]),
    ("proj.celery:app", ["proj/celery.py"]),
    ("proj.celery", ["proj/celery.py"]),
    ("single", ["single.py"]),
    ("missing", []),
    ("../etc/passwd", []),  # not a module name: nothing is read
    (None, []),
])
def test_the_app_files_celery_would_import(tmp_path: Path, app, expected):
    make_project(tmp_path, {"proj/__init__.py": "", "proj/celery.py": "", "single.py": ""})
    assert project.app_files(app, [str(tmp_path)]) == [tmp_path / rel for rel in expected]


def test_settings_in_a_package_and_on_a_second_import_root(tmp_path: Path):
    make_project(tmp_path, {"src/proj/settings/__init__.py": "CELERY_BEAT_SCHEDULER = 'django'\n"})
    files = project.module_files("proj.settings", [str(tmp_path), str(tmp_path / "src")])
    assert files == [tmp_path / "src/proj/settings/__init__.py"]
    assert project.scheduler(files) == project.Found("django", f"{files[0]}:1")


@pytest.mark.parametrize(("text", "scheduler"), [
    ("CELERY_BEAT_SCHEDULER = 'django_celery_beat.schedulers:DatabaseScheduler'\n",
     "django_celery_beat.schedulers:DatabaseScheduler"),
    ('CELERYBEAT_SCHEDULER = "djcelery.schedulers.DatabaseScheduler"\n', "djcelery.schedulers.DatabaseScheduler"),
    ("app.conf.beat_scheduler = 'redbeat.RedBeatScheduler'\n", "redbeat.RedBeatScheduler"),
    ("app.conf.update(\n    beat_scheduler='redbeat.RedBeatScheduler',\n)\n", "redbeat.RedBeatScheduler"),
    ("CELERY_BEAT_SCHEDULER = env('BEAT_SCHEDULER')\n", None),  # computed: not a value we can read
    ("# CELERY_BEAT_SCHEDULER = 'django'\n", None),  # a comment
    ("CELERY_BEAT_SCHEDULER = 'a'\nCELERY_BEAT_SCHEDULER = 'b'\n", "b"),  # the last assignment wins
])
def test_the_scheduler_a_configuration_names(tmp_path: Path, text, scheduler):
    path = tmp_path / "settings.py"
    path.write_text(text)
    found = project.scheduler([path])
    assert (found.value if found else None) == scheduler


@pytest.mark.parametrize(("text", "seconds"), [
    ("CELERY_BEAT_MAX_LOOP_INTERVAL = 1\n", "1"),
    ("app.conf.beat_max_loop_interval = 2.5  # seconds\n", "2.5"),
    ("CELERYBEAT_MAX_LOOP_INTERVAL = 10\n", "10"),
    ("CELERY_BEAT_MAX_LOOP_INTERVAL = 0\n", None),  # celery's "unset"
    ("CELERY_BEAT_MAX_LOOP_INTERVAL = int(os.environ['X'])\n", None),
])
def test_the_max_loop_interval_a_configuration_names(tmp_path: Path, text, seconds):
    path = tmp_path / "settings.py"
    path.write_text(text)
    found = project.max_loop_interval([path])
    assert (found.value if found else None) == seconds


def test_files_that_cannot_be_read_or_are_too_large_are_skipped(tmp_path: Path):
    huge = tmp_path / "huge.py"
    huge.write_text("CELERY_BEAT_SCHEDULER = 'django'\n" + "#" * project.MAX_FILE_BYTES)
    assert project.scheduler([huge, tmp_path / "missing.py", tmp_path]) is None


@pytest.mark.parametrize(("cgroup", "unit"), [
    ("0::/system.slice/celery-beat.service\n", ("celery-beat.service", None)),
    ("0::/system.slice/system-celery.slice/celery-beat@proj.service\n", ("celery-beat@proj.service", None)),
    ("12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/beat.service\n", ("beat.service", None)),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/beat.service\n", (None, "beat.service")),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", (None, None)),
    ("0::/system.slice/docker-0123.scope\n", (None, None)),
    ("0::/\n", (None, None)),
    ("garbage\n\n::\n", (None, None)),
])
def test_the_unit_from_proc_cgroup(cgroup, unit):
    assert unit_from_cgroup(cgroup) == unit


@pytest.mark.parametrize(("word", "shown"), [
    ("--broker=redis://:s3cret@h:6379/0", "--broker=redis://:***@h:6379/0"),
    ("-bamqp://user:pw@rabbit//", "-bamqp://user:***@rabbit//"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("beat", "beat"),
])
def test_passwords_in_a_command_line_are_masked(word, shown):
    assert _redact(word) == shown


def test_a_settings_module_built_on_another_inherits_its_values_and_overrides_them(tmp_path: Path):
    """``from .base import *`` (relative) and ``from proj.settings import *`` (absolute), as stock projects split
    their settings; the importing module's own assignments win."""
    make_project(tmp_path, {
        "proj/__init__.py": "",
        "proj/settings/__init__.py": "",
        "proj/settings/base.py": "CELERY_BEAT_SCHEDULER = 'django'\nCELERY_BEAT_MAX_LOOP_INTERVAL = 10\n",
        "proj/settings/production.py": "from .base import *  # noqa\n\nCELERY_BEAT_MAX_LOOP_INTERVAL = 2\n",
        "proj/settings_dburl.py": "import os\nfrom proj.settings.production import *\n",
        "proj/loop.py": "from proj.loop import *\nfrom .loop import *\nCELERY_BEAT_SCHEDULER = 'x'\n",
    })
    roots = [str(tmp_path)]
    files = project.with_star_imports(project.module_files("proj.settings_dburl", roots), roots)
    assert files == [tmp_path / "proj/settings/base.py", tmp_path / "proj/settings/production.py",
                     tmp_path / "proj/settings_dburl.py"]
    assert project.scheduler(files) == project.Found("django", f"{tmp_path / 'proj/settings/base.py'}:1")
    assert project.max_loop_interval(files) == project.Found("2", f"{tmp_path / 'proj/settings/production.py'}:3")
    # a module importing itself is read once
    loop = project.with_star_imports(project.module_files("proj.loop", roots), roots)
    assert loop == [tmp_path / "proj/loop.py"]


@pytest.mark.parametrize(("value", "env", "expected"), [
    ("int(os.environ['BEAT_MAX_LOOP_INTERVAL'])", {"BEAT_MAX_LOOP_INTERVAL": "3"}, ("3", " ($BEAT_MAX_LOOP_INTERVAL)")),
    ("int(os.environ['BEAT_MAX_LOOP_INTERVAL'])", {}, None),  # not set: the line did not run (or failed)
    ("float(os.environ.get('LOOP', 7))", {}, ("7", "")),
    ("float(os.environ.get('LOOP', 7))", {"LOOP": "0.5"}, ("0.5", " ($LOOP)")),
    ("os.getenv('LOOP', '4')  # seconds", {}, ("4", "")),
    ("os.getenv('LOOP')", {}, None),
    ("env.int('LOOP', default=5)", {"LOOP": "1"}, None),  # django-environ: not understood, never run
    ("__import__('os').system('touch /tmp/pwned')", {}, None),
    ("1 if DEBUG else 5", {}, None),
    ("True", {}, None),
    ("3,", {}, ("3", "")),
])
def test_a_value_from_the_process_environment_is_read_never_run(tmp_path: Path, value, env, expected):
    path = tmp_path / "settings.py"
    path.write_text(f"import os\nCELERY_BEAT_MAX_LOOP_INTERVAL = {value}\n")
    found = project.max_loop_interval([path], env)
    assert (None if found is None else (found.value, found.where.removeprefix(f"{path}:2"))) == expected


def test_redbeats_own_redis_url(tmp_path: Path):
    path = tmp_path / "settings.py"
    path.write_text("import os\nCELERY_REDBEAT_REDIS_URL = os.environ.get('REDBEAT_URL', 'redis://localhost:6379/1')\n")
    assert project.redbeat_redis_url([path]) == project.Found("redis://localhost:6379/1", f"{path}:2")
    assert project.redbeat_redis_url([path], {"REDBEAT_URL": "redis://r:6379/2"}).value == "redis://r:6379/2"


def test_the_first_setdefault_that_runs_wins(tmp_path: Path):
    make_project(tmp_path, {"a.py": "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'a.settings')\n",
                            "b.py": "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'b.settings')\n"})
    assert project.settings_module([tmp_path / "a.py", tmp_path / "b.py"]).value == "a.settings"
    assert project.settings_module([tmp_path / "b.py", tmp_path / "a.py"]).value == "b.settings"
    assert project.settings_module([tmp_path / "missing.py"]) is None


def test_the_environment_variables_a_settings_module_reads(tmp_path: Path):
    path = tmp_path / "settings.py"
    path.write_text("""import os
import dj_database_url
import environ
env = environ.Env()
SECRET_KEY = os.environ["SECRET_KEY"]
DEBUG = os.environ.get('DEBUG', '0') == '1'
TZ = os.getenv("TZ_NAME")
DATABASES = {"default": dj_database_url.config(conn_max_age=600)}
OTHER = {"default": dj_database_url.config(env="OTHER_DB", conn_max_age=0)}
BROKER = env("BROKER_URL")
CACHE = env.str('CACHE_URL', default='locmem://')
REPLICA = env.db()
SECRET_KEY_AGAIN = os.environ["SECRET_KEY"]
NOT_ENV = settings.get("NOT_A_VARIABLE")
""")
    assert project.environment_names([path]) == ["SECRET_KEY", "DEBUG", "TZ_NAME", "DATABASE_URL", "OTHER_DB",
                                                 "BROKER_URL", "CACHE_URL"]


@pytest.mark.parametrize(("shown", "paths"), [
    ("/etc/default/celery (ignore_errors=no)\n", ["/etc/default/celery"]),
    ("/etc/conf.d/celery (ignore_errors=yes)\n/etc/app/env (ignore_errors=no)\n", ["/etc/conf.d/celery",
                                                                                   "/etc/app/env"]),
    ("/srv/my app/env (ignore_errors=no)\n", ["/srv/my app/env"]),
    ("", []),
    ("garbage\n", []),
])
def test_the_environment_files_systemctl_shows(shown, paths):
    assert environment_files(shown) == paths


def test_a_unit_environment_file_serves_only_when_it_assigns_every_variable(tmp_path: Path):
    env = tmp_path / "celery.env"
    env.write_text("# comment\nDATABASE_URL=postgres://app@db/app\nexport SECRET_KEY='x'\n  DEBUG = 0\n")
    assert missing_from(str(env), ["DATABASE_URL", "SECRET_KEY", "DEBUG"]) == []
    assert missing_from(str(env), ["DATABASE_URL", "BROKER_URL"]) == ["BROKER_URL"]
    assert missing_from(str(tmp_path / "missing.env"), ["DATABASE_URL"]) == ["DATABASE_URL"]

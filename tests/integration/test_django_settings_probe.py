"""The ``django:`` option's settings probe (timeguard.repair.django_settings) with real interpreters: the project's
own (the venv's, which has Django and django-celery-beat), the system's /usr/bin/python3 (no Django), broken ones,
and settings modules written for each case. Nothing Django is imported into the test process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.beat import PROJECT_DIR
from tests.support.realprogs import scratch_dir
from tests.support.require import need
from timeguard.repair.celery_beat import CeleryBeatKind
from timeguard.repair.django_settings import DjangoSettingsError, DjangoSource, probe

pytestmark = pytest.mark.real

PYTHON = sys.executable  # the venv's interpreter: Django, django-celery-beat, dj-database-url
REPO = Path(__file__).resolve().parents[2]


def source(settings: str = "beatproject.settings_dburl", python: str = PYTHON, **more: object) -> DjangoSource:
    found, problems = DjangoSource.from_option({"settings": settings, "python": python,
                                                "path": [str(PROJECT_DIR)], **more})
    assert found is not None, problems
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory for settings modules of this test (world-readable: one test runs the probe as nobody)."""
    directory = scratch_dir("djsettings")
    directory.chmod(0o755)
    return directory


def write_settings(directory: Path, name: str, body: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(body))
    (directory / f"{name}.py").chmod(0o644)
    return name


@pytest.fixture(autouse=True)
def _no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.mark.parametrize(("url", "expected"), [
    ("postgres://beat:p%40ss@127.0.0.1:5432/app?sslmode=disable", "postgres://beat:p%40ss@127.0.0.1:5432/app?sslmode=disable"),
    ("mysql://root@127.0.0.1:3306/app", "mysql://root@127.0.0.1:3306/app"),
    ("sqlite:////srv/app/db.sqlite3", "sqlite:////srv/app/db.sqlite3"),
])
def test_a_stock_project_s_database_url_is_read_from_its_settings(url: str, expected: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("BEAT_MAX_LOOP_INTERVAL", "2")
    monkeypatch.setenv("TG_BEAT_USE_TZ", "0")
    monkeypatch.setenv("TG_BEAT_TIME_ZONE", "Europe/Berlin")
    read = probe(source())
    assert read.database_url == expected
    assert (read.use_tz, read.time_zone, read.tz_aware) == (False, "Europe/Berlin", True)
    assert (read.table_prefix, read.beat_max_interval_s) == ("django_celery_beat_", 2.0)
    assert read.versions.startswith("Django ")


def test_the_environment_file_feeds_the_settings_and_beat_s_default_poll_applies(tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("# as the application's unit reads it\nDATABASE_URL='postgres://app:s3cret@db.example/app'\n"
                   "TG_BEAT_TZ_AWARE=0\n")
    read = probe(source(environment_file=str(env)))
    assert read.database_url == "postgres://app:s3cret@db.example/app"
    assert read.tz_aware is False and read.use_tz is True
    assert read.beat_max_interval_s == 5.0  # not set in the settings: DatabaseScheduler's DEFAULT_MAX_INTERVAL


def test_another_alias_a_prefix_and_output_on_stdout(project: Path) -> None:
    """Settings that print while imported (stdout is the probe's channel), a second alias, OPTIONS the driver
    shares, and the interval set the way celery's namespace='CELERY' reads it."""
    name = write_settings(project, "tg_alias_settings", """
        print("settings loading...")
        SECRET_KEY = "x"
        INSTALLED_APPS = ["django_celery_beat"]
        USE_TZ = True
        DATABASES = {
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "app.sqlite3"},
            "beat": {"ENGINE": "django.db.backends.postgresql", "NAME": "beat", "USER": "beat",
                     "PASSWORD": "pa ss/@", "HOST": "::1", "PORT": "5433",
                     "OPTIONS": {"sslmode": "require", "isolation_level": 1}},
        }
        CELERY_BEAT_MAX_LOOP_INTERVAL = 1
    """)
    read = probe(DjangoSource(settings=name, python=PYTHON, path=(str(project),), database_alias="beat"))
    assert read.database_url == "postgres://beat:pa%20ss%2F%40@[::1]:5433/beat?sslmode=require"
    assert read.beat_max_interval_s == 1.0
    default = probe(DjangoSource(settings=name, python=PYTHON, path=(str(project),)))
    assert default.database_url == f"sqlite:///{project}/app.sqlite3"  # relative NAME: from the project directory


@pytest.mark.parametrize(("case", "why"), [
    ("missing", "django.python /nonexistent/bin/python: no such file"),
    ("not-executable", "not an executable file"),
    ("system-python", "Django is not installed in that interpreter (ModuleNotFoundError: No module named 'django')"),
    ("bad-module", "django.settings no_such_project.settings does not import in"),
    ("raising-module", "does not import in {python}: KeyError: 'APP_SECRET'"),
    ("not-installed-app", "django_celery_beat is not in INSTALLED_APPS"),
    ("alias", "django.database_alias 'beat' is not in DATABASES (its aliases: default)"),
    ("unsupported", "ENGINE 'django.db.backends.dummy' is not supported by the celery_beat repair"),
    ("garbage", "exited 0 without reading the settings tg_unsupported: hello, not JSON"),
    ("timeout", "did not finish within 1 s (django.timeout_s); it was killed"),
    ("no-such-user", "django.user 'no-such-user-tg': no such user"),
])
def test_each_failure_is_one_clear_error(case: str, why: str, project: Path, tmp_path: Path) -> None:
    python, settings, more = PYTHON, "tg_unsupported", {}
    write_settings(project, "tg_unsupported", """
        SECRET_KEY = "x"
        INSTALLED_APPS = ["django_celery_beat"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.dummy", "NAME": "x", "PASSWORD": "hunter22"}}
    """)
    if case == "missing":
        python = "/nonexistent/bin/python"
    elif case == "not-executable":
        python = str(tmp_path / "python")
        Path(python).write_text("#!/bin/sh\n")
    elif case == "system-python":
        need(os.path.exists("/usr/bin/python3"), "/usr/bin/python3 is not installed")
        python = "/usr/bin/python3"
    elif case == "bad-module":
        settings = "no_such_project.settings"
    elif case == "raising-module":
        settings = write_settings(project, "tg_raising", "import os\nSECRET_KEY = os.environ['APP_SECRET']\n")
    elif case == "not-installed-app":
        settings = write_settings(project, "tg_noapp", """
            SECRET_KEY = "x"
            INSTALLED_APPS = []
            DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/x.sqlite3"}}
        """)
    elif case == "alias":
        settings = write_settings(project, "tg_onealias", """
            SECRET_KEY = "x"
            INSTALLED_APPS = ["django_celery_beat"]
            DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/tmp/x.sqlite3"}}
        """)
        more = {"database_alias": "beat"}
    elif case in ("garbage", "timeout"):
        python = str(tmp_path / "python")
        body = "echo hello, not JSON" if case == "garbage" else "exec sleep 30"
        Path(python).write_text(f"#!/bin/sh\n{body}\n")
        Path(python).chmod(0o755)
        more = {"timeout_s": 1} if case == "timeout" else {}
    elif case == "no-such-user":
        more = {"user": "no-such-user-tg"}
    found, problems = DjangoSource.from_option({"settings": settings, "python": python, "path": [str(project)],
                                                **more})
    assert found is not None, problems
    started = time.monotonic()
    with pytest.raises(DjangoSettingsError) as info:
        probe(found)
    message = str(info.value)
    assert why.format(python=python) in message and "\n" not in message and "hunter22" not in message
    assert time.monotonic() - started < 10


def test_the_probe_runs_as_the_configured_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root with ``user: nobody``: the interpreter runs as nobody (a wrapper that reports its uid — the venv's
    interpreter lives under /root, which nobody cannot enter) without timeguard's environment (which may hold its
    secrets) but with the environment file; not root: refused, saying why."""
    monkeypatch.setenv("TG_TIMEGUARD_OWN_SECRET", "whsec_not_for_the_app")
    env_file = tmp_path / "app.env"
    env_file.write_text("APP_SETTING=from-the-file\n")
    need(os.geteuid() == 0, "running the probe as another user needs root")
    need(shutil.which("setpriv") is not None, "setpriv (util-linux) is not installed")
    wrapper = scratch_dir("djuser") / "python"
    wrapper.parent.chmod(0o755)
    wrapper.write_text('#!/bin/sh\necho "uid $(id -u) HOME=$HOME USER=$USER $APP_SETTING '
                       '[$TG_TIMEGUARD_OWN_SECRET]" >&2\nexit 3\n')
    wrapper.chmod(0o755)
    with pytest.raises(DjangoSettingsError) as info:
        probe(DjangoSource(settings="proj.settings", python=str(wrapper), user="nobody",
                           environment_file=str(env_file)))
    assert str(info.value) == (f"django: {wrapper} exited 3 without reading the settings proj.settings: uid 65534 "
                               "HOME=/nonexistent USER=nobody from-the-file []")
    script = ("import json\nfrom timeguard.repair.django_settings import DjangoSource, probe\n"
              f"try:\n    probe(DjangoSource(settings='proj.settings', python={str(wrapper)!r}, user='root'))\n"
              "except Exception as exc:\n    print(json.dumps(str(exc)))\n")
    out = subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "/usr/bin/python3",
                          "-c", script], capture_output=True, text=True, timeout=30, cwd="/",
                         env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}, check=False)
    assert json.loads(out.stdout or "null") == ("django.user 'root': running the application's code as another user "
                                                "needs root (timeguard runs as uid 65534); leave user out to run it "
                                                "as this one"), out.stderr


def test_a_hook_with_only_django_opens_the_database_its_settings_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kind resolves the settings where the repair runs (open), not when configured; explicit options win."""
    monkeypatch.setenv("DATABASE_URL", "sqlite:////nonexistent/beat.sqlite3")
    monkeypatch.setenv("BEAT_MAX_LOOP_INTERVAL", "1")
    django = {"settings": "beatproject.settings_dburl", "python": PYTHON, "path": [str(PROJECT_DIR)]}
    kind = CeleryBeatKind.from_options({"django": django, "wait_margin_s": 0.5, "table_prefix": "custom_"})
    assert kind._probed is None  # configuring reads nothing
    target = kind.open()
    try:
        assert target.where == "sqlite:////nonexistent/beat.sqlite3"
        assert (target.beat_max_interval_s, target.wait_margin_s, target.table_prefix) == (1.0, 0.5, "custom_")
        assert target.source == "django (DATABASES['default'] of beatproject.settings_dburl)"
    finally:
        target.close()
    assert kind.max_run_s() == 3 * (3 * 1.5 + 30) + 30 + 30  # three waits a round, at the interval the settings said

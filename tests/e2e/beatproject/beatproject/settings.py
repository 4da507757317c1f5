"""Settings from the environment, so one project serves every database of the tests.

* ``TG_BEAT_DATABASE_URL``: ``sqlite:////abs/path.sqlite3``, ``postgresql://user@127.0.0.1:5432/name`` or
  ``mysql://root@127.0.0.1:3306/name`` (MariaDB through PyMySQL).
* ``TG_BEAT_USE_TZ``, ``TG_BEAT_TZ_AWARE`` (``1``/``0``), ``TG_BEAT_TIME_ZONE``: Django's USE_TZ, TIME_ZONE and
  DJANGO_CELERY_BEAT_TZ_AWARE (default: true, UTC, true).
* ``TG_BEAT_BROKER_URL`` (default ``redis://127.0.0.1:6379/0``), ``TG_BEAT_KEYPREFIX`` (a Redis key prefix that
  keeps one test's messages apart from everybody else's), ``TG_BEAT_QUEUE`` (default queue name).
"""

import os
from urllib.parse import unquote, urlsplit

SECRET_KEY = "timeguard-e2e-not-secret"  # a throw-away test project
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["django_celery_beat"]
# The storage conventions (research/celery_beat.md §1.8) are chosen by the environment: the default is USE_TZ=True;
# a tz-naive project runs with TG_BEAT_USE_TZ=0, TG_BEAT_TZ_AWARE=0 and a TG_BEAT_TIME_ZONE.
USE_TZ = os.environ.get("TG_BEAT_USE_TZ", "1") == "1"
TIME_ZONE = os.environ.get("TG_BEAT_TIME_ZONE", "UTC")
DJANGO_CELERY_BEAT_TZ_AWARE = os.environ.get("TG_BEAT_TZ_AWARE", "1") == "1"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"


def _database(url: str) -> dict[str, object]:
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # Beat and the test's query scripts use it at the same time: wait for locks instead of failing.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(parts.path), "OPTIONS": {"timeout": 20}}
    engine = {
        "postgresql": "django.db.backends.postgresql",
        "postgres": "django.db.backends.postgresql",
        "mysql": "django.db.backends.mysql",
        "mariadb": "django.db.backends.mysql",
    }[parts.scheme]
    if engine.endswith("mysql"):
        import pymysql

        pymysql.install_as_MySQLdb()
    return {
        "ENGINE": engine,
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "127.0.0.1",
        "PORT": str(parts.port or ""),
    }


DATABASES = {"default": _database(os.environ.get("TG_BEAT_DATABASE_URL", "sqlite:////tmp/beatproject.sqlite3"))}

CELERY_BROKER_URL = os.environ.get("TG_BEAT_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"global_keyprefix": os.environ["TG_BEAT_KEYPREFIX"]} if os.environ.get("TG_BEAT_KEYPREFIX") else {}
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("TG_BEAT_QUEUE", "celery")
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Write last_run_at back after every sent task (default: only every 3 minutes), so the database holds the
# future values as soon as the tasks have run.
CELERY_BEAT_SYNC_EVERY = int(os.environ.get("TG_BEAT_SYNC_EVERY", "1"))
# No result backend: nothing here waits for results, and no worker runs.
CELERY_TASK_IGNORE_RESULT = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

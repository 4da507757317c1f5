"""The project as a stock Django project writes it: the database from a dj-database-url ``DATABASE_URL``
(``postgres://…``, ``mysql://…``, ``sqlite:////abs/path``), the rest as in :mod:`beatproject.settings`.

timeguard's ``django:`` option reads this module in the project's own interpreter (tests/e2e/test_beat_django.py):
nothing about the database is repeated in timeguard's configuration. ``BEAT_MAX_LOOP_INTERVAL`` (seconds, default
celery's) is beat's poll, as a project sets it in settings.
"""

import os

import dj_database_url

from beatproject.settings import *  # noqa: F403 - the shared settings; only the database differs

DATABASES = {"default": dj_database_url.config(conn_max_age=0)}
if DATABASES["default"]["ENGINE"].endswith("mysql"):
    import pymysql

    pymysql.install_as_MySQLdb()  # the project's driver (PyMySQL as MySQLdb), as such projects do
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["OPTIONS"] = {"timeout": 20}  # beat and the test's scripts share the file

if os.environ.get("BEAT_MAX_LOOP_INTERVAL"):
    CELERY_BEAT_MAX_LOOP_INTERVAL = int(os.environ["BEAT_MAX_LOOP_INTERVAL"])

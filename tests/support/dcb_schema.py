# ruff: noqa: S608  (table names from the fixed django-celery-beat prefix, values bound)
"""The REAL django-celery-beat schema in a throw-away database, made by Django's own migrations.

``django-admin migrate django_celery_beat`` runs in a subprocess with a generated settings module, so Django's
global settings never enter the test process. Rows are inserted with SQLAlchemy Core in Django's storage
conventions (research/celery_beat.md §1.8): PostgreSQL aware UTC, MySQL naive UTC, SQLite Django's str() text.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
PREFIX = "django_celery_beat_"


def _reachable(url: str) -> str | None:
    """None if the server answers, else why not."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


def server_problem(backend: str) -> str | None:
    if backend == "postgresql":
        why = _reachable(PG_ADMIN)
        return None if why is None else f"PostgreSQL at 127.0.0.1:5432 is not reachable ({why})"
    if backend == "mysql":
        why = _reachable(MY_ADMIN)
        return None if why is None else f"MariaDB at 127.0.0.1:3306 is not reachable ({why})"
    return None


@dataclass
class BeatDB:
    backend: str  # postgresql | mysql | sqlite
    url: str  # SQLAlchemy URL for the repair
    django: dict[str, Any]  # DATABASES["default"]

    def engine(self) -> Any:
        import sqlalchemy as sa

        return sa.create_engine(self.url, poolclass=sa.pool.NullPool)

    # ---- values in Django's convention (USE_TZ=True)
    def stamp(self, epoch_s: float) -> Any:
        utc = dt.datetime.fromtimestamp(epoch_s, dt.UTC)
        if self.backend == "postgresql":
            return utc
        naive = utc.replace(tzinfo=None)
        return str(naive) if self.backend == "sqlite" else naive

    def epoch(self, value: Any) -> float | None:
        if value is None:
            return None
        stamp = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp()

    def sql(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        import sqlalchemy as sa

        with self.engine().begin() as conn:
            result = conn.execute(sa.text(statement), params or {})
            return list(result.all()) if result.returns_rows else []

    def add_task(
        self,
        name: str,
        *,
        kind: str = "interval",  # interval | crontab | clocked
        last_run_at: float | None,
        date_changed: float,
        enabled: bool = True,
        one_off: bool = False,
        expires: float | None = None,
        clocked_time: float | None = None,
        total_run_count: int = 0,
    ) -> int:
        import sqlalchemy as sa

        with self.engine().begin() as conn:
            interval_id = crontab_id = clocked_id = None
            if kind == "interval":
                conn.execute(sa.text(f"INSERT INTO {PREFIX}intervalschedule (every, period) VALUES (1, 'seconds')"))
                interval_id = conn.execute(sa.text(f"SELECT MAX(id) FROM {PREFIX}intervalschedule")).scalar()
            elif kind == "crontab":
                conn.execute(sa.text(
                    f"INSERT INTO {PREFIX}crontabschedule (minute, hour, day_of_week, day_of_month, month_of_year, "
                    "timezone) VALUES ('*', '*', '*', '*', '*', 'UTC')"))
                crontab_id = conn.execute(sa.text(f"SELECT MAX(id) FROM {PREFIX}crontabschedule")).scalar()
            else:
                assert clocked_time is not None
                conn.execute(sa.text(f"INSERT INTO {PREFIX}clockedschedule (clocked_time) VALUES (:t)"),
                             {"t": self.stamp(clocked_time)})
                clocked_id = conn.execute(sa.text(f"SELECT MAX(id) FROM {PREFIX}clockedschedule")).scalar()
            conn.execute(sa.text(
                f"INSERT INTO {PREFIX}periodictask (name, task, args, kwargs, queue, exchange, routing_key, "
                "expires, enabled, last_run_at, total_run_count, date_changed, description, interval_id, "
                "crontab_id, clocked_id, one_off, headers) VALUES (:name, 'app.tasks.noop', '[]', '{}', NULL, NULL, "
                ":rk, :expires, :enabled, :lr, :trc, :dc, '', :iv, :cr, :cl, :one_off, '{}')"),
                {"name": name, "rk": None, "expires": None if expires is None else self.stamp(expires),
                 "enabled": enabled, "lr": None if last_run_at is None else self.stamp(last_run_at),
                 "trc": total_run_count, "dc": self.stamp(date_changed), "iv": interval_id, "cr": crontab_id,
                 "cl": clocked_id, "one_off": one_off})
            return int(conn.execute(sa.text(f"SELECT id FROM {PREFIX}periodictask WHERE name = :n"),
                                    {"n": name}).scalar())

    def set_last_update(self, epoch_s: float) -> None:
        self.sql(f"DELETE FROM {PREFIX}periodictasks")
        self.sql(f"INSERT INTO {PREFIX}periodictasks (ident, last_update) VALUES (1, :t)", {"t": self.stamp(epoch_s)})

    def tasks(self) -> dict[str, dict[str, Any]]:
        rows = self.sql(f"SELECT name, last_run_at, date_changed, enabled, total_run_count FROM {PREFIX}periodictask")
        return {r[0]: {"last_run_at": r[1] if r[1] is None else self.epoch(r[1]),
                       "date_changed": self.epoch(r[2]), "enabled": bool(r[3]), "total_run_count": r[4]}
                for r in rows}

    def raw_tasks(self) -> dict[str, tuple[Any, Any]]:
        rows = self.sql(f"SELECT name, last_run_at, date_changed FROM {PREFIX}periodictask")
        return {r[0]: (r[1], r[2]) for r in rows}

    def last_update(self) -> float | None:
        rows = self.sql(f"SELECT last_update FROM {PREFIX}periodictasks WHERE ident = 1")
        return self.epoch(rows[0][0]) if rows else None

    def fill(self, tasks: int, future: int, *, future_s: float, past_s: float) -> None:
        """Replace every task by ``tasks`` interval tasks named task-1…task-N in one statement, the first ``future``
        of them with last_run_at and date_changed at ``future_s``, the others at ``past_s`` (large stores)."""
        if self.backend == "postgresql":
            numbers, g = "generate_series(1, :n) AS s(g)", "g"
        elif self.backend == "mysql":  # MariaDB's sequence engine
            numbers, g = f"seq_1_to_{int(tasks)} AS s", "s.seq"
        else:
            g = "g"
            numbers = "(WITH RECURSIVE r(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM r WHERE g < :n) SELECT g FROM r)"
        name = f"CONCAT('task-', {g})" if self.backend == "mysql" else f"'task-' || {g}"
        self.sql(f"DELETE FROM {PREFIX}periodictask")
        self.sql(f"DELETE FROM {PREFIX}intervalschedule")
        self.sql(f"INSERT INTO {PREFIX}intervalschedule (every, period) VALUES (10, 'seconds')")
        self.sql(
            f"INSERT INTO {PREFIX}periodictask (name, task, args, kwargs, expires, enabled, last_run_at, "
            "total_run_count, date_changed, description, interval_id, one_off, headers) "
            f"SELECT {name}, 'app.tasks.noop', '[]', '{{}}', NULL, true, "
            f"CASE WHEN {g} <= :future THEN :fut ELSE :past END, 1, "
            f"CASE WHEN {g} <= :future THEN :fut ELSE :past END, "
            f"'', (SELECT MIN(id) FROM {PREFIX}intervalschedule), false, '{{}}' FROM {numbers}",
            {"future": future, "n": tasks, "fut": self.stamp(future_s), "past": self.stamp(past_s)},
        )


def migrate(django_db: dict[str, Any], workdir: Path) -> None:
    """Create django-celery-beat's tables with its own migrations, in a subprocess."""
    settings = workdir / "tg_dcb_settings.py"
    shim = ""
    if "mysql" in django_db["ENGINE"]:
        # Django's MySQL backend wants mysqlclient; PyMySQL stands in (it reports an old version, hence the bump).
        shim = "import pymysql\npymysql.version_info = (2, 2, 1, 'final', 0)\npymysql.install_as_MySQLdb()\n"
    settings.write_text(shim + textwrap.dedent(f"""\
        SECRET_KEY = "timeguard-tests"
        USE_TZ = True
        TIME_ZONE = "UTC"
        INSTALLED_APPS = ["django_celery_beat"]
        DATABASES = {{"default": {django_db!r}}}
        DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
    """))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tg_dcb_settings", "PYTHONPATH": str(workdir)}
    proc = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "django_celery_beat", "--no-input", "-v", "0"],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=180, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"django migrate failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@contextmanager
def beat_database(backend: str, workdir: Path) -> Iterator[BeatDB]:
    """A fresh database with the django-celery-beat schema; dropped afterwards."""
    import sqlalchemy as sa

    name = f"tg_repair_{secrets.token_hex(4)}"
    if backend == "sqlite":
        path = workdir / f"{name}.sqlite3"
        db = BeatDB("sqlite", f"sqlite:///{path}", {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)})
        migrate(db.django, workdir)
        yield db
        return
    if backend == "postgresql":
        admin, url = PG_ADMIN, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        django = {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": "postgres", "HOST": "127.0.0.1",
                  "PORT": "5432"}
    else:
        admin, url = MY_ADMIN, f"mysql+pymysql://root@127.0.0.1:3306/{name}"
        django = {"ENGINE": "django.db.backends.mysql", "NAME": name, "USER": "root", "PASSWORD": "",
                  "HOST": "127.0.0.1", "PORT": "3306"}
    engine = sa.create_engine(admin, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        migrate(django, workdir)
        yield BeatDB(backend, url, django)
    finally:
        with engine.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")

# ruff: noqa: S608  (table names from the fixed django-celery-beat prefix)
"""The celery_beat repair sees beat's polls in PostgreSQL's pg_stat_activity (timeguard/repair/beat_polls.py).

A real PostgreSQL with the django-celery-beat schema: another session reading ``periodictasks`` the way
``DatabaseScheduler.schedule_changed()`` does is a poll once it started after the reference; the repair's own
sessions (application_name), reads of other tables (``periodictask`` without the s) and polls from before the
reference are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.dcb_schema import PREFIX, beat_database, server_problem
from tests.support.require import need
from timeguard.repair.beat_polls import APPLICATION_NAME
from timeguard.repair.celery_beat import CeleryBeatRepair

pytestmark = pytest.mark.real

# What Django sends for PeriodicTasks.objects.get(ident=1) (django-celery-beat 2.x, schedule_changed()).
POLL = (f'SELECT "{PREFIX}periodictasks"."ident", "{PREFIX}periodictasks"."last_update" FROM '
        f'"{PREFIX}periodictasks" WHERE "{PREFIX}periodictasks"."ident" = 1 LIMIT 21')


@pytest.fixture
def pg(tmp_path: Path) -> Any:
    problem = server_problem("postgresql")
    need(problem is None, problem or "")
    with beat_database("postgresql", tmp_path) as database:
        yield database


def _session(url: str, application_name: str = "") -> Any:
    import psycopg
    import sqlalchemy as sa

    dsn = sa.engine.make_url(url).set(drivername="postgresql")
    return psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True,
                           application_name=application_name)


def test_pg_stat_activity_shows_beats_poll_and_nothing_else(pg: Any) -> None:
    engine = CeleryBeatRepair(pg.url)
    watch = engine._poll_watch()
    assert watch is not None
    beat, ours, other = _session(pg.url), _session(pg.url, APPLICATION_NAME), _session(pg.url)
    try:
        beat.execute(POLL)  # before the reference: not a poll of this wait
        reference = watch.reference()
        assert watch.polls_since(reference) == set()
        ours.execute(POLL)  # the repair's own session
        t = f'"{PREFIX}periodictasks"'
        for not_a_poll in (
            f'SELECT count(*) FROM "{PREFIX}periodictask"',  # beat's reload, the admin…: another table
            f'SELECT {t}."ident", {t}."last_update" FROM {t} WHERE {t}."ident" = 1 '
            f'ORDER BY {t}."ident" ASC LIMIT 1',  # PeriodicTasks.objects.filter(ident=1).first(): a script's
            f'SELECT {t}."ident", {t}."last_update" FROM {t} WHERE {t}."ident" = 1 LIMIT 21 FOR UPDATE',
            f"SELECT * FROM {t}",  # a person looking
        ):
            other.execute(not_a_poll)
            assert watch.polls_since(reference) == set(), not_a_poll
        beat.execute(POLL)
        [(pid, started)] = watch.polls_since(reference)
        assert pid == beat.info.backend_pid and started > reference
        # an UPDATE of the signal (Django's update_changed()) is a write, not beat reading it
        other.execute(f'UPDATE "{PREFIX}periodictasks" SET last_update = now() WHERE ident = 1')
        assert {p for p, _ in watch.polls_since(reference)} == {beat.info.backend_pid}
    finally:
        for conn in (beat, ours, other):
            conn.close()
        watch.close()
        engine.close()


def test_only_postgresql_has_a_session_view(tmp_path: Path) -> None:
    for backend in ("sqlite", "mysql"):
        problem = server_problem(backend)
        if problem is not None:
            continue
        (tmp_path / backend).mkdir()
        with beat_database(backend, tmp_path / backend) as database:
            engine = CeleryBeatRepair(database.url)
            try:
                assert engine._poll_watch() is None
            finally:
                engine.close()

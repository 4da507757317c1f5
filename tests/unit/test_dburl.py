"""timeguard.repair.dburl: dj-database-url and SQLAlchemy URLs → the URL the repair connects with, and Django's
DATABASES entries → such URLs. Classes of input, each refusal naming the option and never showing a password."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.repair.dburl import DatabaseUrlError, connect_url, engine_backend, from_django

# "pw!" marks the secret: no other part of these URLs holds a "!"
PASSWORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=16).map(
    lambda t: f"pw!{t}")
HOSTS = st.sampled_from(["db.example.net", "127.0.0.1", "[::1]", "[2001:db8::5]", "beat-db", ""])
SERVER_SCHEMES = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg", "pgsql": "postgresql+psycopg",
                  "postgis": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql"}


@given(scheme=st.sampled_from(sorted(SERVER_SCHEMES)), host=HOSTS, password=PASSWORDS,
       port=st.one_of(st.none(), st.integers(1, 65535)),
       query=st.sampled_from(["", "?sslmode=require", "?sslmode=verify-full&application_name=beat",
                              "?charset=utf8mb4"]))
def test_dj_database_url_forms_get_the_installed_driver_and_keep_everything_else(
        scheme: str, host: str, password: str, port: int | None, query: str) -> None:
    quoted = urllib.parse.quote(password, safe="")
    rest = f"beat:{quoted}@{host}{f':{port}' if port else ''}/app{query}"
    assert connect_url(f"{scheme}://{rest}") == f"{SERVER_SCHEMES[scheme]}://{rest}"


@pytest.mark.parametrize("url", ["postgresql+psycopg://u@h/db", "mysql+pymysql://u@h/db?charset=utf8mb4",
                                 "mysql+mysqldb://u@h/db", "mariadb+pymysql://u@h/db"])
def test_sqlalchemy_forms_keep_their_driver(url: str) -> None:
    assert connect_url(url) == url


def test_pgsql_with_a_driver_is_named_as_sqlalchemy_knows_it() -> None:
    assert connect_url("pgsql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:////srv/app/db.sqlite3", "sqlite:////srv/app/db.sqlite3"),
    ("sqlite:///db.sqlite3", "sqlite:///db.sqlite3"),
    ("sqlite:////srv/app/db.sqlite3?timeout=20", "sqlite:////srv/app/db.sqlite3?timeout=20"),
])
def test_sqlite_files(url: str, expected: str) -> None:
    assert connect_url(url) == expected


@pytest.mark.parametrize(("url", "why"), [
    ("sqlite://:memory:", "in-memory database or a host"),
    ("sqlite://", "in-memory database or a host"),
    ("sqlite:///:memory:", "in-memory SQLite database is not beat's database"),
    ("sqlite://host/db.sqlite3", "in-memory database or a host"),
    ("oracle://u@h/db", "unsupported database 'oracle'"),
    ("redis://127.0.0.1:6379/0", "unsupported database 'redis'"),
    ("mssql+pyodbc://u@h/db", "unsupported database 'mssql'"),
    ("postgres://u@h:99999/db", "the port must be a number from 1 to 65535"),
    ("postgres://u@h:0/db", "port 0 is not a port"),
    ("mysql://u@h:-1/db", "the port must be a number"),
    ("mysql://u@h:http/db", "the port must be a number"),
    ("postgres://u@[::1/db", "an IPv6 host goes in brackets"),
    ("postgres://u@h", "names no database"),
    ("postgres://u@h/", "names no database"),
    ("mysql://u@h/a/b", "contains '/'"),
    ("postgres://u@h/db#x", "no #fragment"),
    ("db.example.net/app", "is not a database URL"),
    ("", "is empty"),
    ("   ", "is empty"),
])
def test_each_class_of_bad_url_is_one_clear_error_naming_the_option(url: str, why: str) -> None:
    with pytest.raises(DatabaseUrlError) as info:
        connect_url(url, option="--database-url")
    message = str(info.value)
    assert message.startswith("--database-url") and why in message and "\n" not in message


@pytest.mark.parametrize("value", [None, 5, ["postgres://u@h/db"]])
def test_a_url_that_is_not_text_is_refused(value: object) -> None:
    with pytest.raises(DatabaseUrlError, match="database_url is empty"):
        connect_url(value)


@given(password=PASSWORDS, bad=st.sampled_from(["h:99999/db", "h/", "[::1/db", "h:0/db", "h/a/b"]),
       scheme=st.sampled_from(["postgres", "mysql", "oracle"]))
def test_a_refusal_never_shows_the_password(password: str, bad: str, scheme: str) -> None:
    quoted = urllib.parse.quote(password, safe="")
    with pytest.raises(DatabaseUrlError) as info:
        connect_url(f"{scheme}://beat:{quoted}@{bad}")
    assert password not in str(info.value) and quoted not in str(info.value)


# ---------------------------------------------------------------------------------------------- DATABASES

@pytest.mark.parametrize(("engine", "backend"), [
    ("django.db.backends.postgresql", "postgresql"), ("django.db.backends.postgresql_psycopg2", "postgresql"),
    ("django.contrib.gis.db.backends.postgis", "postgresql"),
    ("django_prometheus.db.backends.postgresql", "postgresql"),
    ("django.db.backends.mysql", "mysql"), ("django.db.backends.sqlite3", "sqlite"),
    ("django.db.backends.oracle", None), ("", None), (None, None),
])
def test_engines(engine: str | None, backend: str | None) -> None:
    assert engine_backend(engine) == backend


@given(password=PASSWORDS, user=st.text(min_size=1, max_size=8).filter(lambda t: "\x00" not in t),
       name=st.text(alphabet="abcxyz_-0123456789", min_size=1, max_size=12),
       host=st.sampled_from(["db.example.net", "127.0.0.1", "::1", ""]), port=st.sampled_from(["", "5432", 3306]),
       engine=st.sampled_from(["django.db.backends.postgresql", "django.db.backends.mysql"]))
def test_a_databases_entry_round_trips_through_the_url(password: str, user: str, name: str, *, host: str,
                                                      port: str | int, engine: str) -> None:
    import sqlalchemy as sa

    url = from_django({"ENGINE": engine, "NAME": name, "USER": user, "PASSWORD": password, "HOST": host,
                       "PORT": port})
    parsed = sa.engine.make_url(connect_url(url))
    assert (parsed.username, parsed.password, parsed.database) == (user, password, name)
    assert (parsed.host or "") == host and str(parsed.port or "") == str(port)
    assert parsed.get_backend_name() == ("postgresql" if engine.endswith("postgresql") else "mysql")


def test_databases_options_that_the_driver_shares_become_query_options() -> None:
    url = from_django({"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "/var/run/postgresql",
                       "OPTIONS": {"sslmode": "require", "isolation_level": 2, "pool": True,
                                   "application_name": "beat"}})
    assert url == "postgres:///app?host=%2Fvar%2Frun%2Fpostgresql&sslmode=require&application_name=beat"
    assert from_django({"ENGINE": "django.db.backends.mysql", "NAME": "app", "HOST": "/run/mysqld/mysqld.sock",
                        "OPTIONS": {"charset": "utf8mb4", "init_command": "SET x=1"}}) == \
        "mysql:///app?unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock&charset=utf8mb4"


@pytest.mark.parametrize(("name", "url"), [("/srv/app/db.sqlite3", "sqlite:////srv/app/db.sqlite3"),
                                           ("//srv/app/db.sqlite3", "sqlite:////srv/app/db.sqlite3"),
                                           ("/srv/my app/db.sqlite3", "sqlite:////srv/my%20app/db.sqlite3")])
def test_sqlite_names(name: str, url: str) -> None:
    assert from_django({"ENGINE": "django.db.backends.sqlite3", "NAME": name}) == url


@pytest.mark.parametrize(("entry", "why"), [
    ({"ENGINE": "django.db.backends.oracle", "NAME": "x"}, "ENGINE 'django.db.backends.oracle' is not supported"),
    ({"ENGINE": "django.db.backends.postgresql", "NAME": ""}, "NAME is empty"),
    ({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}, "is not a SQLite file"),
])
def test_databases_entries_the_repair_cannot_use(entry: dict[str, str], why: str) -> None:
    with pytest.raises(DatabaseUrlError, match=why) as info:
        from_django(entry, alias="beat")
    assert str(info.value).startswith("DATABASES['beat']")

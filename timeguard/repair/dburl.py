"""Database URLs as Django users write them, turned into the SQLAlchemy URLs the celery_beat repair connects with.

Accepted wherever a database URL is (the hook's ``database_url``/``_env``/``_file``, ``--database-url``,
``$TIMEGUARD_BEAT_DATABASE_URL``):

* dj-database-url's forms: ``postgres://``, ``postgresql://``, ``pgsql://``, ``postgis://``, ``mysql://``,
  ``mariadb://``, ``sqlite:///relative.sqlite3``, ``sqlite:////abs/path.sqlite3``;
* SQLAlchemy's ``dialect+driver://`` forms (``postgresql+psycopg://``, ``mysql+pymysql://``): the driver is kept.

A URL without a driver gets the one the ``celery-beat`` extra installs (psycopg 3, PyMySQL), not SQLAlchemy's
default (psycopg2, MySQLdb). Everything after the scheme — percent-encoded user and password, an IPv6 host in
brackets, the query (``?sslmode=require``) — is passed on as written. An empty host is the server's local socket.
Every refusal names the option and shows the URL without its password.

:func:`from_django` builds such a URL from one entry of Django's ``DATABASES`` (what the settings probe reads).
Pure: no I/O, no SQLAlchemy import.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

from timeguard.secrets import MASK, redact_url

#: The scheme's dialect (before any ``+driver``) → the database the repair knows.
DIALECTS = {"postgres": "postgresql", "postgresql": "postgresql", "pgsql": "postgresql", "postgis": "postgresql",
            "mysql": "mysql", "mariadb": "mariadb", "sqlite": "sqlite"}
#: The driver a URL without one gets: the ones the celery-beat extra installs.
DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql", "mariadb": "mariadb+pymysql",
                   "sqlite": "sqlite"}
FORMS = ("postgres://user:password@host:5432/name, mysql://…, mariadb://…, sqlite:////abs/path.sqlite3, or "
         "SQLAlchemy's postgresql+psycopg://, mysql+pymysql://")
_IN_MEMORY = ("", ":memory:")


class DatabaseUrlError(ValueError):
    """A URL the repair cannot use: the message names the option and shows the URL without its password."""


def connect_url(url: Any, *, option: str = "database_url") -> str:
    """``url`` (dj-database-url or SQLAlchemy form) → the SQLAlchemy URL to connect with; DatabaseUrlError when it
    is not one the repair can use."""
    if not isinstance(url, str) or not url.strip():
        raise DatabaseUrlError(f"{option} is empty: give a database URL ({FORMS})")
    url = url.strip()
    shown = shown_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise DatabaseUrlError(f"{option} {shown!r} is not a database URL ({FORMS})")
    dialect, _, driver = scheme.lower().partition("+")
    backend = DIALECTS.get(dialect)
    if backend is None:
        raise DatabaseUrlError(f"{option} {shown}: unsupported database {dialect!r} ({FORMS})")
    if backend == "sqlite":
        return _sqlite(url, rest, option, shown)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL", a port that is not a number
        raise DatabaseUrlError(f"{option} {shown}: {_why(exc)}") from None
    if port == 0:
        raise DatabaseUrlError(f"{option} {shown}: port 0 is not a port (1–65535)")
    if parts.hostname is not None and any(c.isspace() for c in parts.hostname):
        raise DatabaseUrlError(f"{option} {shown}: the host {parts.hostname!r} contains a space")
    name = urllib.parse.unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not name:
        raise DatabaseUrlError(f"{option} {shown}: names no database (…/NAME after the host)")
    if "/" in parts.path[1:]:
        raise DatabaseUrlError(f"{option} {shown}: the database name {name!r} contains '/' (one name after the host)")
    if parts.fragment:
        raise DatabaseUrlError(f"{option} {shown}: a database URL has no #fragment")
    target = f"{dialect}+{driver}" if driver else DEFAULT_DRIVERS[backend]
    if driver and dialect != backend:  # pgsql+psycopg: SQLAlchemy knows the dialect as postgresql only
        target = f"{backend}+{driver}"
    return f"{target}://{rest}"


def shown_url(url: str) -> str:
    """``url`` without its password or secret query values, even when it is too broken to parse (then the
    userinfo password and the whole query are masked)."""
    try:
        urllib.parse.urlsplit(url).port  # noqa: B018 - raises for what redact_url would return unchanged
    except ValueError:
        scheme, sep, rest = url.partition("://")
        authority, slash, tail = rest.partition("/")
        if "@" in authority:
            userinfo, host = authority.rsplit("@", 1)
            user, colon, _ = userinfo.partition(":")
            authority = f"{user}{':' + MASK if colon else ''}@{host}"
        path, question, _ = tail.partition("?")
        return f"{scheme}{sep}{authority}{slash}{path}" + (f"?{MASK}" if question else "")
    return redact_url(url)


def _why(exc: ValueError) -> str:
    text = str(exc)
    if "out of range" in text or "invalid literal" in text or "Port could not be cast" in text:
        return "the port must be a number from 1 to 65535"
    if "IPv6" in text:
        return "an IPv6 host goes in brackets: postgres://user@[::1]:5432/name"
    return text


def _sqlite(url: str, rest: str, option: str, shown: str) -> str:
    if not rest.startswith("/"):
        # sqlite://:memory:, sqlite://host/x: no file, or a host SQLite does not have
        raise DatabaseUrlError(f"{option} {shown}: give the file of beat's SQLite database "
                               "(sqlite:////abs/path.sqlite3); an in-memory database or a host is not one")
    path, _, query = rest[1:].partition("?")
    if path in _IN_MEMORY:
        raise DatabaseUrlError(f"{option} {shown}: an in-memory SQLite database is not beat's database; give its "
                               "file (sqlite:////abs/path.sqlite3)")
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


# --------------------------------------------------------------------------------------- Django's DATABASES

#: Query options of a Django ``OPTIONS`` mapping that mean the same to the repair's driver (psycopg, PyMySQL);
#: others (isolation_level, pool, init_command, nested dicts…) only concern Django's own connections.
PG_OPTIONS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "connect_timeout",
                        "application_name", "options", "target_session_attrs", "service", "passfile",
                        "channel_binding", "gssencmode"})
MYSQL_OPTIONS = frozenset({"charset", "unix_socket", "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert",
                           "ssl_verify_identity", "connect_timeout", "read_timeout", "write_timeout"})


def engine_backend(engine: Any) -> str | None:
    """A Django ENGINE (``django.db.backends.postgresql``, a GIS or instrumented wrapper of it) → postgresql,
    mysql or sqlite; None when the repair does not support it."""
    last = str(engine).rsplit(".", 1)[-1].lower() if engine else ""
    if last in ("postgresql", "postgresql_psycopg2", "postgis"):
        return "postgresql"
    if last == "mysql":
        return "mysql"
    if last in ("sqlite3", "spatialite"):
        return "sqlite"
    return None


def from_django(database: Mapping[str, Any], *, alias: str = "default") -> str:
    """One entry of Django's ``DATABASES`` → a URL :func:`connect_url` accepts (the password percent-encoded in
    it); DatabaseUrlError for an engine the repair does not support or an entry without a name."""
    where = f"DATABASES[{alias!r}]"
    backend = engine_backend(database.get("ENGINE"))
    if backend is None:
        raise DatabaseUrlError(f"{where}: ENGINE {database.get('ENGINE')!r} is not supported by the celery_beat "
                               "repair (PostgreSQL, MySQL/MariaDB, SQLite)")
    name = str(database.get("NAME") or "")
    if backend == "sqlite":
        if name in _IN_MEMORY or name.startswith("file:"):
            raise DatabaseUrlError(f"{where}: NAME {name!r} is not a SQLite file the repair can open")
        if name.startswith("/"):
            name = "/" + name.lstrip("/")  # POSIX keeps a leading "//" (abspath too): one is the same file
        return "sqlite:///" + urllib.parse.quote(name, safe="/")
    options = database.get("OPTIONS") or {}
    if not name and backend == "postgresql":
        name = str(options.get("dbname") or "")  # libpq also takes it from OPTIONS
    if not name:
        raise DatabaseUrlError(f"{where}: NAME is empty")
    q = urllib.parse.quote
    user, password = str(database.get("USER") or ""), str(database.get("PASSWORD") or "")
    userinfo = q(user, safe="") + (f":{q(password, safe='')}" if password else "")
    host, port = str(database.get("HOST") or ""), str(database.get("PORT") or "")
    query: list[tuple[str, str]] = []
    if host.startswith("/"):  # a socket directory (PostgreSQL) or socket file (MySQL), not a host name
        query.append(("host" if backend == "postgresql" else "unix_socket", host))
        host = ""
    elif ":" in host:
        host = f"[{host}]"
    allowed = PG_OPTIONS if backend == "postgresql" else MYSQL_OPTIONS
    for key, value in options.items():
        if key in allowed and isinstance(value, str | int | float) and not isinstance(value, bool):
            query.append((key, str(value)))
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += host + (f":{port}" if port else "")
    scheme = "postgres" if backend == "postgresql" else "mysql"
    tail = f"?{urllib.parse.urlencode(query)}" if query else ""
    return f"{scheme}://{netloc}/{q(name, safe='')}{tail}"

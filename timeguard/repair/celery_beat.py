"""Repair a django-celery-beat database after the clock was wrong in the future (research/celery_beat.md).

A task whose ``last_run_at`` (or, 2.8+, ``date_changed`` when ``last_run_at`` is NULL) lies in the future is
never due again until that date, and a *running* beat only rebuilds its schedule when
``periodictasks.last_update`` becomes strictly greater than the value it last read. So one round is:

* Phase A, one transaction: lock the future rows, record their old values in the journal (undo), clamp
  ``last_run_at`` and ``date_changed`` to the trusted now with set-based compare-and-set UPDATEs
  (``WHERE col > now + tolerance``), ``last_update := now_A``.
* wait until beat has polled, so it has read ``now_A``;
* Phase B: ``last_update := now_B > now_A``, so every running beat reloads;
* wait until beat's reload is over and look for future rows: a beat that still held unsynced future values
  writes them back when it reloads (research §1.5), so rounds repeat until one finds nothing (bounded by
  ``max_rounds``).

How long each wait lasts is :mod:`timeguard.repair.beat_polls`: as long as *this* beat needs — its poll, seen in
the database's session view where there is one (PostgreSQL), else beat's ``max_interval`` + a margin.

Never NULL (beat 2.8+ would fall back to ``date_changed``); tasks that fired early or were disabled as expired
during the false period are reported, never re-enabled. Storage conventions (research §1.8) are options with
safe defaults: ``use_tz=True``, ``tz_aware=True``, ``time_zone=UTC``.

The trusted now is always passed in (``now_s`` / ``now_fn``): this module never reads the host clock.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import itertools
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from timeguard.config import option
from timeguard.repair import dburl
from timeguard.repair.beat_polls import APPLICATION_NAME, PollWatch, PostgresPollWatch, Waited, wait_for_polls
from timeguard.repair.django_settings import DJANGO_SCHEMA, DjangoSettings, DjangoSource, probe
from timeguard.repair.evidence import MAX_OFFSET_RANGE_S
from timeguard.repair.target import (
    READABLE_BEFORE,
    READABLE_FROM,
    UTC,
    Audit,
    Plan,
    RepairError,
    TargetKind,
    UndoOutcome,
    cancellable_sleep,
    checked_now,
    fmt_utc,
    format_table,
    range_problem,
    unreadable_note,
    url_from_options,
)
from timeguard.secrets import MASK, redact_text, redact_url
from timeguard.timefmt import fmt_duration

if TYPE_CHECKING:
    from timeguard.repair.undo import UndoLog

TARGET = "celery_beat"  # the kind's name: the hook's type, the undo log's key

DEFAULT_TABLE_PREFIX = "django_celery_beat_"
#: Future means beyond now + tolerance: 10 min when the storage convention is known (USE_TZ=True), 26 h for
#: USE_TZ=False, where naive local and naive UTC values can differ by any UTC offset (research §0.2, §1.8).
DEFAULT_TOLERANCE_S = 600.0
DEFAULT_TOLERANCE_NAIVE_S = 26 * 3600.0
#: Beat's own default (DatabaseScheduler.max_interval without --max-interval or beat_max_loop_interval): the
#: budget of a wait when neither the configuration nor `timeguard discover` says what this beat runs with.
DEFAULT_BEAT_MAX_INTERVAL_S = 5.0
#: Added to max_interval: two polls are at most max_interval + one tick's own work apart (Celery's loop:
#: ``interval = tick(); sleep(interval)``). After a rollback a tick is one indexed read of periodictasks and the
#: sends of the few tasks still due (milliseconds each on a local broker); 0.5 s also covers the commit racing a
#: poll that started just before it. A longer tick (a broker that blocks a send) is what the session view
#: (beat_polls.py) sees through; where there is none, raise wait_margin_s.
DEFAULT_WAIT_MARGIN_S = 0.5
DEFAULT_MAX_ROUNDS = 3
DEFAULT_LOCK_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = "pip install 'timeguard[celery-beat]'"
#: Every numeric option of the repair (hook, CLI, engine): (minimum, maximum, whole number). NaN compares False
#: with everything, so a NaN would switch off the check it feeds; inf and negatives are just as meaningless.
NUMERIC_OPTIONS: dict[str, tuple[float, float, bool]] = {
    "tolerance_s": (0.0, 366 * 86400.0, False),
    "beat_max_interval_s": (0.0, 3600.0, False),
    "wait_margin_s": (0.0, 3600.0, False),
    "lock_timeout_s": (0.1, 3600.0, False),
    "connect_timeout_s": (0.1, 3600.0, False),
    "max_offset_s": (*MAX_OFFSET_RANGE_S, False),
    "max_rounds": (1, 100, True),
}
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
# Which convention a column follows: "lr" = last_run_at (beat's _default_now), "dc" = Django's now()
# (date_changed, last_update, expires, clocked_time).
_COLUMN_KIND = {"last_run_at": "lr", "date_changed": "dc", "last_update": "dc", "expires": "dc", "clocked_time": "dc"}
#: Rows fetched from the database at a time (a server-side cursor), and undo records per journal row: a round holds
#: a batch or two, never the whole set (100,000 rows held whole cost ~250 MiB of tuples, records and JSON).
STREAM_BATCH = 1000
#: Changes and report items a plan lists by default; the rest are counted (Plan.totals, BeatPlan.report_total). A
#: hook's result and an audit's details are stored in the journal: 50,000 listed rows there would be megabytes per
#: run. The full list: ``timeguard repair celery-beat --dry-run`` (plan(limit=None), streamed) and, after a
#: repair, its undo records (``timeguard repair undo INCIDENT --dry-run``).
PLAN_LIST_MAX = 100
#: Task names an audit's details name (the first ones in name order).
AUDIT_TASKS = 50


def number_problem(key: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for the numeric option ``key`` (:data:`NUMERIC_OPTIONS`), else why not,
    for a person. Booleans, strings, NaN, ±inf and values out of range are refused."""
    low, high, whole = NUMERIC_OPTIONS[key]
    return range_problem(value, low, high, whole=whole)


class _Race(Exception):
    """A row became future between the locking read and the UPDATE: roll back and redo the round."""


class _Recorder:
    """Writes one round's undo records to the journal in a thread, batch by batch as the locked rows stream in from
    the database, within ONE journal transaction (the round's records are committed together or not at all). At
    most two batches wait in the queue, so the round never holds its whole record set. ``wait`` commits and returns
    once everything is written, or raises; ``abort`` rolls the journal transaction back."""

    _END, _ABORT = object(), object()

    def __init__(self, build: Callable[[list[tuple[Any, ...]]], list[tuple[Any, ...]]], undo_log: UndoLog,
                 last: tuple[Any, ...], *, incident_id: str, repair_id: str, fingerprint: str, wall_s: float,
                 mono_s: float) -> None:
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)

        def run() -> None:
            try:
                with undo_log.recording(TARGET, incident_id, repair_id, fingerprint, applied_wall_s=wall_s,
                                        applied_mono_s=mono_s) as add:
                    while (batch := self._queue.get()) is not self._END:
                        if batch is self._ABORT:
                            raise _Aborted
                        add(build(batch))
                    add([last])
            except _Aborted:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self.error = exc
                while self._queue.get() not in (self._END, self._ABORT):  # let put() and wait() finish
                    pass

        self.thread = threading.Thread(target=run, name="repair-undo-record", daemon=True)
        self.thread.start()

    def put(self, batch: list[tuple[Any, ...]]) -> None:
        if self.error is not None:  # stop reading the rows: the round is rolled back
            raise RepairError(f"the undo records could not be written, nothing was changed: {self.error}")
        self._queue.put(batch)

    def wait(self) -> None:
        self._queue.put(self._END)
        self.thread.join()
        if self.error is not None:
            raise RepairError(f"the undo records could not be written, nothing was changed: {self.error}")

    def abort(self) -> None:
        self._queue.put(self._ABORT)
        self.thread.join()


class _Aborted(Exception):
    """The round failed before its records were complete: the recorder rolls its journal transaction back."""


@dataclass(frozen=True, slots=True)
class PlannedChange:
    table: str  # "periodictask" or "periodictasks"
    row_id: int
    name: str
    column: str
    old_s: float | None  # None: last_update held a value the engine cannot read (it is replaced all the same)
    new_s: float
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def item(self) -> str:
        return f"{self.table}:{self.row_id}"

    @property
    def field(self) -> str:
        return self.column


@dataclass(frozen=True, slots=True)
class ReportItem:
    """Something the false period left behind that the repair deliberately does not undo."""

    row_id: int
    name: str
    kind: str  # "fired_early" | "expired_disabled"
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class UnreadableValue:
    """A timestamp the engine cannot read (not a date, another type, beyond the calendar): its row is left as it
    is, and said so."""

    table: str  # "periodictask", "periodictasks" or "clockedschedule"
    row_id: int
    name: str
    column: str
    raw: str  # repr of the stored value
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.name} {self.column} {self.raw}: {self.why}"

    @property
    def item(self) -> str:
        return f"{self.table}:{self.row_id}"

    @property
    def field(self) -> str:
        return self.column


@dataclass(frozen=True, slots=True)
class BeatPlan(Plan):
    """A celery_beat plan: ``changes`` and ``report`` list the first ones (all with ``limit=None``); these fields
    speak for the whole store, counted while the rows streamed past."""

    max_old_s: float | None = None  # the furthest readable old value among all changes
    tasks: tuple[str, ...] = ()  # the first AUDIT_TASKS names (in name order) of the tasks with a change
    tasks_total: int = 0
    report_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**Plan.to_dict(self), "report_total": self.report_total}


@dataclass(frozen=True, slots=True)
class RoundResult:
    number: int
    last_run_at: int
    date_changed: int
    last_update: int
    now_a_s: float
    now_b_s: float | None
    duration_s: float
    #: How long the waits after phase A and after phase B took, and how each ended (beat_polls.Waited.how).
    waited_a_s: float = 0.0
    waited_b_s: float = 0.0
    waits: str = ""


@dataclass(frozen=True, slots=True)
class RepairOutcome:
    incident_id: str
    repair_id: str
    plan: BeatPlan  # what was future before round 1 (the report comes from it; the first changes listed)
    rounds: tuple[RoundResult, ...]
    clean: bool  # the last look found no future timestamp
    cancelled: bool = False  # cut short (the daemon stops, the hook timed out): not verified, not failed

    @property
    def changed(self) -> bool:
        return bool(self.rounds)

    def rows_changed(self) -> dict[str, int]:
        total = {"last_run_at": 0, "date_changed": 0, "last_update": 0}
        for r in self.rounds:
            total["last_run_at"] += r.last_run_at
            total["date_changed"] += r.date_changed
            total["last_update"] += r.last_update
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"incident_id": self.incident_id, "repair_id": self.repair_id, "clean": self.clean,
                "cancelled": self.cancelled,
                "rows_changed": self.rows_changed(), "rounds": [asdict(r) for r in self.rounds],
                "report": [r.to_dict() for r in self.plan.report], "report_total": self.plan.report_total,
                "unreadable": [u.to_dict() for u in self.plan.unreadable], "plan": self.plan.to_dict()}


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError as exc:
        raise RepairError(f"the celery_beat repair needs SQLAlchemy and a database driver: {INSTALL_HINT}") from exc
    return sqlalchemy


def _url_secrets(url: str) -> list[str]:
    """The secret values in ``url`` as written and percent-decoded: the userinfo password and every query value
    whose name :func:`redact_url` masks. Longest first, so a secret that contains another is replaced whole."""
    found: set[str] = set()
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            found.update({parts.password, urllib.parse.unquote(parts.password)})
        masked = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(redact_url(url)).query, keep_blank_values=True))
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if masked.get(key) == MASK and value != MASK:
                found.update({value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)})
    except ValueError:
        pass
    # Short ones are left to redact_text (URLs, password=… in messages): replacing every "ab" would garble text.
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


class CeleryBeatRepair:
    """One django-celery-beat database. Thread-safe to the extent that each call opens its own connection."""

    def __init__(
        self,
        database_url: str,
        *,
        table_prefix: str = DEFAULT_TABLE_PREFIX,
        schema: str | None = None,
        use_tz: bool = True,
        tz_aware: bool = True,
        time_zone: str = "UTC",
        tolerance_s: float | None = None,
        beat_max_interval_s: float = DEFAULT_BEAT_MAX_INTERVAL_S,
        wait_margin_s: float = DEFAULT_WAIT_MARGIN_S,
        max_rounds: int = DEFAULT_MAX_ROUNDS,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        source: str = "database_url",
    ) -> None:
        sa = _sqlalchemy()
        # Secrets as given (the userinfo password, secret-named query values): scrubbed from every message, since a
        # driver may echo parts of the URL.
        self._secrets = _url_secrets(database_url) if isinstance(database_url, str) else []
        # dj-database-url's forms (postgres://, pgsql://, mysql://…) get the installed driver (timeguard.repair.dburl)
        try:
            connect = dburl.connect_url(database_url, option=source)
        except dburl.DatabaseUrlError as exc:
            raise RepairError(self._scrub(str(exc))) from None
        try:
            given = sa.engine.make_url(database_url.strip())
            self.url = sa.engine.make_url(connect)  # what is connected to
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and ValueError variants
            raise RepairError(f"{source} is not a database URL ({self._scrub(str(exc))})") from None
        self.given_url = given  # as written: names the database in messages and in the journal's fingerprint
        self.source = source
        self.backend = self.url.get_backend_name()
        numbers = {"beat_max_interval_s": beat_max_interval_s, "wait_margin_s": wait_margin_s,
                   "max_rounds": max_rounds, "lock_timeout_s": lock_timeout_s,
                   "connect_timeout_s": connect_timeout_s}
        if tolerance_s is not None:
            numbers["tolerance_s"] = tolerance_s
        for key, value in numbers.items():
            problem = number_problem(key, value)
            if problem is not None:
                raise RepairError(f"{key} {problem}")
        try:
            self.zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RepairError(f"time_zone {time_zone!r} is not a known IANA time zone") from None
        self.table_prefix = table_prefix
        self.schema = schema
        self.use_tz = use_tz
        self.tz_aware = tz_aware
        self.time_zone = time_zone
        self.tolerance_s = (
            float(tolerance_s) if tolerance_s is not None
            else DEFAULT_TOLERANCE_S if use_tz else DEFAULT_TOLERANCE_NAIVE_S
        )
        self.beat_max_interval_s = float(beat_max_interval_s)
        self.wait_margin_s = float(wait_margin_s)
        self.max_rounds = int(max_rounds)
        self.lock_timeout_s = float(lock_timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._engines: dict[bool, Any] = {}
        self._tables()

    # ------------------------------------------------------------------------------------------ identity

    @property
    def where(self) -> str:
        """The database URL as given, without its password or any secret query value (``?password=***``): safe
        for logs, errors and the journal. The same text every time: it is part of the fingerprint."""
        return redact_url(str(self.given_url.render_as_string(hide_password=True)))

    def _scrub(self, text: str) -> str:
        """``text`` (a driver's message) without this URL's secrets, whatever form they are echoed in."""
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return redact_text(text)

    @property
    def fingerprint(self) -> str:
        return f"{self.where}#{self.schema + '.' if self.schema else ''}{self.table_prefix}"

    def same_database(self, fingerprint: str) -> bool:
        """Is ``fingerprint`` (from the journal) this database? Both are redacted: journal migration 5 scrubbed
        the query-string secrets that older versions kept in clear."""
        return fingerprint == self.fingerprint

    @property
    def is_pg(self) -> bool:
        return self.backend == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def wait_s(self) -> float:
        """The budget of one wait for beat's poll: the longest two polls can be apart (beat_polls.py)."""
        return self.beat_max_interval_s + self.wait_margin_s

    def _poll_watch(self) -> PollWatch | None:
        """The database's view of beat's polls (PostgreSQL), or None: then every wait is its budget."""
        if not self.is_pg:
            return None
        try:
            return PostgresPollWatch(self._get_engine(), self.t_tasks.name, self.schema)
        except Exception:  # noqa: BLE001 - a shortcut only: without it the repair waits its budget
            return None

    def _wait_for_beat(self, watch: PollWatch | None, polls: int, sleep: Callable[[float], None],
                       mono: Callable[[], float], cancelled: Callable[[], bool]) -> Waited:
        return wait_for_polls(watch, polls=polls, budget_s=self.wait_s, sleep=sleep, mono=mono, cancelled=cancelled)

    # ------------------------------------------------------------------------------------------ plumbing

    def _tables(self) -> None:
        sa = _sqlalchemy()
        # SQLite stores Django's str(datetime) as TEXT: read and write the raw text, so comparisons are the
        # lexicographic ones Django's layout makes correct and undo restores the exact bytes.
        stamp = sa.String() if self.is_sqlite else sa.DateTime(timezone=self.is_pg)
        md = sa.MetaData(schema=self.schema)
        p = self.table_prefix
        self.t_task = sa.Table(
            f"{p}periodictask", md,
            sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String),
            sa.Column("last_run_at", stamp), sa.Column("date_changed", stamp), sa.Column("enabled", sa.Boolean),
            sa.Column("one_off", sa.Boolean), sa.Column("total_run_count", sa.Integer),
            sa.Column("expires", stamp), sa.Column("clocked_id", sa.Integer),
        )
        self.t_tasks = sa.Table(f"{p}periodictasks", md, sa.Column("ident", sa.SmallInteger, primary_key=True),
                                sa.Column("last_update", stamp))
        self.t_clocked = sa.Table(f"{p}clockedschedule", md, sa.Column("id", sa.Integer, primary_key=True),
                                  sa.Column("clocked_time", stamp))

    def _sqlite_path(self) -> str:
        database = self.url.database or ""
        if database in ("", ":memory:") or self.url.query.get("uri") or database.startswith("file:"):
            raise RepairError(f"{self.source} {self.where}: give the path of the beat's SQLite file "
                              "(sqlite:////abs/path.sqlite3), not an in-memory or URI database")
        return os.path.abspath(database)

    def _get_engine(self, read_only: bool = False) -> Any:
        engine = self._engines.get(read_only)
        if engine is not None:
            return engine
        sa = _sqlalchemy()
        connect_args: dict[str, Any] = {}
        creator = None
        if self.backend in ("postgresql", "mysql", "mariadb"):
            connect_args["connect_timeout"] = max(1, round(self.connect_timeout_s))
            if self.is_pg:  # so that the wait for beat's poll never takes one of ours for it (beat_polls.py)
                connect_args["application_name"] = APPLICATION_NAME
        else:
            path = self._sqlite_path()
            if not os.path.exists(path):  # checked first: SQLite would create an empty file
                raise RepairError(f"{self.where}: no such database: {path} does not exist")
            # mode=ro for reading (a dry run or an audit needs no write access), mode=rw for a repair: neither
            # ever creates a file, not even when it vanishes after the check above.
            uri = f"file:{urllib.parse.quote(path)}?mode={'ro' if read_only else 'rw'}"

            def creator() -> Any:
                return sqlite3.connect(uri, uri=True, timeout=self.lock_timeout_s, check_same_thread=False)
        try:
            if creator is not None:
                engine = sa.create_engine("sqlite://", poolclass=sa.pool.NullPool, creator=creator)
            else:
                engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool, connect_args=connect_args)
        except ImportError as exc:
            raise RepairError(self._driver_hint(exc)) from None
        except Exception as exc:  # noqa: BLE001 - argument errors from the dialect
            raise RepairError(f"{self.source} {self.where}: {self._scrub(str(exc))}") from None
        if self.is_sqlite:
            # pysqlite's own transaction handling defers BEGIN; BEGIN IMMEDIATE takes the write lock up front so
            # two agents on one file serialise instead of one failing at its first UPDATE.
            @sa.event.listens_for(engine, "connect")
            def _autocommit(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None

            @sa.event.listens_for(engine, "begin")
            def _begin_immediate(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        self._engines[read_only] = engine
        return engine

    def _driver_hint(self, exc: ImportError) -> str:
        module = getattr(exc, "name", None) or str(exc)
        ours = {"postgresql": "postgresql+psycopg://", "mysql": "mysql+pymysql://", "mariadb": "mariadb+pymysql://"}
        suggestion = ours.get(self.backend)
        if suggestion and self.url.drivername != dburl.DEFAULT_DRIVERS.get(self.backend):
            return (f"{self.where}: its driver ({self.url.get_driver_name()}) is not installed (no module "
                    f"{module!r}); {INSTALL_HINT} installs the one {suggestion} uses: write the URL that way")
        return f"{self.where}: no driver (no module {module!r}): {INSTALL_HINT}"

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    @contextmanager
    def _transaction(self, what: str, *, read_only: bool = False) -> Iterator[Any]:
        sa = _sqlalchemy()
        engine = self._get_engine(read_only)
        connected = False
        try:
            with engine.begin() as conn:
                connected = True
                if self.is_pg:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
                    # values come back in UTC: the readable range (years 2–9998) is judged the same in Python
                    conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
                elif not self.is_sqlite:
                    conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {max(1, round(self.lock_timeout_s))}")
                self._check_tables(conn)
                yield conn
        except sa.exc.DBAPIError as exc:
            raise self._db_error(what, exc) from None
        except Exception as exc:
            if connected:
                raise
            # the driver refused its arguments (a query option of the URL: ?port=x, ?unknown=1, ?charset=0) with
            # whatever exception it raises (TypeError, ValueError, AttributeError…)
            raise RepairError(f"{self.where}: cannot connect: the driver refused the URL's options "
                              f"({self._scrub(str(exc))})") from None

    def _db_error(self, what: str, exc: Any) -> RepairError:
        first = str(getattr(exc, "orig", exc)).strip()
        text = self._scrub(first.splitlines()[0]) if first else ""
        low = text.lower()
        if "lock" in low or "55p03" in low or "1205" in low:
            return RepairError(
                f"{self.where}: {what}: the beat tables are locked by another transaction for more than "
                f"{self.lock_timeout_s:g} s ({text}); retry later"
            )
        refused = ("connect", "unable to open", "access denied", "authentication failed", "unknown database")
        if getattr(exc, "connection_invalidated", False) or any(word in low for word in refused):
            return RepairError(f"{self.where}: cannot connect ({text})")
        return RepairError(f"{self.where}: {what} failed: {text}")

    def _check_tables(self, conn: Any) -> None:
        sa = _sqlalchemy()
        inspector = sa.inspect(conn)
        missing = [t.name for t in (self.t_task, self.t_tasks, self.t_clocked)
                   if not inspector.has_table(t.name, schema=self.schema)]
        if missing:
            raise RepairError(
                f"{self.where}: table(s) {', '.join(missing)} missing"
                f"{' in schema ' + self.schema if self.schema else ''}: is this the django-celery-beat database, "
                "migrated (manage.py migrate django_celery_beat), with the right table_prefix?"
            )

    # ------------------------------------------------------------------------------------ conventions

    def db_value(self, epoch_s: float, column: str) -> Any:
        """The value beat/Django would store for instant ``epoch_s`` in ``column`` (research §1.8)."""
        kind = _COLUMN_KIND[column]
        utc = dt.datetime.fromtimestamp(epoch_s, UTC)
        if self.is_pg:
            if kind == "lr" and not self.use_tz and not self.tz_aware:
                # beat wrote naive UTC wall numbers that PostgreSQL read as TIME_ZONE local time
                return utc.replace(tzinfo=self.zone)
            return utc
        if self.use_tz or kind == "lr":
            naive = utc.replace(tzinfo=None)
        else:
            naive = utc.astimezone(self.zone).replace(tzinfo=None)
        return naive.strftime(_SQLITE_FORMAT) if self.is_sqlite else naive

    def epoch(self, value: Any, column: str) -> float | None:
        """Inverse of :meth:`db_value`. ValueError for a value :meth:`unreadable_why` refuses."""
        if value is None:
            return None
        why = self.unreadable_why(value)
        if why is not None:
            raise ValueError(f"{column} {_show_raw(value)}: {why}")
        kind = _COLUMN_KIND[column]
        stamp = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
        if stamp.tzinfo is None:
            zone = UTC if self.use_tz or kind == "lr" else self.zone
            stamp = stamp.replace(tzinfo=zone)
        elif self.is_pg and kind == "lr" and not self.use_tz and not self.tz_aware:
            stamp = stamp.astimezone(self.zone).replace(tzinfo=UTC)
        return float(stamp.timestamp())

    def _epoch_or_none(self, value: Any, column: str) -> float | None:
        return None if value is None or self.unreadable_why(value) is not None else self.epoch(value, column)

    @staticmethod
    def unreadable_why(value: Any) -> str | None:
        """None when the engine can read ``value`` (a stored timestamp, not NULL), else why not, for a person."""
        if isinstance(value, _Raw):
            return (f"beyond the years {READABLE_FROM.year}–{READABLE_BEFORE.year - 1} the repair reads "
                    "(infinity, or a sentinel at the end of the calendar): not a time a clock error leaves")
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                return "not a date and time (Django stores 'YYYY-MM-DD HH:MM:SS[.ffffff]')"
        if not isinstance(value, dt.datetime):
            what = {bytes: "a blob", int: "an integer", float: "a real number"}.get(type(value),
                                                                                     type(value).__name__)
            return f"{what} in a datetime column, not a date and time"
        if not READABLE_FROM.year <= value.year < READABLE_BEFORE.year:
            return (f"year {value.year}: beyond the years {READABLE_FROM.year}–{READABLE_BEFORE.year - 1} the "
                    "repair reads (a sentinel at the end of the calendar, not a time a clock error leaves)")
        return None

    def to_text(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            return str(value)
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else _show_raw(value)

    def from_text(self, text: str | None) -> Any:
        if text is None or self.is_sqlite:
            return text
        return dt.datetime.fromisoformat(text)

    def _limits(self, now_s: float) -> tuple[Any, Any]:
        return self.db_value(now_s + self.tolerance_s, "last_run_at"), self.db_value(now_s + self.tolerance_s,
                                                                                     "date_changed")

    # ----------------------------------------------------------------------------------------- reading

    def _readable_bounds(self) -> tuple[Any, Any]:
        if self.is_pg:
            return READABLE_FROM, READABLE_BEFORE
        low, high = READABLE_FROM.replace(tzinfo=None), READABLE_BEFORE.replace(tzinfo=None)
        return (low.strftime(_SQLITE_FORMAT), high.strftime(_SQLITE_FORMAT)) if self.is_sqlite else (low, high)

    def _bad(self, col: Any) -> Any:
        """SQL: ``col`` holds a value the engine does not read (never true for NULL)."""
        sa = _sqlalchemy()
        low, high = self._readable_bounds()
        clauses = [col < low, col >= high]
        if self.is_sqlite:  # an integer, a real or a blob; text SQLite's date functions cannot read
            clauses += [sa.func.typeof(col).not_in(["text", "null"]), sa.func.datetime(col).is_(None)]
        return sa.and_(col.is_not(None), sa.or_(*clauses))

    def _stamp(self, col: Any) -> list[Any]:
        """Select expressions for a timestamp column. PostgreSQL's driver cannot load ±infinity or years past
        9999 (an error for the whole query): such values come as their text in ``<name>_raw`` instead."""
        if not self.is_pg:
            return [col]
        sa = _sqlalchemy()
        low, high = self._readable_bounds()
        ok = sa.and_(col >= low, col < high)
        raw = sa.case((sa.not_(ok), sa.cast(col, sa.Text)))
        return [sa.case((ok, col)).label(col.name), raw.label(f"{col.name}_raw")]

    def _value(self, row: Any, name: str) -> Any:
        """A timestamp column of ``row`` selected with :meth:`_stamp`: the value, or the unloadable text."""
        if self.is_pg:
            raw = getattr(row, f"{name}_raw")
            if raw is not None:
                return _Raw(raw)
        return getattr(row, name)

    def _stream(self, conn: Any, query: Any) -> Any:
        """The rows of ``query``, fetched STREAM_BATCH at a time: a server-side cursor on PostgreSQL (psycopg) and
        MySQL/MariaDB (PyMySQL's SSCursor); SQLite's cursor steps through the table by itself. Read it to the end
        before the next statement on ``conn`` (MySQL cannot run one while a streamed result is open)."""
        return conn.execute(query.execution_options(yield_per=STREAM_BATCH))

    def _future_rows(self, conn: Any, now_s: float, *, lock: bool,
                     skipped: list[UnreadableValue]) -> Iterator[tuple[Any, ...]]:
        """The task rows with a future last_run_at or date_changed, streamed in id order, as (id, name,
        last_run_at, date_changed, last_run_at future, date_changed future) — the flags are the database's own
        comparison, the one the UPDATE makes. The rows skipped because one of the two holds a value the engine
        cannot read are appended to ``skipped`` (complete once the iterator is exhausted)."""
        sa = _sqlalchemy()
        t = self.t_task
        lim_lr, lim_dc = self._limits(now_s)
        lr_bad, dc_bad = self._bad(t.c.last_run_at), self._bad(t.c.date_changed)
        query = (sa.select(t.c.id, t.c.name, *self._stamp(t.c.last_run_at), *self._stamp(t.c.date_changed),
                           (t.c.last_run_at > lim_lr).label("lr_f"), (t.c.date_changed > lim_dc).label("dc_f"),
                           lr_bad.label("lr_bad"), dc_bad.label("dc_bad"))
                 .where(sa.or_(t.c.last_run_at > lim_lr, t.c.date_changed > lim_dc, lr_bad, dc_bad)).order_by(t.c.id))
        if lock and not self.is_sqlite:
            query = query.with_for_update()
        pg, fast = self.is_pg, not self.is_sqlite  # SQLite text: Python's parser has the last word on every value
        plain = (dt.datetime, type(None))
        for r in self._stream(conn, query):  # positional: 100,000 rows are read here under the row locks
            if pg:
                row_id, name, lr, lr_raw, dc, dc_raw, lr_f, dc_f, lr_bad, dc_bad = r
                lr, dc = (lr if lr_raw is None else _Raw(lr_raw)), (dc if dc_raw is None else _Raw(dc_raw))
            else:
                row_id, name, lr, dc, lr_f, dc_f, lr_bad, dc_bad = r
            # The database's range test (the same bounds) stands for Python's on driver-made datetimes.
            if fast and not (lr_bad or dc_bad) and type(lr) in plain and type(dc) in plain:
                if lr_f or dc_f:
                    yield row_id, name, lr, dc, lr_f, dc_f
                continue
            problems = []
            for column, value, sql_bad in (("last_run_at", lr, lr_bad), ("date_changed", dc, dc_bad)):
                if value is None:
                    continue
                why = self.unreadable_why(value) or ("the database cannot compare it as a date and time"
                                                     if sql_bad else None)
                if why is not None:
                    problems.append(UnreadableValue("periodictask", row_id, name, column, _show_raw(value),
                                                    f"{why}; the row is left as it is"))
            if problems:
                skipped.extend(problems)
            elif lr_f or dc_f:
                yield row_id, name, lr, dc, lr_f, dc_f

    def _last_update(self, conn: Any, *, lock: bool) -> tuple[bool, Any]:
        sa = _sqlalchemy()
        query = sa.select(*self._stamp(self.t_tasks.c.last_update)).where(self.t_tasks.c.ident == 1)
        if lock and not self.is_sqlite:
            query = query.with_for_update()
        row = conn.execute(query).first()
        return (row is not None, None if row is None else self._value(row, "last_update"))

    def _last_update_state(self, last_update: Any, limit: float) -> tuple[float | None, bool, str | None]:
        """(epoch or None, must be replaced, why it cannot be read): an unreadable last_update is replaced too —
        it is only the reload signal, and a beat cannot read it either."""
        why = None if last_update is None else self.unreadable_why(last_update)
        if why is not None:
            return None, True, why
        old = self.epoch(last_update, "last_update")
        return old, old is not None and old > limit, None

    def _report(self, conn: Any, now_s: float, *,
                limit: int | None) -> tuple[list[ReportItem], list[UnreadableValue], int]:
        """What the false period left behind (the first ``limit`` items; all with None), the unreadable values read
        for it, and how many items there are in all."""
        sa = _sqlalchemy()
        t, c = self.t_task, self.t_clocked
        now_dc = self.db_value(now_s, "date_changed")
        lim_lr, lim_dc = self._limits(now_s)
        # A one-off that ran during the false period: beat disables it right after the run, or — when the clock
        # went back before it looked again — at its next look after the reload (enabled, total_run_count > 0).
        # Either way it will not run at its real time.
        ran_early = sa.and_(
            t.c.one_off == sa.true(),
            sa.or_(t.c.enabled == sa.false(), t.c.total_run_count > 0),
            sa.or_(c.c.clocked_time > now_dc, t.c.date_changed > lim_dc, t.c.last_run_at > lim_lr),
        )
        expired = sa.and_(t.c.enabled == sa.false(), t.c.expires > now_dc, t.c.date_changed > lim_dc)
        query = (
            sa.select(t.c.id, t.c.name, t.c.one_off, t.c.enabled, *self._stamp(t.c.expires),
                      *self._stamp(c.c.clocked_time))
            .select_from(t.outerjoin(c, c.c.id == t.c.clocked_id))
            .where(sa.or_(ran_early, expired))
            .order_by(t.c.id)
        )
        items: list[ReportItem] = []
        unreadable: list[UnreadableValue] = []
        total = 0
        for row in self._stream(conn, query):
            expires, clocked_time = self._value(row, "expires"), self._value(row, "clocked_time")
            for column, value in (("expires", expires), ("clocked_time", clocked_time)):
                why = None if value is None else self.unreadable_why(value)
                if why is not None:
                    unreadable.append(UnreadableValue("periodictask", row.id, row.name, column, _show_raw(value),
                                                      f"{why}; only read for the report"))
            total += 1
            if limit is not None and len(items) >= limit:
                continue
            if row.one_off:
                clocked = self._epoch_or_none(clocked_time, "clocked_time")
                when = f"clocked for {fmt_utc(clocked)}" if clocked is not None else "one-off"
                fate = ("beat disables it at its next look (it will not run again)" if row.enabled
                        else "beat disabled it; re-enabling it would run it a second time — left disabled")
                items.append(ReportItem(row.id, row.name, "fired_early",
                                        f"{when}: ran during the false period; {fate}"))
            else:
                shown = fmt_utc(self._epoch_or_none(expires, "expires")) if expires is not None else "-"
                items.append(ReportItem(row.id, row.name, "expired_disabled",
                                        f"expires {shown}, but beat disabled it "
                                        "as expired during the false period — left disabled"))
        return items, unreadable, total

    def plan(self, now_s: float, *, limit: int | None = PLAN_LIST_MAX) -> BeatPlan:
        """Read-only (a SQLite file is opened read-only): every timestamp the repair would bring back to
        ``now_s``, the report, and the values it cannot read (their rows are left as they are). The first ``limit``
        changes and report items are listed (every one with None), all are counted; the rows stream past."""
        now_s = checked_now(now_s)
        with self._transaction("reading the beat tables", read_only=True) as conn:
            return self._plan(conn, now_s, limit=limit)

    def iter_changes(self, now_s: float) -> Iterator[PlannedChange]:
        """Every change :meth:`plan` counts, one at a time from one read-only transaction: the dry run's full
        listing of a large store (``plan`` lists only the first ones). Read it to the end, or close it."""
        now_s = checked_now(now_s)
        with self._transaction("reading the beat tables", read_only=True) as conn:
            for row_id, name, column, old in self._task_changes(conn, now_s, []):
                yield PlannedChange("periodictask", row_id, name, column, old, now_s, _why(column, old - now_s))
            lu_change = self._lu_change(conn, now_s, [])
            if lu_change is not None:
                yield lu_change

    def _task_changes(self, conn: Any, now_s: float,
                      unreadable: list[UnreadableValue]) -> Iterator[tuple[int, str, str, float]]:
        """(row id, name, column, old epoch) of every future task timestamp, streamed in id order; the values it
        cannot read go to ``unreadable``."""
        for row_id, name, lr, dc, lr_future, dc_future in self._future_rows(conn, now_s, lock=False,
                                                                            skipped=unreadable):
            for column, value, future in (("last_run_at", lr, lr_future), ("date_changed", dc, dc_future)):
                if future:
                    old = self.epoch(value, column)
                    assert old is not None
                    yield row_id, name, column, old

    def _lu_change(self, conn: Any, now_s: float, unreadable: list[UnreadableValue]) -> PlannedChange | None:
        """The reload signal's change, when last_update is future or unreadable (said in ``unreadable``)."""
        _present, last_update = self._last_update(conn, lock=False)
        old_lu, lu_replace, lu_why = self._last_update_state(last_update, now_s + self.tolerance_s)
        if lu_why is not None:
            unreadable.append(UnreadableValue("periodictasks", 1, "(reload signal)", "last_update",
                                              _show_raw(last_update), f"{lu_why}; replaced by the reload signal"))
            return PlannedChange("periodictasks", 1, "(reload signal)", "last_update", None, now_s,
                                 "unreadable: a running beat could not read it either")
        if lu_replace:
            assert old_lu is not None
            return PlannedChange("periodictasks", 1, "(reload signal)", "last_update", old_lu, now_s,
                                 _why("last_update", old_lu - now_s))
        return None

    def _plan(self, conn: Any, now_s: float, *, limit: int | None = PLAN_LIST_MAX) -> BeatPlan:
        changes: list[PlannedChange] = []
        totals = {"last_run_at": 0, "date_changed": 0, "last_update": 0}
        unreadable: list[UnreadableValue] = []
        max_old: float | None = None
        tasks: list[str] = []  # the first AUDIT_TASKS names, in order
        n_tasks, last_row = 0, None
        for row_id, name, column, old in self._task_changes(conn, now_s, unreadable):
            if row_id != last_row:  # a task's changes come together (id order)
                n_tasks, last_row = n_tasks + 1, row_id
                if len(tasks) < AUDIT_TASKS or name < tasks[-1]:
                    bisect.insort(tasks, name)
                    del tasks[AUDIT_TASKS:]
            totals[column] += 1
            max_old = old if max_old is None else max(max_old, old)
            if limit is None or len(changes) < limit:
                changes.append(PlannedChange("periodictask", row_id, name, column, old, now_s,
                                             _why(column, old - now_s)))
        lu_change = self._lu_change(conn, now_s, unreadable)
        if lu_change is not None:
            totals["last_update"] = 1
            if lu_change.old_s is not None:
                max_old = lu_change.old_s if max_old is None else max(max_old, lu_change.old_s)
            if limit is None or len(changes) < limit:
                changes.append(lu_change)
        report, report_unreadable, report_total = self._report(conn, now_s, limit=limit)
        seen = {(u.table, u.row_id, u.column) for u in unreadable}
        unreadable += [u for u in report_unreadable if (u.table, u.row_id, u.column) not in seen]
        return BeatPlan(now_s, self.tolerance_s, tuple(changes), tuple(report), tuple(unreadable),
                        totals={k: n for k, n in totals.items() if n}, max_old_s=max_old, tasks=tuple(tasks),
                        tasks_total=n_tasks, report_total=report_total)

    # ----------------------------------------------------------------------------------------- writing

    def _upsert_last_update(self, conn: Any, value: Any) -> None:
        table = self.t_tasks
        if self.is_pg:
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table).values(ident=1, last_update=value)
            conn.execute(stmt.on_conflict_do_update(index_elements=["ident"], set_={"last_update": value}))
        elif self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table).values(ident=1, last_update=value)
            conn.execute(stmt.on_conflict_do_update(index_elements=["ident"], set_={"last_update": value}))
        else:
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(table).values(ident=1, last_update=value)
            conn.execute(stmt.on_duplicate_key_update(last_update=value))

    def _phase_a(self, now_s: float, *, number: int, undo_log: UndoLog | None, incident_id: str,
                 repair_id: str, mono: Callable[[], float]) -> RoundResult | None:
        sa = _sqlalchemy()
        started = mono()
        t = self.t_task
        now_s = checked_now(now_s)
        lim_lr, lim_dc = self._limits(now_s)
        limit = now_s + self.tolerance_s
        new_lr, new_dc = self.db_value(now_s, "last_run_at"), self.db_value(now_s, "date_changed")
        with self._transaction(f"repair round {number} (phase A)") as conn:
            # The periodictasks row is every agent's mutex: a second agent waits here, then finds nothing.
            present, last_update = self._last_update(conn, lock=True)
            _old_lu, lu_future, _why_lu = self._last_update_state(last_update, limit)
            skipped: list[UnreadableValue] = []
            rows = self._future_rows(conn, now_s, lock=True, skipped=skipped)  # streamed, locked as they come
            first = next(rows, None)
            if first is None and not lu_future:
                return None
            new_lr_text, new_dc_text = self.to_text(new_lr), self.to_text(new_dc)
            text = self.to_text
            lu_record = ("periodictasks:1", "(reload signal)", "last_update",
                         self.to_text(last_update) if present else None, new_dc_text)

            def build(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
                """(item, name, column, old, new) for the undo log, from the database's own comparison (the
                UPDATE's), so the counts agree with it exactly; one pass over plain tuples."""
                lr = [(f"periodictask:{row_id}", name, "last_run_at", text(old_lr), new_lr_text)
                      for row_id, name, old_lr, _dc, lr_f, _dc_f in batch if lr_f]
                dc = [(f"periodictask:{row_id}", name, "date_changed", text(old_dc), new_dc_text)
                      for row_id, name, _lr, old_dc, _lr_f, dc_f in batch if dc_f]
                return lr + dc

            # Recorded before COMMIT, in one journal transaction, a batch at a time while the next batch is
            # fetched: a failed journal write rolls the round back.
            recorder = None if undo_log is None else _Recorder(
                build, undo_log, lu_record, incident_id=incident_id, repair_id=repair_id,
                fingerprint=self.fingerprint, wall_s=now_s, mono_s=mono())
            n_locked = n_lr = n_dc = 0
            try:
                stream = itertools.chain([first] if first is not None else [], rows)
                while batch := list(itertools.islice(stream, STREAM_BATCH)):
                    n_locked += len(batch)
                    n_lr += sum(1 for r in batch if r[4])
                    n_dc += sum(1 for r in batch if r[5])
                    if recorder is not None:
                        recorder.put(batch)
                    del batch
                # One set-based compare-and-set statement (one new row version per row, not two): each column is
                # clamped only if it is still in the future, never to NULL. Rows holding a value the engine cannot
                # read are left alone (the plan reports them).
                lr_future, dc_future = t.c.last_run_at > lim_lr, t.c.date_changed > lim_dc
                stmt = (sa.update(t)
                        .where(sa.or_(lr_future, dc_future), sa.not_(self._bad(t.c.last_run_at)),
                               sa.not_(self._bad(t.c.date_changed)))
                        .values(last_run_at=sa.case((lr_future, new_lr), else_=t.c.last_run_at),
                                date_changed=sa.case((dc_future, new_dc), else_=t.c.date_changed)))
                skipped_ids = sorted({u.row_id for u in skipped})
                if skipped_ids:  # those only Python refuses (the database's own test is in the WHERE above)
                    stmt = stmt.where(t.c.id.not_in(skipped_ids))
                n_rows = conn.execute(stmt).rowcount  # the recorder writes its last batches meanwhile
                if n_rows != n_locked:  # a row became future after the locking read: redo the round
                    raise _Race(f"locked {n_locked} rows, updated {n_rows}")
            except BaseException:
                if recorder is not None:
                    recorder.abort()
                raise
            if recorder is not None:
                recorder.wait()
            self._upsert_last_update(conn, new_dc)
        return RoundResult(number, n_lr, n_dc, 1, now_s, None, mono() - started)

    def _phase_b(self, now_a_s: float, now_fn: Callable[[], float]) -> float:
        now_b = max(checked_now(now_fn()), now_a_s + 1.0)  # strictly greater than what beat last read, or no reload
        with self._transaction("repair phase B (reload signal)") as conn:
            self._upsert_last_update(conn, self.db_value(now_b, "last_update"))
        return now_b

    def apply(
        self,
        now_fn: Callable[[], float],
        *,
        undo_log: UndoLog | None,
        incident_id: str,
        sleep: Callable[[float], None] | None = None,
        cancelled: Callable[[], bool] = lambda: False,
        owner_stopped: bool = False,
        mono: Callable[[], float] = time.monotonic,
    ) -> RepairOutcome:
        """Repair in rounds until a round finds nothing. ``now_fn`` gives the *trusted* now (epoch s).

        ``owner_stopped``: no beat runs (the operator stopped it), so one round without the reload dance.
        ``cancelled()`` (the hook timed out, the daemon stops) cuts a wait short: a round whose phase A is
        committed still writes its phase B (a running beat may then reload, and whatever it writes back is
        found by the next audit), and no further round starts. The outcome is then ``cancelled``, not clean.

        Each round waits twice (beat_polls.py): after phase A until beat has polled once (it read ``now_A``),
        after phase B until it has polled twice (the first poll reloads and writes back what it held, the second
        shows that tick is over), each wait at most beat's ``max_interval`` + margin per poll."""
        if sleep is None:
            sleep = cancellable_sleep(cancelled)
        given_now = now_fn

        def now_fn() -> float:  # a NaN now would make every "is it future?" comparison False
            return checked_now(given_now())

        repair_id = uuid.uuid4().hex
        first_now = now_fn()  # checked before the database is even opened
        with self._transaction("reading the beat tables") as conn:
            plan = self._plan(conn, first_now)
        rounds: list[RoundResult] = []
        watch = None if owner_stopped else self._poll_watch()
        try:
            return self._rounds(now_fn, plan, rounds, watch, undo_log=undo_log, incident_id=incident_id,
                                repair_id=repair_id, sleep=sleep, cancelled=cancelled,
                                owner_stopped=owner_stopped, mono=mono)
        finally:
            if watch is not None:
                watch.close()

    def _rounds(self, now_fn: Callable[[], float], plan: Plan, rounds: list[RoundResult], watch: PollWatch | None,
                *, undo_log: UndoLog | None, incident_id: str, repair_id: str, sleep: Callable[[float], None],
                cancelled: Callable[[], bool], owner_stopped: bool, mono: Callable[[], float]) -> RepairOutcome:
        clean = False
        for number in range(1, self.max_rounds + 1):
            if cancelled():
                return RepairOutcome(incident_id, repair_id, plan, tuple(rounds), False, cancelled=True)
            now_a = now_fn()
            result = None
            for _attempt in range(3):
                try:
                    result = self._phase_a(now_a, number=number, undo_log=undo_log, incident_id=incident_id,
                                           repair_id=repair_id, mono=mono)
                    break
                except _Race:
                    now_a = now_fn()
            else:
                raise RepairError(f"{self.where}: rows kept changing under the repair (round {number}); retry")
            if result is None:
                clean = True
                break
            if owner_stopped:
                rounds.append(result)
                clean = not self._future_count(now_fn())
                break
            after_a = self._wait_for_beat(watch, 1, sleep, mono, cancelled)  # beat polls and remembers now_A
            now_b = self._phase_b(now_a, now_fn)
            # beat reloads at its next poll; a stale dirty flush (research §1.5) lands in that tick
            after_b = (self._wait_for_beat(watch, 2, sleep, mono, cancelled) if not cancelled()
                       else Waited(0.0, 0, False))
            rounds.append(RoundResult(result.number, result.last_run_at, result.date_changed, result.last_update,
                                      result.now_a_s, now_b, result.duration_s, after_a.seconds, after_b.seconds,
                                      f"after A: {after_a.how}; after B: {after_b.how}"))
            if cancelled():
                return RepairOutcome(incident_id, repair_id, plan, tuple(rounds), False, cancelled=True)
        else:
            clean = not self._future_count(now_fn())
        return RepairOutcome(incident_id, repair_id, plan, tuple(rounds), clean)

    def _future_count(self, now_s: float) -> int:
        """Future timestamps left (rows whose values cannot be read are not counted: they are reported)."""
        now_s = checked_now(now_s)
        with self._transaction("verifying the repair") as conn:
            rows = sum(1 for _row in self._future_rows(conn, now_s, lock=False, skipped=[]))
            _, last_update = self._last_update(conn, lock=False)
        return rows + int(self._last_update_state(last_update, now_s + self.tolerance_s)[1])

    # ------------------------------------------------------------------------------- RepairTarget protocol

    where_key = "database"  # names ``where`` in the command line's JSON
    what = "beat tables"  # what a wrong trusted now would write wrong times into
    report_heading = "left as they are (the false period disabled them; re-enabling could run them twice):"
    unreadable_heading = "values it cannot read (those rows are left as they are; fix them by hand):"
    not_clean_message = "future timestamps remain after the last round: restart celery beat and run the repair again"

    def same_store(self, fingerprint: str) -> bool:
        return self.same_database(fingerprint)

    def audit(self, now_s: float) -> Audit:
        """Future timestamps with the trusted now, changing nothing. A RepairError (database unreachable, locked,
        tables missing) propagates."""
        plan = self.plan(now_s)
        note = unreadable_note(plan.unreadable)
        details = {"database": self.where, "unreadable": [u.to_dict() for u in plan.unreadable]}
        if plan.empty:
            return Audit(False, f"no future timestamp in {self.where}{note}", details)
        ahead = plan.max_old_s - now_s if plan.max_old_s is not None else 0.0
        return Audit(
            True,
            f"{plan.total} timestamp(s) in the future in {self.where}, up to {fmt_duration(ahead)} ahead"
            f" ({plan.tasks_total} task(s): beat will not run them before then){note}",
            {**details, "counts": plan.counts(), "max_ahead_s": ahead, "tasks": list(plan.tasks),
             "tasks_total": plan.tasks_total},
        )

    def format_plan(self, changes: Sequence[PlannedChange]) -> str:
        return format_beat_table(changes)

    def applying_note(self, incident_id: str) -> str:
        return (f"applying (incident {incident_id}; waits for a running beat's polls, at most {self.wait_s:g} s "
                "per poll, so that it reloads) …")

    def outcome_line(self, outcome: RepairOutcome) -> str:
        counts = outcome.rows_changed()
        return (f"{'repaired' if outcome.clean else 'NOT CLEAN'}: last_run_at {counts['last_run_at']}, date_changed "
                f"{counts['date_changed']} row(s), last_update bumped, {len(outcome.rounds)} round(s)")

    def outcome_summary(self, outcome: RepairOutcome) -> tuple[str, str]:
        """(``failed`` | ``ok`` | ``changed``, the hook's summary)."""
        report = (f"; {outcome.plan.report_total} task(s) ran early or expired during the false period (reported, "
                  "left as they are)") if outcome.plan.report else ""
        report += unreadable_note(outcome.plan.unreadable)
        if outcome.cancelled:
            # Not a failure: beat had its reload signal (phase B is written even when cancelled) and may well
            # have resumed; what is left, if anything, is for the audit to find — a restart of beat is not the cure.
            return "skipped", (f"cancelled after {len(outcome.rounds)} round(s) (daemon stopping); the next audit "
                               f"verifies {self.where}{report}")
        if not outcome.clean:
            return "failed", (f"future timestamps remain after {len(outcome.rounds)} round(s) in {self.where}: "
                              f"restart celery beat, then run the repair again{report}")
        if not outcome.changed:
            return "ok", f"nothing to repair in {self.where}{report}"
        counts = outcome.rows_changed()
        return "changed", (f"repaired {self.where}: last_run_at {counts['last_run_at']}, date_changed "
                           f"{counts['date_changed']} row(s) in {len(outcome.rounds)} round(s){report}")

    def undo_hint(self, incident_id: str) -> str:
        return f"undo: timeguard repair undo {incident_id} --database-url URL"

    # -------------------------------------------------------------------------------------------- undo

    def undo(self, undo_log: UndoLog, incident_id: str, now_fn: Callable[[], float], *, dry_run: bool = False,
             sleep: Callable[[float], None] = time.sleep) -> UndoOutcome:
        """Restore the first-seen old values of ``incident_id``'s repair on this database, only where a row
        still holds the value the repair wrote; then bump last_update twice so a running beat reloads."""
        sa = _sqlalchemy()
        # Streamed from the journal (merged there), STREAM_BATCH at a time: each batch's rows are locked and read,
        # compared and restored before the next batch is read, all in one transaction.
        records = undo_log.iter_records(incident_id, target=TARGET, fingerprint=self.fingerprint, undone=False)
        first = next(records, None)
        if first is None:
            return UndoOutcome(incident_id, (), (), dry_run)
        restored: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        done_keys: list[tuple[Any, ...]] = []
        columns = {"last_run_at": "last_run_at", "date_changed": "date_changed"}  # one string object per column
        t = self.t_task
        with self._transaction(f"undo of {incident_id}") as conn:
            stream = itertools.chain([first], records)
            while batch := list(itertools.islice(stream, STREAM_BATCH)):
                task_records = [(_row_id(r["item"]), r) for r in batch if r["item"].startswith("periodictask:")]
                current: dict[int, Any] = {}
                ids = sorted({row_id for row_id, _r in task_records})
                if ids:
                    query = (sa.select(t.c.id, *self._stamp(t.c.last_run_at), *self._stamp(t.c.date_changed))
                             .where(t.c.id.in_(ids)))
                    if not self.is_sqlite:
                        query = query.with_for_update()
                    for row in conn.execute(query):
                        current[row.id] = {c: self._value(row, c) for c in columns}
                todo: dict[str, list[dict[str, Any]]] = {"last_run_at": [], "date_changed": []}
                for row_id, r in task_records:
                    row = current.get(row_id)
                    column = columns.get(r["field"], r["field"])
                    entry = {"row_id": row_id, "name": r["name"], "column": column,
                             "from_s": None, "to_s": self.epoch(self.from_text(r["old_value"]), column)}
                    if row is None:
                        skipped.append({**entry, "why": "the row no longer exists"})
                        continue
                    now_value = row[column]
                    entry["from_s"] = self._epoch_or_none(now_value, column)
                    if self.to_text(now_value) != self.to_text(self.from_text(r["new_value"])):
                        skipped.append({**entry, "why": "changed since the repair (not the value it wrote)"})
                        continue
                    restored.append(entry)
                    done_keys.append((TARGET, self.fingerprint, r["item"], column))
                    todo[column].append({"b_id": row_id, "b_old": self.from_text(r["old_value"]),
                                         "b_new": self.from_text(r["new_value"])})
                if dry_run:
                    continue
                for column, params in todo.items():
                    if params:
                        col = t.c[column]
                        stmt = (sa.update(t).where(t.c.id == sa.bindparam("b_id"))
                                .where(col == sa.bindparam("b_new")).values({column: sa.bindparam("b_old")}))
                        conn.execute(stmt, params)
            if dry_run:
                return UndoOutcome(incident_id, tuple(restored), tuple(skipped), True)
            undo_log.mark_undone(incident_id, done_keys)
            now_a = checked_now(now_fn())
            self._upsert_last_update(conn, self.db_value(now_a, "last_update"))
        sleep(self.wait_s)
        self._phase_b(now_a, now_fn)
        return UndoOutcome(incident_id, tuple(restored), tuple(skipped), False)


def _row_id(item: str) -> int:
    """The row id of an undo record's item ("periodictask:7")."""
    return int(item.rpartition(":")[2])


class _Raw(str):
    """The text of a timestamp PostgreSQL's driver cannot load (±infinity, a year past 9999)."""


def _show_raw(value: Any) -> str:
    """A stored value as a person reads it in a report (a blob as x'…'), at most 80 characters."""
    if isinstance(value, bytes):
        text = f"x'{value[:32].hex()}{'…' if len(value) > 32 else ''}'"
    elif isinstance(value, _Raw):
        text = repr(str(value))
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _why(column: str, ahead_s: float) -> str:
    ahead = fmt_duration(ahead_s)
    if column == "last_run_at":
        return f"{ahead} in the future: beat would not run the task before then"
    if column == "date_changed":
        return f"{ahead} in the future: beat 2.8+ falls back to it when last_run_at is NULL"
    return f"{ahead} in the future: a running beat would ignore every reload signal until then"


def format_beat_table(changes: Sequence[PlannedChange]) -> str:
    """The human table of planned changes: task, column, old → new, why."""
    return format_table(changes, item_heading="TASK", field_heading="COLUMN",
                        empty="nothing to repair: no timestamp in the beat tables lies in the future")


# ------------------------------------------------------------------------------------------- the target kind

URL_ENV = "TIMEGUARD_BEAT_DATABASE_URL"
URL_KEYS = ("database_url", "database_url_env", "database_url_file")
#: Django settings are read again after this long (seconds): a repair or audit right after another reuses them.
DJANGO_PROBE_TTL_S = 300.0
_NUMBER_KEYS = ("tolerance_s", "beat_max_interval_s", "wait_margin_s", "lock_timeout_s", "max_rounds")
#: The repair options a hook (or the command line) may give; with ``django:`` they override what settings say.
_REPAIR_KEYS = ("table_prefix", "schema", "use_tz", "tz_aware", "time_zone", *_NUMBER_KEYS)
_DEFAULTS: dict[str, Any] = {"table_prefix": DEFAULT_TABLE_PREFIX, "schema": None, "use_tz": True, "tz_aware": True,
                             "time_zone": "UTC", "tolerance_s": None,
                             "beat_max_interval_s": DEFAULT_BEAT_MAX_INTERVAL_S, "wait_margin_s": DEFAULT_WAIT_MARGIN_S,
                             "max_rounds": DEFAULT_MAX_ROUNDS}


def _number_schema(key: str) -> dict[str, Any]:
    low, high, whole = NUMERIC_OPTIONS[key]
    return {"type": "integer" if whole else "number", "minimum": low, "maximum": high}


@dataclass(frozen=True, slots=True)
class CeleryBeatOptions:
    """The celery_beat target's options (``type: celery_beat``, or ``type: repair`` with ``target: celery_beat``).
    Where beat's database is: ``django`` (the project's settings), or one of the ``database_url*`` keys. The rest
    default to what the settings say (with ``django``), else to Django's defaults."""

    django: Any = option(None, doc="read the database, USE_TZ, TIME_ZONE, DJANGO_CELERY_BEAT_TZ_AWARE, the table "
                         "prefix and beat's max interval from the project's Django settings, in the project's own "
                         "interpreter", schema=DJANGO_SCHEMA)
    database_url: str | None = option(None, doc="beat's database: postgres://user@host/name, mysql://…, "
                                      "sqlite:////abs/path.sqlite3 (a password is better in database_url_env)")
    database_url_env: str | None = option(None, doc="the environment variable holding the database URL")
    database_url_file: str | None = option(None, doc="a file holding the database URL")
    table_prefix: Any = option(None, doc="the tables' prefix (default: from django, else django_celery_beat_)",
                               schema={"type": "string"})
    schema: str | None = option(None, doc="the PostgreSQL schema holding the tables")
    use_tz: bool | None = option(None, doc="Django USE_TZ (default: from django, else true)")
    tz_aware: bool | None = option(None, doc="DJANGO_CELERY_BEAT_TZ_AWARE (default: from django, else true)")
    time_zone: str | None = option(None, doc="Django TIME_ZONE, used when use_tz is false (default: from django, "
                                   "else UTC)")
    tolerance_s: Any = option(None, doc="future means more than this far ahead (default 600; 93600 without "
                              "use_tz)", schema=_number_schema("tolerance_s"))
    beat_max_interval_s: Any = option(None, doc="beat's max interval: the wait between the reload signals (default: "
                                      "CELERY_BEAT_MAX_LOOP_INTERVAL from django, else 5)",
                                      schema=_number_schema("beat_max_interval_s"))
    wait_margin_s: Any = option(None, doc=f"added to each wait (default {DEFAULT_WAIT_MARGIN_S:g})",
                                schema=_number_schema("wait_margin_s"))
    max_rounds: Any = option(None, doc=f"rounds at most (default {DEFAULT_MAX_ROUNDS})",
                             schema=_number_schema("max_rounds"))
    lock_timeout_s: Any = option(None, doc=f"wait this long for a row lock (default {DEFAULT_LOCK_TIMEOUT_S:g})",
                                 schema=_number_schema("lock_timeout_s"))


def _problems_to_error(problems: list[tuple[str, str]]) -> Exception:
    from timeguard.hooks.api import HookConfigError

    return HookConfigError(problems)


class CeleryBeatKind(TargetKind):
    """django-celery-beat's database (``type: celery_beat``, ``timeguard repair celery-beat``)."""

    name = TARGET
    cli_name = "celery-beat"
    help = "bring future timestamps in a django-celery-beat database back to now"
    description = ("Find every last_run_at, date_changed and last_update in the future and bring it back to the "
                   "trusted now, so a running beat sends the tasks again. Without --trust-local-clock the time "
                   "sources of the configuration are asked first, and the repair is refused unless two independent "
                   "sources, one authenticated (HTTPS or NTS), agree with this clock.")
    Options: ClassVar[type[CeleryBeatOptions]] = CeleryBeatOptions
    options = frozenset(f.name for f in fields(CeleryBeatOptions))
    service_option = "beat_service"

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.database_url: str | None = options.get("database_url")
        self.database_url_env: str | None = options.get("database_url_env")
        self.database_url_file: str | None = options.get("database_url_file")
        self.django: DjangoSource | None = None
        #: the options given (hook or command line): they override the settings
        self.explicit: dict[str, Any] = {}
        self.repair_options: dict[str, Any] = {}  # the defaults and the explicit options (without the settings)
        self.tolerance_s = DEFAULT_TOLERANCE_S
        #: where a URL problem points: the hook's key, or the command line's option
        self.url_source = "database_url"
        self._probed: tuple[float, DjangoSettings] | None = None

    @classmethod
    def validate(cls, options: Mapping[str, Any]) -> tuple[list[tuple[str, str]], CeleryBeatKind]:
        """The problems of the hook's database options (in the order a person fixes them), and the kind."""
        from timeguard.config import convert_options

        _, problems = convert_options(CeleryBeatOptions, options, hook=TARGET)
        sources = [k for k in URL_KEYS if options.get(k) is not None]
        if len(sources) > 1 or (not sources and options.get("django") is None):
            problems.append(("database_url", "give django (the project's settings: {settings, python, path}) or "
                             "exactly one of database_url, database_url_env, database_url_file"))
        kind = cls(options)
        if options.get("django") is not None:
            kind.django, found = DjangoSource.from_option(options["django"])
            problems += found
        if "table_prefix" in options and not isinstance(options["table_prefix"], str):
            problems.append(("table_prefix", "must be a string"))
        for key in _NUMBER_KEYS:
            if key in options:  # null too: a number was meant
                problem = number_problem(key, options[key])
                if problem is not None:  # NaN compares False with everything: it would switch a check off
                    problems.append((key, problem))
        bad = {key for key, _ in problems}
        kind.explicit = {k: options[k] for k in _REPAIR_KEYS if options.get(k) is not None and k not in bad}
        if "max_rounds" in kind.explicit:
            kind.explicit["max_rounds"] = int(kind.explicit["max_rounds"])
        kind.repair_options = {**_DEFAULTS, **kind.explicit}
        use_tz = kind.repair_options["use_tz"] is not False
        kind.tolerance_s = kind.explicit.get("tolerance_s",
                                             DEFAULT_TOLERANCE_S if use_tz else DEFAULT_TOLERANCE_NAIVE_S)
        return problems, kind

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, url_source: str = "database_url") -> CeleryBeatKind:
        problems, kind = cls.validate(options)
        if problems:
            raise _problems_to_error(problems)
        kind.url_source = url_source
        if kind.database_url:
            try:  # validate the URL and the time zone now, without connecting
                CeleryBeatRepair(kind.database_url, source=url_source, **kind.repair_options)
            except RepairError as exc:
                raise _problems_to_error([("database_url", str(exc))]) from None
        return kind

    def check_max_offset(self, max_offset_s: float) -> str | None:
        if max_offset_s > self.tolerance_s:
            return (f"must not exceed tolerance_s ({self.tolerance_s:g}): a host clock that far off would make beat "
                    "see the repaired times as future or past again")
        return None

    def max_run_s(self) -> float:
        """Rounds × the waits' budgets (one poll after phase A, two after phase B), plus slack for the statements:
        the dispatcher waits this long for the result (with ``django``, beat's max interval as the settings said
        when they were last read)."""
        options = self._options(self._probed[1]) if self._probed is not None else self.repair_options
        wait = options["beat_max_interval_s"] + options["wait_margin_s"]
        return options["max_rounds"] * (3 * wait + 30) + 30 + (self.django.timeout_s if self.django else 0)

    def _url(self) -> tuple[str, str]:
        """The database URL and the option it came from (read now: it may hold a password)."""
        if self.database_url:
            return self.database_url, self.url_source
        found = url_from_options({"database_url_env": self.database_url_env,
                                  "database_url_file": self.database_url_file}, "database_url")
        if found is not None:
            return found
        settings = self.settings()
        assert self.django is not None and settings is not None
        return (settings.database_url,
                f"django (DATABASES[{self.django.database_alias!r}] of {self.django.settings})")

    def settings(self) -> DjangoSettings | None:
        """The project's settings (``django``), read again when older than :data:`DJANGO_PROBE_TTL_S`."""
        if self.django is None:
            return None
        now = time.monotonic()
        if self._probed is None or now - self._probed[0] > DJANGO_PROBE_TTL_S:
            self._probed = (now, probe(self.django))
        return self._probed[1]

    def _options(self, settings: DjangoSettings | None) -> dict[str, Any]:
        """The repair's options: the defaults, what the settings say, what was given (in that order)."""
        merged = {**_DEFAULTS, **(settings.repair_options() if settings else {}), **self.explicit}
        return merged

    def open(self) -> CeleryBeatRepair:
        settings = self.settings()
        url, source = self._url()
        return CeleryBeatRepair(url, source=source, **self._options(settings))

    # ------------------------------------------------------------------------------------- command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _database_args(parser)
        parser.add_argument("--tolerance-s", type=number_arg("tolerance_s"), metavar="N",
                            help="future means more than N s ahead (default 600; 93600 with --no-use-tz)")
        parser.add_argument("--no-use-tz", action="store_const", const=True, help="the project runs with Django "
                            "USE_TZ=False (default: from the settings, else USE_TZ=True)")
        parser.add_argument("--no-tz-aware", action="store_const", const=True,
                            help="DJANGO_CELERY_BEAT_TZ_AWARE=False (default: from the settings, else True)")
        parser.add_argument("--time-zone", help="Django TIME_ZONE (only matters with --no-use-tz; default: from the "
                            "settings, else UTC)")
        parser.add_argument("--beat-max-interval-s", type=number_arg("beat_max_interval_s"), metavar="S",
                            help="beat's max_interval: how long to wait between the reload signals (default: from "
                            "the settings, else 5)")
        parser.add_argument("--max-rounds", type=number_arg("max_rounds"), metavar="N",
                            help="rounds at most (default 3)")

    @classmethod
    def add_undo_arguments(cls, parser: argparse.ArgumentParser) -> None:
        _database_args(parser)
        parser.add_argument("--beat-max-interval-s", type=number_arg("beat_max_interval_s"), metavar="S",
                            help="beat's max_interval: how long to wait between the reload signals (default: from "
                            "the settings, else 5)")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The hook options the command line gives (only those given: with ``--hook`` they override the hook's)."""
        found: dict[str, Any] = {}
        if getattr(args, "django_settings", None) or getattr(args, "django_python", None):
            # paths relative to where the command runs, as a shell user means them (a hook's must be absolute)
            django: dict[str, Any] = {"settings": args.django_settings,
                                      "python": _absolute(args.django_python)}
            for key, attr in (("path", "django_path"), ("environment_file", "django_env_file"),
                              ("user", "django_user"), ("database_alias", "django_alias")):
                value = getattr(args, attr, None)
                if value:
                    django[key] = (value if key in ("user", "database_alias") else
                                   [_absolute(v) for v in value] if key == "path" else _absolute(value))
            found["django"] = {k: v for k, v in django.items() if v is not None}
        if args.database_url:
            found["database_url"] = args.database_url
        for key in ("table_prefix", "schema", "time_zone", "tolerance_s", "beat_max_interval_s", "max_rounds"):
            if getattr(args, key, None) is not None:
                found[key] = getattr(args, key)
        if getattr(args, "no_use_tz", None):
            found["use_tz"] = False
        if getattr(args, "no_tz_aware", None):
            found["tz_aware"] = False
        return found

    @classmethod
    def cli_options(cls, args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The hook options of a run from the command line: a configured hook's (``base``, with ``--hook``) with
        the command line's on top; a database named on the command line replaces the hook's. Without a hook and
        without a database on the command line, ``$TIMEGUARD_BEAT_DATABASE_URL``."""
        given = cls.options_from_args(args)
        if base is None and "database_url" not in given and "django" not in given:
            from_env = os.environ.get(URL_ENV) or None
            if from_env is not None:
                given["database_url"] = from_env
        options = dict(base or {})
        if "database_url" in given or "django" in given:
            for key in (*URL_KEYS, "django"):
                options.pop(key, None)
        options.update(given)
        return options

    @classmethod
    def kind_from_args(cls, args: argparse.Namespace) -> CeleryBeatKind:
        """The kind from the command line alone; a RepairError naming the command-line option for a bad value."""
        options = cls.cli_options(args)
        try:
            source = "--database-url" if args.database_url else f"${URL_ENV}"
            return cls.from_options(options, url_source=source)
        except Exception as exc:
            problems = getattr(exc, "problems", None)
            if problems is None:
                raise
            error = NoDatabase if [key for key, _ in problems] == ["database_url"] and \
                problems[0][1].startswith("give django") else RepairError
            raise error("; ".join(_cli_problem(key, message) for key, message in problems)) from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CeleryBeatRepair:
        return cls.kind_from_args(args).open()

    @classmethod
    def undo_target(cls, args: argparse.Namespace, fingerprints: Sequence[str]) -> CeleryBeatRepair:
        if not args.database_url and not os.environ.get(URL_ENV) and not getattr(args, "django_settings", None):
            raise RepairError(f"a celery_beat repair is undone in its database: give --database-url (or "
                              f"${URL_ENV}); it repaired {', '.join(sorted(set(fingerprints)))}")
        return cls.from_args(args)


#: Hook keys as the command line spells them, for its error messages.
_CLI_NAMES = {"database_url": "--database-url", "django": "--django-settings", "django.settings": "--django-settings",
              "django.python": "--django-python", "django.path": "--django-path",
              "django.environment_file": "--django-env-file", "django.user": "--django-user",
              "django.database_alias": "--django-alias", "use_tz": "--no-use-tz", "tz_aware": "--no-tz-aware"}


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else path


class NoDatabase(RepairError):
    """The command line names no database (nor a hook): a usage error (exit 2)."""

    usage = True


def _cli_problem(key: str, message: str) -> str:
    if key == "database_url" and message.startswith("give django"):
        return ("give the database: --django-settings MODULE --django-python PATH (the project's settings), "
                f"--database-url URL (or ${URL_ENV}), or --hook NAME (a celery_beat hook of the configuration)")
    name = _CLI_NAMES.get(key) or "--" + key.replace("_", "-")
    return message if message.startswith(name) else f"{name}: {message}"


def number_arg(key: str) -> Callable[[str], float]:
    """An argparse type for the repair's numeric option ``key``: the engine's own rule (no NaN, inf, negative
    or out-of-range value), so a bad value is a usage error (exit 2) naming the option."""

    def parse(text: str) -> float:
        try:
            value: float = float(text)
        except ValueError:
            value = text  # type: ignore[assignment]  # number_problem says what is wanted
        if NUMERIC_OPTIONS[key][2] and isinstance(value, float) and value.is_integer():
            value = int(value)
        problem = number_problem(key, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = key  # argparse names the type in "invalid <name> value" messages
    return parse


def _database_args(parser: argparse.ArgumentParser) -> None:
    """Where the database is: the project's Django settings, a URL, or (``--hook``, added by the command) a
    configured hook. Checked when the command runs, so the error can name the hooks of the configuration."""
    # A password on the command line is visible in ps: the environment variable is the better place for it.
    parser.add_argument("--database-url", metavar="URL",
                        help="beat's database: postgres://user@host/name, mysql://…, mariadb://…, "
                        f"sqlite:////abs/path.sqlite3, or SQLAlchemy's postgresql+psycopg://… (default: ${URL_ENV})")
    parser.add_argument("--django-settings", metavar="MODULE",
                        help="read the database and its conventions from the project's Django settings "
                        "(DJANGO_SETTINGS_MODULE, e.g. proj.settings); with --django-python")
    parser.add_argument("--django-python", metavar="PATH",
                        help="the project's interpreter, which reads its settings (e.g. /srv/app/.venv/bin/python)")
    parser.add_argument("--django-path", action="append", metavar="DIR",
                        help="put DIR first on the interpreter's sys.path (the project directory; repeatable)")
    parser.add_argument("--django-env-file", metavar="FILE",
                        help="variables the settings read (systemd EnvironmentFile= syntax)")
    parser.add_argument("--django-user", metavar="USER", help="read the settings as USER (needs root)")
    parser.add_argument("--django-alias", metavar="ALIAS",
                        help="the DATABASES alias of django-celery-beat's tables (default: default)")
    parser.add_argument("--table-prefix", metavar="P",
                        help="the tables' prefix (default: from the settings, else django_celery_beat_)")
    parser.add_argument("--schema", help="database schema holding the tables (PostgreSQL)")

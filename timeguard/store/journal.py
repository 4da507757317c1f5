"""The durable journal: one SQLite file in the state directory (WAL; every write one transaction).

It holds the events, the clock floor, summaries of the cross-checks and the daemon's heartbeat. WAL with
``synchronous=FULL`` makes each committed write survive ``kill -9`` (and power loss); a write interrupted
mid-way is rolled back on the next open, never half-applied. One connection, guarded by a lock: the daemon
writes from its detection loop and from the scheduler's check jobs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from timeguard.events import SCHEMA_VERSION, Event, EventKind, HookRun, HookStatus
from timeguard.secrets import redact_text

FILENAME = "journal.sqlite"
MAX_CHECKS = 20_000  # ≈ 2 weeks of checks at the default 64 s; older ones are pruned
MAX_HOOK_RUNS = 20_000  # older hook runs are pruned
#: At start-up, how long the daemon waits for another process's lock on the journal before it gives up (the unit's
#: TimeoutStartSec is 60 s). A lock is never a reason to start a new journal.
OPEN_LOCK_WAIT_S = 30.0
LOCK_WAIT_S = 10.0  # each later write waits this long for a lock
PRUNE_BATCH = 500  # events deleted per transaction: the detector's writes wait at most one batch
READ_BATCH = 1000  # events read per query when streaming (`timeguard events`): memory stays flat

# SQLite's primary result codes (the low byte of an extended code), as sqlite3's exceptions carry them.
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_CORRUPT = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_DENIED = {sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_AUTH}

#: How many schemas past this one a newer timeguard's journal may plausibly be at (more is a damaged header).
_NEWER_SCHEMAS = 1000


def _redact_text(text: object) -> object:
    """redact_text for SQL: NULL and non-text values pass through unchanged."""
    return redact_text(text) if isinstance(text, str) else text


_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        incident_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        wall_time_s REAL NOT NULL,
        trusted_time_s REAL,
        monotonic_s REAL NOT NULL,
        boot_id TEXT NOT NULL,
        step_s REAL,
        test INTEGER NOT NULL DEFAULT 0,
        body TEXT NOT NULL
    );
    CREATE INDEX events_incident ON events (incident_id);
    CREATE INDEX events_kind ON events (kind);
    CREATE TABLE floor (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        wall_s REAL NOT NULL,
        boot_id TEXT NOT NULL,
        boottime_s REAL NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE TABLE checks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        wall_s REAL NOT NULL,
        monotonic_s REAL NOT NULL,
        boot_id TEXT NOT NULL,
        status TEXT NOT NULL,
        offset_s REAL,
        offset_lo_s REAL,
        offset_hi_s REAL,
        usable INTEGER NOT NULL,
        agreeing INTEGER NOT NULL,
        ntp_http_agree INTEGER,
        summary TEXT NOT NULL,
        sources TEXT NOT NULL
    );
    """,
    # 2: hook runs and the alert outbox. Outbox times are CLOCK_MONOTONIC readings of the boot named in ``epoch``
    # (the wall clock is the suspect); *_wall columns are for people reading the rows, never for decisions.
    """
    CREATE TABLE hook_runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        hook TEXT NOT NULL,
        hook_type TEXT NOT NULL,
        event_id TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        event_kind TEXT NOT NULL,
        status TEXT NOT NULL,
        summary TEXT NOT NULL,
        details TEXT NOT NULL,
        output TEXT NOT NULL,
        duration_s REAL NOT NULL,
        dry_run INTEGER NOT NULL,
        test INTEGER NOT NULL,
        wall_s REAL NOT NULL,
        monotonic_s REAL NOT NULL
    );
    CREATE INDEX hook_runs_event ON hook_runs (event_id);
    CREATE INDEX hook_runs_hook ON hook_runs (hook);
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        hook TEXT NOT NULL,
        incident_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        last_event_id TEXT NOT NULL,
        event_ids TEXT NOT NULL,
        kinds TEXT NOT NULL,
        events INTEGER NOT NULL,
        message INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        epoch TEXT NOT NULL,
        enqueued_mono REAL NOT NULL,
        next_mono REAL NOT NULL,
        last_mono REAL NOT NULL,
        sending_since REAL,
        sent_mono REAL,
        enqueued_wall REAL NOT NULL,
        last_attempt_wall REAL,
        done_wall REAL,
        last_error TEXT NOT NULL DEFAULT '',
        test INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_state ON outbox (state, seq);
    CREATE INDEX outbox_incident ON outbox (hook, incident_id, state);
    """,
    # 3: undo records of application repairs (celery beat). One row per (incident, database, row, column): the
    # FIRST-seen old value is kept across rounds, the new value is the latest one written. ``fingerprint`` is the
    # database URL without its password plus the table prefix.
    """
    CREATE TABLE repair_undo (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id TEXT NOT NULL,
        repair_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        tbl TEXT NOT NULL,
        row_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        col TEXT NOT NULL,
        old_value TEXT,
        new_value TEXT,
        applied_wall_s REAL NOT NULL,
        applied_mono_s REAL NOT NULL,
        undone INTEGER NOT NULL DEFAULT 0,
        UNIQUE (incident_id, fingerprint, tbl, row_id, col)  -- also the index for lookups by incident
    );
    """,
    # 4: one row per repair ROUND, its records as one JSON array: 100,000 rows of undo each cost ~10 µs of
    # binding and index upkeep (1.4 s, most of a round's budget); one JSON text costs ~0.1 s. "First-seen old value,
    # latest new value" is resolved when reading. An undo marks (row, column)s undone as of the incident's newest
    # round; a later round touching one again makes it undoable again. Migration 3's rows are carried over.
    """
    CREATE TABLE repair_round (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id TEXT NOT NULL,
        repair_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        applied_wall_s REAL NOT NULL,
        applied_mono_s REAL NOT NULL,
        records TEXT NOT NULL  -- JSON: [[table, row_id, name, column, old, new], ...]
    );
    CREATE INDEX repair_round_incident ON repair_round (incident_id, seq);
    CREATE TABLE repair_undone (
        incident_id TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        tbl TEXT NOT NULL,
        row_id INTEGER NOT NULL,
        col TEXT NOT NULL,
        round_seq INTEGER NOT NULL,  -- the incident's newest round when it was undone
        PRIMARY KEY (incident_id, fingerprint, tbl, row_id, col)
    );
    INSERT INTO repair_round (incident_id, repair_id, fingerprint, applied_wall_s, applied_mono_s, records)
        SELECT incident_id, MIN(repair_id), fingerprint, MIN(applied_wall_s), MIN(applied_mono_s),
               json_group_array(json_array(tbl, row_id, name, col, old_value, new_value))
        FROM (SELECT * FROM repair_undo ORDER BY seq) GROUP BY incident_id, fingerprint;
    INSERT INTO repair_undone (incident_id, fingerprint, tbl, row_id, col, round_seq)
        SELECT u.incident_id, u.fingerprint, u.tbl, u.row_id, u.col, r.seq
        FROM repair_undo AS u JOIN repair_round AS r ON r.incident_id = u.incident_id AND r.fingerprint = u.fingerprint
        WHERE u.undone = 1;
    DROP TABLE repair_undo
    """,
    # 5: secrets written by earlier versions are scrubbed: a database password given as ``?password=`` in the URL
    # was kept in the repair fingerprint, and could reach hook summaries, details and output, event bodies and the
    # audit notes in meta. ``timeguard_redact`` is :func:`timeguard.secrets.redact_text` (registered per
    # connection by ``_migrate``); it is idempotent, so text that holds no secret is written back unchanged.
    """
    UPDATE repair_round SET fingerprint = timeguard_redact(fingerprint)
        WHERE fingerprint != timeguard_redact(fingerprint);
    DELETE FROM repair_undone WHERE fingerprint != timeguard_redact(fingerprint) AND EXISTS (
        SELECT 1 FROM repair_undone AS clean WHERE clean.incident_id = repair_undone.incident_id
        AND clean.fingerprint = timeguard_redact(repair_undone.fingerprint) AND clean.tbl = repair_undone.tbl
        AND clean.row_id = repair_undone.row_id AND clean.col = repair_undone.col);
    UPDATE repair_undone SET fingerprint = timeguard_redact(fingerprint)
        WHERE fingerprint != timeguard_redact(fingerprint);
    UPDATE hook_runs SET summary = timeguard_redact(summary), details = timeguard_redact(details),
        output = timeguard_redact(output)
        WHERE summary != timeguard_redact(summary) OR details != timeguard_redact(details)
        OR output != timeguard_redact(output);
    UPDATE events SET body = timeguard_redact(body) WHERE body != timeguard_redact(body);
    UPDATE meta SET value = timeguard_redact(value) WHERE value != timeguard_redact(value)
    """,
    # 6: undo records keyed by target (timeguard.repair.undo): the target kind's name, the store's fingerprint,
    # an item key the target defines and the field. celery_beat's (table, row_id) become the item "table:row_id";
    # a round's records become [item, name, field, old, new]. Rows written before are celery_beat's.
    """
    ALTER TABLE repair_round ADD COLUMN target TEXT NOT NULL DEFAULT 'celery_beat';
    UPDATE repair_round SET records = (
        SELECT json_group_array(json(json_set(json_remove(value, '$[1]'), '$[0]',
               json_extract(value, '$[0]') || ':' || json_extract(value, '$[1]'))))
        FROM json_each(repair_round.records)) WHERE json_valid(records);
    DROP INDEX repair_round_incident;
    CREATE INDEX repair_round_incident ON repair_round (incident_id, target, seq);
    CREATE TABLE repair_undone_by_target (
        incident_id TEXT NOT NULL,
        target TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        item TEXT NOT NULL,
        field TEXT NOT NULL,
        round_seq INTEGER NOT NULL,  -- the incident's newest round when it was undone
        PRIMARY KEY (incident_id, target, fingerprint, item, field)
    );
    INSERT INTO repair_undone_by_target (incident_id, target, fingerprint, item, field, round_seq)
        SELECT incident_id, 'celery_beat', fingerprint, tbl || ':' || row_id, col, round_seq FROM repair_undone;
    DROP TABLE repair_undone;
    ALTER TABLE repair_undone_by_target RENAME TO repair_undone
    """,
)


class JournalError(Exception):
    """The journal cannot be used: the message says which file and what to do."""


class JournalCorrupt(JournalError):
    """The file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB): the only case in which it may be moved aside."""


class JournalLocked(JournalError):
    """Another process holds a lock on the journal and kept it past the wait: never a reason for a new journal."""


class JournalUnusable(JournalError):
    """The state directory or the journal's files cannot be used by this user (not a directory, permissions): a
    configuration matter, restarting cannot fix it."""


#: What reading a damaged file can raise: sqlite3 decodes SQLite's texts (its error messages too, which quote the
#: damaged schema) as UTF-8, and garbage there comes out as UnicodeDecodeError, not as a sqlite3 error.
_SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def sqlite_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of ``exc`` (None when it carries none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _as_journal_error(path: Path, exc: sqlite3.Error | UnicodeDecodeError, doing: str, wait_s: float) -> JournalError:
    code = sqlite3.SQLITE_CORRUPT if isinstance(exc, UnicodeDecodeError) else sqlite_code(exc)
    if code in _LOCKED:
        return JournalLocked(
            f"{path}: {doing}: still locked by another process after {wait_s:g} s ({exc}); the journal is left as "
            f"it is: find the process holding it with `fuser {path}` and stop it"
        )
    if code in _CORRUPT and doing.startswith("cannot open"):
        return JournalCorrupt(f"{path}: not a usable timeguard journal ({exc}); move it aside to start a new one")
    if code in _CORRUPT:
        return JournalCorrupt(f"{path}: {doing}: the journal is damaged ({exc}); `timeguard run` salvages what is "
                              "readable into a new journal at its next start")
    if code in _DENIED:
        return JournalUnusable(f"{path}: {doing}: {exc} (running as uid {os.geteuid()}): the state directory and the "
                               "journal's files must be readable and writable by the daemon")
    return JournalError(f"{path}: {doing}: {exc}")


def _denied_message(path: Path) -> str:
    return (f"{path}: permission denied: run as root or as the daemon's user (under systemd's DynamicUser= the state "
            "directory is in /var/lib/private, which is 0700: `sudo timeguard …`)")


@dataclass(frozen=True, slots=True)
class Floor:
    """The highest *local* wall time seen (never a source's claim), with where it was seen."""

    wall_s: float
    boot_id: str
    boottime_s: float
    reason: str  # "raised" (periodic), "shutdown", "lowered after rollback …"


# The daemon's notes in the ``meta`` table, typed: each is one key holding one JSON object (the names of the keys
# and fields are the stored format; journals written before keep reading). ``from_value`` takes what was stored
# and gives None for what is missing or not of the expected shape (damage, a half-written older version).


def _note(cls: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    try:
        return cls(**{name: value[name] for name in cls.__dataclass_fields__})
    except (KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    """Who runs (meta keys ``pid``, ``version``, ``boot_id``, ``started_wall_s``, ``config``): written at start-up."""

    pid: int | None
    version: str | None
    boot_id: str | None
    started_wall_s: float | None
    config: str | None


@dataclass(frozen=True, slots=True)
class ClockMark:
    """The last clock reading (meta ``last_clock``): the next start-up's exact net step in the same boot."""

    wall_s: float
    boottime_s: float
    boot_id: str

    @classmethod
    def from_value(cls, value: Any) -> ClockMark | None:
        return _note(cls, value)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Meta ``heartbeat``, written every few seconds: ``status`` judges liveness by its CLOCK_BOOTTIME age."""

    boottime_s: float
    wall_s: float
    boot_id: str
    pid: int

    @classmethod
    def from_value(cls, value: Any) -> Heartbeat | None:
        if isinstance(value, dict) and "pid" not in value:
            value = {**value, "pid": 0}
        return _note(cls, value)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class AuditNote:
    """The last audit of one hook (meta ``audit:<hook>``)."""

    wall_s: float
    outcome: str  # clean | found | skipped | error
    summary: str
    next_in_s: float

    @classmethod
    def from_value(cls, value: Any) -> AuditNote | None:
        return _note(cls, value)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class GuardNote:
    """A scheduler the forward-jump guard stopped (meta ``guard:<hook>``; timeguard.repair.guard): written before
    its stop command runs, removed once it is started again — a restarted daemon repairs and starts it."""

    hook: str
    target: str  # the repair target's kind (celery_beat, ...)
    where: str  # the store, for a person (no password)
    stopped_wall_s: float  # host time of the stop (the host was ahead then)
    trusted_s: float | None  # the trusted time of the stop
    ahead_s: float  # the host was ahead by at least this much
    incident_id: str  # the future_state_accruing incident
    start_command: list[str] | None  # how to start it even if the hook is gone from the configuration

    @classmethod
    def from_value(cls, value: Any) -> GuardNote | None:
        return _note(cls, value)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class JournalDamage:
    """What :func:`salvage` found and copied (meta ``journal_damage``)."""

    wall_s: float
    moved_to: str
    reason: str
    copied: dict[str, int]
    lost: dict[str, Any]  # table → rows unreadable, or "unknown"; "*" → nothing readable

    @classmethod
    def from_value(cls, value: Any) -> JournalDamage | None:
        return _note(cls, value)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class DaemonNotes:
    """Every note ``status`` shows, read in one query."""

    daemon: DaemonInfo
    heartbeat: Heartbeat | None
    last_clock: ClockMark | None
    audits: dict[str, AuditNote]  # by hook name, sorted
    damage: JournalDamage | None
    guards: dict[str, GuardNote] = field(default_factory=dict)  # schedulers the guard keeps stopped, by hook


_AUDIT_PREFIX = "audit:"
_GUARD_PREFIX = "guard:"


@dataclass(frozen=True, slots=True)
class CheckRecord:
    wall_s: float
    monotonic_s: float
    boot_id: str
    status: str
    offset_s: float | None
    offset_lo_s: float | None
    offset_hi_s: float | None
    usable: int
    agreeing: int
    ntp_http_agree: bool | None
    summary: str
    sources: list[dict[str, Any]]


_EVENT_FIELDS = tuple(Event.__dataclass_fields__)
_EVENT_FIELD_SET = frozenset(_EVENT_FIELDS)
_EVENT_KINDS = frozenset(k.value for k in EventKind)

class Journal:
    """``readonly=True`` is for the CLI (status, events): it never creates or changes a file, so root reading
    the journal cannot leave root-owned ``-wal``/``-shm`` files that lock the (DynamicUser) daemon out."""

    def __init__(self, path: Path | str, *, readonly: bool = False, lock_wait_s: float | None = None) -> None:
        """Errors: :class:`JournalCorrupt` only for a damaged file, :class:`JournalLocked` for a lock held past
        ``lock_wait_s`` (default: :data:`LOCK_WAIT_S`), :class:`JournalUnusable` for a state directory or file
        this user cannot use, :class:`JournalError` for anything else."""
        self.path = Path(path)
        self.readonly = readonly
        self.salvaged: dict[str, Any] | None = None  # set by salvage(): what was found and copied
        self._lock = threading.RLock()
        wait_s = LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        if readonly:
            self._db = self._connect_readonly()
        else:
            self._check_usable()
            try:
                self._db = sqlite3.connect(self.path, timeout=wait_s, check_same_thread=False, isolation_level=None)
            except _SQLITE_ERRORS as exc:
                raise _as_journal_error(self.path, exc, "cannot open the journal", wait_s) from exc
        try:
            if readonly:
                self._check_schema_readable()
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
            self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}")
        except _SQLITE_ERRORS as exc:
            self._db.close()
            raise _as_journal_error(self.path, exc, "cannot open the journal", wait_s) from exc
        except JournalError:
            self._db.close()
            raise

    def _check_usable(self) -> None:
        """Before SQLite sees the path: the state directory exists (or can be made), is a directory, and this
        user can create files in it and read and write the journal's files. Each failure is one line saying what
        and where."""
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next((d for d in (directory, *directory.parents) if d.exists() and not d.is_dir()), directory)
            where = "" if blocker == directory else f" (in the state directory's path {directory})"
            raise JournalUnusable(f"{blocker}: the state directory must be a directory, this is a file{where}") \
                from None
        except PermissionError as exc:
            raise JournalUnusable(f"{directory}: cannot create the state directory: permission denied "
                                  f"(running as uid {os.geteuid()})") from exc
        except OSError as exc:
            raise JournalError(f"{directory}: cannot create the state directory: {exc.strerror or exc}") from exc
        if not directory.is_dir():
            raise JournalUnusable(f"{directory}: the state directory must be a directory, this is a file")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise JournalUnusable(f"{directory}: the state directory is not writable by uid {os.geteuid()} (mode "
                                  f"{directory.stat().st_mode & 0o7777:04o}); the journal and its -wal/-shm files "
                                  "are created there")
        for file in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if file.exists() and not os.access(file, os.R_OK | os.W_OK):
                raise JournalUnusable(f"{file}: not readable and writable by uid {os.geteuid()} (mode "
                                      f"{file.stat().st_mode & 0o7777:04o})")

    @classmethod
    def in_state_dir(cls, state_dir: Path | str, *, readonly: bool = False) -> Journal:
        return cls(Path(state_dir) / FILENAME, readonly=readonly)

    def _connect_readonly(self) -> sqlite3.Connection:
        try:
            exists = self.path.exists()
            # With the daemon running, its -wal/-shm exist and a read-only connection shares them. Without them
            # (daemon stopped cleanly), mode=ro would create them: read the file as immutable instead.
            live = Path(f"{self.path}-wal").exists() and Path(f"{self.path}-shm").exists()
        except PermissionError:
            raise JournalUnusable(_denied_message(self.path)) from None
        if not exists:
            raise JournalError(f"{self.path}: no journal (has the daemon run with this state_dir?)")
        if not os.access(self.path, os.R_OK):
            raise JournalUnusable(_denied_message(self.path))
        uri = self.path.resolve().as_uri()
        flags = "mode=ro" if live else "immutable=1"
        try:
            return sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=LOCK_WAIT_S, check_same_thread=False,
                                   isolation_level=None)
        except _SQLITE_ERRORS as exc:
            raise _as_journal_error(self.path, exc, "cannot open the journal", LOCK_WAIT_S) from exc

    def _schema_version(self) -> int:
        """The header's schema number (``user_version``), refused as damage when no timeguard could have written
        it: 0 while the tables exist (a new file has none), or far beyond any schema (a newer timeguard adds a few
        migrations, not millions). A plausible newer number is a newer timeguard's journal, never damage."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version == 0 and self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is not None:
            raise JournalCorrupt(f"{self.path}: its header says schema 0 but its tables are there: the header is "
                                 "damaged")
        if not 0 <= version <= len(_MIGRATIONS) + _NEWER_SCHEMAS:
            raise JournalCorrupt(f"{self.path}: its header says schema {version}, which no timeguard writes: the "
                                 "header is damaged")
        return version

    def _check_schema_readable(self) -> None:
        version = self._schema_version()
        if version != len(_MIGRATIONS):
            newer = version > len(_MIGRATIONS)
            raise JournalError(
                f"{self.path}: schema {version}, this timeguard reads {len(_MIGRATIONS)}: "
                + ("upgrade timeguard" if newer else "start the daemon once to upgrade the journal")
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ plumbing

    def _migrate(self) -> None:
        version = self._schema_version()
        if version > len(_MIGRATIONS):
            raise JournalError(
                f"{self.path}: written by a newer timeguard (schema {version}, this one knows "
                f"{len(_MIGRATIONS)}); upgrade timeguard or move the file aside"
            )
        self._db.create_function("timeguard_redact", 1, _redact_text, deterministic=True)
        # Migration 5 scrubs secrets: with secure_delete the cells it rewrites are zeroed, not left in free pages.
        self._db.execute(f"PRAGMA secure_delete = {'ON' if version < 5 else 'OFF'}")
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            with self._transaction() as db:
                if db.execute("PRAGMA user_version").fetchone()[0] >= number:
                    continue  # another process (the daemon, the CLI) applied it between our read and our lock
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # The journal's public primitives: what the stores built on it (the outbox, the undo log) use. ``transaction``
    # is one write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on any exception); ``read`` one query.

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite's errors (disk full, read-only, locked) become a JournalError."""
        try:
            with self._transaction() as db:
                yield db
        except _SQLITE_ERRORS as exc:
            raise _as_journal_error(self.path, exc, "write failed", LOCK_WAIT_S) from exc

    def _write(self, sql: str, params: Iterable[Any] = ()) -> None:
        with self.transaction() as db:
            db.execute(sql, tuple(params))

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one query (as ``sqlite3.Row``); SQLite's errors become a JournalError."""
        try:
            with self._lock:
                cursor = self._db.execute(sql, tuple(params))
                cursor.row_factory = sqlite3.Row
                return cursor.fetchall()
        except _SQLITE_ERRORS as exc:
            raise _as_journal_error(self.path, exc, "read failed", LOCK_WAIT_S) from exc

    def iter_read(self, sql: str, params: Iterable[Any] = (), *, batch: int = READ_BATCH) -> Iterator[sqlite3.Row]:
        """:meth:`read` a ``batch`` of rows at a time, the lock released between batches. For a query SQLite
        computes before its first row (GROUP BY, ORDER BY without an index): writes meanwhile cannot change it."""
        try:
            with self._lock:
                cursor = self._db.execute(sql, tuple(params))
                cursor.row_factory = sqlite3.Row
            try:
                while True:
                    with self._lock:
                        rows = cursor.fetchmany(batch)
                    yield from rows
                    if len(rows) < batch:
                        return
            finally:
                with self._lock:
                    cursor.close()
        except _SQLITE_ERRORS as exc:
            raise _as_journal_error(self.path, exc, "read failed", LOCK_WAIT_S) from exc

    # -------------------------------------------------------------------------------------------- events

    def record_event(self, event: Event) -> None:
        """Idempotent on ``event.id``: recording the same event twice keeps one row."""
        self._write(
            "INSERT OR IGNORE INTO events (id, incident_id, kind, wall_time_s, trusted_time_s, monotonic_s, "
            "boot_id, step_s, test, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (event.id, event.incident_id, event.kind.value, event.wall_time_s, event.trusted_time_s,
             event.monotonic_s, event.boot_id, event.step_s, int(event.test), event.to_json()),
        )

    def events(
        self,
        *,
        since_s: float | None = None,
        kinds: Iterable[EventKind] | None = None,
        incident_id: str | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events in the order they were recorded (not by wall time, which may have jumped). ``since_s``
        compares with the trusted time where known, else the host's wall time."""
        return [self._decode_event(body) for body in self.iter_event_bodies(
            since_s=since_s, kinds=kinds, incident_id=incident_id, limit=limit)]

    def iter_event_dicts(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """:meth:`iter_events` as ``Event.to_dict()`` gives them (the hook schema), without building each Event when
        the stored row is already exactly that shape (``timeguard events --json`` on a large journal)."""
        for body in self.iter_event_bodies(**filters):
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            if (isinstance(data, dict) and data.keys() == _EVENT_FIELD_SET and data["schema"] == SCHEMA_VERSION
                    and data["kind"] in _EVENT_KINDS):
                yield {name: data[name] for name in _EVENT_FIELDS}
            else:
                yield self._decode_event(body).to_dict()

    def iter_events(self, **filters: Any) -> Iterator[Event]:
        """:meth:`events` one at a time, read :data:`READ_BATCH` rows per query: memory stays flat however many
        events the journal holds, and the lock is released between batches (the daemon's writes go on)."""
        for body in self.iter_event_bodies(**filters):
            yield self._decode_event(body)

    def iter_event_bodies(
        self,
        *,
        since_s: float | None = None,
        kinds: Iterable[EventKind] | None = None,
        incident_id: str | None = None,
        limit: int | None = None,
    ) -> Iterator[str]:
        """The stored JSON of the events :meth:`events` returns, streamed (``limit``: the newest ``limit``, still
        oldest first)."""
        where, params = [], []
        if since_s is not None:
            where.append("COALESCE(trusted_time_s, wall_time_s) >= ?")
            params.append(since_s)
        kind_list = [k.value for k in kinds] if kinds is not None else None
        if kind_list is not None:
            where.append(f"kind IN ({', '.join('?' for _ in kind_list)})")
            params.extend(kind_list)
        if incident_id is not None:
            where.append("incident_id = ?")
            params.append(incident_id)
        after = 0
        if limit is not None:
            if limit <= 0:
                return
            cond = " WHERE " + " AND ".join(where) if where else ""
            first = self.read(f"SELECT seq FROM events{cond} ORDER BY seq DESC LIMIT 1 OFFSET ?",  # noqa: S608
                               [*params, int(limit) - 1])
            after = first[0][0] - 1 if first else 0
        # As bytes: a row whose text is not UTF-8 (damage quick_check cannot see) is named, not a bare sqlite error.
        sql = ("SELECT seq, CAST(body AS BLOB) FROM events WHERE "  # noqa: S608 — bound values
               + " AND ".join(["seq > ?", *where]) + " ORDER BY seq LIMIT ?")
        while True:
            rows = self.read(sql, [after, *params, READ_BATCH])
            for seq, body in rows:
                try:
                    yield body.decode()
                except UnicodeDecodeError as exc:
                    raise JournalError(f"{self.path}: event row {seq} is unreadable (not UTF-8 text at byte "
                                       f"{exc.start}: the file is damaged)") from exc
            if len(rows) < READ_BATCH:
                return
            after = rows[-1][0]

    def event_count(self) -> int:
        return int(self.read("SELECT COUNT(*) FROM events")[0][0])

    def prune_events(self, *, max_events: int | None, retention_s: float | None, now_s: float | None,
                     batch: int = PRUNE_BATCH, pause_s: float = 0.0, stop: Callable[[], bool] | None = None) -> int:
        """Retention: delete the events beyond the newest ``max_events`` and those older than ``retention_s``
        before ``now_s`` (a *trusted* time: None skips the age rule, so a clock far ahead never empties the
        journal), oldest first, ``batch`` rows per transaction, ``pause_s`` between batches. Never deleted: the
        events of an incident with a message still undelivered (pending or dead) in the outbox, or with repair
        undo records. Returns how many were deleted."""
        rules, params = [], []
        if max_events is not None:
            rules.append("seq <= (SELECT MAX(seq) FROM events) - ?")
            params.append(int(max_events))
        if retention_s is not None and now_s is not None:
            rules.append("COALESCE(trusted_time_s, wall_time_s) < ?")
            params.append(now_s - retention_s)
        if not rules:
            return 0
        # The NOT IN list is computed once per statement (uncorrelated), not once per row.
        sql = ("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE (" + " OR ".join(rules)  # noqa: S608
               + ") AND incident_id NOT IN (SELECT incident_id FROM outbox WHERE state != 'delivered' "
               "UNION SELECT incident_id FROM repair_round) ORDER BY seq LIMIT ?)")
        removed = 0
        while stop is None or not stop():
            with self.transaction() as db:
                count = db.execute(sql, [*params, int(batch)]).rowcount
            removed += count
            if count < batch:
                break
            if pause_s:
                time.sleep(pause_s)
        return removed

    def _decode_event(self, body: str) -> Event:
        try:
            return Event.from_dict(json.loads(body))
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{self.path}: an event row is unreadable ({exc}): {body[:200]!r}") from exc

    # --------------------------------------------------------------------------------------------- floor

    def floor(self) -> Floor | None:
        rows = self.read("SELECT wall_s, boot_id, boottime_s, reason FROM floor")
        return Floor(*rows[0]) if rows else None

    def raise_floor(self, wall_s: float, boot_id: str, boottime_s: float, reason: str = "raised") -> Floor:
        """Move the floor up to ``wall_s`` if that is higher; returns the floor in force."""
        with self._lock:
            current = self.floor()
            if current is not None and current.wall_s >= wall_s:
                return current
            return self.set_floor(wall_s, boot_id, boottime_s, reason)

    def set_floor(self, wall_s: float, boot_id: str, boottime_s: float, reason: str) -> Floor:
        """Set the floor unconditionally: used to lower it once a rollback has been handled."""
        self._write(
            "INSERT INTO floor (one, wall_s, boot_id, boottime_s, reason) VALUES (1, ?, ?, ?, ?) "
            "ON CONFLICT (one) DO UPDATE SET wall_s = excluded.wall_s, boot_id = excluded.boot_id, "
            "boottime_s = excluded.boottime_s, reason = excluded.reason",
            (wall_s, boot_id, boottime_s, reason),
        )
        return Floor(wall_s, boot_id, boottime_s, reason)

    # -------------------------------------------------------------------------------------------- checks

    def record_check(self, record: CheckRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO checks (wall_s, monotonic_s, boot_id, status, offset_s, offset_lo_s, offset_hi_s, "
                "usable, agreeing, ntp_http_agree, summary, sources) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.wall_s, record.monotonic_s, record.boot_id, record.status, record.offset_s,
                 record.offset_lo_s, record.offset_hi_s, record.usable, record.agreeing,
                 None if record.ntp_http_agree is None else int(record.ntp_http_agree), record.summary,
                 json.dumps(record.sources)),
            )
            db.execute("DELETE FROM checks WHERE seq <= (SELECT MAX(seq) FROM checks) - ?", (MAX_CHECKS,))

    def last_check(self) -> CheckRecord | None:
        rows = self.read(
            "SELECT wall_s, monotonic_s, boot_id, status, offset_s, offset_lo_s, offset_hi_s, usable, agreeing, "
            "ntp_http_agree, summary, sources FROM checks ORDER BY seq DESC LIMIT 1"
        )
        if not rows:
            return None
        row = list(rows[0])
        row[9] = None if row[9] is None else bool(row[9])
        try:
            row[11] = json.loads(row[11])
        except ValueError as exc:
            raise JournalCorrupt(f"{self.path}: the last check row is unreadable ({exc})") from exc
        return CheckRecord(*row)

    def check_count(self) -> int:
        return int(self.read("SELECT COUNT(*) FROM checks")[0][0])

    # ---------------------------------------------------------------------------------------------- meta

    def set_meta(self, values: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def meta(self) -> dict[str, Any]:
        try:
            return {row["key"]: json.loads(row["value"]) for row in self.read("SELECT key, value FROM meta")}
        except ValueError as exc:
            raise JournalCorrupt(f"{self.path}: a meta row is unreadable ({exc})") from exc

    def set_daemon_info(self, info: DaemonInfo) -> None:
        self.set_meta({name: getattr(info, name) for name in DaemonInfo.__dataclass_fields__})

    def set_clock(self, mark: ClockMark, heartbeat: Heartbeat) -> None:
        """The last clock reading and the heartbeat, in one transaction."""
        self.set_meta({"last_clock": asdict(mark), "heartbeat": asdict(heartbeat)})

    def set_audit(self, hook: str, note: AuditNote) -> None:
        self.set_meta({_AUDIT_PREFIX + hook: asdict(note)})

    def set_guard(self, note: GuardNote) -> None:
        self.set_meta({_GUARD_PREFIX + note.hook: asdict(note)})

    def clear_guard(self, hook: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (_GUARD_PREFIX + hook,))

    def guards(self) -> dict[str, GuardNote]:
        """The schedulers the guard stopped and has not started yet (an unreadable note is skipped)."""
        return self.notes().guards

    def notes(self) -> DaemonNotes:
        """The daemon's notes, typed (raises JournalCorrupt when a row is unreadable, like :meth:`meta`)."""
        meta = self.meta()
        audits = {key.removeprefix(_AUDIT_PREFIX): AuditNote.from_value(value) for key, value in sorted(meta.items())
                  if key.startswith(_AUDIT_PREFIX)}
        return DaemonNotes(
            daemon=DaemonInfo(**{name: meta.get(name) for name in DaemonInfo.__dataclass_fields__}),
            heartbeat=Heartbeat.from_value(meta.get("heartbeat")),
            last_clock=ClockMark.from_value(meta.get("last_clock")),
            audits={name: note for name, note in audits.items() if note is not None},
            damage=JournalDamage.from_value(meta.get("journal_damage")),
            guards={name: note for key, value in sorted(meta.items()) if key.startswith(_GUARD_PREFIX)
                    and (note := GuardNote.from_value(value)) is not None
                    for name in [key.removeprefix(_GUARD_PREFIX)]},
        )

    def integrity_problems(self, limit: int = 10) -> list[str]:
        """``PRAGMA quick_check``'s findings, at most ``limit`` (empty: the file is sound); a damage that stops the
        check itself is one finding."""
        try:
            with self._lock:
                rows = self._db.execute(f"PRAGMA quick_check({int(limit)})").fetchall()
        except _SQLITE_ERRORS as exc:
            error = _as_journal_error(self.path, exc, "integrity check failed", LOCK_WAIT_S)
            if not isinstance(error, JournalCorrupt):
                raise error from exc
            return [f"text that is not UTF-8 ({exc.reason})" if isinstance(exc, UnicodeDecodeError) else str(exc)]
        return [r[0] for r in rows if r[0] != "ok"]

    def health(self) -> dict[str, Any]:
        """What ``timeguard status`` shows about the file itself."""
        problems = self.integrity_problems()
        size = sum(
            os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if os.path.exists(p)
        )
        counts: dict[str, int | None] = {}
        for name, count in (("events", self.event_count), ("checks", self.check_count)):
            try:
                counts[name] = count()
            except JournalCorrupt as exc:  # damage in the table itself: the count is unknown, the finding is kept
                counts[name] = None
                problems.append(str(exc.__cause__ or exc))
        return {
            "path": str(self.path),
            "ok": not problems,
            "problems": problems[:10],
            "size_bytes": size,
            **counts,
            "schema": int(self.read("PRAGMA user_version")[0][0]),
        }

    # ----------------------------------------------------------------------------------------- hook runs

    def record_hook_run(self, run: HookRun) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO hook_runs (hook, hook_type, event_id, incident_id, event_kind, status, summary, details, "
                "output, duration_s, dry_run, test, wall_s, monotonic_s) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.hook, run.hook_type, run.event_id, run.incident_id, run.event_kind, run.status.value,
                 run.summary, json.dumps(dict(run.details), default=repr), run.output, run.duration_s,
                 int(run.dry_run), int(run.test), run.wall_s, run.monotonic_s),
            )
            db.execute("DELETE FROM hook_runs WHERE seq <= (SELECT MAX(seq) FROM hook_runs) - ?", (MAX_HOOK_RUNS,))

    def hook_runs(
        self,
        *,
        event_id: str | None = None,
        hook: str | None = None,
        incident_id: str | None = None,
        limit: int | None = None,
    ) -> list[HookRun]:
        """Runs in the order they were recorded; ``limit`` keeps the newest (still oldest first)."""
        where, params = [], []
        for column, value in (("event_id", event_id), ("hook", hook), ("incident_id", incident_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = ("SELECT hook, hook_type, event_id, incident_id, event_kind, status, summary, details, output, "
               "duration_s, dry_run, test, wall_s, monotonic_s FROM hook_runs")
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            rows = list(reversed(self.read(sql + " ORDER BY seq DESC LIMIT ?", [*params, int(limit)])))
        else:
            rows = self.read(sql + " ORDER BY seq", params)
        return [
            HookRun(hook=r["hook"], hook_type=r["hook_type"], event_id=r["event_id"], incident_id=r["incident_id"],
                    event_kind=r["event_kind"], status=HookStatus(r["status"]), summary=r["summary"],
                    details=json.loads(r["details"]), output=r["output"], duration_s=r["duration_s"],
                    dry_run=bool(r["dry_run"]), test=bool(r["test"]), wall_s=r["wall_s"],
                    monotonic_s=r["monotonic_s"])
            for r in rows
        ]

    def _copy_readable(self, old: sqlite3.Connection, table: str, *, batch: int = 500) -> tuple[int, int | None]:
        """Copy the rows of ``table`` still readable in the damaged ``old`` into this journal, in rowid order: a
        batch that hits a damaged page is retried row by row until reading in batches works again. Returns
        (copied, rowids that could not be read; None: unknown, the table's root is unreadable)."""
        try:
            mine = [r[1] for r in self._db.execute(f"PRAGMA table_info({table})")]
            theirs = {r[1] for r in old.execute(f"PRAGMA table_info({table})")}
        except _SQLITE_ERRORS:
            return 0, 0
        columns = [c for c in mine if c in theirs]
        if not columns:
            return 0, 0
        names = ", ".join(columns)
        select = f"SELECT rowid, {names} FROM {table}"  # noqa: S608 — names from the schema itself
        insert = (f"INSERT OR IGNORE INTO {table} ({names}) "  # noqa: S608
                  f"VALUES ({', '.join('?' for _ in columns)})")
        try:
            (top,) = old.execute(f"SELECT MAX(rowid) FROM {table}").fetchone()  # noqa: S608
        except _SQLITE_ERRORS:
            top = None
        copied = lost = misses = 0
        after = 0  # rowids of these tables start at 1
        while top is None or after < top:
            try:
                rows = old.execute(f"{select} WHERE rowid > ? ORDER BY rowid LIMIT ?", (after, batch)).fetchall()
            except _SQLITE_ERRORS:
                after += 1  # step over the damaged region one rowid at a time
                try:
                    rows = old.execute(f"{select} WHERE rowid = ?", (after,)).fetchall()
                except _SQLITE_ERRORS:
                    lost += 1
                    misses += 1
                    if top is None and misses > 1000:  # the table's root is gone: how many rows it held is unknown
                        return copied, None
                    continue
                misses = 0
                if not rows:
                    continue
            if not rows:
                break
            values = [tuple(r[1:]) for r in rows]
            try:
                with self.transaction() as db:
                    db.executemany(insert, values)
                copied += len(rows)
            except JournalError:  # a row the damage left breaking a constraint (a NULL, a bad state): skip it alone
                for one in values:
                    try:
                        with self.transaction() as db:
                            db.execute(insert, one)
                        copied += 1
                    except JournalError:
                        lost += 1
            after = rows[-1][0]
        return copied, lost


# ------------------------------------------------------------------------------------------ the daemon's open

#: Copied from a damaged journal into the new one, most precious first.
_SALVAGE_TABLES = ("meta", "floor", "outbox", "repair_round", "repair_undone", "events", "checks", "hook_runs")


def open_for_daemon(state_dir: Path | str) -> tuple[Journal, dict[str, Any] | None]:
    """The daemon's journal, and what was salvaged when it was damaged (else None).

    Only damage moves a file aside: SQLITE_CORRUPT/SQLITE_NOTADB at open, or findings of ``PRAGMA quick_check``
    (a bad page in the middle of the file). The damaged file is kept (``journal.sqlite.corrupt-<time>``) and every
    row still readable in it — the floor, meta, the outbox's undelivered alerts, repair undo records, events — is
    copied into the new journal. A lock held past :data:`OPEN_LOCK_WAIT_S` raises :class:`JournalLocked`, an
    unusable state directory :class:`JournalUnusable`: never a new journal."""
    path = Path(state_dir) / FILENAME
    try:
        journal = Journal(path, lock_wait_s=OPEN_LOCK_WAIT_S)
    except JournalCorrupt as exc:
        cause = exc.__cause__
        reason = (f"text that is not UTF-8 ({cause.reason})" if isinstance(cause, UnicodeDecodeError)
                  else str(cause or exc))
    else:
        problems = journal.integrity_problems()
        if not problems:
            return journal, None
        journal.close()
        reason = "; ".join(problems)
    return salvage(path, reason)


def salvage(path: Path, reason: str) -> tuple[Journal, dict[str, Any]]:
    """Move the damaged journal at ``path`` aside (with its -wal/-shm) and copy what is readable into a new one."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}.{n}")
        n += 1
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{aside}{suffix}")
    journal = Journal(path)
    report: dict[str, Any] = {"wall_s": time.time(), "moved_to": str(aside), "reason": reason[:500],
                              "copied": {}, "lost": {}}
    try:
        old = _open_damaged(aside)
    except _SQLITE_ERRORS as exc:
        report["lost"]["*"] = f"nothing readable: {exc}"
    else:
        try:
            for table in _SALVAGE_TABLES:
                copied, lost = journal._copy_readable(old, table)
                report["copied"][table] = copied
                if lost != 0:
                    report["lost"][table] = "unknown" if lost is None else lost
        finally:
            old.close()
    journal.set_meta({"journal_damage": report})
    journal.salvaged = report
    return journal, report


def _open_damaged(path: Path) -> sqlite3.Connection:
    """A read-only look at a damaged journal (its WAL included when it has one), changing nothing in it."""
    last: sqlite3.Error | None = None
    for flags in ("mode=ro", "immutable=1"):
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?{flags}", uri=True, timeout=1, isolation_level=None)
        except _SQLITE_ERRORS as exc:
            last = exc
            continue
        try:
            db.execute("SELECT name FROM sqlite_master").fetchall()
        except _SQLITE_ERRORS as exc:
            db.close()
            last = exc
            continue
        return db
    assert last is not None
    raise last

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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timeguard.events import Event, EventKind

FILENAME = "journal.sqlite"
MAX_CHECKS = 20_000  # ≈ 2 weeks of checks at the default 64 s; older ones are pruned

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
)


class JournalError(Exception):
    """The journal cannot be used: the message says which file and what to do."""


class JournalCorrupt(JournalError):
    """The file exists but is not a readable timeguard journal."""


@dataclass(frozen=True, slots=True)
class Floor:
    """The highest *local* wall time seen (never a source's claim), with where it was seen."""

    wall_s: float
    boot_id: str
    boottime_s: float
    reason: str  # "raised" (periodic), "shutdown", "lowered after rollback …"


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


class Journal:
    """``readonly=True`` is for the CLI (status, events): it never creates or changes a file, so root reading
    the journal cannot leave root-owned ``-wal``/``-shm`` files that lock the (DynamicUser) daemon out."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        try:
            if readonly:
                self._db = self._connect_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=10, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc
        try:
            if readonly:
                self._check_schema_readable()
                return
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JournalCorrupt(
                f"{self.path}: not a usable timeguard journal ({exc}); move it aside to start a new one"
            ) from exc

    @classmethod
    def in_state_dir(cls, state_dir: Path | str, *, readonly: bool = False) -> Journal:
        return cls(Path(state_dir) / FILENAME, readonly=readonly)

    def _connect_readonly(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise JournalError(f"{self.path}: no journal (has the daemon run with this state_dir?)")
        uri = self.path.resolve().as_uri()
        # With the daemon running, its -wal/-shm exist and a read-only connection shares them. Without them
        # (daemon stopped cleanly), mode=ro would create them: read the file as immutable instead.
        live = Path(f"{self.path}-wal").exists() and Path(f"{self.path}-shm").exists()
        flags = "mode=ro" if live else "immutable=1"
        return sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=10, check_same_thread=False, isolation_level=None)

    def _check_schema_readable(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
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
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(_MIGRATIONS):
            raise JournalError(
                f"{self.path}: written by a newer timeguard (schema {version}, this one knows "
                f"{len(_MIGRATIONS)}); upgrade timeguard or move the file aside"
            )
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            with self._transaction() as db:
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

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite's errors (disk full, read-only, locked) become a JournalError."""
        try:
            with self._transaction() as db:
                yield db
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: write failed: {exc}") from exc

    def _write(self, sql: str, params: Iterable[Any] = ()) -> None:
        with self._writing() as db:
            db.execute(sql, tuple(params))

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            with self._lock:
                cursor = self._db.execute(sql, tuple(params))
                cursor.row_factory = sqlite3.Row
                return cursor.fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: read failed: {exc}") from exc

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
        sql = "SELECT body FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:  # the newest ``limit``, still returned oldest first
            rows = list(reversed(self._read(sql + " ORDER BY seq DESC LIMIT ?", [*params, int(limit)])))
        else:
            rows = self._read(sql + " ORDER BY seq", params)
        return [self._decode_event(row["body"]) for row in rows]

    def _decode_event(self, body: str) -> Event:
        try:
            return Event.from_dict(json.loads(body))
        except (ValueError, KeyError, TypeError) as exc:
            raise JournalError(f"{self.path}: an event row is unreadable ({exc}): {body[:200]!r}") from exc

    # --------------------------------------------------------------------------------------------- floor

    def floor(self) -> Floor | None:
        rows = self._read("SELECT wall_s, boot_id, boottime_s, reason FROM floor")
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
        with self._writing() as db:
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
        rows = self._read(
            "SELECT wall_s, monotonic_s, boot_id, status, offset_s, offset_lo_s, offset_hi_s, usable, agreeing, "
            "ntp_http_agree, summary, sources FROM checks ORDER BY seq DESC LIMIT 1"
        )
        if not rows:
            return None
        row = list(rows[0])
        row[9] = None if row[9] is None else bool(row[9])
        row[11] = json.loads(row[11])
        return CheckRecord(*row)

    def check_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM checks")[0][0])

    # ---------------------------------------------------------------------------------------------- meta

    def set_meta(self, values: dict[str, Any]) -> None:
        with self._writing() as db:
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def meta(self) -> dict[str, Any]:
        return {row["key"]: json.loads(row["value"]) for row in self._read("SELECT key, value FROM meta")}

    def health(self) -> dict[str, Any]:
        """What ``timeguard status`` shows about the file itself."""
        rows = self._read("PRAGMA quick_check")
        problems = [r[0] for r in rows if r[0] != "ok"]
        size = sum(
            os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if os.path.exists(p)
        )
        return {
            "path": str(self.path),
            "ok": not problems,
            "problems": problems[:10],
            "size_bytes": size,
            "events": int(self._read("SELECT COUNT(*) FROM events")[0][0]),
            "checks": self.check_count(),
            "schema": int(self._read("PRAGMA user_version")[0][0]),
        }

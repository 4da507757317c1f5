from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from timeguard.events import Event, EventKind
from timeguard.hooks.outbox import OutboxStore
from timeguard.repair.undo import UndoLog
from timeguard.store import journal as jmod
from timeguard.store.journal import CheckRecord, Journal, JournalCorrupt, JournalError, JournalUnusable


def ev(kind=EventKind.ROLLBACK, incident="inc1", wall=1000.0, trusted=None, **kw) -> Event:
    return Event(kind=kind, incident_id=incident, wall_time_s=wall, monotonic_s=5.0, boot_id="boot-a",
                 trusted_time_s=trusted, **kw)


def check(status="OK", offset=0.001) -> CheckRecord:
    return CheckRecord(wall_s=1000.0, monotonic_s=5.0, boot_id="boot-a", status=status, offset_s=offset,
                       offset_lo_s=offset - 0.001, offset_hi_s=offset + 0.001, usable=3, agreeing=3,
                       ntp_http_agree=True, summary="fine", sources=[{"name": "a", "state": "truechimer"}])


@pytest.fixture
def journal(tmp_path):
    with Journal.in_state_dir(tmp_path / "state") as j:
        yield j


def test_events_round_trip_in_recording_order(journal):
    first = ev(EventKind.FORWARD_JUMP, wall=2000.0, step_s=15552000.0, wall_before_s=1000.0)
    second = ev(EventKind.ROLLBACK, wall=1001.0, step_s=-15552000.0, detail={"detected_by": "poll"})
    journal.record_event(first)
    journal.record_event(second)
    assert journal.events() == [first, second]  # by seq, although the wall time went backwards
    assert journal.events(kinds=[EventKind.ROLLBACK]) == [second]
    assert journal.events(limit=1) == [second]
    assert journal.events(incident_id="inc1") == [first, second]
    assert journal.events(incident_id="other") == []


def test_since_uses_trusted_time_when_known(journal):
    journal.record_event(ev(wall=10_000.0, trusted=100.0))  # host far ahead, truth says 100
    journal.record_event(ev(wall=50.0))
    assert [e.wall_time_s for e in journal.events(since_s=60.0)] == [10_000.0]
    assert journal.events(since_s=200.0) == []


def test_recording_the_same_event_twice_keeps_one(journal):
    event = ev()
    journal.record_event(event)
    journal.record_event(event)
    assert len(journal.events()) == 1


def test_floor_only_rises_unless_set(journal):
    assert journal.floor() is None
    assert journal.raise_floor(100.0, "b", 1.0).wall_s == 100.0
    assert journal.raise_floor(50.0, "b", 2.0).wall_s == 100.0  # never lowered by a raise
    assert journal.raise_floor(150.0, "b", 3.0).wall_s == 150.0
    lowered = journal.set_floor(40.0, "b", 4.0, "lowered after rollback inc1")
    assert journal.floor() == lowered


def test_checks_and_meta(journal, monkeypatch):
    monkeypatch.setattr(jmod, "MAX_CHECKS", 3)
    for i in range(5):
        journal.record_check(check(offset=i / 1000))
    assert journal.check_count() == 3
    last = journal.last_check()
    assert last.offset_s == pytest.approx(0.004) and last.ntp_http_agree is True
    assert last.sources == [{"name": "a", "state": "truechimer"}]
    journal.set_meta({"pid": 42, "heartbeat": {"wall_s": 1.0}})
    journal.set_meta({"pid": 43})
    assert journal.meta() == {"pid": 43, "heartbeat": {"wall_s": 1.0}}
    health = journal.health()
    assert health["ok"] and health["checks"] == 3 and health["schema"] == len(jmod._MIGRATIONS)


def test_reopen_keeps_everything(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        j.record_event(ev())
        j.raise_floor(5.0, "b", 1.0)
    with Journal(tmp_path / "j.sqlite") as j:
        assert len(j.events()) == 1 and j.floor().wall_s == 5.0


def test_a_file_that_is_not_a_journal_is_named(tmp_path):
    bad = tmp_path / "journal.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalCorrupt, match=r"journal.sqlite: not a usable timeguard journal .*move it aside"):
        Journal(bad)
    assert bad.read_bytes() == b"this is not sqlite" * 100  # nothing destroyed


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(JournalError, match="written by a newer timeguard"):
        Journal(path)


def test_an_unreadable_event_row_is_named(journal):
    journal._write("INSERT INTO events (id, incident_id, kind, wall_time_s, monotonic_s, boot_id, body) "
                   "VALUES ('x', 'i', 'rollback', 1, 1, 'b', '{\"schema\": 7}')")
    with pytest.raises(JournalError, match=r"an event row is unreadable \(event schema 7 is not 1\)"):
        journal.events()


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_a_state_dir_that_is_a_file_is_named(tmp_path, depth):
    """The state directory itself, or a component of its path, is a regular file: JournalUnusable (the daemon
    exits 78) naming that file, nothing created."""
    target = tmp_path / "file"
    target.write_text("x")
    state = target.joinpath(*["sub"] * depth)
    with pytest.raises(JournalUnusable, match=rf"^{target}: the state directory must be a directory, this is a file"):
        Journal(state / "journal.sqlite")
    assert target.read_text() == "x"


def test_event_json_schema():
    event = ev(step_s=-3600.0, verdict={"status": "OK"})
    data = event.to_dict()
    assert data["schema"] == 1 and data["kind"] == "rollback"
    assert Event.from_dict(data) == event
    assert Event.from_dict(__import__("json").loads(event.to_json())) == event
    with pytest.raises(ValueError, match="schema"):
        Event.from_dict({**data, "schema": 2})
    assert EventKind.ROLLBACK_WHILE_DOWN.is_step and not EventKind.RECOVERED.is_step


def test_readonly_never_creates_files(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        j.record_event(ev())
    before = sorted(p.name for p in tmp_path.iterdir())
    assert before == ["journal.sqlite"]  # a clean close removes -wal/-shm
    with Journal(path, readonly=True) as ro:
        assert len(ro.events()) == 1
        with pytest.raises(JournalError, match="write failed"):
            ro.record_event(ev(incident="other"))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_readonly_sees_a_live_writer(tmp_path):
    path = tmp_path / "journal.sqlite"
    with Journal(path) as writer:
        writer.record_event(ev())
        with Journal(path, readonly=True) as ro:
            assert len(ro.events()) == 1
            writer.record_event(ev(incident="second"))
            assert len(ro.events()) == 2


def test_readonly_missing_file(tmp_path):
    with pytest.raises(JournalError, match="no journal"):
        Journal(tmp_path / "absent.sqlite", readonly=True)
    assert not (tmp_path / "absent.sqlite").exists()


# ----------------------------------------------------------------------------------- issue 9: nothing lost

import hashlib  # noqa: E402
import itertools  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from timeguard.store.journal import JournalLocked, open_for_daemon  # noqa: E402

LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "rollback":
    db.execute("PRAGMA journal_mode=DELETE")
else:
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
db.execute("COMMIT")
db.close()
"""


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hold_lock(path, mode, seconds):
    proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(path), mode, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _filled(path, events=3):
    with Journal(path) as j:
        for i in range(events):
            j.record_event(ev(incident=f"inc{i}", wall=1000.0 + i))
        j.raise_floor(5e9, "boot-a", 1.0)
    return path


@pytest.mark.parametrize("mode", ["wal-exclusive", "rollback"])
def test_a_lock_held_past_the_wait_is_never_corruption(tmp_path, monkeypatch, mode):
    """Issue 9 item 3: 'database is locked' (SQLITE_BUSY) raises JournalLocked, whatever kind of lock: the file is
    not moved aside, not changed, and no new journal is started."""
    path = _filled(tmp_path / jmod.FILENAME)
    holder = _hold_lock(path, mode, 30)
    try:
        before = _digest(path)
        monkeypatch.setattr(jmod, "OPEN_LOCK_WAIT_S", 0.3)
        started = time.monotonic()
        with pytest.raises(JournalLocked, match=r"still locked by another process after 0.3 s .*fuser"):
            open_for_daemon(tmp_path)
        assert time.monotonic() - started >= 0.25  # it waited
        assert _digest(path) == before
        assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []
    finally:
        holder.kill()
        holder.wait()
    journal, damage = open_for_daemon(tmp_path)  # the lock gone: the same journal, everything in it
    with journal:
        assert damage is None and len(journal.events()) == 3 and journal.floor().wall_s == 5e9


def test_a_lock_released_within_the_wait_opens_the_same_journal(tmp_path, monkeypatch):
    path = _filled(tmp_path / jmod.FILENAME)
    holder = _hold_lock(path, "wal-exclusive", 0.5)
    monkeypatch.setattr(jmod, "OPEN_LOCK_WAIT_S", 20)
    try:
        journal, damage = open_for_daemon(tmp_path)
    finally:
        holder.wait()
    with journal:
        assert damage is None and len(journal.events()) == 3 and journal.floor().wall_s == 5e9


@pytest.mark.parametrize(("code", "expected"), [
    (sqlite3.SQLITE_BUSY, JournalLocked), (261, JournalLocked),  # SQLITE_BUSY_RECOVERY
    (sqlite3.SQLITE_LOCKED, JournalLocked), (262, JournalLocked),  # SQLITE_LOCKED_SHAREDCACHE
    (sqlite3.SQLITE_CORRUPT, JournalCorrupt), (267, JournalCorrupt), (sqlite3.SQLITE_NOTADB, JournalCorrupt),
    (sqlite3.SQLITE_READONLY, JournalUnusable), (1032, JournalUnusable),  # SQLITE_READONLY_DBMOVED
    (sqlite3.SQLITE_CANTOPEN, JournalUnusable), (sqlite3.SQLITE_PERM, JournalUnusable),
    (sqlite3.SQLITE_IOERR, JournalError), (sqlite3.SQLITE_FULL, JournalError), (None, JournalError),
])
def test_sqlite_errors_are_classified_by_their_code_not_their_class(tmp_path, code, expected):
    exc = sqlite3.OperationalError("some message")
    if code is not None:
        exc.sqlite_errorcode = code
    error = jmod._as_journal_error(tmp_path / "j.sqlite", exc, "write failed", 1.0)
    assert type(error) is expected


def _damage(path, fraction, size=4096):
    """Overwrite one page (at ``fraction`` of the file) with garbage."""
    data = bytearray(path.read_bytes())
    page = int(len(data) // size * fraction)
    data[page * size:(page + 1) * size] = bytes((i * 7 + 13) % 256 for i in range(size))
    path.write_bytes(bytes(data))


def _rich_journal(path, events=600):
    with Journal(path) as j:
        j.raise_floor(5e9, "boot-a", 1.0)
        j.set_meta({"last_clock": {"wall_s": 5e9}})
        OutboxStore(j).enqueue("ops", ev(incident="pending-inc"), {"x": 1}, epoch="b", now_mono=1.0, now_wall=1.0,
                         min_interval_s=0)
        UndoLog(j).record("celery_beat", "repaired-inc", "r1", "sqlite:///x", [("t:1", "n", "c", "old", "new")],
                          applied_wall_s=1.0, applied_mono_s=1.0)
        with j.transaction() as db:
            db.executemany(
                "INSERT INTO events (id, incident_id, kind, wall_time_s, monotonic_s, boot_id, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.id, e.incident_id, e.kind.value, e.wall_time_s, e.monotonic_s, e.boot_id, e.to_json())
                 for e in (ev(incident=f"i{n}", wall=float(n), detail={"pad": "x" * 300}) for n in range(events))])
    return [e.id for e in Journal(path, readonly=True).events()]


@pytest.mark.parametrize("fraction", [0.35, 0.5, 0.75, 0.95])
def test_a_damaged_page_is_moved_aside_and_everything_readable_salvaged(tmp_path, fraction):
    """Issue 9 item 3: a bad page in the middle of the file (quick_check finds it; opening succeeds). The file is
    kept unchanged beside the new journal, and every row still readable is in the new one: the floor, the meta,
    the undelivered alert, the repair undo records, the events around the bad page."""
    path = tmp_path / jmod.FILENAME
    ids = _rich_journal(path)
    _damage(path, fraction)
    damaged = _digest(path)
    journal, damage = open_for_daemon(tmp_path)
    with journal:
        assert damage is not None and journal.integrity_problems() == []
        aside = tmp_path / damage["moved_to"].rsplit("/", 1)[1]
        assert _digest(aside) == damaged  # evidence kept as it was
        assert journal.floor().wall_s == 5e9 and journal.meta()["last_clock"] == {"wall_s": 5e9}
        assert [e.incident_id for e in OutboxStore(journal).entries(state="pending")] == ["pending-inc"]
        assert len(UndoLog(journal).records("repaired-inc")) == 1
        kept = [e.id for e in journal.events()]
        assert kept == [i for i in ids if i in set(kept)]  # in order, nothing invented
        assert len(kept) >= len(ids) - 40  # a 4 KiB page holds a handful of these events
        assert damage["copied"]["events"] == len(kept)
        assert journal.meta()["journal_damage"]["moved_to"] == damage["moved_to"]
    again, second = open_for_daemon(tmp_path)  # the new journal is sound: nothing moved again
    again.close()
    assert second is None


def test_a_file_whose_first_page_is_garbage_is_moved_aside_and_a_new_journal_started(tmp_path):
    path = tmp_path / jmod.FILENAME
    _rich_journal(path, events=50)
    _damage(path, 0.0)
    journal, damage = open_for_daemon(tmp_path)
    with journal:
        assert damage is not None and "*" in damage["lost"] and journal.events() == []
    assert (tmp_path / damage["moved_to"].rsplit("/", 1)[1]).exists()


def test_a_damaged_table_root_is_reported_as_unknown_losses(tmp_path):
    """Page 2 is the meta table's root: its rows are gone and how many there were is unknown; the rest is kept."""
    path = tmp_path / jmod.FILENAME
    ids = _rich_journal(path, events=50)
    data = bytearray(path.read_bytes())
    data[4096:8192] = b"\xff" * 4096
    path.write_bytes(bytes(data))
    journal, damage = open_for_daemon(tmp_path)
    with journal:
        assert damage["lost"] == {"meta": "unknown"}
        assert [e.id for e in journal.events()] == ids and journal.floor().wall_s == 5e9


# -------------------------------------------------------------------------------------------- retention

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ages=st.lists(st.tuples(st.integers(0, 800), st.integers(0, 5), st.sampled_from(["none", "pending", "dead",
                                                                                       "delivered", "repair"])),
                     max_size=60),
       max_events=st.integers(1, 70), trusted=st.booleans(), batch=st.integers(1, 7))
def test_retention_deletes_exactly_the_old_and_the_surplus_never_what_is_still_needed(tmp_path_factory, ages,
                                                                                       max_events, trusted, batch):
    """Property: after a pass, an event is gone iff its incident holds no undelivered alert nor repair undo
    records, and it is beyond the newest ``max_events`` or older than the retention (only with a trusted now)."""
    now, retention = 1000 * 86400.0, 400 * 86400.0
    with Journal(tmp_path_factory.mktemp("r") / "j.sqlite") as j:
        protected = set()
        recorded = []
        for n, (age_days, incident, state) in enumerate(ages):
            inc = f"inc{incident}-{state}"
            event = ev(incident=inc, wall=now - age_days * 86400.0, id=f"e{n}")
            j.record_event(event)
            recorded.append(event)
            if state in ("pending", "dead", "delivered"):
                got = OutboxStore(j).enqueue("ops", event, {}, epoch="b", now_mono=1.0, now_wall=1.0, min_interval_s=0)
                if state == "dead":
                    OutboxStore(j).dead(got.id, error="gone", now_wall=1.0)
                elif state == "delivered":
                    OutboxStore(j).claim(got.id, attempts=0, epoch="b", now_mono=1.0, now_wall=1.0)
                    OutboxStore(j).delivered(got.id, epoch="b", now_mono=1.0, now_wall=1.0, min_interval_s=0)
            if state in ("pending", "dead"):
                protected.add(inc)
            if state == "repair":
                UndoLog(j).record("celery_beat", inc, "r", "f", [], applied_wall_s=1.0, applied_mono_s=1.0)
                protected.add(inc)
        removed = j.prune_events(max_events=max_events, retention_s=retention, now_s=now if trusted else None,
                                 batch=batch)
        top = len(recorded)
        expected = [e.id for n, e in enumerate(recorded, start=1)
                    if e.incident_id in protected
                    or not (n <= top - max_events or (trusted and e.wall_time_s < now - retention))]
        assert [e.id for e in j.events()] == expected
        assert removed == len(recorded) - len(expected)


def test_retention_without_a_trusted_time_keeps_old_events_by_age(journal):
    journal.record_event(ev(wall=1.0))
    assert journal.prune_events(max_events=10, retention_s=86400.0, now_s=None) == 0
    assert journal.prune_events(max_events=10, retention_s=86400.0, now_s=1e9) == 1


# -------------------------------------------------------------------------------------------- streaming

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from([EventKind.ROLLBACK, EventKind.FORWARD_JUMP, EventKind.RECOVERED]),
                      max_size=25),
       wanted=st.none() | st.sets(st.sampled_from([EventKind.ROLLBACK, EventKind.RECOVERED]), min_size=1),
       limit=st.none() | st.integers(0, 30), batch=st.integers(1, 6))
def test_streamed_events_are_the_events_in_batches_of_any_size(tmp_path_factory, monkeypatch, *, kinds, wanted,
                                                               limit, batch):
    monkeypatch.setattr(jmod, "READ_BATCH", batch)
    with Journal(tmp_path_factory.mktemp("s") / "j.sqlite") as j:
        recorded = [ev(kind=k, incident=f"i{n}", id=f"e{n}") for n, k in enumerate(kinds)]
        for event in recorded:
            j.record_event(event)
        chosen = [e for e in recorded if wanted is None or e.kind in wanted]
        if limit is not None:
            chosen = chosen[max(len(chosen) - limit, 0):] if limit else []
        filters = {"kinds": wanted, "limit": limit}
        assert list(j.iter_events(**filters)) == chosen == j.events(**filters)
        assert list(j.iter_event_dicts(**filters)) == [e.to_dict() for e in chosen]


def test_an_event_row_that_is_not_utf8_is_named(journal):
    journal.record_event(ev(id="good"))
    journal._write("INSERT INTO events (id, incident_id, kind, wall_time_s, monotonic_s, boot_id, body) "
                   "VALUES ('bad', 'i', 'rollback', 1, 1, 'b', CAST(X'7B22FF' AS TEXT))")
    with pytest.raises(JournalError, match=r"event row 2 is unreadable \(not UTF-8 text at byte 2"):
        list(journal.iter_event_dicts())


def test_event_dicts_of_an_older_row_shape_go_through_the_event(journal):
    """A stored body without some field (written by an older timeguard) still gives the full hook schema."""
    body = ev(id="old").to_dict()
    del body["wall_before_s"], body["verdict"]
    journal._write("INSERT INTO events (id, incident_id, kind, wall_time_s, monotonic_s, boot_id, body) "
                   "VALUES ('old', 'i', 'rollback', 1, 1, 'b', ?)", (__import__("json").dumps(body),))
    (got,) = journal.iter_event_dicts()
    assert got == Event.from_dict(body).to_dict() and list(got)[:2] == ["kind", "incident_id"]


@pytest.fixture(scope="module")
def rich_journal_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rich") / jmod.FILENAME
    _rich_journal(path, events=300)
    return path


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1), garbage=st.binary(min_size=1, max_size=4096))
def test_damage_anywhere_never_stops_the_daemon_nor_loses_the_evidence(tmp_path_factory, rich_journal_file, where,
                                                                       garbage):
    """Property: garbage anywhere in the file. open_for_daemon always gives a journal that passes quick_check (it
    never raises: detection must start); a file it moved aside is kept byte for byte; the events it kept that were
    in the original are in their original order."""
    original = rich_journal_file.read_bytes()
    with Journal(rich_journal_file, readonly=True) as j:
        ids = [row[0] for row in j.read("SELECT id FROM events ORDER BY seq")]
    state = tmp_path_factory.mktemp("any")
    data = bytearray(original)
    start = min(int(where * len(data)), len(data) - 1)
    data[start:start + len(garbage)] = garbage[: len(data) - start]
    (state / jmod.FILENAME).write_bytes(bytes(data))
    journal, damage = open_for_daemon(state)
    with journal:
        assert journal.integrity_problems() == []
        stored = [row[0].decode(errors="replace") for row in journal.read(
            "SELECT CAST(id AS BLOB) FROM events ORDER BY seq")]
        known = [i for i in stored if i in set(ids)]
        assert known == [i for i in ids if i in set(known)]
    if damage is not None:
        assert (state / Path(damage["moved_to"]).name).read_bytes() == bytes(data)


@pytest.mark.parametrize("user_version", [0, 16777222, 2**31 - 1, -1])
def test_a_damaged_schema_number_in_the_header_is_damage_not_a_newer_timeguard(tmp_path_factory, rich_journal_file,
                                                                               user_version):
    """Bytes 60–63 of the header (user_version) hit by garbage: 0 over existing tables would re-run the first
    migration ("table meta already exists"), a huge number read as "written by a newer timeguard" — both stopped
    the daemon. They are damage: moved aside, the rows salvaged; a plausible newer schema is still refused."""
    state = tmp_path_factory.mktemp("header")
    data = bytearray(rich_journal_file.read_bytes())
    data[60:64] = user_version.to_bytes(4, "big", signed=True)
    (state / jmod.FILENAME).write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="header is damaged"):
        Journal(state / jmod.FILENAME, readonly=True)
    journal, damage = open_for_daemon(state)
    with journal:
        assert journal.integrity_problems() == [] and journal.read("SELECT count(*) FROM events")[0][0] > 0
    assert damage is not None and (state / Path(damage["moved_to"]).name).read_bytes() == bytes(data)


def test_a_journal_of_a_newer_timeguard_is_refused_and_left_alone(tmp_path_factory, rich_journal_file):
    state = tmp_path_factory.mktemp("newer")
    data = bytearray(rich_journal_file.read_bytes())
    data[60:64] = (len(jmod._MIGRATIONS) + 3).to_bytes(4, "big")
    (state / jmod.FILENAME).write_bytes(bytes(data))
    with pytest.raises(JournalError, match="written by a newer timeguard") as info:
        open_for_daemon(state)
    assert not isinstance(info.value, JournalCorrupt)
    assert (state / jmod.FILENAME).read_bytes() == bytes(data) and len(list(state.iterdir())) == 1


# ------------------------------------------------------------------------------- the daemon's notes, typed

from timeguard.store.journal import AuditNote, ClockMark, DaemonInfo, Heartbeat, JournalDamage  # noqa: E402

_text = st.text(max_size=20)
_files = itertools.count()
_float = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(info=st.builds(DaemonInfo, pid=st.integers(0, 2**22), version=_text, boot_id=_text, started_wall_s=_float,
                      config=_text),
       mark=st.builds(ClockMark, wall_s=_float, boottime_s=_float, boot_id=_text),
       beat=st.builds(Heartbeat, boottime_s=_float, wall_s=_float, boot_id=_text, pid=st.integers(0, 2**22)),
       audits=st.dictionaries(st.text(min_size=1, max_size=10), st.builds(
           AuditNote, wall_s=_float, outcome=st.sampled_from(["clean", "found", "skipped", "error"]), summary=_text,
           next_in_s=_float), max_size=3))
def test_the_daemons_notes_read_back_typed_as_written(tmp_path, info, mark, beat, audits):
    """What the daemon writes (start-up info, the clock mark and heartbeat, each hook's last audit) is what
    ``status`` reads back through Journal.notes(), field for field, in the stored format of earlier versions."""
    with Journal(tmp_path / f"n{next(_files)}.sqlite") as journal:
        journal.set_daemon_info(info)
        journal.set_clock(mark, beat)
        for name, note in audits.items():
            journal.set_audit(name, note)
        notes = journal.notes()
        raw = journal.meta()
    assert notes.daemon == info and notes.last_clock == mark and notes.heartbeat == beat and notes.damage is None
    assert notes.audits == dict(sorted(audits.items()))
    assert raw["heartbeat"]["boottime_s"] == beat.boottime_s and raw["version"] == info.version
    assert all(raw[f"audit:{name}"]["outcome"] == note.outcome for name, note in audits.items())


@given(st.one_of(st.none(), st.integers(), _text, st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.sampled_from(["wall_s", "boottime_s", "boot_id", "pid", "x"]), _float,
                                 max_size=3)))
def test_a_note_of_the_wrong_shape_reads_as_none_never_an_exception(value):
    """Damage or an older, half-written note: status says "never written", it does not crash."""
    full = isinstance(value, dict) and {"wall_s", "boottime_s", "boot_id"} <= value.keys()
    for cls in (ClockMark, Heartbeat, AuditNote, JournalDamage):
        note = cls.from_value(value)
        assert note is None or (full and cls in (ClockMark, Heartbeat))


def test_salvage_damage_and_a_heartbeat_without_pid_read_typed(tmp_path):
    path = tmp_path / jmod.FILENAME
    path.write_bytes(b"not a database" * 100)
    journal, report = jmod.open_for_daemon(tmp_path)
    with journal:
        journal.set_meta({"heartbeat": {"boottime_s": 5.0, "wall_s": 6.0, "boot_id": "b"}})  # written before pid
        notes = journal.notes()
    assert notes.damage == JournalDamage(**report)
    assert notes.heartbeat == Heartbeat(boottime_s=5.0, wall_s=6.0, boot_id="b", pid=0)

from __future__ import annotations

import sqlite3

import pytest

from timeguard import journal as jmod
from timeguard.events import Event, EventKind
from timeguard.journal import CheckRecord, Journal, JournalCorrupt, JournalError, JournalUnusable


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

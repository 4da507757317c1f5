"""The undo log written and read a batch at a time (issue 11): a round's records in several journal rows of one
transaction, merged by the journal when read (first-seen old value, latest new value, in the order first changed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from timeguard.repair.undo import RECORDS_PER_ROW, UndoLog
from timeguard.store.journal import Journal, JournalError


def rounds(journal: Journal, incident: str) -> list[str]:
    return [r["records"] for r in journal.read("SELECT records FROM repair_round WHERE incident_id = ? ORDER BY seq",
                                               [incident])]


def test_a_round_given_batch_by_batch_is_one_transaction_of_several_rows(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        log = UndoLog(journal)
        with log.recording("celery_beat", "inc", "r1", "db#p_", applied_wall_s=1.0, applied_mono_s=1.0) as add:
            add([("periodictask:1", "a", "last_run_at", "A1", "N")])
            add([])  # an empty batch writes no row
            add([("periodictask:2", "b", "last_run_at", "B1", "N"), ("periodictask:1", "a", "date_changed", None, "N")])
        assert len(rounds(journal, "inc")) == 2
        assert [(r["item"], r["field"], r["old_value"]) for r in log.iter_records("inc")] == [
            ("periodictask:1", "last_run_at", "A1"), ("periodictask:2", "last_run_at", "B1"),
            ("periodictask:1", "date_changed", None)]


def test_a_round_that_fails_while_recording_leaves_no_record(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        log = UndoLog(journal)
        with (pytest.raises(RuntimeError, match="the database failed"),
              log.recording("celery_beat", "inc", "r1", "db#p_", applied_wall_s=1.0, applied_mono_s=1.0) as add):
            add([("periodictask:1", "a", "last_run_at", "A1", "N")])
            raise RuntimeError("the database failed")
        assert rounds(journal, "inc") == [] and log.records("inc") == []
        assert log.targets("inc") == []


def test_a_round_without_records_still_names_its_store(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        log = UndoLog(journal)
        log.record("example", "inc", "r1", "store#1", [], applied_wall_s=1.0, applied_mono_s=1.0)
        assert rounds(journal, "inc") == ["[]"]
        assert log.targets("inc") == [("example", "store#1")]


def test_record_splits_a_large_round_and_reading_merges_rounds_in_first_changed_order(tmp_path: Path) -> None:
    n = 2 * RECORDS_PER_ROW + 5
    with Journal(tmp_path / "j.sqlite") as journal:
        log = UndoLog(journal)
        first = ((f"periodictask:{i}", f"t{i}", "last_run_at", f"OLD{i}", "N1") for i in range(n))  # a generator
        log.record("celery_beat", "inc", "r1", "db#p_", first, applied_wall_s=1.0, applied_mono_s=1.0)
        assert len(rounds(journal, "inc")) == 3
        # a second round touches the last item again and a new one: the old value stays the first-seen one
        log.record("celery_beat", "inc", "r2", "db#p_",
                   [(f"periodictask:{n - 1}", f"t{n - 1}", "last_run_at", "AGAIN", "N2"),
                    ("periodictask:new", "tn", "date_changed", "OLDN", "N2")], applied_wall_s=2.0, applied_mono_s=2.0)
        entries = list(log.iter_records("inc"))
        assert [e["item"] for e in entries] == [*(f"periodictask:{i}" for i in range(n)), "periodictask:new"]
        last = entries[n - 1]
        assert (last["old_value"], last["new_value"], last["repair_id"], last["applied_wall_s"]) == (
            f"OLD{n - 1}", "N2", "r1", 2.0)
        assert (entries[0]["new_value"], entries[0]["applied_wall_s"]) == ("N1", 1.0)
        # undone as of the newest round; a later round touching one again makes it undoable again
        log.mark_undone("inc", [entries[0]["key"], last["key"]])
        assert len(log.records("inc", undone=True)) == 2
        log.record("celery_beat", "inc", "r3", "db#p_", [(f"periodictask:{n - 1}", "x", "last_run_at", "Z", "N3")],
                   applied_wall_s=3.0, applied_mono_s=3.0)
        assert [e["item"] for e in log.iter_records("inc", undone=True)] == ["periodictask:0"]


def test_values_keep_their_json_types_and_other_stores_are_apart(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        log = UndoLog(journal)
        log.record("example", "inc", "r1", "a#1", [("key:1", "k", "score", 1.5, {"at": [1, 2]})],
                   applied_wall_s=1.0, applied_mono_s=1.0)
        log.record("example", "inc", "r1", "b#1", [("key:1", "k", "score", 7, None)],
                   applied_wall_s=1.0, applied_mono_s=1.0)
        [a] = log.records("inc", fingerprint="a#1")
        assert (a["old_value"], a["new_value"], a["key"]) == (1.5, {"at": [1, 2]}, ("example", "a#1", "key:1", "score"))
        [b] = log.records("inc", fingerprint="b#1")
        assert (b["old_value"], b["new_value"]) == (7, None)


def test_a_round_whose_records_are_not_json_is_named(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as journal:
        with journal.transaction() as db:
            db.execute("INSERT INTO repair_round (target, incident_id, repair_id, fingerprint, applied_wall_s, "
                       "applied_mono_s, records) VALUES ('celery_beat', 'inc', 'r1', 'db#p_', 1.0, 1.0, '[[oops')")
        with pytest.raises(JournalError, match=r"repair round 1 of inc is unreadable"):
            UndoLog(journal).records("inc")

"""The undo log of repairs: what each repair replaced, keyed by target (its kind's name, the store's
fingerprint, an item key the target defines and the field), kept in the journal (migrations 4 and 6).

A repair ROUND's records are written in one journal transaction as JSON arrays of a batch each (a few thousand
records), one journal row per batch: 100,000 bound rows would cost most of a round's budget, one array of them would
hold the whole round in memory. "First-seen old value, latest new value" is resolved when reading, in journal
order. An undo marks (item, field)s undone as of the incident's newest journal row; a later round touching one
again makes it undoable again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from timeguard.store.journal import JournalError

if TYPE_CHECKING:
    from timeguard.store.journal import Journal

#: Undo records per journal row (a batch of a streamed round).
RECORDS_PER_ROW = 2000


class UndoLog:
    """The undo records of one journal (the narrow interface a repair gets instead of the whole journal)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.path = journal.path

    def record(self, target: str, incident_id: str, repair_id: str, fingerprint: str,
               records: Iterable[tuple[Any, ...]], *, applied_wall_s: float, applied_mono_s: float) -> None:
        """Record the old/new values of one repair round: ``records`` are (item, name, field, old, new) tuples,
        consumed RECORDS_PER_ROW at a time (an iterator is never held whole)."""
        with self.recording(target, incident_id, repair_id, fingerprint, applied_wall_s=applied_wall_s,
                            applied_mono_s=applied_mono_s) as add:
            batch: list[tuple[Any, ...]] = []
            for r in records:
                batch.append(r)
                if len(batch) >= RECORDS_PER_ROW:
                    add(batch)
                    batch = []
            add(batch)

    @contextmanager
    def recording(self, target: str, incident_id: str, repair_id: str, fingerprint: str, *,
                  applied_wall_s: float,
                  applied_mono_s: float) -> Iterator[Callable[[Sequence[tuple[Any, ...]]], None]]:
        """One write transaction for one repair round's records, given batch by batch to the function it yields
        (each non-empty batch one journal row; a round without records still gets its row): the round's records
        are committed together when the block ends, or not at all when it raises."""
        sql = ("INSERT INTO repair_round (target, incident_id, repair_id, fingerprint, applied_wall_s, "
               "applied_mono_s, records) VALUES (?, ?, ?, ?, ?, ?, ?)")
        head = (target, incident_id, repair_id, fingerprint, applied_wall_s, applied_mono_s)
        written = 0
        with self.journal.transaction() as db:

            def add(records: Sequence[tuple[Any, ...]]) -> None:
                nonlocal written
                if records:
                    db.execute(sql, (*head, json.dumps(records, separators=(",", ":"))))
                    written += 1

            yield add
            if not written:
                db.execute(sql, (*head, "[]"))

    def records(self, incident_id: str, *, target: str | None = None, fingerprint: str | None = None,
                undone: bool | None = None) -> list[dict[str, Any]]:
        """:meth:`iter_records` as a list."""
        return list(self.iter_records(incident_id, target=target, fingerprint=fingerprint, undone=undone))

    def iter_records(self, incident_id: str, *, target: str | None = None, fingerprint: str | None = None,
                     undone: bool | None = None) -> Iterator[dict[str, Any]]:
        """One entry per (target, store, item, field) the incident's repairs changed, in the order first changed:
        ``old_value`` is the first-seen original, ``new_value`` the latest value written (undo compares against
        it); ``key`` identifies it for :meth:`mark_undone`. Streamed: the journal merges the rounds (a sort on
        disk, not in this process) and the entries come a batch at a time."""
        where, params = "r.incident_id = ?", [incident_id]
        if target is not None:
            where += " AND r.target = ?"
            params.append(target)
        if fingerprint is not None:
            where += " AND r.fingerprint = ?"
            params.append(fingerprint)
        # ``where`` is fixed text (values bound): S608 does not apply
        bad = self.journal.read(f"SELECT seq FROM repair_round AS r WHERE {where} "  # noqa: S608
                                "AND NOT json_valid(r.records) ORDER BY seq LIMIT 1", params)
        if bad:
            raise JournalError(f"{self.path}: repair round {bad[0]['seq']} of {incident_id} is unreadable (its "
                               "records are not JSON)")
        # A record's place in the journal (its row, its index there) as text that sorts like it, before the record's
        # JSON: the smallest per key holds the first-seen old value, the largest the latest new value. The repair
        # and the time of a row are looked up in ``rows`` (a few entries: one per batch of a round).
        rows = {r["seq"]: (r["repair_id"], r["applied_wall_s"]) for r in self.journal.read(
            f"SELECT seq, repair_id, applied_wall_s FROM repair_round AS r WHERE {where}", params)}  # noqa: S608
        place = "printf('%015d%06d', r.seq, j.key) || j.value"
        sql = (
            "SELECT g.target, g.fingerprint, g.item, g.field, g.first, g.last, m.round_seq FROM ("  # noqa: S608
            "SELECT r.target AS target, r.fingerprint AS fingerprint, json_extract(j.value, '$[0]') AS item, "
            f"json_extract(j.value, '$[2]') AS field, MIN({place}) AS first, MAX({place}) AS last "
            f"FROM repair_round AS r, json_each(r.records) AS j WHERE {where} GROUP BY 1, 2, 3, 4) AS g "
            "LEFT JOIN repair_undone AS m ON m.incident_id = ? AND m.target = g.target "
            "AND m.fingerprint = g.fingerprint AND m.item = g.item AND m.field = g.field ORDER BY g.first"
        )
        for row in self.journal.iter_read(sql, [*params, incident_id]):
            first, last = row["first"], row["last"]
            _item, name, _field, old, new = json.loads(first[21:])
            if last != first:
                new = json.loads(last[21:])[4]
            repair_id, wall_s = rows[int(first[:15])][0], rows[int(last[:15])][1]
            seq = int(last[:15])
            done = int(row["round_seq"] is not None and row["round_seq"] >= seq)
            if undone is not None and done != int(undone):
                continue
            item, field = row["item"], row["field"]
            key = (row["target"], row["fingerprint"], item, field)
            yield {"key": key, "incident_id": incident_id, "target": row["target"], "repair_id": repair_id,
                   "fingerprint": row["fingerprint"], "item": item, "name": name, "field": field, "old_value": old,
                   "new_value": new, "applied_wall_s": wall_s, "undone": done}

    def targets(self, incident_id: str) -> list[tuple[str, str]]:
        """(target, fingerprint) of every store the incident's repairs changed, in the order first repaired."""
        rows = self.journal.read("SELECT target, fingerprint, MIN(seq) AS first FROM repair_round "
                                  "WHERE incident_id = ? GROUP BY target, fingerprint ORDER BY first", [incident_id])
        return [(r["target"], r["fingerprint"]) for r in rows]

    def mark_undone(self, incident_id: str, keys: Iterable[tuple[Any, ...]]) -> None:
        """Mark entries (their ``key``) restored, as of the incident's newest round."""
        with self.journal.transaction() as db:
            newest = db.execute("SELECT MAX(seq) FROM repair_round WHERE incident_id = ?", (incident_id,)).fetchone()[0]
            db.executemany(
                "INSERT INTO repair_undone (incident_id, target, fingerprint, item, field, round_seq) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (incident_id, target, fingerprint, item, field) "
                "DO UPDATE SET round_seq = excluded.round_seq",
                [(incident_id, *key, newest or 0) for key in keys],
            )

"""The undo log of repairs: what each repair replaced, keyed by target (its kind's name, the store's
fingerprint, an item key the target defines and the field), kept in the journal (migrations 4 and 6).

One journal row per repair ROUND holds its records as one JSON array (100,000 bound rows would cost most of a
round's budget). "First-seen old value, latest new value" is resolved when reading. An undo marks (item, field)s
undone as of the incident's newest round; a later round touching one again makes it undoable again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from timeguard.store.journal import JournalError

if TYPE_CHECKING:
    from timeguard.store.journal import Journal


class UndoLog:
    """The undo records of one journal (the narrow interface a repair gets instead of the whole journal)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.path = journal.path

    def record(self, target: str, incident_id: str, repair_id: str, fingerprint: str,
               records: Iterable[tuple[Any, ...]], *, applied_wall_s: float, applied_mono_s: float) -> None:
        """Record the old/new values of one repair round: ``records`` are (item, name, field, old, new) tuples."""
        text = json.dumps([list(r) for r in records], separators=(",", ":"))
        with self.journal.transaction() as db:
            db.execute(
                "INSERT INTO repair_round (target, incident_id, repair_id, fingerprint, applied_wall_s, "
                "applied_mono_s, records) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (target, incident_id, repair_id, fingerprint, applied_wall_s, applied_mono_s, text),
            )

    def records(self, incident_id: str, *, target: str | None = None, fingerprint: str | None = None,
                undone: bool | None = None) -> list[dict[str, Any]]:
        """One entry per (target, store, item, field) the incident's repairs changed, in the order first changed:
        ``old_value`` is the first-seen original, ``new_value`` the latest value written (undo compares against
        it); ``key`` identifies it for :meth:`mark_undone`."""
        sql = ("SELECT seq, target, repair_id, fingerprint, applied_wall_s, records FROM repair_round "
               "WHERE incident_id = ?")
        params: list[Any] = [incident_id]
        if target is not None:
            sql += " AND target = ?"
            params.append(target)
        if fingerprint is not None:
            sql += " AND fingerprint = ?"
            params.append(fingerprint)
        rounds = self.journal.read(sql + " ORDER BY seq", params)
        marks = {(r["target"], r["fingerprint"], r["item"], r["field"]): r["round_seq"] for r in self.journal.read(
            "SELECT target, fingerprint, item, field, round_seq FROM repair_undone WHERE incident_id = ?",
            [incident_id])}
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        for rnd in rounds:
            try:
                records = json.loads(rnd["records"])
            except ValueError as exc:
                raise JournalError(f"{self.path}: repair round {rnd['seq']} of {incident_id} is unreadable "
                                   f"({exc})") from exc
            for item, name, field, old, new in records:
                key = (rnd["target"], rnd["fingerprint"], item, field)
                entry = merged.get(key)
                if entry is None:
                    merged[key] = {"key": key, "incident_id": incident_id, "target": rnd["target"],
                                   "repair_id": rnd["repair_id"], "fingerprint": rnd["fingerprint"], "item": item,
                                   "name": name, "field": field, "old_value": old, "new_value": new,
                                   "applied_wall_s": rnd["applied_wall_s"], "last_round": rnd["seq"]}
                else:
                    entry.update(new_value=new, applied_wall_s=rnd["applied_wall_s"], last_round=rnd["seq"])
        out = []
        for key, entry in merged.items():
            entry["undone"] = int(key in marks and marks[key] >= entry.pop("last_round"))
            if undone is None or entry["undone"] == int(undone):
                out.append(entry)
        return out

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

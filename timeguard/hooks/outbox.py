"""The durable alert outbox: every alert is in the journal before ``enqueue`` returns, and is sent at least once.

Flow: a hook's ``handle`` builds its payload and calls ``ctx.enqueue(hook, event, payload)`` (this class's
:meth:`Outbox.enqueue`): one short SQLite transaction, then the worker is woken. The worker claims due messages
(the claim — attempt counted, "in flight" set — is committed *before* the request is made), hands each to its
hook's ``deliver`` in a thread of its own (at most ``per_hook_in_flight`` per hook, so a hanging receiver holds
up only its own hook), and records the outcome. A ``kill -9`` at any point loses nothing: a message whose
attempt was in flight is due again at the next start, with the same delivery id; receivers dedupe on it.

Retries: exponential backoff with full jitter (``uniform(0, min(max_backoff, base·2ⁿ⁻¹))``), a receiver's
``Retry-After`` honoured, bounded by ``max_attempts`` *and* ``max_age_s``. ``permanent`` results (400, 401,
404, 410…) are dead at once. Dead messages stay in the journal (state ``dead``, with the last error), are
counted by :meth:`stats` (``timeguard status``) and logged.

Every duration is on the monotonic clock. What "age" means across restarts, since the wall clock cannot be
trusted (it is the thing being watched):

* Same boot (the daemon was restarted, or killed): CLOCK_MONOTONIC is system-wide and kept counting, so the age
  includes the time the daemon was down — the receiver has been waiting that long too.
* Another boot: CLOCK_MONOTONIC restarted at zero and the host's downtime is unknowable, so a message keeps the
  age it had reached at its last attempt in the earlier boot and ages on from there (the downtime is not
  counted). Rows carry the boot id of their monotonic readings (``epoch``); the journal re-bases them when
  they are next claimed.

Rate limiting per incident (a flapping clock must not flood anyone): a message of (hook, incident) that no
attempt has touched yet absorbs each new event of that incident (payload replaced, the event counted); once one
has been delivered, the next message of the incident waits until ``min_interval_s`` after that send and then
carries everything since. An update is never sent before the message it updates (delivered or dead).
What a message carries is in its payload under ``"_outbox"`` (see :func:`split_payload`).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from timeguard.events import Event
from timeguard.hooks.api import Deliverer, Delivery, DeliveryResult
from timeguard.store.journal import Journal, JournalError
from timeguard.watch.clockwatch import read_boot_id

DEFAULT_MIN_INTERVAL_S = 60.0
DEFAULT_MAX_ATTEMPTS = 200
DEFAULT_MAX_AGE_S = 24 * 3600.0  # an alert about the clock that is a day late is for the post-mortem, not a pager
DEFAULT_BASE_BACKOFF_S = 1.0
DEFAULT_MAX_BACKOFF_S = 900.0  # mean wait 7.5 min once capped: with 200 attempts, the age limit binds first
DEFAULT_PER_HOOK_IN_FLIGHT = 4
IDLE_POLL_S = 30.0  # also how soon rows queued by another process (``timeguard hooks test``) are seen
JOURNAL_RETRY_S = 1.0
MAX_DELIVERED = 10_000  # delivered outbox rows kept for inspection; pending and dead ones are never pruned
PRUNE_EVERY = 64  # delivered rows are pruned when the seq of the one just delivered is a multiple of this
MAX_EVENT_IDS = 50  # event ids a coalesced message lists (its count is exact)

#: The key under which a delivery's payload says what the message carries (a deliverer pops it).
OUTBOX_KEY = "_outbox"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One outbox message as stored. ``*_mono`` are CLOCK_MONOTONIC readings of the boot ``epoch``."""

    id: str  # the delivery id: "<first event id>.<hook>", stable across retries and restarts
    hook: str
    incident_id: str
    event_id: str  # the event that opened the message (the id names it)
    last_event_id: str  # the newest event folded in (its payload is the one sent)
    event_ids: list[str]  # the events it carries (the first and the newest MAX_EVENT_IDS)
    kinds: list[str]  # distinct kinds among them, in order
    events: int  # how many events it carries: 1 + the updates coalesced into it
    message: int  # its number among this hook's messages for the incident (1 = the first)
    state: str  # pending | delivered | dead
    payload: dict[str, Any]  # the hook's payload for the newest event
    attempts: int
    epoch: str
    enqueued_mono: float
    next_mono: float
    last_mono: float
    sending_since: float | None  # set while an attempt is in flight (or was, when the process died)
    sent_mono: float | None
    enqueued_wall: float
    last_attempt_wall: float | None
    done_wall: float | None
    last_error: str
    test: bool


class Enqueued(NamedTuple):
    id: str
    outcome: str  # "queued" | "held" (waits for an earlier message or the rate limit) | "coalesced" | "duplicate"
    due_in_s: float


_OUTBOX_COLUMNS = (
    "id, hook, incident_id, event_id, last_event_id, event_ids, kinds, events, message, state, payload, attempts, "
    "epoch, enqueued_mono, next_mono, last_mono, sending_since, sent_mono, enqueued_wall, last_attempt_wall, "
    "done_wall, last_error, test"
)



class OutboxStore:
    """The outbox's rows in the journal: the atomic steps :class:`Outbox`'s policy (backoff, limits, rate) is made
    of. Each is one transaction of the journal's, so a kill -9 between any two leaves a state the next start
    resumes from. The table itself is created by the journal's migrations (2)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def enqueue(self, hook: str, event: Event, payload: dict[str, Any], *, epoch: str, now_mono: float,
                       now_wall: float, min_interval_s: float) -> Enqueued:
        """Queue ``payload`` (for ``event``) for ``hook``, coalescing per incident, in one short transaction.

        * A message of this (hook, incident) that no attempt has touched yet absorbs the event: its payload is
          replaced, its event count goes up, it keeps its id (nobody has seen that id, so nothing is lost).
        * Otherwise a new message ``"<event id>.<hook>"``: due now, or — after a delivered one — not before
          ``min_interval_s`` after that send; it is never sent before an earlier message of the incident is
          delivered or dead (an update must not overtake what it updates).
        """
        body = json.dumps(payload, sort_keys=True)  # TypeError here: a hook's bug, before any write
        delivery_id = f"{event.id}.{hook}"
        with self._journal.transaction() as db:
            if db.execute("SELECT 1 FROM outbox WHERE id = ?", (delivery_id,)).fetchone():
                return Enqueued(delivery_id, "duplicate", 0.0)
            open_row = db.execute(
                "SELECT id, last_event_id, event_ids, kinds, next_mono, epoch FROM outbox WHERE hook = ? AND "
                "incident_id = ? AND state = 'pending' AND attempts = 0 AND sending_since IS NULL "
                "ORDER BY seq DESC LIMIT 1",
                (hook, event.incident_id),
            ).fetchone()
            if open_row is not None:
                open_id, last_event_id, ids_json, kinds_json, next_mono, row_epoch = open_row
                ids: list[str] = json.loads(ids_json)
                if event.id == last_event_id or event.id in ids:
                    return Enqueued(open_id, "duplicate", 0.0)
                ids.append(event.id)
                if len(ids) > MAX_EVENT_IDS:
                    ids = [ids[0], *ids[-(MAX_EVENT_IDS - 1):]]
                kinds: list[str] = json.loads(kinds_json)
                if event.kind.value not in kinds:
                    kinds.append(event.kind.value)
                db.execute(
                    "UPDATE outbox SET payload = ?, last_event_id = ?, event_ids = ?, kinds = ?, events = events + 1 "
                    "WHERE id = ?",
                    (body, event.id, json.dumps(ids), json.dumps(kinds), open_id),
                )
                due_in = max(next_mono - now_mono, 0.0) if row_epoch == epoch else 0.0
                return Enqueued(open_id, "coalesced", due_in)
            earlier = db.execute(
                "SELECT 1 FROM outbox WHERE hook = ? AND incident_id = ? AND state = 'pending' LIMIT 1",
                (hook, event.incident_id),
            ).fetchone()
            due = now_mono
            if earlier is None:
                (last_sent,) = db.execute(
                    "SELECT MAX(sent_mono) FROM outbox WHERE hook = ? AND incident_id = ? AND state = 'delivered' "
                    "AND epoch = ?",
                    (hook, event.incident_id, epoch),
                ).fetchone()
                if last_sent is not None:
                    due = max(now_mono, last_sent + min_interval_s)
            (message,) = db.execute(
                "SELECT COUNT(*) + 1 FROM outbox WHERE hook = ? AND incident_id = ?", (hook, event.incident_id)
            ).fetchone()
            db.execute(
                f"INSERT INTO outbox ({_OUTBOX_COLUMNS}) VALUES "  # noqa: S608 — constant columns, bound values
                "(?, ?, ?, ?, ?, ?, ?, 1, ?, 'pending', ?, 0, ?, ?, ?, ?, NULL, NULL, ?, NULL, NULL, '', ?)",
                (delivery_id, hook, event.incident_id, event.id, event.id, json.dumps([event.id]),
                 json.dumps([event.kind.value]), message, body, epoch, now_mono, due, now_mono, now_wall,
                 int(event.test)),
            )
        held = earlier is not None or due > now_mono
        return Enqueued(delivery_id, "held" if held else "queued", due - now_mono)

    def eligible(self, *, epoch: str, hooks: Iterable[str] | None = None, ids: Iterable[str] | None = None,
                        limit: int = 100) -> list[OutboxEntry]:
        """Pending messages that may be attempted (soonest first, due or not): not in flight, and no earlier
        message of their (hook, incident) still pending. Rows of another boot count as due now (their times
        cannot be compared) and as not in flight (that process is gone)."""
        where = ["o.state = 'pending'", "(o.sending_since IS NULL OR o.epoch != ?)",
                 "NOT EXISTS (SELECT 1 FROM outbox p WHERE p.hook = o.hook AND p.incident_id = o.incident_id "
                 "AND p.state = 'pending' AND p.seq < o.seq)"]
        params: list[Any] = [epoch]
        for column, values in (("hook", hooks), ("id", ids)):
            if values is not None:
                listed = list(values)
                if not listed:
                    return []
                where.append(f"o.{column} IN ({', '.join('?' for _ in listed)})")
                params.extend(listed)
        sql = (f"SELECT {', '.join('o.' + c.strip() for c in _OUTBOX_COLUMNS.split(','))} FROM outbox o "  # noqa: S608
               f"WHERE {' AND '.join(where)} "
               "ORDER BY CASE WHEN o.epoch = ? THEN o.next_mono ELSE -1e308 END, o.seq LIMIT ?")
        return [self._entry(r) for r in self._journal.read(sql, [*params, epoch, int(limit)])]

    def claim(self, delivery_id: str, *, attempts: int, epoch: str, now_mono: float,
                     now_wall: float) -> OutboxEntry | None:
        """Mark an attempt as started *before* it is made (a crash mid-send leaves it in flight: resent, same id).

        ``attempts`` is what the caller saw: a row someone else claimed or changed meanwhile is not claimed
        again (None). A row from another boot is re-based here: its age so far (enqueue to its last attempt,
        on that boot's monotonic clock) is kept, the time the host was down is not counted — nothing can
        measure it (CLOCK_MONOTONIC restarts at boot, the wall clock is the suspect).
        """
        with self._journal.transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET attempts = attempts + 1, sending_since = :now, last_mono = :now, "
                "last_attempt_wall = :wall, "
                "enqueued_mono = CASE WHEN epoch = :epoch THEN enqueued_mono "
                "ELSE :now - MAX(last_mono - enqueued_mono, 0) END, "
                "sent_mono = CASE WHEN epoch = :epoch THEN sent_mono ELSE NULL END, "
                "next_mono = CASE WHEN epoch = :epoch THEN next_mono ELSE :now END, "
                "epoch = :epoch "
                "WHERE id = :id AND state = 'pending' AND attempts = :attempts "
                "AND (sending_since IS NULL OR epoch != :epoch)",
                {"now": now_mono, "wall": now_wall, "epoch": epoch, "id": delivery_id, "attempts": attempts},
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?",  # noqa: S608 — constant columns
                             (delivery_id,)).fetchone()
        return self._entry(row)

    def delivered(self, delivery_id: str, *, epoch: str, now_mono: float, now_wall: float,
                         min_interval_s: float) -> bool:
        """Delivered: the incident's next message (if one is waiting) goes no sooner than ``min_interval_s``."""
        with self._journal.transaction() as db:
            row = db.execute("SELECT hook, incident_id, seq FROM outbox WHERE id = ? AND state = 'pending'",
                             (delivery_id,)).fetchone()
            if row is None:
                return False
            db.execute(
                "UPDATE outbox SET state = 'delivered', sending_since = NULL, sent_mono = ?, done_wall = ?, "
                "last_error = '' WHERE id = ?",
                (now_mono, now_wall, delivery_id),
            )
            db.execute(
                "UPDATE outbox SET next_mono = MAX(next_mono, ?) WHERE hook = ? AND incident_id = ? "
                "AND state = 'pending' AND epoch = ?",
                (now_mono + min_interval_s, row[0], row[1], epoch),
            )
            if row[2] % PRUNE_EVERY == 0:  # now and then: pruning scans the delivered rows
                db.execute(
                    "DELETE FROM outbox WHERE state = 'delivered' AND seq < (SELECT seq FROM outbox "
                    "WHERE state = 'delivered' ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (MAX_DELIVERED - 1,),
                )
        return True

    def retry(self, delivery_id: str, *, next_mono: float, error: str) -> bool:
        with self._journal.transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET sending_since = NULL, next_mono = ?, last_error = ? "
                "WHERE id = ? AND state = 'pending'",
                (next_mono, error, delivery_id),
            )
        return cursor.rowcount == 1

    def dead(self, delivery_id: str, *, error: str, now_wall: float) -> bool:
        """Dead-letter: kept (never pruned), counted by :meth:`stats`; an operator reads ``last_error``."""
        with self._journal.transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'dead', sending_since = NULL, done_wall = ?, last_error = ? "
                "WHERE id = ? AND state = 'pending'",
                (now_wall, error, delivery_id),
            )
        return cursor.rowcount == 1

    def resume(self, *, epoch: str, now_mono: float) -> int:
        """At start-up: attempts of this boot left in flight by a dead process are due again now (their outcome
        is unknown; the receiver dedupes on the id). Returns how many."""
        with self._journal.transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET sending_since = NULL, next_mono = ? "
                "WHERE state = 'pending' AND sending_since IS NOT NULL AND epoch = ?",
                (now_mono, epoch),
            )
        return cursor.rowcount

    def entries(self, *, state: str | None = None, hook: str | None = None, incident_id: str | None = None,
                       limit: int | None = None) -> list[OutboxEntry]:
        """Messages in the order they were queued; ``limit`` keeps the newest (still oldest first)."""
        where, params = [], []
        for column, value in (("state", state), ("hook", hook), ("incident_id", incident_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM outbox"  # noqa: S608 — constant columns, bound values
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            rows = list(reversed(self._journal.read(sql + " ORDER BY seq DESC LIMIT ?", [*params, int(limit)])))
        else:
            rows = self._journal.read(sql + " ORDER BY seq", params)
        return [self._entry(r) for r in rows]

    def stats(self, *, epoch: str | None = None, now_mono: float | None = None) -> dict[str, Any]:
        """What ``timeguard status`` shows: counts by state, in flight, the oldest pending message's age.

        The age is on the monotonic clock: give this boot's id and ``time.monotonic()`` (it is system-wide, so
        the CLI can read the daemon's rows). A row last touched in another boot counts the age it had reached
        there (a lower bound). Without ``now_mono`` the age is None.
        """
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        for row in self._journal.read("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            counts[row[0]] = int(row[1])
        in_flight = int(self._journal.read(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND sending_since IS NOT NULL")[0][0])
        oldest: float | None = None
        if now_mono is not None:
            (oldest,) = self._journal.read(
                "SELECT MAX(CASE WHEN epoch = ? THEN ? - enqueued_mono ELSE last_mono - enqueued_mono END) "
                "FROM outbox WHERE state = 'pending'",
                (epoch, now_mono),
            )[0]
        by_hook: dict[str, dict[str, int]] = {}
        for row in self._journal.read("SELECT hook, state, COUNT(*) FROM outbox GROUP BY hook, state ORDER BY hook"):
            by_hook.setdefault(row[0], {"pending": 0, "delivered": 0, "dead": 0})[row[1]] = int(row[2])
        last_dead = self._journal.read("SELECT id, hook, last_error, done_wall FROM outbox WHERE state = 'dead' "
                               "ORDER BY seq DESC LIMIT 1")
        return {
            **counts,
            "in_flight": in_flight,
            "oldest_pending_age_s": None if oldest is None else max(float(oldest), 0.0),
            "by_hook": by_hook,
            "last_dead": dict(last_dead[0]) if last_dead else None,
        }

    def _entry(self, row: Any) -> OutboxEntry:
        values = dict(zip([c.strip() for c in _OUTBOX_COLUMNS.split(",")], tuple(row), strict=True))
        try:
            for key in ("event_ids", "kinds", "payload"):
                values[key] = json.loads(values[key])
        except ValueError as exc:
            raise JournalError(f"{self._journal.path}: outbox row {values['id']!r} is unreadable ({exc})") from exc
        values["test"] = bool(values["test"])
        return OutboxEntry(**values)


def backoff_s(attempts: int, *, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Full jitter (AWS's "Exponential Backoff and Jitter"): a uniform wait in [0, min(cap, base·2^(n−1))]."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempts - 1, 0), 60))
    return (rng or random).uniform(0.0, ceiling)


def split_payload(payload: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A delivery's payload → (the hook's own payload, what the message carries).

    The second part: ``message`` (its number within the incident for this hook, 1 = the first), ``events``
    (how many events it carries), ``updates`` (= events − 1, the ones coalesced into it), ``event_ids``,
    ``kinds``, ``first_event_id``, ``last_event_id``, ``incident_id``, ``attempt`` (1 = first try).
    """
    body = dict(payload)
    info = body.pop(OUTBOX_KEY, None)
    if not isinstance(info, dict):
        info = {"message": 1, "events": 1, "updates": 0, "event_ids": [], "kinds": [], "attempt": 1}
    return body, info


def to_delivery(entry: OutboxEntry) -> Delivery:
    info = {
        "message": entry.message,
        "events": entry.events,
        "updates": entry.events - 1,
        "event_ids": list(entry.event_ids),
        "kinds": list(entry.kinds),
        "first_event_id": entry.event_id,
        "last_event_id": entry.last_event_id,
        "incident_id": entry.incident_id,
        "attempt": max(entry.attempts, 1),
    }
    return Delivery(id=entry.id, hook=entry.hook, incident_id=entry.incident_id, event_id=entry.event_id,
                    payload={**entry.payload, OUTBOX_KEY: info}, attempts=max(entry.attempts - 1, 0))


def deliverers_from(hooks: Iterable[Any]) -> dict[str, Deliverer]:
    """The hooks (built instances) whose messages go through the outbox, by name: those with ``deliver``."""
    return {hook.name: hook for hook in hooks if hook is not None and isinstance(hook, Deliverer)}



class JournalHistory:
    """:class:`timeguard.hooks.api.IncidentHistory` on the journal: an incident's events, and whether a hook queued
    anything for it in the outbox."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def incident_events(self, incident_id: str) -> list[Event]:
        return self._journal.events(incident_id=incident_id)

    def alerted(self, hook: str, incident_id: str) -> bool:
        return bool(OutboxStore(self._journal).entries(hook=hook, incident_id=incident_id, limit=1))


class _NullLog:
    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *_a, **_k: None


def _default_log() -> Any:
    try:
        from timeguard import logs

        return logs.get("timeguard.outbox")
    except Exception:  # noqa: BLE001 — logging must never stop alerts
        return _NullLog()


class Outbox:
    """At-least-once delivery of hook messages, durable in the journal. Thread-safe; one per daemon."""

    def __init__(
        self,
        journal: Journal,
        deliverers: Mapping[str, Deliverer],
        *,
        trusted_now: Callable[[], float | None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        epoch: str | None = None,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        base_backoff_s: float = DEFAULT_BASE_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        per_hook_in_flight: int = DEFAULT_PER_HOOK_IN_FLIGHT,
        rng: random.Random | None = None,
        log: Any = None,
    ) -> None:
        if max_attempts < 1 or per_hook_in_flight < 1:
            raise ValueError("max_attempts and per_hook_in_flight must be ≥ 1")
        self._store = OutboxStore(journal)
        self._deliverers = dict(deliverers)
        self._trusted_now = trusted_now
        self._clock = clock
        self._wall = wall  # only for the *_wall columns people read; never for a decision
        self.epoch = epoch or read_boot_id()
        self.min_interval_s = float(min_interval_s)
        self.max_attempts = int(max_attempts)
        self.max_age_s = float(max_age_s)
        self.base_backoff_s = float(base_backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.per_hook_in_flight = int(per_hook_in_flight)
        self._rng = rng or random.Random()  # jitter, not secrecy
        self._log = log if log is not None else _default_log()
        self._lock = threading.Lock()
        self._in_flight: dict[str, set[str]] = {name: set() for name in self._deliverers}
        self._threads: set[threading.Thread] = set()
        self._unsettled: list[tuple[OutboxEntry, DeliveryResult]] = []  # outcomes the journal refused to record
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None

    # -------------------------------------------------------------------------------------------- public

    @property
    def hooks(self) -> list[str]:
        return sorted(self._deliverers)

    def set_deliverers(self, deliverers: Mapping[str, Deliverer]) -> None:
        """Replace the hooks that deliver (after a reload built new hook instances). Messages of a hook that is
        gone stay pending in the journal, and are sent if a hook of that name comes back."""
        with self._lock:
            self._deliverers = dict(deliverers)
            for name in self._deliverers:
                self._in_flight.setdefault(name, set())
        self.wake()

    def enqueue(self, hook_name: str, event: Event, payload: Mapping[str, Any]) -> str:
        """Commit the message to the journal (coalescing per incident), wake the worker, return the delivery id.

        One short transaction: never waits for a receiver. Raises JournalError when the journal cannot be
        written (the caller — a hook — may then try a direct, non-durable send)."""
        result = self._store.enqueue(
            hook_name, event, dict(payload), epoch=self.epoch, now_mono=self._clock(), now_wall=self._wall(),
            min_interval_s=self.min_interval_s,
        )
        if hook_name not in self._deliverers:
            self._log.warning("outbox_no_deliverer", hook=hook_name, delivery_id=result.id,
                              note="kept in the journal; sent once a hook of that name that can deliver is configured")
        self._log.info("alert_queued", hook=hook_name, delivery_id=result.id, kind=event.kind.value,
                       incident=event.incident_id, outcome=result.outcome, due_in_s=round(result.due_in_s, 3))
        self.wake()
        return result.id

    def start(self) -> None:
        """Resume what a previous process left in flight, then deliver in a worker thread until :meth:`stop`."""
        if self._worker is not None and self._worker.is_alive():
            return
        self._stopping.clear()
        resumed = self._store.resume(epoch=self.epoch, now_mono=self._clock())
        stats = self.stats()
        orphans = sorted(set(stats["by_hook"]) - set(self._deliverers))
        orphans = [h for h in orphans if stats["by_hook"][h]["pending"]]
        self._log.info("outbox_started", pending=stats["pending"], dead=stats["dead"], resumed_in_flight=resumed,
                       hooks=self.hooks)
        if orphans:
            self._log.warning("outbox_pending_without_hook", hooks=orphans,
                              note="messages kept; they are sent if these hooks are configured again")
        self._worker = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> int:
        """Stop the worker; wait up to ``timeout`` for attempts in flight. Returns how many were abandoned
        (they stay "in flight" in the journal and are resent, same id, at the next start)."""
        self._stopping.set()
        self._wake.set()
        deadline = self._clock() + timeout
        if self._worker is not None:
            self._worker.join(max(deadline - self._clock(), 0.0))
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - self._clock(), 0.0))
        with self._lock:
            abandoned = sum(1 for t in self._threads if t.is_alive())
        if abandoned:
            self._log.warning("outbox_stopped_with_attempts_in_flight", abandoned=abandoned,
                              note="resent with the same delivery id at the next start")
        return abandoned

    def wake(self) -> None:
        self._wake.set()

    def run_once(self, *, ids: Collection[str] | None = None) -> int:
        """Attempt, in this thread, every message that is due now (or, with ``ids``, those messages whenever
        they are due); returns how many attempts were made. For tests and ``timeguard hooks test``."""
        attempts = 0
        self._settle_leftovers()
        now = self._clock()
        with self._lock:
            hooks = list(self._deliverers)
        for entry in self._store.eligible(epoch=self.epoch, hooks=hooks, ids=ids, limit=10_000):
            if ids is None and self._due(entry) > now:
                break  # soonest first: the rest are later still
            with self._lock:
                if entry.id in self._in_flight.get(entry.hook, ()):
                    continue
            claimed = self._claim(entry)
            if claimed is not None:
                self._attempt(claimed)
                attempts += 1
        return attempts

    def stats(self) -> dict[str, Any]:
        """Journal counts (pending, delivered, dead, in_flight, oldest_pending_age_s, by_hook, last_dead)."""
        return self._store.stats(epoch=self.epoch, now_mono=self._clock())

    # ------------------------------------------------------------------------------------------- worker

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()  # before looking: a wake() from now on makes the wait below return at once
            try:
                self._settle_leftovers()
                wait = self._launch_due()
            except Exception as exc:  # noqa: BLE001 — the worker never dies: a journal error is retried
                self._log.error("outbox_worker_error", error=f"{type(exc).__name__}: {exc}")
                wait = JOURNAL_RETRY_S
            if self._stopping.is_set():
                return
            self._wake.wait(wait)

    def _launch_due(self) -> float:
        """Claim and start what is due on every hook with a free slot; returns how long to sleep."""
        now = self._clock()
        next_due = math.inf
        with self._lock:
            hooks = list(self._deliverers)
        for hook in hooks:
            with self._lock:
                free = self.per_hook_in_flight - len(self._in_flight[hook])
            if free <= 0:
                continue  # a finishing attempt wakes the loop
            for entry in self._store.eligible(epoch=self.epoch, hooks=[hook], limit=free):
                due = self._due(entry)
                if due > now:
                    next_due = min(next_due, due)
                    break
                claimed = self._claim(entry)
                if claimed is not None:
                    self._spawn(claimed)
        return min(max(next_due - self._clock(), 0.0), IDLE_POLL_S)

    def _due(self, entry: OutboxEntry) -> float:
        return entry.next_mono if entry.epoch == self.epoch else -math.inf

    def _claim(self, entry: OutboxEntry) -> OutboxEntry | None:
        return self._store.claim(entry.id, attempts=entry.attempts, epoch=self.epoch,
                                          now_mono=self._clock(), now_wall=self._wall())

    def _spawn(self, entry: OutboxEntry) -> None:
        thread = threading.Thread(target=self._attempt_in_thread, args=(entry,), name=f"outbox:{entry.hook}",
                                  daemon=True)
        with self._lock:
            self._in_flight[entry.hook].add(entry.id)
            self._threads.add(thread)
        thread.start()

    def _attempt_in_thread(self, entry: OutboxEntry) -> None:
        try:
            self._attempt(entry)
        except Exception as exc:  # noqa: BLE001 — e.g. the journal closed under an abandoned attempt
            self._log.error("outbox_attempt_error", hook=entry.hook, delivery_id=entry.id,
                            error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._in_flight[entry.hook].discard(entry.id)
                self._threads.discard(threading.current_thread())
            self.wake()

    def _attempt(self, entry: OutboxEntry) -> None:
        deliverer = self._deliverers.get(entry.hook)
        started = self._clock()
        try:
            if deliverer is None:  # removed by a reload between the claim and now
                raise LookupError(f"no hook named {entry.hook!r} is configured to deliver it")
            result = deliverer.deliver(to_delivery(entry), trusted_now=self._trusted_now)
            if not isinstance(result, DeliveryResult):
                result = DeliveryResult(False, f"deliver() returned {type(result).__name__}, not a DeliveryResult")
        except Exception as exc:  # noqa: BLE001 — a deliverer's bug is a failed attempt, retried
            result = DeliveryResult(False, f"deliver() raised {type(exc).__name__}: {exc}")
        duration = self._clock() - started
        try:
            self._settle(entry, result, duration)
        except JournalError as exc:
            self._log.error("journal_write_failed", what="outbox outcome", delivery_id=entry.id, error=str(exc))
            with self._lock:
                self._unsettled.append((entry, result))

    def _settle_leftovers(self) -> None:
        with self._lock:
            leftovers, self._unsettled = self._unsettled, []
        for i, (entry, result) in enumerate(leftovers):
            try:
                self._settle(entry, result, None)
            except JournalError:
                with self._lock:
                    self._unsettled.extend(leftovers[i:])
                raise

    def _settle(self, entry: OutboxEntry, result: DeliveryResult, duration_s: float | None) -> None:
        now = self._clock()
        where = {"hook": entry.hook, "delivery_id": entry.id, "incident": entry.incident_id,
                 "attempt": entry.attempts, "events": entry.events}
        if duration_s is not None:
            where["duration_s"] = round(duration_s, 3)
        if result.ok:
            self._store.delivered(entry.id, epoch=self.epoch, now_mono=now, now_wall=self._wall(),
                                           min_interval_s=self.min_interval_s)
            self._log.info("alert_delivered", **where)
            return
        age = now - entry.enqueued_mono  # the claim re-based it onto this boot's clock
        reason = None
        if result.permanent:
            reason = f"permanent failure: {result.error}"
        elif entry.attempts >= self.max_attempts:
            reason = f"gave up after {entry.attempts} attempts ({age:.0f} s): {result.error}"
        else:
            if result.retry_after_s is not None:
                delay = max(result.retry_after_s, 0.0)  # the receiver said when: jitter would only add to it
            else:
                delay = backoff_s(entry.attempts, base_s=self.base_backoff_s, cap_s=self.max_backoff_s, rng=self._rng)
            if age + delay > self.max_age_s:
                if age >= self.max_age_s:
                    reason = f"gave up after {age:.0f} s (age limit {self.max_age_s:g} s): {result.error}"
                elif result.retry_after_s is not None:
                    reason = (f"the receiver asked to wait {result.retry_after_s:g} s, past the age limit "
                              f"({self.max_age_s:g} s): {result.error}")
                else:
                    delay = self.max_age_s - age  # one last attempt at the limit
            if reason is None:
                self._store.retry(entry.id, next_mono=now + delay, error=result.error)
                self._log.warning("alert_retry", **where, error=result.error, retry_in_s=round(delay, 3),
                                  retry_after_s=result.retry_after_s)
                return
        self._store.dead(entry.id, error=reason, now_wall=self._wall())
        self._log.error("alert_dead", **where, error=reason,
                        note="kept in the journal as dead; timeguard status counts it")

"""How long the celery_beat repair waits for a running beat: as long as *this* beat needs, never a fixed figure.

The repair's two reload signals only work if a running beat reads each of them (research/celery_beat.md §1.4):
beat reloads when ``periodictasks.last_update`` is strictly greater than the value it last *read*, and after the
false period that value is in the future. So between phase A (``last_update := now_A``) and phase B
(``last_update := now_B > now_A``) beat must have polled at least once after A's commit; and the look for future
rows after B must come after beat's reload, whose first act is ``sync()``, the write-back of entries it still holds
from the false period (§1.5).

When does beat poll? Celery's loop is ``interval = tick(); sleep(interval)``, ``interval ≤ max_interval``, and
every tick starts with ``schedule_changed()`` — one read of ``periodictasks``. So two polls are at most
``max_interval`` plus one tick's own work apart: that bound (``beat_max_interval_s`` + ``wait_margin_s``) is the
*budget* of every wait, the longest it can take, and what the repair falls back to when it cannot see beat.

Where the database shows its sessions, the repair *watches* for the poll instead and goes on as soon as it has
happened — typically well inside the budget, and whatever ``max_interval`` beat really runs with:

* PostgreSQL: ``pg_stat_activity`` keeps each session's last statement and its ``query_start``. A poll is the
  statement of ``PeriodicTasks.last_change()`` — ``objects.get(ident=1)``, which Django sends as ``SELECT … FROM
  periodictasks WHERE ident = 1 LIMIT 21`` and which only ``DatabaseScheduler.schedule_changed()`` calls — by a
  session that is not timeguard's (``application_name``), whose ``query_start`` is later than a reference read
  from the server's own clock *after* the repair's commit: a statement that started after the commit sees it
  (READ COMMITTED). Any other read of the table does not count (``filter(ident=1).first()``, a ``FOR UPDATE`` of
  ``update_changed()``, a person's ``SELECT *``): taking one of them for beat's poll would signal phase B before
  beat read ``now_A``, and beat would not reload. Only the server's clock is compared with itself; the host clock
  plays no part. Sampled every :data:`SAMPLE_S`; a poll followed at once by other
  statements of the same session can be missed — the next one is seen, or the budget ends the wait.
  Without the right to read other roles' statements (``pg_read_all_stats`` or the same role) nothing is seen,
  and the budget applies.
* MariaDB/MySQL: the processlist shows a statement only while it runs (a poll lasts a millisecond) and
  performance_schema is off by default: the budget applies.
* SQLite: no session view: the budget applies.

After phase A one observed poll suffices (it read ``now_A``). After phase B the first poll starts the reload
(and its ``sync()``); the *second* poll proves that tick — write-back included — is over, so the look that
follows sees whatever beat wrote back. Observation only ever ends a wait early on evidence that beat did what the
wait is for; it never shortens the budget when nothing is seen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: How often the session view is sampled while waiting for a poll (seconds).
SAMPLE_S = 0.05
#: The application_name of the repair's own PostgreSQL sessions: never taken for beat's.
APPLICATION_NAME = "timeguard-repair"


class PollWatch(Protocol):
    """A view of the database's sessions that shows when beat reads the reload signal."""

    def reference(self) -> Any:
        """The database's "now", read after the commit the wait is for."""

    def polls_since(self, reference: Any) -> set[tuple[Any, Any]]:
        """The beat polls seen that started after ``reference``, as (session, start) pairs."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Waited:
    """How one wait ended: ``seen`` polls observed (0: the budget ran out, or nothing could be observed)."""

    seconds: float
    seen: int
    observed: bool  # the wait watched the sessions (False: the budget alone)

    @property
    def how(self) -> str:
        if self.seen:
            return f"beat polled ({self.seen}×)"
        return "budget (beat's max_interval + margin)" if not self.observed else "budget (no poll seen)"


def wait_for_polls(watch: PollWatch | None, *, polls: int, budget_s: float, sleep: Callable[[float], None],
                   mono: Callable[[], float], cancelled: Callable[[], bool]) -> Waited:
    """Wait until ``polls`` beat polls after now have been seen, each within ``budget_s`` of the previous one (of
    the start for the first), or — nothing seen, or no ``watch`` — for ``budget_s``. ``sleep`` is called at least
    once (tests hook the moment of the wait through it); ``cancelled()`` ends the wait early."""
    started = mono()
    if watch is None:
        sleep(budget_s)
        return Waited(mono() - started, 0, False)
    try:
        reference = watch.reference()
    except Exception:  # noqa: BLE001 - the view is a shortcut only: without it, the budget applies
        sleep(budget_s)
        return Waited(mono() - started, 0, False)
    deadline = started + budget_s
    seen: set[tuple[Any, Any]] = set()
    while True:
        try:
            found = watch.polls_since(reference)
        except Exception:  # noqa: BLE001 - as above: fall back to the rest of the budget
            sleep(max(0.0, deadline - mono()))
            return Waited(mono() - started, len(seen), True)
        if not found <= seen:  # sessions come and go (Django reconnects each poll): keep every poll seen
            seen |= found
            if len(seen) >= polls:
                return Waited(mono() - started, len(seen), True)
            deadline = mono() + budget_s  # the next poll comes within one interval of this one
        remaining = deadline - mono()
        sleep(max(0.0, min(SAMPLE_S, remaining)))
        if remaining <= 0 or cancelled():
            return Waited(mono() - started, len(seen), True)


class PostgresPollWatch:
    """Beat's polls of ``table`` as PostgreSQL's ``pg_stat_activity`` shows them (see the module docstring)."""

    def __init__(self, engine: Any, table: str, schema: str | None) -> None:
        self._conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._table = table
        self._schema = schema

    def reference(self) -> Any:
        return self._conn.exec_driver_sql("SELECT clock_timestamp()").scalar()

    def polls_since(self, reference: Any) -> set[tuple[Any, Any]]:
        # Each statement runs in its own transaction (autocommit): pg_stat_activity is a fresh snapshot each time.
        # The table's name, quoted or not, schema-qualified or not; "periodictask" alone is another table.
        rows = self._conn.exec_driver_sql(
            "SELECT pid, query_start FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND coalesce(application_name, '') <> %(app)s AND query_start > %(ref)s "
            "AND query ~* %(pattern)s",
            {"app": APPLICATION_NAME, "ref": reference, "pattern": poll_pattern(self._table)},
        )
        return {(r[0], r[1]) for r in rows}

    def close(self) -> None:
        self._conn.close()


def poll_pattern(table: str) -> str:
    """A PostgreSQL regular expression (case-insensitive) for the statement of ``PeriodicTasks.objects.get(
    ident=1)`` on ``table``: Django's get() adds ``LIMIT 21``; parameters are literals (client-side binding, the
    default of Django's psycopg 2 and 3 backends) or ``$n`` (server-side binding)."""
    name = r'("?[a-z0-9_$]+"?\.)?"?' + _regex_escape(table) + '"?'
    column = r'("?[a-z0-9_$]+"?\.)*"?ident"?'
    return (r"^\s*select\s.*\sfrom\s+" + name + r"\s+where\s+" + column + r"\s*=\s*(1|\$[0-9]+)"
            r"\s+limit\s+(21|\$[0-9]+)\s*;?\s*$")


def _regex_escape(name: str) -> str:
    """``name`` as a literal inside a PostgreSQL regular expression."""
    return "".join("\\" + c if not (c.isalnum() or c == "_") else c for c in name)

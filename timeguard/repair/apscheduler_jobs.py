"""APScheduler 3.x job stores as a repair target (``type: apscheduler``, ``timeguard repair apscheduler``).

What is stored (research/celery_beat.md §4): ``SQLAlchemyJobStore`` — table ``apscheduler_jobs(id, next_run_time
FLOAT [UTC epoch s], job_state BLOB [pickle of Job.__getstate__(), next_run_time and trigger included])``
(apscheduler/jobstores/sqlalchemy.py ``__init__``, ``update_job``); ``RedisJobStore`` — the hash ``apscheduler.jobs``
(id → job_state) and the ZSET ``apscheduler.run_times`` (id → next run, epoch s), written together in one MULTI
(redis.py ``update_job``). While the clock was ahead every job's next run was stamped months ahead; after the
correction ``get_due_jobs`` finds nothing and the scheduler sleeps until then. A restart helps only jobs the
application re-adds with ``replace_existing``; jobs added at run time keep their future time.

The repair, per job whose stored next run lies more than ``tolerance_s`` ahead of the trusted now:

* the new next run is computed from the job's trigger and the trusted now IN THE APPLICATION'S INTERPRETER
  (:mod:`timeguard.repair.apscheduler_app` says why timeguard never unpickles a job state itself, and the rule per
  trigger), and written to the column AND the pickled state at once — a column-only update makes the scheduler
  spin: ``get_due_jobs`` returns the job by its column (schedulers/base.py ``_process_jobs`` :1161),
  ``_get_run_times`` on its pickled future time yields nothing (job.py :141), nothing updates the job, and
  ``get_next_run_time`` keeps answering the past column value (research §4, verified; measured by
  benchmarks/bench_apscheduler_repair.py);
* each write is a compare-and-set on the old column value and the old state (SQL ``WHERE``, Redis ``WATCH``), so
  a job changed meanwhile is left and the repair is idempotent;
* the old column value and the old job_state bytes (base64) are recorded in the undo log first: undo restores them
  byte for byte where the job still holds what the repair wrote.

A running scheduler sleeps on its in-memory wake-up time and writes its jobs back after each run, so the
application that owns it is stopped for the repair and started after (``needs_owner_stopped``: ``service`` or
``stop_command`` + ``start_command``).

The audit screens the column (or ZSET) alone — no unpickling for jobs whose stored time lies between now and the
tolerance, a healthy store's — and only the jobs beyond it (or due: a column-only edit shows as a due job whose
pickled time is far ahead) are checked against their triggers in the application's interpreter, because a weekly
job's next run is legitimately days ahead: the column alone cannot tell it from a poisoned one.

Left as they are, and reported: a job_state that does not unpickle there (class gone, corrupt bytes), one whose
column and pickled time disagree otherwise, a one-off (date trigger) job, a run time in the Redis ZSET without its
job in the hash, a table of another shape (a RepairError: nothing is changed). A job without a run time is paused:
not looked at.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from timeguard.config import option
from timeguard.repair.apprun import AppInterpreter
from timeguard.repair.dburl import DatabaseUrlError, connect_url, shown_url
from timeguard.repair.target import (
    Audit,
    BaseTarget,
    Change,
    Note,
    Outcome,
    Plan,
    RepairError,
    TargetKind,
    UndoOutcome,
    Unreadable,
    checked_now,
    range_problem,
    url_from_options,
)
from timeguard.repair.undo import UndoLog
from timeguard.secrets import redact_text, redact_url

NAME = "apscheduler"
FIELD = "next_run_time"
DEFAULT_TOLERANCE_S = 600.0
DEFAULT_TABLE = "apscheduler_jobs"
DEFAULT_JOBS_KEY = "apscheduler.jobs"
DEFAULT_RUN_TIMES_KEY = "apscheduler.run_times"
#: Job states read from the store per query (the interpreter gets them all, streamed through one file).
CHUNK = 1000
#: How many changes a plan lists (all are counted).
PLAN_LIST_MAX = 100
SQL_URL_KEYS = ("jobstore_url", "jobstore_url_env", "jobstore_url_file")
REDIS_URL_KEYS = ("redis_url", "redis_url_env", "redis_url_file")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ the stores


class SqlJobStore:
    """``SQLAlchemyJobStore``'s table (any database SQLAlchemy reaches: the URL forms of :mod:`dburl`)."""

    #: a listed job without a state was removed meanwhile: nothing to say
    missing_why: ClassVar[str | None] = None

    def __init__(self, url: str, *, source: str, tablename: str = DEFAULT_TABLE, schema: str | None = None) -> None:
        try:
            self.url = connect_url(url, option=source)
        except DatabaseUrlError as exc:
            raise RepairError(str(exc)) from None
        self.shown = shown_url(url)
        self.tablename, self.schema = tablename, schema
        table = f"{schema}.{tablename}" if schema else tablename
        self.where = f"{self.shown} table {table}"
        self.fingerprint = f"sql:{redact_url(self.url)}#{table}"
        self._engine: Any = None
        try:
            import sqlalchemy as sa
        except ImportError:
            raise RepairError(f"{self.where}: SQLAlchemy is missing: install timeguard's apscheduler extra "
                              "(pip install 'timeguard[apscheduler]')") from None
        self.sa = sa
        self.t = sa.table(tablename, sa.column("id"), sa.column("next_run_time"), sa.column("job_state"),
                          schema=schema)

    def _error(self, what: str, exc: Exception) -> RepairError:
        detail = _scrub(self.url, str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300])
        return RepairError(f"{self.where}: {what}: {detail}")

    @contextmanager
    def connection(self, what: str) -> Iterator[Any]:
        sa = self.sa
        try:
            if self._engine is None:
                self._engine = sa.create_engine(self.url, pool_pre_ping=False)
            with self._engine.begin() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._error(what, exc) from None
        except ImportError as exc:
            raise RepairError(f"{self.where}: the database driver is missing ({exc.name}): install timeguard's "
                              "apscheduler extra") from None

    def check_shape(self, conn: Any) -> None:
        """RepairError unless the table has APScheduler's three columns (nothing is read or written otherwise)."""
        inspector = self.sa.inspect(conn)
        if not inspector.has_table(self.tablename, schema=self.schema):
            raise RepairError(f"{self.where}: no such table (tablename/schema?); nothing was changed")
        columns = {c["name"] for c in inspector.get_columns(self.tablename, schema=self.schema)}
        missing = {"id", "next_run_time", "job_state"} - columns
        if missing:
            raise RepairError(f"{self.where}: not an APScheduler job table (no {', '.join(sorted(missing))} "
                              "column); nothing was changed")

    def future(self, limit_s: float, due_s: float) -> tuple[list[tuple[str, float]], list[Unreadable]]:
        """(id, stored next run) of every job beyond ``limit_s`` or due (at or before ``due_s``: a column-only
        edit shows there), from the column alone."""
        t = self.t.c
        with self.connection("reading the jobs") as conn:
            self.check_shape(conn)
            rows = conn.execute(self.sa.select(t.id, t.next_run_time)
                                .where(self.sa.or_(t.next_run_time > limit_s, t.next_run_time <= due_s))
                                .order_by(t.next_run_time.desc())).all()
        return [(str(r[0]), float(r[1])) for r in rows], []

    def states(self, ids: Sequence[str]) -> dict[str, tuple[float | None, bytes]]:
        t = self.t.c
        with self.connection("reading the job states") as conn:
            rows = conn.execute(self.sa.select(t.id, t.next_run_time, t.job_state).where(t.id.in_(list(ids)))).all()
        return {str(r[0]): (None if r[1] is None else float(r[1]), bytes(r[2])) for r in rows}

    def job_states(self, ids: Sequence[str]) -> dict[str, bytes]:
        """id → job_state (the next runs were just listed; every write compares both again)."""
        t = self.t.c
        with self.connection("reading the job states") as conn:
            rows = conn.execute(self.sa.select(t.id, t.job_state).where(t.id.in_(list(ids)))).all()
        return {str(r[0]): bytes(r[1]) for r in rows}

    def write(self, writes: Sequence[tuple[str, float | None, bytes, float | None, bytes]]) -> list[str]:
        """Compare-and-set (id, old column, old state, new column, new state) in one transaction; the ids whose
        row no longer held the old values (left alone)."""
        t, sa = self.t.c, self.sa
        missed = []
        with self.connection("writing the jobs") as conn:
            for job_id, old_s, old_state, new_s, new_state in writes:
                stmt = (sa.update(self.t).values(next_run_time=new_s, job_state=new_state)
                        .where(t.id == job_id, t.job_state == old_state,
                               t.next_run_time.is_(None) if old_s is None else t.next_run_time == old_s))
                if conn.execute(stmt).rowcount != 1:
                    missed.append(job_id)
        return missed

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class RedisJobStore:
    """``RedisJobStore``'s hash (id → job_state) and ZSET (id → next run)."""

    #: a listed job without a state: a run time without its job (reported, left)
    missing_why: ClassVar[str | None] = "in the run times but not in the jobs hash: left as it is"

    def __init__(self, url: str, *, source: str, jobs_key: str = DEFAULT_JOBS_KEY,
                 run_times_key: str = DEFAULT_RUN_TIMES_KEY) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise RepairError(f"{source} {redact_url(str(url))!r} is not a Redis URL (redis://[:password@]host:port/db"
                              ", rediss://…, unix:///path?db=N)")
        self.url = url
        self.jobs_key, self.run_times_key = jobs_key, run_times_key
        shown = redact_url(url)
        self.where = f"{shown} keys {jobs_key} / {run_times_key}"
        self.fingerprint = f"redis:{shown}#{jobs_key}#{run_times_key}"
        self._client: Any = None

    @contextmanager
    def client(self, what: str) -> Iterator[Any]:
        try:
            import redis
        except ImportError:
            raise RepairError(f"{self.where}: the redis package is missing: install timeguard's apscheduler "
                              "extra") from None
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)
            yield self._client
        except redis.RedisError as exc:
            raise RepairError(f"{self.where}: {what}: {type(exc).__name__}: {_scrub(self.url, str(exc))[:300]}") \
                from None

    def future(self, limit_s: float, due_s: float) -> tuple[list[tuple[str, float]], list[Unreadable]]:
        with self.client("reading the run times") as r:
            for key, want in ((self.jobs_key, b"hash"), (self.run_times_key, b"zset")):
                kind = r.type(key)
                if kind not in (want, b"none"):
                    raise RepairError(f"{self.where}: {key} is a {kind.decode()}, not a {want.decode()} "
                                      "(jobs_key/run_times_key?); nothing was changed")
            rows = [*r.zrangebyscore(self.run_times_key, f"({limit_s!r}", "+inf", withscores=True),
                    *r.zrangebyscore(self.run_times_key, "-inf", repr(due_s), withscores=True)]
        return [(member.decode("utf-8", "replace"), float(score)) for member, score in rows], []

    def job_states(self, ids: Sequence[str]) -> dict[str, bytes]:
        """id → job_state (one HMGET: the run times were just listed; every write compares both again)."""
        with self.client("reading the job states") as r:
            states = r.hmget(self.jobs_key, list(ids))
        return {job_id: state for job_id, state in zip(ids, states, strict=True) if state is not None}

    def states(self, ids: Sequence[str]) -> dict[str, tuple[float | None, bytes]]:
        with self.client("reading the job states") as r:
            pipe = r.pipeline(transaction=True)
            pipe.hmget(self.jobs_key, list(ids))
            for job_id in ids:
                pipe.zscore(self.run_times_key, job_id)
            states, *scores = pipe.execute()
        return {job_id: (None if score is None else float(score), state)
                for job_id, state, score in zip(ids, states, scores, strict=True) if state is not None}

    def write(self, writes: Sequence[tuple[str, float | None, bytes, float | None, bytes]]) -> list[str]:
        """Per job: WATCH both keys, check the old state and score, MULTI HSET + ZADD (as update_job writes them)."""
        import redis

        missed = []
        with self.client("writing the jobs") as r:
            for job_id, old_s, old_state, new_s, new_state in writes:
                with r.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(self.jobs_key, self.run_times_key)
                        score = pipe.zscore(self.run_times_key, job_id)
                        if pipe.hget(self.jobs_key, job_id) != old_state or score != old_s:
                            missed.append(job_id)
                            continue
                        pipe.multi()
                        pipe.hset(self.jobs_key, job_id, new_state)
                        if new_s is None:
                            pipe.zrem(self.run_times_key, job_id)
                        else:
                            pipe.zadd(self.run_times_key, {job_id: new_s})
                        pipe.execute()
                    except redis.WatchError:
                        missed.append(job_id)
        return missed

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _scrub(url: str, text: str) -> str:
    """A driver's error message without the URL's password (drivers may echo the URL or the DSN)."""
    import urllib.parse

    text = redact_text(text)
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return text
    for secret in {password, urllib.parse.unquote(password or "")}:
        if secret:
            text = text.replace(secret, "***")
    return text


# ------------------------------------------------------------------------------------------------ the target


@dataclass(frozen=True, slots=True)
class _Verdict:
    job_id: str
    verdict: str
    name: str
    column: float
    new_s: float | None
    why: str
    state: bytes | None


class APSchedulerTarget(BaseTarget):
    """One job store of one application."""

    where_key = "jobstore"
    what = "job store"
    not_clean_message = "jobs with a future next run remain after the repair: run it again"

    def __init__(self, store: SqlJobStore | RedisJobStore, app: AppInterpreter, *,
                 tolerance_s: float = DEFAULT_TOLERANCE_S, owner_stopped: bool = False) -> None:
        self.store = store
        self.app = app
        self.tolerance_s = float(tolerance_s)
        self.where = store.where
        self.fingerprint = store.fingerprint
        #: the person running the command line says the application is stopped (--owner-stopped)
        self.owner_stopped = owner_stopped

    def close(self) -> None:
        self.store.close()

    # --------------------------------------------------------------------------------------- deciding

    def _judge(self, now_s: float, jobs: Iterable[tuple[str, float, bytes]], *,
               rewrite: bool) -> tuple[list[_Verdict], int, dict[str, bytes]]:
        """Run the application's interpreter once on ``jobs`` (id, column, state), streamed to a file of JSON lines:
        its verdicts (every change to ``rewrite``, else the first PLAN_LIST_MAX), how many changes, and to
        ``rewrite`` the old states (the compare-and-set and the undo record need them)."""
        from timeguard.repair.apscheduler_app import SCRIPT

        old: dict[str, bytes] = {}
        count = 0
        fd, path = tempfile.mkstemp(prefix="timeguard-aps-", suffix=".jsonl")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps({"now": now_s, "tolerance_s": self.tolerance_s, "rewrite": rewrite,
                                    "list_max": None if rewrite else PLAN_LIST_MAX}) + "\n")
                for job_id, column, state in jobs:
                    f.write(f'[{json.dumps(job_id)},{column!r},"{_b64(state)}"]\n')
                    count += 1
                    if rewrite:
                        old[job_id] = state
            if not count:
                return [], 0, old
            if self.app.user is not None:  # the file is 0600: the application's user must read it
                import pwd

                try:
                    entry = pwd.getpwnam(self.app.user)
                    os.chown(path, entry.pw_uid, entry.pw_gid)
                except (KeyError, OSError):
                    raise RepairError(f"user {self.app.user!r}: cannot hand the job states to it (no such user, or "
                                      "timeguard is not root); leave user out to run the interpreter as this "
                                      "user") from None
            answer = self.app.run(SCRIPT, {"jobs_file": path}, doing=f"reading {count} job state(s) of {self.where}")
        finally:
            Path(path).unlink(missing_ok=True)
        if "error" in answer:
            detail = redact_text(str(answer.get("detail", "")))
            raise RepairError(f"{self.app.key}: the application's interpreter {self.app.python} cannot read "
                              f"job states ({answer['error']}: {detail}); nothing was changed")
        verdicts = [_Verdict(str(job_id), str(verdict), str(name), float(column), new_s, str(why),
                             base64.b64decode(blob) if blob else None)
                    for job_id, verdict, name, column, new_s, why, blob in answer.get("jobs", ())]
        return verdicts, int(answer.get("changes", 0)), old

    def _candidates(self, candidates: Sequence[tuple[str, float]],
                    unreadable: list[Unreadable]) -> Iterator[tuple[str, float, bytes]]:
        """(id, column, state) of the candidates, read CHUNK at a time. A job without a state is skipped (and, in
        Redis — a run time without its job — added to ``unreadable``); one changed since it was listed is caught
        by the write's compare-and-set."""
        for start in range(0, len(candidates), CHUNK):
            part = candidates[start:start + CHUNK]
            states = self.store.job_states([i for i, _ in part])
            for job_id, column in part:
                state = states.get(job_id)
                if state is not None:
                    yield job_id, column, state
                elif self.store.missing_why is not None:
                    unreadable.append(Unreadable(job_id, job_id, FIELD, repr(column), self.store.missing_why))

    def _look(self, now_s: float, *, rewrite: bool, screened: tuple[list[tuple[str, float]], list[Unreadable]] |
              None = None) -> tuple[Plan, list[tuple[_Verdict, float, bytes | None]]]:
        """The plan, and per change (its verdict, old column value, old state when ``rewrite``); ``screened``: the
        store's screen, when the caller has just read it."""
        candidates, unreadable = screened or self.store.future(now_s + self.tolerance_s, now_s)
        verdicts, total, old = self._judge(now_s, self._candidates(candidates, unreadable), rewrite=rewrite)
        changes: list[Change] = []
        notes: list[Note] = []
        found: list[tuple[_Verdict, float, bytes | None]] = []
        for v in verdicts:
            column = v.column
            if v.verdict == "change" and v.new_s is not None:
                found.append((v, column, old.get(v.job_id)))
                if len(changes) < PLAN_LIST_MAX:
                    ahead = f"{_ahead(column - now_s)} ahead; " if column > now_s else ""
                    changes.append(Change(v.job_id, v.name, FIELD, column, float(v.new_s), ahead + v.why))
            elif v.verdict == "note":
                notes.append(Note(v.job_id, v.name, "left", v.why))
            elif v.verdict == "unreadable":
                unreadable.append(Unreadable(v.job_id, v.name, FIELD, repr(column), v.why))
        plan = Plan(now_s, self.tolerance_s, tuple(changes), tuple(notes), tuple(unreadable),
                    totals={FIELD: total} if total > len(changes) else None)
        return plan, found

    # --------------------------------------------------------------------------------------- the protocol

    def plan(self, now_s: float) -> Plan:
        return self._look(checked_now(now_s), rewrite=False)[0]

    def audit(self, now_s: float) -> Any:
        now_s = checked_now(now_s)
        screened = self.store.future(now_s + self.tolerance_s, now_s)
        if not screened[0] and not screened[1]:  # the stored times alone: nothing beyond the tolerance or due
            return self.audit_of(Plan(now_s, self.tolerance_s, ()), now_s)
        plan = self._look(now_s, rewrite=False, screened=screened)[0]
        found = self.audit_of(plan, now_s)
        if plan.total > len(plan.changes):  # the plan lists the first ones: the summary counts them all
            summary = found.summary.replace(f"{len(plan.changes)} value(s)", f"{plan.total} value(s)", 1)
            return Audit(found.found, summary, {**found.details, "changes_total": plan.total})
        return found

    def apply(self, now_fn: Callable[[], float], *, undo_log: UndoLog | None, incident_id: str,
              cancelled: Callable[[], bool] = lambda: False, owner_stopped: bool = False) -> Outcome:
        if not (owner_stopped or self.owner_stopped):
            raise RepairError(f"{self.where}: the application that runs the scheduler must be stopped for the "
                              "repair (it sleeps on its in-memory wake-up time and writes its jobs back): give the "
                              "hook service or stop_command/start_command (timeguard repair apscheduler --hook NAME),"
                              " or stop it yourself and pass --owner-stopped")
        repair_id = uuid.uuid4().hex
        now_s = checked_now(now_fn())
        plan, found = self._look(now_s, rewrite=True)
        if plan.empty or cancelled():
            return Outcome(incident_id, repair_id, plan, (), plan.empty)
        writes = [(v.job_id, column, state, float(v.new_s), v.state) for v, column, state in found
                  if state is not None and v.state is not None and v.new_s is not None]
        names = {v.job_id: v.name for v, _, _ in found}
        if undo_log is not None:  # recorded before the store changes: a failed record changes nothing
            undo_log.record(NAME, incident_id, repair_id, self.fingerprint,
                            ((job_id, names[job_id], FIELD, {"next_run_time": old_s, "job_state": _b64(old_state)},
                              {"next_run_time": new_s, "sha256": _digest(new_state)})
                             for job_id, old_s, old_state, new_s, new_state in writes),
                            applied_wall_s=now_s, applied_mono_s=time.monotonic())
        missed = self.store.write(writes)  # type: ignore[arg-type]
        after = self._look(checked_now(now_fn()), rewrite=False)[0]
        rounds = ({"number": 1, "changed": len(writes) - len(missed), "changed_meanwhile": missed[:20],
                   "now_s": now_s},)
        return Outcome(incident_id, repair_id, plan, rounds, after.empty)

    def undo(self, undo_log: UndoLog, incident_id: str, now_fn: Callable[[], float], *,
             dry_run: bool = False) -> UndoOutcome:
        records = [r for r in undo_log.iter_records(incident_id, target=NAME, undone=False)
                   if self.same_store(r["fingerprint"])]
        current = self.store.states([r["item"] for r in records]) if records else {}
        restored, skipped, writes, done = [], [], [], []
        for r in records:
            old, new = r["old_value"], r["new_value"]
            entry = {"name": r["name"], "field": FIELD, "from_s": new["next_run_time"], "to_s": old["next_run_time"]}
            now = current.get(r["item"])
            if now is None:
                skipped.append({**entry, "why": "the job no longer exists"})
            elif now[0] != new["next_run_time"] or _digest(now[1]) != new["sha256"]:
                skipped.append({**entry, "from_s": now[0], "why": "changed since the repair (the scheduler ran it, "
                                "or it was edited): left as it is"})
            else:
                restored.append(entry)
                done.append(r["key"])
                writes.append((r["item"], now[0], now[1], old["next_run_time"], base64.b64decode(old["job_state"])))
        if writes and not dry_run:
            missed = set(self.store.write(writes))
            if missed:
                restored = [e for e, w in zip(restored, writes, strict=True) if w[0] not in missed]
                done = [k for k in done if k[2] not in missed]
            undo_log.mark_undone(incident_id, done)
        return UndoOutcome(incident_id, tuple(restored), tuple(skipped), dry_run)


def _ahead(seconds: float) -> str:
    from timeguard.timefmt import fmt_duration

    return fmt_duration(seconds)


# ------------------------------------------------------------------------------------------------ the kind


APP_SCHEMA = {"type": "string", "pattern": "^/"}


@dataclass(frozen=True, slots=True)
class APSchedulerOptions:
    """The apscheduler target's options (``type: apscheduler``): one job store — ``jobstore_url*`` (SQLAlchemy)
    or ``redis_url*`` — and the application's interpreter, which alone unpickles the job states."""

    python: Any = option(doc="the application's interpreter (its venv's bin/python): it alone unpickles the job "
                         "states", schema=APP_SCHEMA)
    jobstore_url: str | None = option(None, doc="SQLAlchemyJobStore's database: postgres://user@host/name, "
                                      "mysql://…, sqlite:////abs/path.sqlite3 (a password is better in _env/_file)")
    jobstore_url_env: str | None = option(None, doc="the environment variable holding the job store's URL")
    jobstore_url_file: str | None = option(None, doc="a file holding the job store's URL")
    tablename: str | None = option(None, doc=f"the jobs table (default {DEFAULT_TABLE})")
    schema: str | None = option(None, doc="the schema holding the table (SQLAlchemyJobStore tableschema)")
    redis_url: str | None = option(None, doc="RedisJobStore's server: redis://[:password@]host:6379/db")
    redis_url_env: str | None = option(None, doc="the environment variable holding the Redis URL")
    redis_url_file: str | None = option(None, doc="a file holding the Redis URL")
    jobs_key: str | None = option(None, doc=f"RedisJobStore jobs_key (default {DEFAULT_JOBS_KEY})")
    run_times_key: str | None = option(None, doc=f"RedisJobStore run_times_key (default {DEFAULT_RUN_TIMES_KEY})")
    path: Any = option(None, doc="directories put first on that interpreter's sys.path (the application's)",
                       schema={"type": "array", "items": APP_SCHEMA})
    environment_file: Any = option(None, doc="variables the application's code needs on import (systemd "
                                   "EnvironmentFile= syntax)", schema=APP_SCHEMA)
    user: str | None = option(None, doc="run that interpreter as this user (needs root)")
    tolerance_s: Any = option(None, doc=f"a next run more than this far beyond what its trigger allows is "
                              f"future (default {DEFAULT_TOLERANCE_S:g})",
                              schema={"type": "number", "minimum": 0, "maximum": 366 * 86400})


class APSchedulerKind(TargetKind):
    """APScheduler 3.x SQLAlchemy and Redis job stores (``type: apscheduler``, ``timeguard repair apscheduler``)."""

    name = NAME
    cli_name = NAME
    help = "bring future next run times in an APScheduler 3.x job store (SQLAlchemy or Redis) back to now"
    description = ("Find every job whose next run time lies beyond what its trigger allows from the trusted now, "
                   "recompute it from the trigger in the application's own interpreter, and write the column (or "
                   "Redis run time) and the pickled job state together, with the application stopped.")
    Options: ClassVar[type[APSchedulerOptions]] = APSchedulerOptions
    options = frozenset(f.name for f in fields(APSchedulerOptions))
    service_option = "service"
    needs_owner_stopped = True

    @classmethod
    def problems(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        from timeguard.config import convert_options

        _, problems = convert_options(APSchedulerOptions, options, hook=NAME)
        sql = [k for k in SQL_URL_KEYS if options.get(k) is not None]
        red = [k for k in REDIS_URL_KEYS if options.get(k) is not None]
        if len(sql) + len(red) != 1:
            problems.append(("jobstore_url", "give exactly one of jobstore_url, jobstore_url_env, jobstore_url_file "
                             "(SQLAlchemyJobStore) or redis_url, redis_url_env, redis_url_file (RedisJobStore)"))
        if sql and any(options.get(k) is not None for k in ("jobs_key", "run_times_key")):
            problems.append(("jobs_key", "jobs_key/run_times_key are RedisJobStore's: not with jobstore_url"))
        if red and any(options.get(k) is not None for k in ("tablename", "schema")):
            problems.append(("tablename", "tablename/schema are SQLAlchemyJobStore's: not with redis_url"))
        python = options.get("python")
        if python is not None and (not isinstance(python, str) or not os.path.isabs(python)):  # missing: above
            problems.append(("python", "the application's interpreter, an absolute path (e.g. /srv/app/.venv/bin/"
                             "python): only it unpickles the job states"))
        path = options.get("path")
        if path is not None and (not isinstance(path, list) or
                                 not all(isinstance(p, str) and os.path.isabs(p) for p in path)):
            problems.append(("path", "must be a list of absolute directories"))
        env_file = options.get("environment_file")
        if env_file is not None and (not isinstance(env_file, str) or not os.path.isabs(env_file)):
            problems.append(("environment_file", "must be an absolute file path"))
        if options.get("tolerance_s") is not None:
            problem = range_problem(options["tolerance_s"], 0.0, 366 * 86400.0)
            if problem is not None:
                problems.append(("tolerance_s", problem))
        if options.get("jobstore_url"):
            try:
                connect_url(options["jobstore_url"], option="jobstore_url")
            except DatabaseUrlError as exc:
                problems.append(("jobstore_url", str(exc)))
        return problems

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> APSchedulerKind:
        problems = cls.problems(options)
        if problems:
            from timeguard.hooks.api import HookConfigError

            raise HookConfigError(problems)
        return cls(options)

    @property
    def tolerance_s(self) -> float:
        value = self.values.get("tolerance_s")
        return DEFAULT_TOLERANCE_S if value is None else float(value)

    def check_max_offset(self, max_offset_s: float) -> str | None:
        if max_offset_s > self.tolerance_s:
            return f"must not exceed tolerance_s ({self.tolerance_s:g})"
        return None

    def max_run_s(self) -> float:
        return 300.0

    def interpreter(self) -> AppInterpreter:
        return AppInterpreter(self.values["python"], tuple(self.values.get("path") or ()),
                              self.values.get("environment_file"), self.values.get("user"), key="python")

    def open(self) -> APSchedulerTarget:
        sql = url_from_options(self.values, "jobstore_url")
        store: SqlJobStore | RedisJobStore
        if sql is not None:
            store = SqlJobStore(sql[0], source=sql[1], tablename=self.values.get("tablename") or DEFAULT_TABLE,
                                schema=self.values.get("schema"))
        else:
            red = url_from_options(self.values, "redis_url")
            if red is None:
                raise RepairError("give jobstore_url or redis_url (or their _env/_file forms)")
            store = RedisJobStore(red[0], source=red[1], jobs_key=self.values.get("jobs_key") or DEFAULT_JOBS_KEY,
                                  run_times_key=self.values.get("run_times_key") or DEFAULT_RUN_TIMES_KEY)
        return APSchedulerTarget(store, self.interpreter(), tolerance_s=self.tolerance_s)

    # ------------------------------------------------------------------------------------- command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        cls._store_args(parser, "")
        parser.add_argument("--tolerance-s", dest="aps_tolerance_s", type=float, metavar="N",
                            help=f"future means more than N s beyond the trigger's next time (default "
                            f"{DEFAULT_TOLERANCE_S:g})")
        parser.add_argument("--owner-stopped", action="store_true",
                            help="the application running the scheduler is stopped (without --hook, whose "
                            "service or stop/start commands stop and start it)")

    @classmethod
    def add_undo_arguments(cls, parser: argparse.ArgumentParser) -> None:
        cls._store_args(parser, "aps-")

    @staticmethod
    def _store_args(parser: argparse.ArgumentParser, prefix: str) -> None:
        dest = prefix.replace("-", "_")
        parser.add_argument(f"--{prefix}jobstore-url", dest=f"{dest}jobstore_url", metavar="URL",
                            help="SQLAlchemyJobStore's database (postgres://…, mysql://…, sqlite:////abs/path)")
        parser.add_argument(f"--{prefix}tablename", dest=f"{dest}tablename", metavar="NAME",
                            help=f"its table (default {DEFAULT_TABLE})")
        parser.add_argument(f"--{prefix}table-schema", dest=f"{dest}schema", metavar="SCHEMA",
                            help="the schema holding the table")
        parser.add_argument(f"--{prefix}redis-url", dest=f"{dest}redis_url", metavar="URL",
                            help="RedisJobStore's server (redis://host:6379/db)")
        parser.add_argument(f"--{prefix}jobs-key", dest=f"{dest}jobs_key", metavar="KEY",
                            help=f"RedisJobStore jobs_key (default {DEFAULT_JOBS_KEY})")
        parser.add_argument(f"--{prefix}run-times-key", dest=f"{dest}run_times_key", metavar="KEY",
                            help=f"RedisJobStore run_times_key (default {DEFAULT_RUN_TIMES_KEY})")
        parser.add_argument(f"--{prefix}python", dest=f"{dest}python", metavar="PATH",
                            help="the application's interpreter, which alone unpickles the job states")
        parser.add_argument(f"--{prefix}path", dest=f"{dest}path", action="append", metavar="DIR",
                            help="put DIR first on its sys.path (repeatable)")
        parser.add_argument(f"--{prefix}env-file", dest=f"{dest}environment_file", metavar="FILE",
                            help="variables the application's code needs (systemd EnvironmentFile= syntax)")

    @classmethod
    def _options_from_args(cls, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for key in ("jobstore_url", "tablename", "schema", "redis_url", "jobs_key", "run_times_key", "python",
                    "path", "environment_file"):
            value = getattr(args, prefix + key, None)
            if value is not None:
                found[key] = value
        for key in ("python", "environment_file"):
            if key in found:
                found[key] = os.path.abspath(found[key])
        if "path" in found:
            found["path"] = [os.path.abspath(p) for p in found["path"]]
        return found

    @classmethod
    def _open_from(cls, options: dict[str, Any]) -> APSchedulerTarget:
        problems = cls.problems(options)
        if problems:
            raise RepairError("; ".join(f"--{k.replace('_', '-')}: {m}" for k, m in problems))
        return cls(options).open()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> APSchedulerTarget:
        options = cls._options_from_args(args, "")
        if getattr(args, "aps_tolerance_s", None) is not None:
            options["tolerance_s"] = args.aps_tolerance_s
        target = cls._open_from(options)
        target.owner_stopped = bool(getattr(args, "owner_stopped", False))
        return target

    @classmethod
    def undo_target(cls, args: argparse.Namespace, fingerprints: Sequence[str]) -> APSchedulerTarget:
        options = cls._options_from_args(args, "aps_")
        if not any(k in options for k in ("jobstore_url", "redis_url")):
            raise RepairError(f"an apscheduler repair is undone in its job store: give --aps-jobstore-url or "
                              f"--aps-redis-url and --aps-python; it repaired {', '.join(sorted(set(fingerprints)))}")
        return cls._open_from(options)

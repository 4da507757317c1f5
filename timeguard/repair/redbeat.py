"""RedBeat (celery-redbeat): future ``meta.last_run_at`` and ZSET scores in Redis, repaired live.

What RedBeat stores (celery-redbeat 2.4.2, ``redbeat/schedulers.py``; research celery_beat.md §3):

* a hash ``<prefix><name>`` per entry with the fields ``definition`` (JSON: name, task, schedule …) and ``meta``
  (JSON ``{"last_run_at": {"__type__": "datetime", "year": …, "timezone": "UTC"}, "total_run_count": 6}``,
  ``RedBeatJSONEncoder`` in ``redbeat/decoder.py``; decoded by ``RedBeatJSONDecoder.dict_to_object``:
  ``datetime(tzinfo=…, **fields)``, a string zone is a ZoneInfo key, a number is an offset in seconds);
* the ZSET ``<prefix>:schedule`` (default ``redbeat::schedule``, ``RedBeatConfig.__init__``, schedulers.py:243):
  member = the hash key, score = ``to_timestamp(entry.due_at)`` (whole UTC seconds, decoder.py ``to_timestamp``),
  where ``due_at`` = ``last_run_at + schedule.remaining_estimate(last_run_at)``, now when overdue or never run
  (schedulers.py:376);
* the lock ``<prefix>:lock`` (``redbeat_lock_key``; a key not starting with the prefix gets it, schedulers.py:267).

Each tick beat loads only the members scored up to its now (``RedBeatScheduler.schedule``, schedulers.py:543,
``ZRANGEBYSCORE 0 now``) and asks ``is_due`` with ``meta.last_run_at``. After a rollback both are in the future:
nothing is loaded, nothing runs, and a restart does not help (the state is in Redis). There is no cache in the
beat process, so a repair in Redis is seen at beat's next tick: no restart (``needs_owner_stopped`` is False).

The repair, per entry, in one Lua script per batch (atomic: a beat tick cannot interleave, and each write is a
compare-and-set on the values read, so a value beat changed in between is left to the next round):

* ``meta.last_run_at`` more than the tolerance ahead → the trusted now, in the same time zone notation, keeping
  ``total_run_count`` and every other field of ``meta`` (``reschedule()`` would drop the counter) — AND the score
  to the due time. The score alone is wrong: the entry would be loaded every tick and never be due (meta says the
  future); the meta alone leaves the entry unloaded until its future score.
* the due time: an ``interval`` schedule's is ``now + every`` — exactly what ``reschedule(now)`` writes
  (``schedule.remaining_estimate`` is ``last_run_at + run_every - now``); any other schedule (crontab, rrule,
  solar) gets the score now: beat loads it at its next tick, ``is_due`` (celery's own crontab arithmetic, on the
  repaired meta) says when, and beat writes the exact score itself when it sends the task (``_next_instance``,
  schedulers.py:435). Until then the entry is loaded each tick (one HGET more), never sent early: the task runs at
  its normal rate. Timeguard does not carry a crontab engine of its own to guess that time. (Checked with a real
  beat, ``crontab(minute="*")`` repaired at hh:21:02 with score = now: sent at hh:22:00, not before, and beat then
  wrote the score hh:22:59 itself; the interval tasks resume at their rates, tests/e2e/test_redbeat_repair.py.)
* a score more than the tolerance ahead of what the meta allows (never run: now; interval: ``last_run_at +
  every``) → that time. A crontab/rrule entry's score is not judged (its legitimate next run may be a year away):
  it is only reported when its meta was future.

Nothing it cannot read is written: a hash without a definition, JSON that does not parse, an unknown ``__type__``
or missing datetime fields, a key of the wrong Redis type — each is reported and left exactly as it is.

The lock: Redis keeps a key's expiry as an absolute wall-clock deadline (PEXPIRETIME), so a lock set while the Redis
host's clock was ahead outlives its TTL by the size of the correction. A live beat shortens it on its next tick
(``tick`` → ``lock.extend(lock_timeout)``, whose script PEXPIREs to the timeout: schedulers.py LUA_EXTEND_TO_SCRIPT),
so a lock with a live holder never stays beyond ``lock_timeout_s``. A holder that is gone (killed, crashed: a clean
stop releases it) leaves it, and a new beat blocks in ``acquire_distributed_beat_lock`` — ``redis.lock(…,
sleep=max_interval).acquire()``, blocking, with no blocking timeout — until the deadline: for months. So a lock
expiring later than ``lock_timeout_s`` (+ tolerance) is reported, and deleted only when the hook has stopped this
beat for the repair (``service``/``stop_command``, the guard's stop/start too: ``owner_stopped``): with a
compare-and-delete on the token and the TTL read, so a lock a beat took or extended meanwhile is left. Without a
way to stop beat it is only reported: another beat may be about to extend it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import time
import uuid
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from timeguard.config import option, option_names
from timeguard.repair.target import (
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
    format_table,
    range_problem,
    url_from_options,
)
from timeguard.secrets import MASK, redact_text, redact_url
from timeguard.timefmt import fmt_duration

if TYPE_CHECKING:
    from timeguard.repair.undo import UndoLog

TARGET = "redbeat"
DEFAULT_PREFIX = "redbeat:"
DEFAULT_TOLERANCE_S = 600.0
#: RedBeat's default lock timeout: celery's DEFAULT_MAX_INTERVAL (300 s) × 5 (schedulers.py:483)
DEFAULT_LOCK_TIMEOUT_S = 1500.0
URL_ENV = "TIMEGUARD_REDBEAT_REDIS_URL"
URL_KEYS = ("redis_url", "redis_url_env", "redis_url_file")
URL_SCHEMES = ("redis://", "rediss://", "unix://")
META = "meta.last_run_at"
SCORE = "score"
#: Entries read per pipeline, and changed per script call (one atomic step each).
BATCH = 1000
MAX_ROUNDS = 3
#: Changes an audit lists in its details (all are counted).
AUDIT_LISTED = 100
SOCKET_TIMEOUT_S = 10.0
_DATETIME_FIELDS = frozenset({"year", "month", "day", "hour", "minute", "second", "microsecond"})
_REQUIRED = ("year", "month", "day")
#: The schedules RedBeatJSONEncoder writes (decoder.py): celery's schedule (interval), crontab, its rrule.
SCHEDULE_TYPES = frozenset({"interval", "crontab", "rrule"})

#: KEYS[1] the schedule ZSET, KEYS[2..] the entries; ARGV four per entry: the meta read ("" = none), the score read,
#: the meta to write ("" = keep), the score to write. Each entry is changed only if both still hold what was read.
#: Returns the positions (1-based) of the entries changed.
#: Delete the lock only if it still holds the token read and still expires later than ARGV[2] ms from now.
_LOCK_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] and redis.call('pttl', KEYS[1]) > tonumber(ARGV[2]) then
  return redis.call('del', KEYS[1])
end
return 0
"""

_SCRIPT = """
local done = {}
for i = 2, #KEYS do
  local j = (i - 2) * 4
  local meta = redis.pcall('HGET', KEYS[i], 'meta')
  if type(meta) == 'table' and meta.err then meta = nil end
  if meta == false then meta = '' end
  local score = redis.call('ZSCORE', KEYS[1], KEYS[i])
  if meta ~= nil and score and meta == ARGV[j + 1] and tonumber(score) == tonumber(ARGV[j + 2]) then
    if ARGV[j + 3] ~= '' then redis.call('HSET', KEYS[i], 'meta', ARGV[j + 3]) end
    redis.call('ZADD', KEYS[1], ARGV[j + 4], KEYS[i])
    done[#done + 1] = i - 1
  end
end
return done
"""

# ------------------------------------------------------------------------------------------------ RedBeat's JSON


class Unparsed(ValueError):
    """A stored value RedBeat's decoder would not give back as a datetime/schedule: why, for a person."""


def decode_datetime(value: Any) -> dt.datetime:
    """RedBeat's ``{"__type__": "datetime", …}`` as an aware datetime, as ``RedBeatJSONDecoder`` decodes it."""
    if not isinstance(value, dict) or value.get("__type__") != "datetime":
        raise Unparsed(f'not a RedBeat datetime ({{"__type__": "datetime", …}}): {_short(value)}')
    parts = {k: v for k, v in value.items() if k not in ("__type__", "timezone")}
    unknown = set(parts) - _DATETIME_FIELDS
    missing = [k for k in _REQUIRED if k not in parts]
    if unknown or missing:
        raise Unparsed(f"datetime with {'unknown fields ' + ', '.join(sorted(unknown)) if unknown else ''}"
                       f"{'; ' if unknown and missing else ''}{'missing ' + ', '.join(missing) if missing else ''}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in parts.values()):
        raise Unparsed(f"datetime fields that are not whole numbers: {_short(value)}")
    try:
        return dt.datetime(**parts, tzinfo=_tzinfo(value.get("timezone", "UTC")))
    except (ValueError, OverflowError) as exc:
        raise Unparsed(f"not a date: {exc}") from None


def _tzinfo(zone: Any) -> dt.tzinfo:
    """The decoder's rule: a number is an offset in seconds, a string a zone name (``ZoneInfo``)."""
    if isinstance(zone, bool) or zone is None:
        raise Unparsed(f"time zone {zone!r} is neither an offset nor a zone name")
    if isinstance(zone, int | float):
        try:
            return dt.timezone(dt.timedelta(minutes=zone / 60))
        except (ValueError, OverflowError):
            raise Unparsed(f"time zone offset {zone!r} s is out of range") from None
    if not isinstance(zone, str):
        raise Unparsed(f"time zone {zone!r} is neither an offset nor a zone name")
    if zone == "UTC":
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise Unparsed(f"unknown time zone {zone!r}") from None


def encode_datetime(epoch_s: float, like: Mapping[str, Any] | None) -> dict[str, Any]:
    """``epoch_s`` in RedBeat's JSON, in the time zone notation of ``like`` (the value it replaces)."""
    zone = "UTC" if like is None else like.get("timezone", "UTC")
    when = dt.datetime.fromtimestamp(epoch_s, _tzinfo(zone))
    return {"__type__": "datetime", "year": when.year, "month": when.month, "day": when.day, "hour": when.hour,
            "minute": when.minute, "second": when.second, "microsecond": when.microsecond, "timezone": zone}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, slots=True)
class Entry:
    """One ZSET member as read: its key, score, raw meta (bytes, None if absent), what the meta and definition
    say (``last_run`` None = never run; ``every`` None = not an interval schedule)."""

    key: bytes
    name: str
    score: float
    meta_raw: bytes | None
    meta: dict[str, Any]
    last_run: float | None
    every: float | None
    schedule: str


def read_entry(key: bytes, score: float, definition: Any, meta_raw: Any) -> Entry:
    """An entry from what HMGET gave (bytes, None, or the error of a key that is no hash); Unparsed when RedBeat
    itself would not load it (``from_key``: no definition is a KeyError, a meta without last_run_at too)."""
    if isinstance(definition, Exception):
        raise Unparsed(f"the key is not a hash ({definition})")
    if definition is None:
        raise Unparsed("no hash with a definition for this ZSET member")
    try:
        spec = json.loads(definition)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unparsed(f"definition is not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise Unparsed(f"definition is not a JSON object: {_short(spec)}")
    name = spec.get("name") if isinstance(spec.get("name"), str) else key.decode("utf-8", "backslashreplace")
    meta: dict[str, Any] = {"last_run_at": None}
    if meta_raw:  # RedBeat: an empty or absent meta is "never run" (decode_meta)
        try:
            meta = json.loads(meta_raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Unparsed(f"meta is not JSON ({exc})") from None
        if not isinstance(meta, dict) or "last_run_at" not in meta:
            raise Unparsed(f"meta without last_run_at: {_short(meta)}")
    raw = meta["last_run_at"]
    last_run = None if raw is None else decode_datetime(raw).timestamp()
    schedule = spec.get("schedule")
    kind = schedule.get("__type__") if isinstance(schedule, dict) else None
    if kind not in SCHEDULE_TYPES:  # what RedBeatJSONEncoder writes; anything else RedBeat cannot load either
        raise Unparsed(f"definition without a RedBeat schedule (interval, crontab, rrule): {_short(schedule)}")
    every = None
    if kind == "interval":
        every = schedule.get("every")
        if isinstance(every, bool) or not isinstance(every, int | float) or not math.isfinite(every) or every <= 0:
            raise Unparsed(f"interval schedule without a positive 'every': {_short(schedule)}")
        every = float(every)
    return Entry(key, name, score, meta_raw if meta_raw else None, meta, last_run, every, kind)


# ------------------------------------------------------------------------------------------------ the target


@dataclass(frozen=True, slots=True)
class Fix:
    """One entry's planned writes (new_meta None: the meta stays)."""

    entry: Entry
    new_meta: bytes | None
    new_score: float
    changes: tuple[Change, ...]


class RedBeatTarget(BaseTarget):
    """RedBeat's key space in one Redis database."""

    where_key = "redis"
    what = "RedBeat schedule"

    def __init__(self, redis_url: str, *, key_prefix: str = DEFAULT_PREFIX, lock_key: str | None = None,
                 tolerance_s: float = DEFAULT_TOLERANCE_S, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                 source: str = "redis_url") -> None:
        self.url = redis_url
        self.key_prefix = key_prefix
        self.schedule_key = key_prefix + ":schedule"
        self.lock_key = lock_key_for(key_prefix, lock_key)
        self.tolerance_s = float(tolerance_s)
        self.lock_timeout_s = float(lock_timeout_s)
        self.source = source
        self.where = f"{redact_url(redis_url)} ({self.schedule_key})"
        self.fingerprint = f"{redact_url(redis_url)}#{key_prefix}"
        self._client: Any = None
        self._script: Any = None

    # ---------------------------------------------------------------------------------------------- Redis

    def _error(self, exc: Exception) -> RepairError:
        text = redact_text(str(exc)) or type(exc).__name__
        kind = type(exc).__name__
        hint = ""
        if "READONLY" in text or kind == "ReadOnlyError":
            hint = " (a read-only replica: give the primary's URL)"
        elif kind in ("AuthenticationError", "AuthenticationWrongNumberOfArgsError") or "NOAUTH" in text \
                or "WRONGPASS" in text:
            hint = " (authentication failed: check the password in the URL)"
        elif "DB index" in text:
            hint = " (no such database number on this server)"
        return RepairError(f"Redis {redact_url(self.url)} ({self.source}): {text}{hint}; nothing was changed")

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import redis  # the extra timeguard[redbeat]: only this target needs it
            except ImportError:
                raise RepairError("the redbeat target needs redis-py: pip install 'timeguard[redbeat]'") from None
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=SOCKET_TIMEOUT_S,
                                              socket_connect_timeout=SOCKET_TIMEOUT_S)
                client.ping()
            except (ValueError, redis.RedisError) as exc:
                raise self._error(exc) from None
            self._client = client
        return self._client

    def _call(self, fn: Callable[[], Any]) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise self._error(exc) from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---------------------------------------------------------------------------------------------- reading

    def _entries(self) -> Iterator[Entry | Unreadable]:
        """Every ZSET member, read a batch at a time (rank ranges: a member moved meanwhile by beat is checked again
        by the next round, whose compare-and-set protects it anyway)."""
        client = self.client
        kind = self._call(lambda: client.type(self.schedule_key))
        if kind not in (b"zset", b"none"):
            raise RepairError(f"Redis {redact_url(self.url)}: {self.schedule_key} is a {kind.decode()}, not "
                              "RedBeat's schedule ZSET (key_prefix?); nothing was changed")
        start = 0
        while True:
            members = self._call(lambda s=start: client.zrange(self.schedule_key, s, s + BATCH - 1,
                                                                 withscores=True))
            if not members:
                return
            pipe = client.pipeline(transaction=False)
            for key, _ in members:
                pipe.hmget(key, "definition", "meta")
            answers = self._call(lambda p=pipe: p.execute(raise_on_error=False))
            for (key, score), answer in zip(members, answers, strict=True):
                definition, meta = (answer, answer) if isinstance(answer, Exception) else answer
                name = key.decode("utf-8", "backslashreplace")
                try:
                    yield read_entry(key, score, definition, meta)
                except Unparsed as exc:
                    raw = meta if isinstance(meta, bytes | type(None)) else None
                    yield Unreadable(name, name, "entry", repr(raw)[:80], str(exc))
            if len(members) < BATCH:
                return
            start += BATCH

    def _fix(self, e: Entry, now_s: float) -> Fix | Note | None:
        """What the entry needs at ``now_s``: a Fix, a Note (reported, left alone), or None (fine)."""
        limit = now_s + self.tolerance_s
        if e.last_run is not None and e.last_run > limit:
            due = math.floor(now_s + e.every) if e.every is not None else math.floor(now_s)
            meta = {**e.meta, "last_run_at": encode_datetime(now_s, e.meta["last_run_at"])}
            why = f"{fmt_duration(e.last_run - now_s)} in the future: RedBeat would not send it before then"
            changes = [Change(e.key.decode("utf-8", "backslashreplace"), e.name, META, e.last_run, now_s, why)]
            if e.score != due:
                score_why = ("the due time (now + every)" if e.every is not None else
                             f"now: beat loads it next tick and its {e.schedule} decides when")
                changes.append(Change(changes[0].item, e.name, SCORE, e.score, float(due), score_why))
            return Fix(e, json.dumps(meta).encode(), float(due), tuple(changes))
        if e.score <= limit:
            return None
        if e.last_run is None:
            due = float(math.floor(now_s))
            why = "never run, yet scored in the future: RedBeat would not load it before then"
        elif e.every is not None:
            due = float(math.floor(max(e.last_run + e.every, now_s)))
            if e.score <= due + self.tolerance_s:
                return None
            why = f"{fmt_duration(e.score - due)} past its due time (last run + every): not loaded before then"
        else:
            return None  # a crontab's next run may lie a year ahead: its score alone says nothing
        item = e.key.decode("utf-8", "backslashreplace")
        return Fix(e, None, due, (Change(item, e.name, SCORE, e.score, due, why),))

    def _lock_note(self) -> Note | None:
        if not self.lock_key:
            return None
        pttl = self._call(lambda: self.client.pttl(self.lock_key))
        if pttl is None or pttl < 0 or pttl / 1000 <= self.lock_timeout_s + self.tolerance_s:
            return None
        return Note(self.lock_key, self.lock_key, "lock", (
            f"expires in {fmt_duration(pttl / 1000)}, longer than the lock timeout ({self.lock_timeout_s:g} s; set "
            "lock_timeout_s if redbeat_lock_timeout is larger): the Redis host's clock stepped back after it was set "
            "(a key's expiry is an absolute time there). A running beat shortens it at its next tick; if no "
            f"beat runs, a new one waits for it until then: delete it (DEL {self.lock_key}) only when no beat "
            "holds it. Timeguard deletes it when its hook stops beat for the repair (service or stop_command), "
            "and otherwise leaves it alone"))

    def _release_stale_lock(self) -> bool:
        """With beat stopped: delete a lock that expires later than the lock timeout (+ tolerance) allows — its
        holder is gone, and a new beat would wait for it until then — if it still holds the token just read."""
        if not self.lock_key:
            return False
        token = self._call(lambda: self.client.get(self.lock_key))
        if token is None:
            return False
        limit_ms = int((self.lock_timeout_s + self.tolerance_s) * 1000)
        script = self.client.register_script(_LOCK_SCRIPT)
        return bool(self._call(lambda: script(keys=[self.lock_key], args=[token, limit_ms])))

    def _scan(self, now_s: float) -> tuple[Plan, list[Fix]]:
        fixes: list[Fix] = []
        notes: list[Note] = []
        unreadable: list[Unreadable] = []
        for found in self._entries():
            if isinstance(found, Unreadable):
                unreadable.append(found)
                continue
            fix = self._fix(found, now_s)
            if isinstance(fix, Fix):
                fixes.append(fix)
            elif isinstance(fix, Note):
                notes.append(fix)
        lock = self._lock_note()
        if lock is not None:
            notes.append(lock)
        changes = tuple(c for f in fixes for c in f.changes)
        return Plan(now_s, self.tolerance_s, changes, tuple(notes), tuple(unreadable)), fixes

    def format_plan(self, changes: Sequence[Any]) -> str:
        return format_table(changes, item_heading="ENTRY", field_heading="FIELD".ljust(len(META)))

    # ------------------------------------------------------------------------------------------ the protocol

    def plan(self, now_s: float) -> Plan:
        return self._scan(checked_now(now_s))[0]

    def audit(self, now_s: float) -> Any:
        """The audit, with the entries found (the first AUDIT_LISTED: meta and/or score, old → new) and what is left
        alone (the lock) in its details."""
        now_s = checked_now(now_s)
        plan = self.plan(now_s)
        found = self.audit_of(plan, now_s)
        listed = {"changes": [c.to_dict() for c in plan.changes[:AUDIT_LISTED]],
                  "report": [n.to_dict() for n in plan.report]}
        return dataclasses.replace(found, details={**found.details, **listed})

    def _write(self, fixes: Sequence[Fix]) -> set[int]:
        """The fixes, a batch per script call (each atomic); the indexes of those written."""
        if self._script is None:
            self._script = self.client.register_script(_SCRIPT)  # EVALSHA, EVAL once when Redis lacks it
        written: set[int] = set()
        for start in range(0, len(fixes), BATCH):
            batch = fixes[start:start + BATCH]
            keys = [self.schedule_key] + [f.entry.key for f in batch]
            args: list[Any] = []
            for f in batch:
                args += [f.entry.meta_raw or b"", repr(f.entry.score), f.new_meta or b"", repr(f.new_score)]
            done = self._call(lambda k=keys, a=args: self._script(keys=k, args=a))
            written.update(start + int(i) - 1 for i in done)
        return written

    def apply(self, now_fn: Callable[[], float], *, undo_log: UndoLog | None, incident_id: str,
              cancelled: Callable[[], bool] = lambda: False, owner_stopped: bool = False) -> Outcome:
        """Rounds until one finds nothing (at most MAX_ROUNDS): a running beat needs no signal, it reads Redis on
        its next tick. Each round's old values are in the undo log before the first write."""
        repair_id = uuid.uuid4().hex
        first: Plan | None = None
        rounds: list[dict[str, Any]] = []
        clean = False
        for number in range(1, MAX_ROUNDS + 1):
            now_s = checked_now(now_fn())
            plan, fixes = self._scan(now_s)
            first = first or plan
            if plan.empty:
                clean = True
                break
            if cancelled():
                break
            if undo_log is not None:
                undo_log.record(TARGET, incident_id, repair_id, self.fingerprint, _records(fixes),
                                applied_wall_s=now_s, applied_mono_s=time.monotonic())
            written = self._write(fixes)
            rounds.append({"number": number, "now_s": now_s, "changed": sum(len(fixes[i].changes) for i in written),
                           "entries": len(written), "skipped_changed_meanwhile": len(fixes) - len(written)})
        else:
            clean = self._scan(checked_now(now_fn()))[0].empty
        assert first is not None
        if owner_stopped and any(n.kind == "lock" for n in first.report) and self._release_stale_lock():
            first = dataclasses.replace(first, report=tuple(
                dataclasses.replace(n, detail=f"deleted: it expired later than the lock timeout allows "
                                    f"({self.lock_timeout_s:g} s) and no beat held it (beat was stopped for the "
                                    "repair); the next beat takes a fresh one") if n.kind == "lock" else n
                for n in first.report))
        return Outcome(incident_id, repair_id, first, tuple(rounds), clean)

    def undo(self, undo_log: UndoLog, incident_id: str, now_fn: Callable[[], float], *,
             dry_run: bool = False) -> UndoOutcome:
        """Restore the old meta.last_run_at and score of each entry where both still hold what the repair wrote
        (one compare-and-set per entry, the same script)."""
        by_key: dict[str, dict[str, dict[str, Any]]] = {}
        for r in undo_log.iter_records(incident_id, target=TARGET, undone=False):
            if self.same_store(r["fingerprint"]):
                by_key.setdefault(r["item"], {})[r["field"]] = r
        restored: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        fixes: list[tuple[Fix, list[dict[str, Any]], list[dict[str, Any]]]] = []
        client = self.client
        for item, records in by_key.items():
            key = item.encode()
            meta_raw, score = self._call(lambda k=key: (client.hget(k, "meta"), client.zscore(self.schedule_key, k)))
            rows = [{"name": r["name"], "field": f, "from_s": _epoch(r["new_value"]), "to_s": _epoch(r["old_value"]),
                     "key": r["key"]} for f, r in records.items()]
            if score is None:
                skipped += [{**row, "why": "no longer in the schedule"} for row in rows]
                continue
            meta_rec, score_rec = records.get(META), records.get(SCORE)
            why = None
            meta: dict[str, Any] = {}
            try:
                meta = json.loads(meta_raw) if meta_raw else {"last_run_at": None}
                if meta_rec is not None and meta.get("last_run_at") != meta_rec["new_value"]:
                    why = "meta.last_run_at changed since the repair (beat ran it, or a person)"
            except (ValueError, AttributeError):
                why = "meta is no longer readable"
            if score_rec is not None and why is None and score != score_rec["new_value"]:
                why = "the score changed since the repair (beat rescheduled it)"
            if why is not None:
                skipped += [{**row, "why": why} for row in rows]
                continue
            new_meta = None
            if meta_rec is not None:
                new_meta = json.dumps({**meta, "last_run_at": meta_rec["old_value"]}).encode()
            new_score = score_rec["old_value"] if score_rec is not None else score
            entry = Entry(key, "", score, meta_raw, meta, None, None, "")
            fixes.append((Fix(entry, new_meta, float(new_score), ()), rows, []))
        written = self._write([f for f, _, _ in fixes]) if not dry_run and fixes else set(range(len(fixes)))
        done = []
        for index, (_, rows, _) in enumerate(fixes):
            if index in written:
                restored += rows
                done += [row["key"] for row in rows]
            else:
                skipped += [{**row, "why": "changed while undoing"} for row in rows]
        if done and not dry_run:
            undo_log.mark_undone(incident_id, done)
        clean = [{k: v for k, v in row.items() if k != "key"} for row in restored]
        return UndoOutcome(incident_id, tuple(clean), tuple({k: v for k, v in s.items() if k != "key"}
                                                            for s in skipped), dry_run)


def _records(fixes: Sequence[Fix]) -> Iterator[tuple[Any, ...]]:
    """Undo records: the meta's last_run_at as RedBeat's JSON (restored exactly), the score as a number."""
    for f in fixes:
        item = f.entry.key.decode("utf-8", "backslashreplace")
        if f.new_meta is not None:
            yield (item, f.entry.name, META, f.entry.meta["last_run_at"], json.loads(f.new_meta)["last_run_at"])
        yield (item, f.entry.name, SCORE, f.entry.score, f.new_score)


def _epoch(value: Any) -> float | None:
    """A recorded value as epoch seconds (for the report): a score, or RedBeat's datetime JSON."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return decode_datetime(value).timestamp()
    except Unparsed:
        return None


def lock_key_for(prefix: str, lock_key: str | None) -> str:
    """RedBeat's rule (``RedBeatConfig``, schedulers.py:267): default ``<prefix>:lock``; a key that does not start
    with the prefix gets it in front; an empty one means no lock."""
    if lock_key is None:
        return prefix + ":lock"
    if lock_key and not lock_key.startswith(prefix):
        return prefix + lock_key
    return lock_key


# ------------------------------------------------------------------------------------------------ the kind


@dataclass(frozen=True, slots=True)
class RedBeatOptions:
    """The redbeat target's options (``type: redbeat``)."""

    redis_url: str | None = option(None, doc="RedBeat's Redis (redbeat_redis_url): redis://[:password@]host:6379/0, "
                                   "rediss://…, unix:///path?db=0 (a password is better in redis_url_env)")
    redis_url_env: str | None = option(None, doc="the environment variable holding the Redis URL")
    redis_url_file: str | None = option(None, doc="a file holding the Redis URL (relative: in $CREDENTIALS_DIRECTORY, "
                                        "systemd's LoadCredential=)")
    key_prefix: str = option(DEFAULT_PREFIX, doc="redbeat_key_prefix (default redbeat:)")
    lock_key: str | None = option(None, doc="redbeat_lock_key (default <key_prefix>:lock): a stale one is reported, "
                                  "and deleted when the hook stops beat")
    tolerance_s: float = option(DEFAULT_TOLERANCE_S, lo=0, hi=366 * 86400.0,
                                doc="future means more than this far ahead (default 600)")
    lock_timeout_s: float = option(DEFAULT_LOCK_TIMEOUT_S, lo=0, hi=366 * 86400.0,
                                   doc="redbeat_lock_timeout (default 1500): a lock expiring later is reported")


class RedBeatKind(TargetKind):
    """RedBeat's Redis (``type: redbeat``, ``timeguard repair redbeat``)."""

    name = TARGET
    cli_name = "redbeat"
    help = "bring future last_run_at and schedule scores in RedBeat's Redis back to now"
    description = ("Find every RedBeat entry whose meta.last_run_at or ZSET score lies in the future and bring both "
                   "back to the trusted now, atomically, while beat runs (it reads Redis at its next tick). "
                   "Without --trust-local-clock the time sources of the configuration are asked first.")
    Options: ClassVar[type[RedBeatOptions]] = RedBeatOptions
    options = frozenset(option_names(RedBeatOptions))
    needs_owner_stopped = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RedBeatKind:
        from timeguard.config import convert_options
        from timeguard.hooks.api import HookConfigError

        _, problems = convert_options(RedBeatOptions, options, hook=TARGET)
        given = [k for k in URL_KEYS if options.get(k) is not None]
        if len(given) != 1:
            problems.append(("redis_url", "give exactly one of redis_url, redis_url_env, redis_url_file"))
        for key in given:
            if not isinstance(options[key], str) or not options[key]:
                problems.append((key, "must be a non-empty string"))
        url = options.get("redis_url")
        if isinstance(url, str) and url and not url.startswith(URL_SCHEMES):
            problems.append(("redis_url", f"must be a redis://, rediss:// or unix:// URL (redis-py's), not "
                             f"{redact_url(url)!r}; a Sentinel setup: give its primary's URL"))
        for key in ("tolerance_s", "lock_timeout_s"):
            if key in options:
                problem = range_problem(options[key], 0.0, 366 * 86400.0)
                if problem is not None and not any(k == key for k, _ in problems):
                    problems.append((key, problem))
        if problems:
            raise HookConfigError(problems)
        return cls(options)

    def check_max_offset(self, max_offset_s: float) -> str | None:
        tolerance = float(self.values.get("tolerance_s", DEFAULT_TOLERANCE_S))
        if max_offset_s > tolerance:
            return f"must not exceed tolerance_s ({tolerance:g}): beat would see the repaired times as future again"
        return None

    def _url(self) -> tuple[str, str]:
        """The URL and the option it came from: read now, where it is used (it may hold a password)."""
        found = url_from_options(self.values, "redis_url", credentials=True)
        assert found is not None  # validation requires one of the three
        return found

    def open(self) -> RedBeatTarget:
        url, source = self._url()
        return RedBeatTarget(url, key_prefix=self.values.get("key_prefix", DEFAULT_PREFIX),
                             lock_key=self.values.get("lock_key"),
                             tolerance_s=float(self.values.get("tolerance_s", DEFAULT_TOLERANCE_S)),
                             lock_timeout_s=float(self.values.get("lock_timeout_s", DEFAULT_LOCK_TIMEOUT_S)),
                             source=source)

    # ------------------------------------------------------------------------------------- command line

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--redis-url", metavar="URL", help=f"RedBeat's Redis: redis://host:6379/0 (default: "
                            f"${URL_ENV}; a password is better there than on the command line)")
        _store_args(parser, "--key-prefix")
        parser.add_argument("--lock-key", metavar="KEY", help="redbeat_lock_key (default <prefix>:lock)")
        parser.add_argument("--tolerance-s", type=float, metavar="N",
                            help="future means more than N s ahead (default: the hook's, else 600)")

    @classmethod
    def add_undo_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--redbeat-redis-url", metavar="URL",
                            help=f"the Redis a redbeat repair changed, when its URL holds a password (default: "
                            f"${URL_ENV}, else the URL the undo log recorded)")
        _store_args(parser, "--redbeat-key-prefix")

    @classmethod
    def options_from_args(cls, args: argparse.Namespace, url: str | None, *, env_default: bool = True
                          ) -> dict[str, Any]:
        """The hook options the command line gives (only those given); without a URL, ``$TIMEGUARD_REDBEAT_REDIS_URL``
        when ``env_default`` (not over a configured hook's own)."""
        options: dict[str, Any] = {}
        if url:
            options["redis_url"] = url
        elif env_default and os.environ.get(URL_ENV):
            options["redis_url_env"] = URL_ENV
        for key in ("key_prefix", "lock_key", "tolerance_s"):
            if getattr(args, key, None) is not None:
                options[key] = getattr(args, key)
        return options

    @classmethod
    def cli_options(cls, args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A configured hook's options (``--hook``) with the command line's on top; a URL given here replaces the
        hook's."""
        given = cls.options_from_args(args, getattr(args, "redis_url", None), env_default=base is None)
        options = dict(base or {})
        if any(k in given for k in URL_KEYS):
            for key in URL_KEYS:
                options.pop(key, None)
        options.update(given)
        return options

    @classmethod
    def _kind(cls, options: Mapping[str, Any], flag: str) -> RedBeatKind:
        from timeguard.hooks.api import HookConfigError

        if not any(options.get(k) for k in URL_KEYS):
            error = RepairError(f"give RedBeat's Redis: {flag} URL (or ${URL_ENV}), or --hook NAME (a redbeat hook "
                                "of the configuration)")
            error.usage = True  # type: ignore[attr-defined]
            raise error
        try:
            return cls.from_options(options)
        except HookConfigError as exc:
            raise RepairError("; ".join(f"{k}: {m}" for k, m in exc.problems)) from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RedBeatTarget:
        return cls._kind(cls.options_from_args(args, args.redis_url), "--redis-url").open()

    @classmethod
    def undo_target(cls, args: argparse.Namespace, fingerprints: Sequence[str]) -> RedBeatTarget:
        """The Redis the undo log names (``<redacted URL>#<prefix>``): its URL as recorded when it holds no password,
        else ``--redbeat-redis-url`` (or ``$TIMEGUARD_REDBEAT_REDIS_URL``); the prefix as recorded unless given."""
        recorded_url, _, recorded_prefix = sorted(set(fingerprints))[0].rpartition("#")
        prefix = args.redbeat_key_prefix if args.redbeat_key_prefix is not None else recorded_prefix
        url = args.redbeat_redis_url or (recorded_url if MASK not in recorded_url else None)
        options = cls.options_from_args(argparse.Namespace(key_prefix=prefix), url)
        if not any(options.get(k) for k in URL_KEYS):
            repaired = ", ".join(sorted(set(fingerprints)))
            raise RepairError(f"a redbeat repair is undone in its Redis, whose URL holds a password: give "
                              f"--redbeat-redis-url (or ${URL_ENV}); it repaired {repaired}")
        return cls._kind(options, "--redbeat-redis-url").open()


def _store_args(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument(flag, metavar="PREFIX", help="redbeat_key_prefix (default redbeat:)")


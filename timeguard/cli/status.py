"""``timeguard status`` and ``timeguard events``: read the daemon's journal, never the network.

Liveness is judged on CLOCK_BOOTTIME, not the wall clock: a heartbeat written 5 s ago is 5 s old even if the
wall clock has since jumped by months.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from timeguard.cli.common import load_config_or_exit
from timeguard.events import Event, EventKind
from timeguard.hooks.outbox import OutboxStore
from timeguard.measure.consensus import fmt_offset
from timeguard.store.journal import (
    FILENAME,
    DaemonInfo,
    DaemonNotes,
    Heartbeat,
    Journal,
    JournalDamage,
    JournalError,
)
from timeguard.timefmt import iso as _iso
from timeguard.watch.clockwatch import read_boot_id

#: A heartbeat older than this (it is written every 10 s) means the daemon is not running.
STALE_AFTER_S = 35.0
EXIT_NOT_RUNNING = 3
#: What ``status`` shows when the notes cannot be read (the problem is listed under the journal).
_NO_NOTES = DaemonNotes(DaemonInfo(None, None, None, None, None), None, None, {}, None)

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now_s: float) -> float:
    """An age ("90s", "15m", "2h", "7d") or an ISO 8601 time (UTC if it has no zone) → UNIX seconds."""
    if match := _AGE.match(text):
        return now_s - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: not an age like 90s/15m/2h/7d nor an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _pid_is_timeguard(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"timeguard" in cmdline


def daemon_state(heartbeat: Heartbeat | None) -> dict[str, Any]:
    if heartbeat is None:
        return {"running": False, "why": "the daemon has never written a heartbeat"}
    if heartbeat.boot_id != read_boot_id():
        return {"running": False, "why": "its last heartbeat is from a previous boot", "pid": heartbeat.pid}
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - float(heartbeat.boottime_s)
    pid = int(heartbeat.pid)
    alive = _pid_is_timeguard(pid)
    running = alive and age <= STALE_AFTER_S
    why = None
    if not alive:
        why = f"process {pid} is gone"
    elif not running:
        why = f"process {pid} exists but its last heartbeat is {age:.0f} s old (stuck?)"
    return {"running": running, "pid": pid, "heartbeat_age_s": round(age, 3), "why": why}


def event_line(event: Event) -> str:
    parts = [_iso(event.wall_time_s), event.kind.value.ljust(20)]
    if event.step_s is not None:
        bound = " (at least)" if event.detail.get("lower_bound") else ""
        parts.append(f"step {fmt_offset(event.step_s)}{bound}")
    if event.trusted_time_s is not None:
        parts.append(f"trusted {_iso(event.trusted_time_s)}")
    parts.append(f"incident {event.incident_id[:8]}")
    extras = {k: v for k, v in event.detail.items() if k in ("detected_by", "transition", "previous", "same_boot")}
    if extras:
        parts.append(" ".join(f"{k}={v}" for k, v in extras.items()))
    if event.verdict and event.kind in (EventKind.OFFSET_WARNING, EventKind.OFFSET_CRITICAL,
                                        EventKind.SOURCES_INCONSISTENT, EventKind.SOURCES_UNAVAILABLE,
                                        EventKind.RECOVERED):
        parts.append(f"— {event.verdict.get('summary', '')}")
    if event.test:
        parts.append("[test]")
    return "  ".join(parts)


def _open_journal(state_dir: str) -> Journal | None:
    """The journal read-only, None when there is none. Permission denied (a non-root user and the service's
    DynamicUser state) and a damaged or locked file raise JournalError, with one line saying what and where."""
    path = Path(state_dir) / FILENAME
    try:
        if not path.exists():
            return None
    except PermissionError:
        pass  # Journal names it: "permission denied: run as root or …"
    return Journal(path, readonly=True)


class _Reader:
    """Runs each part of ``status`` on its own: damage in one table spoils that part, the rest is still shown."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(self, what: str, read: Any, default: Any) -> Any:
        try:
            return read()
        except JournalError as exc:
            self.problems.append(f"{what}: {exc}")
            return default


def _damage_line(damage: JournalDamage) -> str:
    copied = sum(int(v) for v in damage.copied.values())
    unread = ", ".join(f"{table}: {count}" for table, count in (damage.lost or {}).items()) or "none"
    return (f"found damaged at {_iso(float(damage.wall_s))} ({damage.reason}); moved aside to "
            f"{damage.moved_to}; {copied} rows salvaged into this journal; unreadable rows: {unread}")


def cmd_status(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    path = Path(cfg.state_dir) / FILENAME
    try:
        journal = _open_journal(cfg.state_dir)
    except JournalError as exc:
        print(f"timeguard status: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if journal is None:
        message = f"no journal at {path}: the daemon has not run with state_dir {cfg.state_dir}"
        if args.json:
            print(json.dumps({"running": False, "why": message, "journal": None}))
        else:
            print(f"timeguard: not running ({message})")
        return EXIT_NOT_RUNNING
    read = _Reader()
    with journal:
        notes = read("meta", journal.notes, _NO_NOTES)
        state = daemon_state(notes.heartbeat)
        check = read("last check", journal.last_check, None)
        floor = read("floor", journal.floor, None)
        recent = read("events", lambda: journal.events(limit=args.events), []) if args.events else []
        health = read("health", journal.health, {"path": str(path), "ok": False, "problems": [], "size_bytes": 0,
                                                 "events": None, "checks": None, "schema": None})
        outbox = read("alerts", lambda: OutboxStore(journal).stats(epoch=read_boot_id(), now_mono=time.monotonic()),
                      {"pending": None, "delivered": None, "dead": None, "oldest_pending_age_s": None})
    health["problems"] = [*health["problems"], *read.problems]
    health["ok"] = health["ok"] and not read.problems
    damage, daemon = notes.damage, notes.daemon
    if damage is not None:
        health["damage"] = asdict(damage)
    data = {
        **state,
        "version": daemon.version,
        "started_wall_s": daemon.started_wall_s,
        "config": daemon.config,
        "last_check": None if check is None else {
            "status": check.status, "summary": check.summary, "offset_s": check.offset_s,
            "offset_lo_s": check.offset_lo_s, "offset_hi_s": check.offset_hi_s,
            "ntp_http_agree": check.ntp_http_agree, "wall_s": check.wall_s, "sources": check.sources,
        },
        "floor": None if floor is None else {"wall_s": floor.wall_s, "boot_id": floor.boot_id,
                                             "reason": floor.reason},
        "events": [e.to_dict() for e in recent],
        "journal": health,
        "outbox": outbox,
        "audits": {name: asdict(note) for name, note in notes.audits.items()},
        "stopped_by_guard": {name: asdict(note) for name, note in notes.guards.items()},
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0 if state["running"] else EXIT_NOT_RUNNING
    if state["running"]:
        print(f"timeguard: running (pid {state['pid']}, heartbeat {state['heartbeat_age_s']:.0f} s ago), "
              f"version {daemon.version}, config {daemon.config}")
    else:
        print(f"timeguard: not running ({state['why']})")
    if check is None:
        print("Last verdict: none yet")
    else:
        print(f"Last verdict (at {_iso(check.wall_s)} host time): {check.status}: {check.summary}")
    if floor is not None:
        print(f"Floor: {_iso(floor.wall_s)} ({floor.reason})")
    ok = "ok" if health["ok"] else "PROBLEMS: " + "; ".join(health["problems"])
    print(f"Journal: {health['path']}, {ok}, {health['size_bytes'] / 1024:.0f} KiB, "
          f"{_count(health['events'])} events, {_count(health['checks'])} checks")
    if damage is not None:
        print(f"  journal {_damage_line(damage)}")
    oldest = outbox.get("oldest_pending_age_s")
    age = f", oldest pending {oldest:.0f} s" if oldest is not None and outbox["pending"] else ""
    print(f"Alerts: {_count(outbox['pending'])} pending{age}, {_count(outbox['delivered'])} delivered, "
          f"{_count(outbox['dead'])} dead")
    if outbox["dead"] and outbox.get("last_dead"):
        print(f"  last dead: {outbox['last_dead']}")
    for name, audit in notes.audits.items():
        print(f"Audit {name} (at {_iso(audit.wall_s)} host time): {audit.outcome}: {audit.summary}"
              f" (next in {audit.next_in_s:.0f} s)")
    for name, guard in notes.guards.items():
        print(f"STOPPED by the guard: {name} ({guard.target}, {guard.where}) since {_iso(guard.stopped_wall_s)} host "
              f"time, the host clock was ≥ {guard.ahead_s:.0f} s ahead; repaired and started once the clock is right "
              "(a running daemon does it)")
    if recent:
        print("Last events:")
        for event in recent:
            print(f"  {event_line(event)}")
    return 0 if state["running"] else EXIT_NOT_RUNNING


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def write_json_array(out: TextIO, items: Iterable[Any]) -> int:
    """A JSON array written as the items come, one item per line (memory stays flat, and the C encoder keeps it
    fast: an indented dump runs in pure Python, 10× slower). If ``items`` raises, what was written stays an
    unterminated array, never a complete-looking truncated one."""
    count = 0
    for item in items:
        out.write(("[\n" if count == 0 else ",\n") + json.dumps(item))
        count += 1
    out.write("[]\n" if count == 0 else "\n]\n")
    return count


def cmd_events(args: argparse.Namespace) -> int:
    cfg = load_config_or_exit(args.config)
    kinds = None
    if args.kind:
        try:
            kinds = [EventKind(k) for k in args.kind]
        except ValueError as exc:
            known = ", ".join(k.value for k in EventKind)
            print(f"timeguard events: {exc}; known kinds: {known}", file=sys.stderr)
            return 2
    since = None
    if args.since:
        try:
            since = parse_since(args.since, time.time())
        except ValueError as exc:
            print(f"timeguard events: {exc}", file=sys.stderr)
            return 2
    out = sys.stdout
    try:
        journal = _open_journal(cfg.state_dir)
        if journal is None:
            if args.json:
                out.write("[]\n")
            else:
                out.write(f"no journal in {cfg.state_dir}: no events\n")
            return 0
        with journal:
            filters = {"since_s": since, "kinds": kinds, "limit": args.limit}
            if args.json:
                write_json_array(out, journal.iter_event_dicts(**filters))
            else:
                shown = 0
                for event in journal.iter_events(**filters):
                    out.write(event_line(event) + "\n")
                    shown += 1
                if not shown:
                    out.write("no events\n")
    except JournalError as exc:
        out.flush()
        print(f"timeguard events: {exc}", file=sys.stderr)
        return 1
    return 0

"""``type: logfile``: append one JSON line per event to a file — an audit trail that survives the journal.

Configuration (one item of timeguard's ``hooks:`` list)::

    - type: logfile
      name: clock-audit
      path: /var/log/timeguard/events.jsonl   # absolute; its directory must exist
      fsync: true                             # optional: flush to disk before reporting success

Each line is ``{"hook": NAME, "logged_at_trusted_s": FLOAT|null, "event": <the event, timeguard's JSON
schema>}``. In dry-run mode nothing is written; the result says what would have been.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from timeguard.events import Event, EventKind
from timeguard.hooks.api import (
    ALL_REAL_KINDS,
    API_VERSION,
    HookConfigError,
    HookContext,
    HookResult,
    convert_options,
    option,
)

# Refuse to load against a timeguard whose hook contract changed: `timeguard hooks list` then shows this
# message as the reason the type is unusable, instead of the plugin misbehaving at 3 a.m.
if API_VERSION not in (1, 2):  # 2 took HookContext.journal away, which this plugin never used
    raise ImportError(f"timeguard-hook-example supports timeguard hook API 1 and 2, this timeguard has {API_VERSION}")

__all__ = ["LogfileHook"]

@dataclass(frozen=True, slots=True)
class LogfileOptions:
    """The type's own options: timeguard's converter checks their types (and says "did you mean"), ``timeguard
    config schema`` describes them to editors; ``from_config`` adds the checks only this type knows."""

    path: str = option(doc="the file to append events to, e.g. /var/log/timeguard/events.jsonl")
    fsync: bool = option(False, doc="flush to disk before reporting success")


class LogfileHook:
    """Appends each event it receives to ``path`` as one JSON line."""

    #: Without ``on:`` in the config: every real event kind (an audit trail wants them all).
    default_on: ClassVar[frozenset[EventKind]] = ALL_REAL_KINDS
    Options: ClassVar[type[LogfileOptions]] = LogfileOptions

    def __init__(self, name: str, path: Path, *, fsync: bool = False) -> None:
        self.name = name
        self.path = path
        self.fsync = fsync

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> LogfileHook:
        """Validate every option and report *all* problems at once, each under its key."""
        opts, problems = convert_options(LogfileOptions, options, hook="logfile")
        if opts is not None:
            path = opts.path
            if not path.startswith("/"):
                problems.append(("path", f"must be an absolute file path, not {path!r}"))
            elif Path(path).is_dir():
                problems.append(("path", f"{path} is a directory; name a file in it"))
            elif not Path(path).parent.is_dir():
                problems.append(("path", f"the directory {Path(path).parent} does not exist; create it first"))
        if problems:
            raise HookConfigError(problems)
        assert opts is not None
        return cls(name, Path(opts.path), fsync=opts.fsync)

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        record = {"hook": self.name, "logged_at_trusted_s": ctx.trusted_now(), "event": event.to_dict()}
        line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
        if ctx.dry_run:
            return HookResult.skipped(f"dry run: would append {len(line)} bytes to {self.path}", path=str(self.path))
        try:
            # One write() to an O_APPEND file: concurrent writers never interleave inside a line.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, line)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # an expected failure is a FAILED result that says why, not an exception
            return HookResult.failed(f"cannot append to {self.path}: {exc.strerror or exc}", path=str(self.path))
        return HookResult.ok(f"appended the {event.kind.value} event to {self.path}", path=str(self.path),
                             bytes=len(line))

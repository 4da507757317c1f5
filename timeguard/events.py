"""What the journal records and hooks receive: one frozen, versioned ``Event``.

``to_dict``/``from_dict`` define the JSON schema (``schema: 1``); hooks, webhooks and ``timeguard events
--json`` all see exactly this shape. Times are UNIX seconds; ``wall_time_s`` is what the host clock said,
``trusted_time_s`` what the sources say it really was (None when no verdict was available).
"""

from __future__ import annotations

import enum
import json
import socket
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


class EventKind(enum.StrEnum):
    ROLLBACK = "rollback"  # the wall clock stepped backward while the agent ran
    FORWARD_JUMP = "forward_jump"
    ROLLBACK_WHILE_DOWN = "rollback_while_down"  # found at start-up: below the persisted floor
    LEAP = "leap"  # a leap second the kernel or the sources announced: recorded, no rollback hooks
    OFFSET_WARNING = "offset_warning"
    OFFSET_CRITICAL = "offset_critical"
    SOURCES_INCONSISTENT = "sources_inconsistent"
    SOURCES_UNAVAILABLE = "sources_unavailable"  # UNKNOWN or NO_MAJORITY: the clock cannot be checked
    RECOVERED = "recovered"  # the cross-check is OK again after one of the four above
    FUTURE_STATE_FOUND = "future_state_found"  # an audit found application state stamped in the future
    # the host clock is proven ahead: the schedulers of the repair hooks named in detail["stores"] stamp the future
    # on every run; their guard alerted or stopped them (timeguard.repair.guard), or started one it had stopped
    FUTURE_STATE_ACCRUING = "future_state_accruing"
    TEST = "test"  # a synthetic event from `timeguard hooks test`

    @property
    def is_step(self) -> bool:
        return self in (EventKind.ROLLBACK, EventKind.FORWARD_JUMP, EventKind.ROLLBACK_WHILE_DOWN, EventKind.LEAP)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    incident_id: str
    wall_time_s: float  # host wall clock when the event was detected (after the step, for a step)
    monotonic_s: float  # CLOCK_MONOTONIC at detection: orders events across any wall-clock step
    boot_id: str
    host: str = field(default_factory=socket.gethostname)
    id: str = field(default_factory=new_id)
    step_s: float | None = None  # signed size of the step; for rollback_while_down a lower bound
    wall_before_s: float | None = None  # host wall clock just before the step
    trusted_time_s: float | None = None
    verdict: dict[str, Any] | None = None  # verdict_summary: status, offsets, summary, ntp_http_agree, witnesses…
    detail: dict[str, Any] = field(default_factory=dict)
    test: bool = False
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"event schema {data.get('schema')!r} is not {SCHEMA_VERSION}")
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["kind"] = EventKind(fields["kind"])
        return cls(**fields)


class HookStatus(enum.StrEnum):
    """How one hook run ended (plugins import it from :mod:`timeguard.hooks.api`, their contract)."""

    OK = "ok"  # did its job (an alert was queued or sent)
    CHANGED = "changed"  # did its job and changed something (a repair wrote rows)
    SKIPPED = "skipped"  # nothing to do, or refused by policy (e.g. no evidence to repair): says why
    FAILED = "failed"  # could not do its job: says why; retried where the hook can be


@dataclass(frozen=True, slots=True)
class HookRun:
    """One run of one hook for one event, as the journal records it (beside the event it answers)."""

    hook: str
    hook_type: str
    event_id: str
    incident_id: str
    event_kind: str
    status: HookStatus
    summary: str
    details: Mapping[str, Any]
    output: str
    duration_s: float
    dry_run: bool
    test: bool
    wall_s: float
    monotonic_s: float

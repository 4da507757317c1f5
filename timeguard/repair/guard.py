"""The forward-jump guard's policy: when a repair hook's scheduler is stopped, repaired and started (pure).

While the host clock is ahead of the true time, a running scheduler stamps the future on every run (its
``last_run_at`` is the host's now), and each run deepens the damage a later correction leaves behind. Every repair
hook has ``guard: alert|stop`` (default ``alert``):

* ``alert``: the daemon raises ``future_state_accruing`` once per episode, naming the stores being damaged.
* ``stop``: it stops the scheduler (the hook's owner: its unit or ``stop_command``), keeps it stopped while the
  host is ahead, and once the clock is right again repairs the store (the normal repair path, the evidence rule)
  and starts it.

Evidence, both ways (:mod:`timeguard.repair.evidence`): *ahead* means the verdict is usable, two independent
witnesses vouch for it (the repair's rule: NTP and HTTPS agree, or NTS with HTTPS, NTP or another NTS operator)
and every point of the verdict's interval puts the host ahead by more than the hook's ``max_offset_s`` — a step
alone says nothing (a forward step may be the correction of a clock that was behind), and a spoofed source class
that the other does not confirm stops nothing. *Right again* is the repair's own rule (:func:`evidence_problem`).

The stopped state outlives the daemon (the journal's ``guard:<hook>`` note, written *before* the stop command
runs, so a crash in between errs towards "it may be stopped: repair and start it"). A stopped scheduler is
*released* — started without a repair, loudly — when its hook is removed or set to ``alert`` while the clock is
still ahead: the operator chose not to guard it, and silence would leave it stopped for good. When the clock is
right by then, it is repaired and started as usual.

:func:`decide` is the whole policy: no I/O, no clock; ``tests/test_guard_policy.py`` property-tests it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from timeguard.repair.evidence import evidence_problem, witness_problem


class GuardMode(enum.StrEnum):
    ALERT = "alert"
    STOP = "stop"


DEFAULT_GUARD = GuardMode.ALERT


class Act(enum.StrEnum):
    NONE = "none"
    ALERT = "alert"  # raise future_state_accruing for this store (guard: alert), once per episode
    STOP = "stop"  # note it, stop the owner, raise future_state_accruing (guard: stop)
    RESTORE = "restore"  # the clock is right: repair (evidence rule) and start the owner, then drop the note
    RELEASE = "release"  # the hook is gone or no longer stops: start the owner unrepaired, loudly, drop the note


@dataclass(frozen=True, slots=True)
class GuardState:
    """One hook's guard: ``stopped`` (its note is in the journal), ``alerted`` (this episode was announced),
    ``confirmed`` (the stop command succeeded in this daemon's lifetime — after a failed stop, or a restart that
    found the note, a stop command that may never have run is run again while the host is ahead: stop commands
    are idempotent, a scheduler left running is not harmless)."""

    stopped: bool = False
    alerted: bool = False
    confirmed: bool = True

    @classmethod
    def from_note(cls) -> GuardState:
        """What a (re)started daemon knows of a hook whose note it found."""
        return cls(stopped=True, alerted=True, confirmed=False)


def host_ahead_s(verdict: Mapping[str, Any] | None, tolerance_s: float) -> float | None:
    """How far the host is ahead of the true time *at least* (seconds, > ``tolerance_s``), when the verdict proves
    it; else None. Proof: usable status, the repair's witnesses (:func:`witness_problem`), and every point of the
    interval (offset = sources − host, negative: host ahead) is below ``−tolerance_s``."""
    if verdict is None or witness_problem(verdict) is not None:
        return None
    if str(verdict.get("status")) not in ("OK", "WARNING", "CRITICAL"):
        return None
    try:
        offset, lo, hi = (float(verdict[k]) for k in ("offset_s", "offset_lo_s", "offset_hi_s"))
        tolerance = float(tolerance_s)
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (offset, lo, hi, tolerance)) or not lo <= offset <= hi or tolerance < 0:
        return None
    return -hi if hi < -tolerance else None


def clock_right(verdict: Mapping[str, Any] | None, max_offset_s: float) -> bool:
    """The repair's evidence holds: the clock is right again (the same rule as the repair itself)."""
    return evidence_problem(verdict, max_offset_s) is None


def decide(mode: GuardMode | None, state: GuardState, verdict: Mapping[str, Any] | None, max_offset_s: float,
           *, dry_run: bool = False) -> Act:
    """What to do for one hook now. ``mode`` None: the hook that stopped the scheduler is no longer configured.
    ``dry_run``: the hook changes nothing, so its guard only alerts."""
    if state.stopped:
        if mode is not None and clock_right(verdict, max_offset_s):
            return Act.RESTORE
        if mode is None or mode is GuardMode.ALERT or dry_run:
            return Act.RELEASE
        if not state.confirmed and host_ahead_s(verdict, max_offset_s) is not None:
            return Act.STOP  # the stop failed, or a restart cannot know it ran: stop (again)
        return Act.NONE
    if mode is None or host_ahead_s(verdict, max_offset_s) is None:
        return Act.NONE
    if mode is GuardMode.STOP and not dry_run:
        return Act.STOP
    return Act.NONE if state.alerted else Act.ALERT


def after(act: Act, state: GuardState, verdict: Mapping[str, Any] | None, max_offset_s: float, *,
          done: bool = True) -> GuardState:
    """The state once ``act`` was carried out (``done``: it succeeded; a failed restore stays stopped and is
    tried again). ``alerted`` lasts while the host stays ahead: the next episode is announced again."""
    ahead = host_ahead_s(verdict, max_offset_s) is not None
    if act is Act.STOP:  # the note is written before the stop: stopped either way; confirmed if it worked
        return GuardState(stopped=True, alerted=True, confirmed=done)
    if act in (Act.RESTORE, Act.RELEASE):
        return GuardState(stopped=not done, alerted=ahead, confirmed=state.confirmed or done)
    if act is Act.ALERT:
        return GuardState(stopped=state.stopped, alerted=True, confirmed=state.confirmed)
    return GuardState(stopped=state.stopped, alerted=state.alerted and ahead, confirmed=state.confirmed)

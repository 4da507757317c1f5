"""The one evidence rule every repair uses (DESIGN.md: repair only with evidence).

A repair writes the trusted now into an application's state, so it runs only when the latest verdict is usable
(OK, WARNING or CRITICAL with an offset), two independent witnesses vouch for it, at least one of them
authenticated, and every point of the majority's interval around the host clock's offset is within
``max_offset_s``. Anything else is a reason, for a person, and no repair.

Witnesses (the verdict's ``witnesses``, :attr:`timeguard.model.Verdict.witnesses`): each class of sources whose
majority agrees with the verdict is one — plain NTP (``ntp``: one on-path attacker can forge all of it) and HTTPS
(``http``) — except NTS, where each operator is one (``nts:netnod.se``; two names of one operator are one).
So NTP + HTTPS (the rule before NTS), NTS + HTTPS, NTS of two operators and NTS + NTP repair; a clock only plain
NTP vouches for, or one NTS operator alone, does not. A verdict summary without ``witnesses`` (from an older
timeguard) is judged by the rule it was made under: NTP and HTTPS agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from timeguard.model import TrustClass
from timeguard.repair.target import RepairError, checked_now, range_problem
from timeguard.timefmt import fmt_duration

DEFAULT_MAX_OFFSET_S = 1.0
#: max_offset_s must be a finite number in this range (seconds): a NaN would compare False with everything.
MAX_OFFSET_RANGE_S = (0.0, 366 * 86400.0)
USABLE_STATUSES = frozenset({"OK", "WARNING", "CRITICAL"})


def max_offset_problem(value: Any) -> str | None:
    """None when ``value`` is a usable max_offset_s, else why not (the hook's option check)."""
    return range_problem(value, *MAX_OFFSET_RANGE_S)


def evidence_problem(verdict: Mapping[str, Any] | None, max_offset_s: float = DEFAULT_MAX_OFFSET_S) -> str | None:
    """None when the verdict justifies a repair with the host clock's now; else the reason, for a person."""
    if verdict is None:
        return "no repair: no verdict from the time sources yet"
    status = str(verdict.get("status"))
    offset = verdict.get("offset_s")
    if verdict.get("ntp_http_agree") is False:  # first: SOURCES_INCONSISTENT says less to a person
        what = "NTP and HTTPS" if verdict.get("witnesses") is None else "the classes of sources"
        return f"no repair: {what} do not agree ({verdict.get('summary') or status})"
    if status not in USABLE_STATUSES or offset is None:
        return f"no repair: the time sources give no usable verdict ({status})"
    try:
        offset = float(offset)
    except (TypeError, ValueError):
        offset = math.nan
    if not math.isfinite(offset):  # a NaN offset would pass every "too far off?" comparison below
        return f"no repair: the verdict's offset ({verdict.get('offset_s')!r}) is not a finite number"
    if max_offset_problem(max_offset_s) is not None:
        return f"no repair: max_offset_s ({max_offset_s!r}) is not a usable bound"
    problem = witness_problem(verdict)
    if problem is not None:
        return problem
    if not abs(offset) <= max_offset_s:
        # offset = sources − host: positive means the host is behind
        if offset > 0:
            return (f"no repair: the host clock is {fmt_duration(offset)} behind the sources — it was rolled "
                    "back into the past; fix the clock first")
        return f"no repair: the host clock is {fmt_duration(offset)} ahead of the sources; fix the clock first"
    # The estimate is one point; the true offset may be anywhere in the majority's interval (the hull of its
    # regions when the majority is split). Every point of it must be within max_offset_s, as every point must be
    # within the thresholds for an OK.
    bounds = []
    for key in ("offset_lo_s", "offset_hi_s"):
        try:
            bounds.append(float(verdict.get(key)))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            bounds.append(math.nan)
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= offset <= hi):
        return (f"no repair: the verdict has no usable error bound (true offset in "
                f"[{verdict.get('offset_lo_s')!r}, {verdict.get('offset_hi_s')!r}])")
    worst = max(abs(lo), abs(hi))
    if not worst <= max_offset_s:
        return (f"no repair: the sources place the true offset in [{lo:+.6f} s, {hi:+.6f} s], up to "
                f"{fmt_duration(worst)} off, more than max_offset_s ({max_offset_s:g} s): they do not pin the "
                "clock down closely enough to repair with it")
    return None


def witness_problem(verdict: Mapping[str, Any]) -> str | None:
    """None when two independent witnesses vouch for the verdict, at least one authenticated (module docstring);
    else the reason, for a person."""
    witnesses = verdict.get("witnesses")
    agree = verdict.get("ntp_http_agree")
    if witnesses is None:  # the rule before trust classes
        if agree is True:
            return None
        if agree is None:
            return "no repair: NTP and HTTPS did not both answer, so neither confirms the other"
        return "no repair: NTP and HTTPS do not agree"
    if agree is False:
        return "no repair: the classes of sources do not agree"
    if not isinstance(witnesses, list | tuple) or not all(isinstance(w, str) for w in witnesses):
        return f"no repair: the verdict's witnesses ({witnesses!r}) are not a list of names"
    distinct = sorted(set(witnesses))
    authenticated = [w for w in distinct if _authenticated(w)]
    if len(distinct) >= 2 and authenticated:
        return None
    if not distinct:
        return "no repair: no class of sources with a majority of its own vouches for this time"
    if not authenticated:
        return (f"no repair: only plain NTP vouches for this time: anyone on the path can forge it, and no "
                f"authenticated source (NTS, HTTPS) confirms it ({verdict.get('summary') or 'no summary'})")
    return (f"no repair: only {_witness_name(distinct[0])} vouches for this time: a second independent source "
            "must agree (NTS of another operator, HTTPS, or plain NTP)")


def _authenticated(witness: str) -> bool:
    kind = witness.partition(":")[0]
    return kind in _CLASSES and TrustClass(kind).authenticated


def _witness_name(witness: str) -> str:
    kind, _, operator = witness.partition(":")
    label = TrustClass(kind).label if kind in _CLASSES else kind
    return f"{label} of {operator}" if operator else label


_CLASSES = frozenset(c.value for c in TrustClass)


def usable_now(now_s: float | None) -> float | None:
    """The trusted now, or None when there is none or it is no time at all (NaN, ±inf, beyond the calendar)."""
    if now_s is None:
        return None
    try:
        return checked_now(now_s)
    except RepairError:
        return None

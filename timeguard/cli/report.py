"""How a check reads: a table like ``chronyc sources``, JSON for programs, one Nagios line for monitors."""

from __future__ import annotations

import json
from typing import Any

from timeguard.measure.check import CheckResult
from timeguard.measure.consensus import fmt_offset
from timeguard.model import NAGIOS_STATES, Sample, SourceState, Status, verdict_record, verdict_summary
from timeguard.timefmt import iso as _iso

_STATE_MARK = {
    SourceState.TRUECHIMER: "*",
    SourceState.FALSETICKER: "x",
    SourceState.UNUSABLE: "?",
    SourceState.UNREACHABLE: "-",
}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3f} ms"


def _bound(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"±{seconds * 1000:.3f} ms" if seconds < 1 else f"±{seconds:.3f} s"


def _auth(sample: Sample) -> str:
    """The AUTH column, as ``chronyc authdata``'s Mode: ``NTS``, ``TLS`` (HTTPS Date), ``-`` (none: plain NTP)."""
    return "-" if sample.auth is None else sample.auth.mode.upper()


def human(result: CheckResult) -> str:
    v = result.verdict
    rows = [("", "KIND", "AUTH", "SOURCE", "OFFSET", "BOUND", "DELAY", "ST", "STATE", "WHY")]
    for sv in v.sources:
        s = sv.sample
        rows.append((
            _STATE_MARK[sv.state],
            s.kind.value,
            _auth(s),
            s.name if s.address is None or s.address in s.name else f"{s.name} ({s.address})",
            "-" if s.offset_s is None else fmt_offset(s.offset_s),
            _bound(s.error_s),
            _ms(s.delay_s),
            "-" if s.stratum is None else str(s.stratum),
            sv.state.value,
            sv.reason,
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    lines = [line.rstrip() for line in lines]
    lines.append("")
    lines.append(f"Verdict: {v.status.value}: {v.summary}")
    if v.offset_s is not None:
        trusted = v.trusted_now(result.host_time_s)
        assert trusted is not None
        guess = f", a guess: the majority is split into {len(v.regions)} regions" if len(v.regions) > 1 else ""
        lines.append(
            f"Trusted time: {_iso(trusted)} (host says {_iso(result.host_time_s)}{guess}); "
            f"thresholds on |offset| in s: warning {v.warning.text}, critical {v.critical.text}"
        )
    if v.usable == 0 and v.sources and all(sv.state is SourceState.UNREACHABLE for sv in v.sources):
        lines.append(
            "No source answered: is this host offline, or are outbound NTP (UDP 123) and HTTPS blocked? "
            "Configure reachable sources (e.g. your own NTP servers) in sources.ntp / sources.http."
        )
    if result.local is not None:
        lines.extend(f"Local {line}" for line in result.local.describe())
    lines.append(f"Checked {len(v.sources)} sources in {result.duration_s:.3f} s.")
    return "\n".join(lines) + "\n"


def as_dict(result: CheckResult) -> dict[str, Any]:
    v = result.verdict
    local = result.local
    return {
        **verdict_record(v),
        **verdict_summary(v),  # who vouches for it: agreeing_classes, witnesses
        "authenticated_decide": v.authenticated_decide,
        "exit_code": result.exit_code,
        "regions": [list(region) for region in v.regions],
        "error_s": v.error_s,
        "thresholds": {"warning_s": v.warning_s, "critical_s": v.critical_s, "warning": v.warning.text,
                       "critical": v.critical.text},
        "host_time_s": result.host_time_s,
        "trusted_time_s": v.trusted_now(result.host_time_s),
        "duration_s": result.duration_s,
        "classes": {name.value: c.to_dict() for name, c in v.classes.items()},
        "sources": [sv.to_dict() for sv in v.sources],
        "local": None
        if local is None
        else {
            "kernel": None
            if local.kernel is None
            else {
                "state": local.kernel.state,
                "flags": list(local.kernel.flags),
                "synchronised": local.kernel.synchronised,
                "maxerror_s": local.kernel.maxerror_s,
                "esterror_s": local.kernel.esterror_s,
                "offset_s": local.kernel.offset_s,
                "freq_ppm": local.kernel.freq_ppm,
            },
            "kernel_error": local.kernel_error,
            "daemons": [{"name": n, "pid": p} for n, p in local.daemons],
            "daemons_error": local.daemons_error,
        },
    }


def as_json(result: CheckResult) -> str:
    return json.dumps(as_dict(result), indent=2) + "\n"


#: What a status that is not an offset threshold says first on the Nagios line (the state word is the exit's).
_NAGIOS_LEAD = {Status.SOURCES_INCONSISTENT: "sources inconsistent: ", Status.UNKNOWN: "offset unknown: "}


def nagios(result: CheckResult) -> str:
    """``TIMEGUARD STATE - summary | offset=±…s;warn;crit error_bound=…`` as check_ntp_time prints it: STATE is
    the exit code's name (once), the offset keeps its sign, warn/crit are the ranges given, ``U`` an unknown
    value."""
    v = result.verdict
    offset = "U" if v.offset_s is None else f"{v.offset_s:.6f}s"
    bound = "U" if v.error_s is None else f"{v.error_s:.6f}s"
    perf = (
        f"offset={offset};{v.warning.text};{v.critical.text} error_bound={bound};;;0 "
        f"sources_agreeing={v.agreeing};;;0;{len(v.sources)} sources_usable={v.usable};;;0;{len(v.sources)}"
    )
    text = _NAGIOS_LEAD.get(v.status, "") + v.summary
    return f"TIMEGUARD {NAGIOS_STATES[result.exit_code]} - {text} | {perf}\n"

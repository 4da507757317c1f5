"""The local clock's own view: the kernel's NTP state (read-only adjtimex) and which time daemons run.

``adjtimex`` with ``modes = 0`` only reads, and needs no privilege (research/time_anchors.md §4.2). It fails
with EPERM under systemd's ``ProtectClock=yes``, which blocks even reads — then the state says so instead
of guessing. Note that ``STA_UNSYNC`` alone is no proof: chrony without ``rtcsync`` leaves it set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

#: Time-synchronisation daemons worth naming beside a verdict (process names as the kernel shows them).
TIME_DAEMONS = frozenset(
    {"chronyd", "ntpd", "openntpd", "systemd-timesyncd", "ptp4l", "phc2sys", "timemaster", "htpdate",
     "ntpdate", "sntp", "vmtoolsd"}
)

_STATES = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT", 5: "TIME_ERROR"}
_FLAGS = {
    0x0001: "PLL", 0x0002: "PPSFREQ", 0x0004: "PPSTIME", 0x0008: "FLL", 0x0010: "INS", 0x0020: "DEL",
    0x0040: "UNSYNC", 0x0080: "FREQHOLD", 0x0100: "PPSSIGNAL", 0x0200: "PPSJITTER", 0x0400: "PPSWANDER",
    0x0800: "PPSERROR", 0x1000: "CLOCKERR", 0x2000: "NANO", 0x4000: "MODE", 0x8000: "CLK",
}
STA_INS, STA_DEL, STA_UNSYNC, STA_NANO = 0x0010, 0x0020, 0x0040, 0x2000


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux); the trailing reserved ints are padding in the kernel ABI.
    _fields_ = (
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


@dataclass(frozen=True, slots=True)
class KernelClock:
    state: str  # TIME_OK ... TIME_ERROR
    flags: tuple[str, ...]
    offset_s: float  # the correction the kernel PLL still has to apply
    freq_ppm: float
    maxerror_s: float
    esterror_s: float
    tai_s: int

    @property
    def synchronised(self) -> bool:
        """What the kernel claims (node_exporter's ``node_timex_sync_status``); chrony may leave it 0."""
        return self.state != "TIME_ERROR"

    @property
    def leap_pending(self) -> str | None:
        if "INS" in self.flags:
            return "insert"
        if "DEL" in self.flags:
            return "delete"
        return None


@dataclass(frozen=True, slots=True)
class LocalClockState:
    kernel: KernelClock | None
    kernel_error: str | None  # why the kernel state could not be read
    daemons: tuple[tuple[str, int], ...]  # (process name, pid)
    daemons_error: str | None = None

    def describe(self) -> list[str]:
        lines = []
        if self.kernel is not None:
            k = self.kernel
            sync = "synchronised" if k.synchronised else "unsynchronised"
            leap = f", leap second pending ({k.leap_pending})" if k.leap_pending else ""
            lines.append(
                f"kernel: {k.state} ({sync}), flags {','.join(k.flags) or '-'}, maxerror {k.maxerror_s:.6f} s, "
                f"esterror {k.esterror_s:.6f} s, PLL offset {k.offset_s:+.6f} s, freq {k.freq_ppm:+.3f} ppm{leap}"
            )
        else:
            lines.append(f"kernel: state not readable ({self.kernel_error})")
        if self.daemons_error:
            lines.append(f"time daemons: not known ({self.daemons_error})")
        elif self.daemons:
            lines.append("time daemons: " + ", ".join(f"{name} (pid {pid})" for name, pid in self.daemons))
        else:
            lines.append("time daemons: none running (nothing disciplines this clock)")
        return lines


def decode_timex(rc: int, tx: _Timex) -> KernelClock:
    flags = tuple(name for bit, name in _FLAGS.items() if tx.status & bit)
    offset_unit = 1e-9 if tx.status & STA_NANO else 1e-6
    return KernelClock(
        state=_STATES.get(rc, f"state {rc}"),
        flags=flags,
        offset_s=tx.offset * offset_unit,
        freq_ppm=tx.freq / 65536.0,
        maxerror_s=tx.maxerror / 1e6,
        esterror_s=tx.esterror / 1e6,
        tai_s=tx.tai,
    )


def read_kernel_clock() -> KernelClock:
    """adjtimex(modes=0). Raises OSError (EPERM under ProtectClock=yes, ENOSYS off Linux)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    tx = _Timex()  # zeroed: modes == 0, so the call can only read
    assert tx.modes == 0
    rc = libc.adjtimex(ctypes.byref(tx))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return decode_timex(rc, tx)


class ProcessesHidden(Exception):
    """Other users' processes are invisible: an empty list would be a lie."""


def running_time_daemons(proc_root: str = "/proc") -> tuple[tuple[str, int], ...]:
    import psutil

    # Under systemd's ProtectProc=invisible (or mount option hidepid), PID 1 is invisible to us: then
    # "no chronyd found" would mean nothing.
    if os.getpid() != 1 and not os.path.exists(os.path.join(proc_root, "1")):
        raise ProcessesHidden(
            "other users' processes are hidden (ProtectProc=invisible or hidepid): cannot tell which run"
        )

    found = []
    for proc in psutil.process_iter(["name"]):
        name = proc.info.get("name")
        if name in TIME_DAEMONS:
            found.append((name, proc.pid))
    return tuple(sorted(found))


def read_local_clock() -> LocalClockState:
    kernel = kernel_error = daemons_error = None
    daemons: tuple[tuple[str, int], ...] = ()
    try:
        kernel = read_kernel_clock()
    except (OSError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        kernel_error = f"adjtimex: {reason}; under systemd, ProtectClock=yes blocks even this read"
    try:
        daemons = running_time_daemons()
    except ProcessesHidden as exc:
        daemons_error = str(exc)
    except Exception as exc:  # noqa: BLE001 — /proc may be restricted; the verdict must not depend on it
        daemons_error = f"{type(exc).__name__}: {exc}"
    return LocalClockState(kernel, kernel_error, daemons, daemons_error)

"""Clock-step detection: the boot epoch (REALTIME − BOOTTIME) and a timerfd that fires when the clock is set.

Why these signals (research/time_anchors.md §4.2):

* ``boot_epoch = REALTIME − BOOTTIME`` changes by exactly the size of a step, does not change across suspend
  (BOOTTIME counts suspend, REALTIME is restored from the RTC), and on Linux not even under slewing, because the
  kernel's frequency correction scales the whole timekeeper, MONOTONIC and BOOTTIME included (only MONOTONIC_RAW is
  immune). A slew allowance is still applied when polling, as a conservative bound for whatever kernel or reading
  mix we did not foresee: a step must exceed ``threshold + max_slew × elapsed``.
* A timerfd armed with ``TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET`` is woken by settimeofday, clock_settime and
  ADJ_SETOFFSET (and by resume from suspend), never by a slew. It says *that* the clock was set, not by how much or
  in which direction; the boot epoch says that. Together: sub-millisecond detection without busy polling.
  libfaketime steps do not fire it (TESTING.md), so the polling path must stand on its own.

Verified in a real kernel (tests/integration/test_clockwatch_qemu.py; UML 6.1 first, now Debian's 6.1 under
QEMU/TCG): clock_settime ±1–2 h is seen via the timerfd 0.4–1.3 ms later (UML; 2–3 ms in the slower TCG guest) with
the exact size; ADJ_TICK +10 % for 1.5 s moved REALTIME − MONOTONIC_RAW by +137 ms but the boot epoch by < 1 µs;
the kernel's leap-second insertion (STA_INS) does fire the timerfd (~0.1 s after midnight).

The pure logic (:func:`classify`, :func:`confirm`) is separate from the I/O (:func:`read_clocks`,
:class:`ClockSetWatcher`), and :class:`StepDetector` ties them together for the daemon. timeguard never sets the
clock: nothing here writes to a kernel clock.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import math
import os
import select
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from timeguard.timefmt import iso

__all__ = [
    "DEFAULT_MAX_SLEW_PPM",
    "DEFAULT_THRESHOLD_S",
    "GLITCH_2_32_S",
    "MIN_THRESHOLD_S",
    "ClockReading",
    "ClockSetWatcher",
    "ClockStep",
    "StepDetector",
    "StepKind",
    "classify",
    "confirm",
    "read_clocks",
    "slew_allowance_s",
]

DetectedBy = Literal["poll", "timerfd"]
LeapPending = Literal["insert", "delete"]

#: Default smallest |Δepoch| reported as a step. systemd-timesyncd slews below 0.4 s and steps above it.
DEFAULT_THRESHOLD_S = 0.5
#: Below this a threshold drowns in legitimate noise (scheduling jitter between reads under load, VM steal).
MIN_THRESHOLD_S = 0.05
#: The fastest slew Linux can perform: tick adjustment ±10 % = 100 000 ppm (chrony's driver limit on Linux). It is
#: chrony's default ``maxslewrate`` (83 333.333 ppm = 1/12) plus 20 % margin, so a maximal chrony slew never counts.
DEFAULT_MAX_SLEW_PPM = 100_000.0
#: node_exporter #3764: transient readings off by exactly 2^32 ns (KVM/OpenStack). Documented for the logs/tests;
#: :func:`confirm` drops any transient, whatever its size.
GLITCH_2_32_S = 2**32 / 1e9
#: A re-read microseconds after a candidate must agree with its epoch this closely to confirm the step.
CONFIRM_TOLERANCE_S = 0.005
#: Growth of BOOTTIME − MONOTONIC below this is reading noise (the two clocks are read ~100 ns apart), not suspend.
SUSPEND_NOISE_S = 0.001
#: A leap second is a step of exactly ∓1 s; allow for the time between the reads around it.
LEAP_TOLERANCE_S = 0.05
#: A leap is recognised only if detected within this long (plus the reading interval) after the leap instant.
LEAP_WINDOW_S = 10.0
#: The detector consults its leap-pending source (adjtimex: 40 µs) only this close to a UTC midnight.
LEAP_WATCH_S = 600.0
_DAY_S = 86_400

# CLOCK_BOOTTIME is Linux-only; elsewhere MONOTONIC is the best available (suspend then looks like a step,
# which is the conservative error for a rollback detector).
_CLOCK_BOOTTIME: int = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
_CLOCK_REALTIME: int = time.CLOCK_REALTIME
_CLOCK_MONOTONIC: int = time.CLOCK_MONOTONIC
#: Reads bracketed wider than this were interrupted (preemption, VM exit); try again and keep the tightest.
_MAX_BRACKET_NS = 20_000
_READ_ATTEMPTS = 3


# --------------------------------------------------------------------------------------------------------
# Readings
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClockReading:
    """The three kernel clocks read (almost) at one instant, in seconds."""

    realtime_s: float
    boottime_s: float
    monotonic_s: float

    @property
    def boot_epoch_s(self) -> float:
        """The wall time the kernel believes the machine booted at; moves by exactly the size of a step."""
        return self.realtime_s - self.boottime_s

    @property
    def suspended_total_s(self) -> float:
        """Time spent suspended since boot (BOOTTIME counts it, MONOTONIC does not)."""
        return self.boottime_s - self.monotonic_s


#: Where the kernel names the current boot (a random UUID per boot).
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: The boot id when the kernel's cannot be read: one value for the daemon, the outbox and the CLI, so what one
#: writes under it the others still find as "this boot".
UNKNOWN_BOOT_ID = "unknown"


def read_boot_id() -> str:
    """The kernel's boot id: names the boot whose CLOCK_MONOTONIC readings (events, heartbeat, outbox) are on."""
    try:
        return BOOT_ID_PATH.read_bytes().decode().strip() or UNKNOWN_BOOT_ID
    except (OSError, UnicodeDecodeError):
        return UNKNOWN_BOOT_ID


def read_clocks() -> ClockReading:
    """Read the three clocks as of one instant: REALTIME in the middle, BOOTTIME and MONOTONIC bracketing it.

    Order MONOTONIC, BOOTTIME, REALTIME, BOOTTIME, MONOTONIC; each bracketing pair's midpoint falls on the REALTIME
    read, so the boot epoch is consistent to ~1 µs and BOOTTIME − MONOTONIC (the suspend total) shows no reading
    skew. A bracket wider than 20 µs was interrupted (preemption, VM exit); up to three attempts are made and the
    tightest kept, so one preemption cannot fake an epoch change of its own length.
    """
    gettime = time.clock_gettime_ns
    best: tuple[int, int, int, int] | None = None  # (bracket width, realtime, boottime, monotonic), ns
    for _ in range(_READ_ATTEMPTS):
        mono1 = gettime(_CLOCK_MONOTONIC)
        boot1 = gettime(_CLOCK_BOOTTIME)
        real = gettime(_CLOCK_REALTIME)
        boot2 = gettime(_CLOCK_BOOTTIME)
        mono2 = gettime(_CLOCK_MONOTONIC)
        # The MONOTONIC pair brackets everything, so its width bounds the skew of both midpoints: a preemption
        # between mono1 and boot1 (or boot2 and mono2) widens it even when the BOOTTIME pair looks tight.
        width = mono2 - mono1
        if best is None or width < best[0]:
            boot = (boot1 + boot2) // 2
            # BOOTTIME = MONOTONIC + time suspended, never less: what remains below that is reading skew.
            best = (width, real, boot, min((mono1 + mono2) // 2, boot))
        if width <= _MAX_BRACKET_NS:
            break
    assert best is not None
    return ClockReading(best[1] / 1e9, best[2] / 1e9, best[3] / 1e9)


# --------------------------------------------------------------------------------------------------------
# Classification (pure)
# --------------------------------------------------------------------------------------------------------


class StepKind(enum.StrEnum):
    ROLLBACK = "rollback"
    FORWARD_JUMP = "forward_jump"
    SUSPEND = "suspend"  # informational: the machine slept; the wall clock did not jump
    LEAP = "leap"  # the kernel inserted (−1 s) or deleted (+1 s) a leap second that was announced


@dataclass(frozen=True, slots=True)
class ClockStep:
    """A discontinuity of CLOCK_REALTIME against CLOCK_BOOTTIME.

    ``realtime_before_s`` is what the wall clock would read at detection had it not been stepped, and
    ``realtime_after_s`` what it reads: both at the same instant, so ``after − before == step_s`` exactly.
    ``boottime_s`` and ``monotonic_s`` are the step-immune clocks at detection, for ordering and latency.
    """

    kind: StepKind
    step_s: float  # signed change of the boot epoch: the step size (0 for a suspend)
    realtime_before_s: float
    realtime_after_s: float
    boottime_s: float
    monotonic_s: float
    detected_by: DetectedBy
    suspended_s: float  # growth of BOOTTIME − MONOTONIC between the two readings

    def describe(self) -> str:
        """One line for a log or an alert."""
        if self.kind is StepKind.SUSPEND:
            return f"suspend of {self.suspended_s:.3f} s (no clock step), detected by {self.detected_by}"
        return (
            f"{self.kind.value} of {self.step_s:+.6f} s: wall clock {_iso(self.realtime_before_s)} → "
            f"{_iso(self.realtime_after_s)}, detected by {self.detected_by}"
        )


def _iso(t_s: float) -> str:
    return iso(t_s, "microseconds")  # formats any value a broken clock can show without raising


def slew_allowance_s(elapsed_s: float, max_slew_ppm: float = DEFAULT_MAX_SLEW_PPM) -> float:
    """How far a slew alone could move the boot epoch in ``elapsed_s`` of BOOTTIME."""
    return max(elapsed_s, 0.0) * max_slew_ppm * 1e-6


def _validate(threshold_s: float, max_slew_ppm: float, leap_pending: str | None) -> None:
    if not (math.isfinite(threshold_s) and threshold_s >= MIN_THRESHOLD_S):
        raise ValueError(
            f"clock step threshold_s={threshold_s!r} is too small: it must be at least {MIN_THRESHOLD_S} s, "
            "or scheduling jitter and slews would be reported as clock steps"
        )
    if not (math.isfinite(max_slew_ppm) and max_slew_ppm >= 0):
        raise ValueError(f"max_slew_ppm={max_slew_ppm!r} must be a finite number ≥ 0 (chrony's default is 83333.333)")
    if leap_pending not in (None, "insert", "delete"):
        raise ValueError(f"leap_pending={leap_pending!r} must be None, 'insert' or 'delete'")


def _is_leap(prev: ClockReading, cur: ClockReading, d_epoch_s: float, leap_pending: str | None) -> bool:
    """True if ``d_epoch_s`` is the announced leap second, taken by the kernel at a UTC midnight between the reads.

    An insertion replays 23:59:59 (the clock reads M−1 again right after midnight M); a deletion skips 23:59:59
    (the clock jumps from M−1 to M). So on the new timescale the leap happened at M−1 (insert) or M (delete), and
    the previous reading, on the old timescale, must precede the leap instant there.
    """
    if leap_pending == "insert":
        expected_s = -1.0
    elif leap_pending == "delete":
        expected_s = 1.0
    else:
        return False
    if abs(d_epoch_s - expected_s) > LEAP_TOLERANCE_S:
        return False
    midnight_s = round(cur.realtime_s / _DAY_S) * _DAY_S  # the UTC midnight nearest the reading
    leap_new_s = midnight_s - 1.0 if leap_pending == "insert" else float(midnight_s)
    leap_old_s = leap_new_s - d_epoch_s
    elapsed_s = cur.boottime_s - prev.boottime_s
    return (
        prev.realtime_s <= leap_old_s + LEAP_TOLERANCE_S
        and leap_new_s - LEAP_TOLERANCE_S <= cur.realtime_s <= leap_new_s + LEAP_WINDOW_S + elapsed_s
    )


def classify(
    prev: ClockReading,
    cur: ClockReading,
    *,
    threshold_s: float = DEFAULT_THRESHOLD_S,
    clock_was_set: bool = False,
    leap_pending: str | None = None,
    max_slew_ppm: float = DEFAULT_MAX_SLEW_PPM,
) -> ClockStep | None:
    """What happened to the wall clock between two readings, or None if nothing worth reporting.

    ``clock_was_set`` says the kernel signalled a set (timerfd CANCEL_ON_SET): slews never fire it, so the
    threshold applies as is; without it (polling) a step must also exceed what a slew at ``max_slew_ppm`` could
    have done since ``prev``. ``leap_pending`` ("insert"/"delete", from kernel STA_INS/STA_DEL or the sources'
    leap indicator) turns the matching ∓1 s step at a UTC midnight into a ``leap`` instead of a rollback.

    Raises ValueError for an invalid threshold/slew/leap argument, or if ``cur`` was read before ``prev``.
    """
    _validate(threshold_s, max_slew_ppm, leap_pending)
    elapsed_s = cur.boottime_s - prev.boottime_s
    if not elapsed_s >= 0:  # also catches NaN
        raise ValueError(
            f"readings out of order: boottime went from {prev.boottime_s!r} to {cur.boottime_s!r} "
            "(CLOCK_BOOTTIME never goes back within one boot)"
        )
    d_epoch_s = cur.boot_epoch_s - prev.boot_epoch_s
    suspended_s = cur.suspended_total_s - prev.suspended_total_s
    detected_by: DetectedBy = "timerfd" if clock_was_set else "poll"
    allowance_s = 0.0 if clock_was_set else slew_allowance_s(elapsed_s, max_slew_ppm)

    if abs(d_epoch_s) > threshold_s + allowance_s:
        if _is_leap(prev, cur, d_epoch_s, leap_pending):
            kind = StepKind.LEAP
        else:
            kind = StepKind.ROLLBACK if d_epoch_s < 0 else StepKind.FORWARD_JUMP
        step_s = d_epoch_s
    elif clock_was_set and suspended_s > SUSPEND_NOISE_S:
        # REALTIME and BOOTTIME both advanced by the sleep: the resume fired the timerfd, the wall clock is fine.
        kind, step_s = StepKind.SUSPEND, 0.0
    else:
        return None
    return ClockStep(
        kind=kind,
        step_s=step_s,
        realtime_before_s=cur.realtime_s - step_s,
        realtime_after_s=cur.realtime_s,
        boottime_s=cur.boottime_s,
        monotonic_s=cur.monotonic_s,
        detected_by=detected_by,
        suspended_s=suspended_s,
    )


def confirm(
    candidate: ClockReading,
    reread: Callable[[], ClockReading],
    *,
    tolerance_s: float = CONFIRM_TOLERANCE_S,
) -> tuple[bool, ClockReading]:
    """Re-read the clocks right after a candidate step: (does the fresh epoch agree with the candidate's, fresh).

    A real step persists; a transient reading (node_exporter #3764: exactly 2^32 ns off) reverts on the next read.
    The re-read comes microseconds later, so a slew cannot separate the two by anywhere near ``tolerance_s``.
    """
    fresh = reread()
    return abs(fresh.boot_epoch_s - candidate.boot_epoch_s) <= tolerance_s, fresh


# --------------------------------------------------------------------------------------------------------
# timerfd CANCEL_ON_SET
# --------------------------------------------------------------------------------------------------------

_TFD_TIMER_ABSTIME = 1
_TFD_TIMER_CANCEL_ON_SET = 2
_FAR_FUTURE_S = 100 * 365 * _DAY_S  # never expires; only a clock set (CANCEL_ON_SET) wakes it


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL:
    # dlopen(NULL) resolves libc's symbols through the interpreter itself: no ctypes.util.find_library, which
    # runs ldconfig/gcc in a subprocess (tens of ms; seconds inside an emulated guest).
    global _libc  # noqa: PLW0603 - one handle per process
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_create.restype = ctypes.c_int
        libc.timerfd_settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.POINTER(_Itimerspec),
        )
        libc.timerfd_settime.restype = ctypes.c_int
        _libc = libc
    return _libc


def _os_has_timerfd() -> bool:
    return sys.version_info >= (3, 13) and hasattr(os, "timerfd_create")


class ClockSetWatcher:
    """A non-blocking timerfd on CLOCK_REALTIME that becomes readable when the clock is set (or on resume).

    ``backend`` is "os" (``os.timerfd_create``, Python ≥ 3.13), "ctypes" (libc, any Python) or None for the
    best available. Raises OSError with an actionable message when timerfd is unavailable (not Linux, a seccomp
    filter, ``ProtectClock=``-style sandboxes): log it and poll instead (:class:`StepDetector` does).
    """

    def __init__(self, *, backend: Literal["os", "ctypes"] | None = None) -> None:
        if backend is None:
            backend = "os" if _os_has_timerfd() else "ctypes"
        if backend == "os" and not _os_has_timerfd():
            raise OSError(errno.ENOSYS, "os.timerfd_create needs Python ≥ 3.13 on Linux; use backend='ctypes'")
        self.backend: Literal["os", "ctypes"] = backend
        self._fd = -1
        try:
            self._fd = self._create()
            self._arm()
        except (OSError, AttributeError) as exc:
            self.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OSError(
                getattr(exc, "errno", None) or errno.ENOSYS,
                f"timerfd with TFD_TIMER_CANCEL_ON_SET is unavailable ({reason}); "
                "clock steps will be detected by polling CLOCK_REALTIME − CLOCK_BOOTTIME only",
            ) from exc

    def _create(self) -> int:
        if self.backend == "os" and sys.version_info >= (3, 13):
            return os.timerfd_create(time.CLOCK_REALTIME, flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)
        if not sys.platform.startswith("linux"):
            raise OSError(errno.ENOSYS, f"timerfd is Linux-only (this is {sys.platform})")
        libc = _load_libc()  # AttributeError if this libc has no timerfd_create
        fd: int = libc.timerfd_create(_CLOCK_REALTIME, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return fd

    def _arm(self) -> None:
        """(Re-)arm at a far-future absolute time; CANCEL_ON_SET makes any clock set wake us instead."""
        now_s = time.clock_gettime_ns(_CLOCK_REALTIME) // 1_000_000_000
        if self.backend == "os" and sys.version_info >= (3, 13):
            os.timerfd_settime_ns(
                self._fd,
                flags=os.TFD_TIMER_ABSTIME | os.TFD_TIMER_CANCEL_ON_SET,
                initial=(now_s + _FAR_FUTURE_S) * 1_000_000_000,
            )
            return
        # A 32-bit time_t cannot hold 100 years from now; its maximum is just as "never".
        c_long_max = 2 ** (8 * ctypes.sizeof(ctypes.c_long) - 1) - 1
        spec = _Itimerspec()
        spec.it_value.tv_sec = min(now_s + _FAR_FUTURE_S, c_long_max)
        flags = _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET
        if _load_libc().timerfd_settime(self._fd, flags, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("ClockSetWatcher is closed")
        return self._fd

    def consume(self) -> bool:
        """True if the clock was set since the last arm (then re-armed); never blocks.

        Re-arming happens here, before the caller reads the clocks, so a set that lands after that read fires the
        next call rather than being lost between read and re-arm.
        """
        try:
            os.read(self.fileno(), 8)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.ECANCELED:
                raise
        # ECANCELED is the normal signal; 8 bytes would mean the far-future expiry passed, i.e. the clock was set
        # beyond it without the cancel being seen first: either way the clock was set.
        self._arm()
        return True

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort against fd leaks; close() is the API.
        if getattr(self, "_fd", -1) >= 0:
            self.close()


# --------------------------------------------------------------------------------------------------------
# The detector the daemon drives
# --------------------------------------------------------------------------------------------------------


class StepDetector:
    """Holds the previous reading; each :meth:`wait`/:meth:`poll` returns the step (0 or 1) seen since.

    Not thread-safe: drive it from one thread. To stop a thread blocked in :meth:`wait`, use a bounded
    ``timeout_s`` (e.g. 1 s) and check a stop flag between calls; never close the watcher under a waiting thread.

    It never raises on a bad read: errors are counted (``read_errors``, ``last_error``) and the tick yields
    nothing; transients that revert on an immediate re-read are dropped and counted (``glitches_dropped``).
    ``leap_pending`` is a callable returning "insert"/"delete"/None (e.g. ``lambda:
    localclock.read_kernel_clock().leap_pending``); it is consulted only within 10 min of a UTC midnight,
    so ticks stay cheap.
    """

    def __init__(
        self,
        watcher: ClockSetWatcher | None = None,
        *,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        max_slew_ppm: float = DEFAULT_MAX_SLEW_PPM,
        leap_pending: Callable[[], str | None] | None = None,
        read: Callable[[], ClockReading] = read_clocks,
    ) -> None:
        _validate(threshold_s, max_slew_ppm, None)
        self.watcher = watcher
        self.watcher_error: str | None = None  # why there is no watcher, when open() could not create one
        self.threshold_s = threshold_s
        self.max_slew_ppm = max_slew_ppm
        self._leap_source = leap_pending
        self._read = read
        self._owns_watcher = False
        self._leap_seen: str | None = None  # the value at the previous tick: the kernel may clear it at the leap
        self._bad_in_a_row = 0
        self._set_pending = False  # the timerfd fired but the tick could not conclude
        self.glitches_dropped = 0
        self.read_errors = 0
        self.rebaselines = 0
        self.last_error: str | None = None
        self.last_reading: ClockReading | None = self._safe_read()

    @classmethod
    def open(
        cls,
        *,
        threshold_s: float = DEFAULT_THRESHOLD_S,
        max_slew_ppm: float = DEFAULT_MAX_SLEW_PPM,
        leap_pending: Callable[[], str | None] | None = None,
        read: Callable[[], ClockReading] = read_clocks,
    ) -> StepDetector:
        """A detector with its own timerfd watcher, or polling-only (``watcher_error`` says why) if unavailable."""
        _validate(threshold_s, max_slew_ppm, None)  # before creating an fd that would then leak
        try:
            watcher: ClockSetWatcher | None = ClockSetWatcher()
            error = None
        except OSError as exc:
            watcher, error = None, str(exc)
        detector = cls(
            watcher, threshold_s=threshold_s, max_slew_ppm=max_slew_ppm, leap_pending=leap_pending, read=read
        )
        detector._owns_watcher = watcher is not None
        detector.watcher_error = error
        return detector

    def close(self) -> None:
        """Close the watcher if :meth:`open` created it."""
        if self._owns_watcher and self.watcher is not None:
            self.watcher.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait(self, timeout_s: float) -> list[ClockStep]:
        """Block until the clock is set or ``timeout_s`` passes, then :meth:`poll`.

        Both waits run on CLOCK_MONOTONIC, so the step being watched for cannot stretch or cut them short.
        Raises ValueError for a negative or non-finite ``timeout_s`` (a caller bug, not a bad read).
        """
        if not (math.isfinite(timeout_s) and timeout_s >= 0):
            raise ValueError(f"timeout_s={timeout_s!r} must be a finite number of seconds ≥ 0")
        if self.watcher is not None and not self.watcher.closed:
            try:
                select.select([self.watcher], [], [], timeout_s)
            except (OSError, ValueError) as exc:
                self._error(f"select on the clock-set timerfd failed: {exc}")
                time.sleep(timeout_s)
        else:
            time.sleep(timeout_s)
        return self.poll()

    def poll(self) -> list[ClockStep]:
        """Check now, without waiting."""
        # A timerfd signal is not lost when this tick cannot conclude (bad read, transient): it carries over.
        was_set = self._set_pending
        if self.watcher is not None and not self.watcher.closed:
            try:
                was_set = self.watcher.consume() or was_set
            except (OSError, ValueError) as exc:
                self._error(f"reading the clock-set timerfd failed: {exc}")
        self._set_pending = was_set
        cur = self._safe_read()
        if cur is None:
            return []
        prev = self.last_reading
        if prev is None:
            self._accept(cur)
            return []
        if not cur.boottime_s >= prev.boottime_s:
            return self._bad_order(prev, cur)
        self._bad_in_a_row = 0
        leap = self._leap_now(cur)
        # Two rounds: when a candidate is a transient, the re-read itself may show a real step (or be clean); it
        # is judged the same way at once, rather than one tick (up to timeout_s) later.
        for _ in range(2):
            step = classify(
                prev,
                cur,
                threshold_s=self.threshold_s,
                clock_was_set=was_set,
                leap_pending=leap,
                max_slew_ppm=self.max_slew_ppm,
            )
            if step is None or step.kind is StepKind.SUSPEND:
                self._accept(cur)
                return [] if step is None else [step]
            try:
                agreed, fresh = confirm(cur, self._checked_read)
            except Exception as exc:  # noqa: BLE001 - cannot confirm now: keep the baseline, the next tick decides
                self._error(f"re-reading the clocks to confirm a step failed: {exc!r}")
                return []
            if agreed:
                self._accept(fresh)
                return [step]
            self.glitches_dropped += 1
            self.last_error = (
                f"dropped a transient clock reading: boot epoch {step.step_s:+.6f} s off, gone on an immediate re-read"
            )
            if not fresh.boottime_s >= prev.boottime_s:
                break
            cur = fresh
        # Still unsettled: keep ``prev`` as the baseline, so a real step hiding behind transients is seen next tick.
        return []

    def _accept(self, reading: ClockReading) -> None:
        self.last_reading = reading
        self._set_pending = False

    def _leap_now(self, cur: ClockReading) -> str | None:
        if self._leap_source is None:
            return None
        to_midnight_s = abs(cur.realtime_s - round(cur.realtime_s / _DAY_S) * _DAY_S)
        if to_midnight_s > LEAP_WATCH_S + LEAP_WINDOW_S:
            self._leap_seen = None
            return None
        try:
            now_value = self._leap_source()
        except Exception as exc:  # noqa: BLE001 - a failing leap source must not stop step detection
            self._error(f"leap-pending source failed: {exc!r}")
            now_value = None
        if now_value not in ("insert", "delete"):
            now_value = None
        # The kernel may report the leap as done by the time we read after it: use what was pending before.
        value = now_value or self._leap_seen
        self._leap_seen = now_value
        return value

    def _checked_read(self) -> ClockReading:
        reading = self._read()
        if not all(math.isfinite(v) for v in (reading.realtime_s, reading.boottime_s, reading.monotonic_s)):
            raise ValueError(f"non-finite clock value in {reading!r}")
        return reading

    def _safe_read(self) -> ClockReading | None:
        try:
            reading = self._checked_read()
        except Exception as exc:  # noqa: BLE001 - one bad read must never stop the detection loop
            self._error(f"reading the clocks failed: {exc!r}")
            return None
        return reading

    def _bad_order(self, prev: ClockReading, cur: ClockReading) -> list[ClockStep]:
        # BOOTTIME never goes back, so one of the two readings is bad. Skip; if it persists, the baseline was the
        # bad one: start again from the current reading rather than stay blind forever.
        self._bad_in_a_row += 1
        self._error(f"CLOCK_BOOTTIME went back from {prev.boottime_s:.6f} to {cur.boottime_s:.6f}; reading ignored")
        if self._bad_in_a_row >= 3:
            self.last_reading = cur
            self.rebaselines += 1
            self._bad_in_a_row = 0
        return []

    def _error(self, message: str) -> None:
        self.read_errors += 1
        self.last_error = message

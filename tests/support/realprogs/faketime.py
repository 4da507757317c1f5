"""A wall clock that a test moves: libfaketime's rc file, and the ftshim that keeps ``time.sleep`` working under it
(harness.md R1-R3)."""

from __future__ import annotations

import copy
import glob
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.realprogs.scratch import build_c, others_can_reach, scratch_dir

LIBFAKETIME_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/*/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)

FTSHIM_SOURCE = r"""/* ftshim.c - work around libfaketime 0.9.10 bug #426:
 * clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)
 * returns EINVAL when FAKETIME_DONT_FAKE_MONOTONIC=1, which breaks time.sleep() on Python >= 3.11.
 * Preload it in FRONT of libfaketime: monotonic/boottime sleeps go straight to the kernel. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
typedef int (*cns_t)(clockid_t, int, const struct timespec *, struct timespec *);
int clock_nanosleep(clockid_t clk, int flags, const struct timespec *req, struct timespec *rem) {
    if (clk == CLOCK_MONOTONIC || clk == CLOCK_BOOTTIME) {
        long r = syscall(SYS_clock_nanosleep, clk, flags, req, rem);
        return r == 0 ? 0 : errno;   /* clock_nanosleep returns the error number, not -1 */
    }
    static cns_t next;
    if (!next) next = (cns_t)dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clk, flags, req, rem);
}
"""


def find_libfaketime() -> Path | None:
    """Debian's libfaketime.so.1 (package ``libfaketime``), or None."""
    for pattern in LIBFAKETIME_CANDIDATES:
        for hit in sorted(glob.glob(pattern)):
            if os.access(hit, os.R_OK):
                return Path(hit)
    return None



_ftshim_cache: Path | None = None


def build_ftshim(dest_dir: Path | str) -> Path:
    """Compile ftshim.so into ``dest_dir`` (reused when the source there is unchanged); returns its path."""
    return build_c(FTSHIM_SOURCE, Path(dest_dir), "ftshim.so", ["-shared", "-fPIC", "-O2", "-ldl"])


def default_ftshim() -> Path:
    """The session's ftshim.so, built once into the scratch base."""
    global _ftshim_cache
    if _ftshim_cache is None or not _ftshim_cache.exists():
        _ftshim_cache = build_ftshim(scratch_dir("ftshim"))
    return _ftshim_cache


def _format_offset(offset_s: float) -> str:
    if not math.isfinite(offset_s):
        raise ValueError(f"offset must be finite, got {offset_s!r}")
    # "+5", "-3", "+0.25", "+15552000": libfaketime's relative spec; never exponent notation.
    text = f"{offset_s:+.9f}".rstrip("0").rstrip(".")
    return "+0" if text in ("-0", "+0", "") else text


class FakeClock:
    """A libfaketime rc file that processes started with :meth:`env` / :meth:`wrap` read on every clock call.

    Starts at +0. ``set()`` is visible on the very next ``time.time()`` of those processes (FAKETIME_NO_CACHE);
    their CLOCK_MONOTONIC/BOOTTIME stay real (FAKETIME_DONT_FAKE_MONOTONIC + ftshim).
    """

    def __init__(self, tmpdir: Path | str, ftshim: Path | None = None, libfaketime: Path | None = None,
                 cache_duration_s: int | None = None) -> None:
        # cache_duration_s: libfaketime re-reads the rc file at most once per that many seconds instead of on every
        # clock call. A step then shows up 1-2 s late, but a busy multi-threaded process is not slowed down: with
        # NO_CACHE every GIL hand-over (a timed condvar wait) re-reads the file (research/harness.md §1d).
        self.cache_duration_s = cache_duration_s
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        blocker = others_can_reach(self.dir)
        if blocker is not None:
            # A daemon that dropped privileges could not read the rc file and would silently tell real time.
            raise ValueError(f"{self.dir} is not reachable by other users ({blocker} lacks o+x): use scratch_dir()")
        lib = libfaketime or find_libfaketime()
        if lib is None:
            raise FileNotFoundError("libfaketime.so.1 not found (apt-get install libfaketime)")
        self.libfaketime = lib
        self.ftshim = ftshim or default_ftshim()
        self.rc = self.dir / "faketime.rc"
        self.offset_s = 0.0
        self.set(0)

    def sharing(self, cache_duration_s: int | None) -> FakeClock:
        """The same rc file (one ``set()`` moves both) with another caching mode: e.g. a busy many-threaded
        daemon with a 1-s cache beside a mostly idle beat with NO_CACHE."""
        twin = copy.copy(self)
        twin.cache_duration_s = cache_duration_s
        return twin

    def set(self, offset_s: float) -> None:
        """Make the faked processes' wall clock read real time + ``offset_s`` from now on."""
        spec = _format_offset(offset_s)
        # Atomic: libfaketime exits the process on a torn/garbage file ("failed to parse FAKETIME timestamp").
        tmp = self.dir / f".faketime.rc.{os.getpid()}.tmp"
        tmp.write_text(spec + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, self.rc)
        self.offset_s = float(offset_s)

    @property
    def preload(self) -> str:
        """LD_PRELOAD value: the shim must come first so its clock_nanosleep wins over libfaketime's."""
        return f"{self.ftshim} {self.libfaketime}"

    def _fake_vars(self) -> dict[str, str]:
        caching = ({"FAKETIME_NO_CACHE": "1"} if self.cache_duration_s is None
                   else {"FAKETIME_CACHE_DURATION": str(int(self.cache_duration_s))})
        return {"FAKETIME_TIMESTAMP_FILE": str(self.rc), **caching, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def env(self, base: Mapping[str, str] | None = None, preload: bool = True) -> dict[str, str]:
        """An environment for a process that follows this clock.

        ``preload=False`` leaves LD_PRELOAD out: use it for launcher chains (setpriv, sudo) together with
        :meth:`wrap`, so that only the final program is preloaded.
        """
        env = dict(os.environ if base is None else base)
        for var in ("FAKETIME", "FAKETIME_SHARED", "FAKETIME_CACHE_DURATION"):
            env.pop(var, None)  # FAKETIME overrides the rc file; FAKETIME_SHARED is another process's shm
        env.update(self._fake_vars())
        if preload:
            env["LD_PRELOAD"] = self.preload
        elif self.preload == env.get("LD_PRELOAD"):
            del env["LD_PRELOAD"]
        return env

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """``env -u FAKETIME LD_PRELOAD=... FAKETIME_...=... cmd``: preload only the last exec of a chain."""
        assigns = [f"{k}={v}" for k, v in {"LD_PRELOAD": self.preload, **self._fake_vars()}.items()]
        return ["env", "-u", "FAKETIME", "-u", "FAKETIME_SHARED", *assigns, *cmd]

"""Real programs for integration tests: libfaketime clocks, chronyd, nginx, http.server, a QEMU guest kernel.

Recipes R1–R8 and R5 of shared/research/harness.md, as a library. Every rule of TESTING.md "Safety" is
enforced here rather than left to each test:

* The machine clock is never set. Daemons run under ``setpriv --bounding-set -sys_time --inh-caps -sys_time``
  (so even a misconfigured one gets EPERM), chronyd always with ``-x``; clock steps happen only inside a
  libfaketime process (the rc file) or inside a QEMU guest (its own kernel, TCG).
* Network: servers bind 127.0.0.1 (or ::1) only; chronyd gets ``-4``/``-6`` so it opens no wildcard socket.
* Processes are ended by the PID we started (never by name), and ``/dev/shm/*faketime*_<pid>`` is removed only
  for those PIDs and only after they have exited.

Pitfalls this module exists to absorb (harness.md "What did NOT work"):

* Python ≥ 3.11 under libfaketime with FAKETIME_DONT_FAKE_MONOTONIC=1 needs ``ftshim.so`` preloaded first, or
  ``time.sleep`` raises EINVAL (libfaketime #426).
* The rc file is read by daemons after they dropped privileges (_chrony, nginx's ``nobody`` worker): a file
  they can't read silently means *real* time, so every directory here is created 0755 under a world-traversable
  base, never under pytest's 0700 ``tmp_path``.
* ``FAKETIME`` in the environment silently overrides the rc file, and an inherited ``FAKETIME_SHARED`` would
  attach a child to someone else's shared memory: both are always removed.
* LD_PRELOAD goes on the final program only (``setpriv ... -- env LD_PRELOAD=... prog``): a preloaded process
  that exec()s leaks its ``/dev/shm`` pair.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import glob
import hashlib
import http.client
import lzma
import math
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Self

import psutil

# --------------------------------------------------------------------------------------------------------
# Constants and small helpers
# --------------------------------------------------------------------------------------------------------

#: Prefix that removes CAP_SYS_TIME from the bounding and inheritable sets: nothing below it can set the clock.
SETPRIV_NO_SYS_TIME: tuple[str, ...] = ("setpriv", "--bounding-set", "-sys_time", "--inh-caps", "-sys_time", "--")

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

_SHM_DIR = Path("/dev/shm")
_READY_TIMEOUT_S = 10.0
_POLL_S = 0.02


def find_libfaketime() -> Path | None:
    """Debian's libfaketime.so.1 (package ``libfaketime``), or None."""
    for pattern in LIBFAKETIME_CANDIDATES:
        for hit in sorted(glob.glob(pattern)):
            if os.access(hit, os.R_OK):
                return Path(hit)
    return None


def _others_can_reach(path: Path) -> str | None:
    """None if every ancestor of ``path`` is o+x (a dropped-privilege daemon can get there), else the blocker."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return str(parent)
    return None


def _log_tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------------------------------------
# Scratch space: one world-traversable base per test session
# --------------------------------------------------------------------------------------------------------

_scratch_base: Path | None = None


def scratch_dir(prefix: str) -> Path:
    """A fresh 0755 directory that daemons running as _chrony or nobody can enter.

    pytest's ``tmp_path`` lives under a 0700 ``/tmp/pytest-of-<user>``, which would make a faked daemon
    silently read real time (it can't open the rc file), so everything lives under our own base instead.
    The base is removed at interpreter exit (and by the session fixture).
    """
    global _scratch_base
    if _scratch_base is None or not _scratch_base.is_dir():
        base = Path(tempfile.mkdtemp(prefix="timeguard-real-"))
        base.chmod(0o755)
        blocker = _others_can_reach(base)
        if blocker is not None:
            shutil.rmtree(base, ignore_errors=True)
            base = Path(tempfile.mkdtemp(prefix="timeguard-real-", dir="/tmp"))
            base.chmod(0o755)
        _scratch_base = base
        atexit.register(shutil.rmtree, base, True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=_scratch_base))
    path.chmod(0o755)
    return path


def remove_scratch() -> None:
    """Remove the session's scratch base (call only after every process using it has stopped)."""
    global _scratch_base
    if _scratch_base is not None:
        shutil.rmtree(_scratch_base, ignore_errors=True)
        _scratch_base = None


# --------------------------------------------------------------------------------------------------------
# R1: the shim
# --------------------------------------------------------------------------------------------------------

_ftshim_cache: Path | None = None


def _build_c(source: str, dest_dir: Path, name: str, gcc_args: Sequence[str]) -> Path:
    """Compile C ``source`` into ``dest_dir/name`` (reused while the source kept beside it is unchanged)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    src, out = dest_dir / f"{Path(name).stem}.c", dest_dir / name
    if out.exists() and src.exists() and src.read_text() == source:
        return out
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError(f"gcc is needed to build {name} (apt-get install gcc libc6-dev)")
    src.write_text(source)
    # Build under a unique name and rename: a concurrent session may be using the old file.
    tmp = dest_dir / f".{name}.{os.getpid()}.tmp"
    proc = subprocess.run([gcc, "-o", str(tmp), str(src), *gcc_args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building {name} failed:\n{proc.stderr}")
    tmp.chmod(0o755)
    os.replace(tmp, out)
    return out


def build_ftshim(dest_dir: Path | str) -> Path:
    """Compile ftshim.so into ``dest_dir`` (reused when the source there is unchanged); returns its path."""
    return _build_c(FTSHIM_SOURCE, Path(dest_dir), "ftshim.so", ["-shared", "-fPIC", "-O2", "-ldl"])


def default_ftshim() -> Path:
    """The session's ftshim.so, built once into the scratch base."""
    global _ftshim_cache
    if _ftshim_cache is None or not _ftshim_cache.exists():
        _ftshim_cache = build_ftshim(scratch_dir("ftshim"))
    return _ftshim_cache


# --------------------------------------------------------------------------------------------------------
# R2/R3: a wall clock that a test moves
# --------------------------------------------------------------------------------------------------------


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
        blocker = _others_can_reach(self.dir)
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


# --------------------------------------------------------------------------------------------------------
# Processes we start: stopped by PID, /dev/shm cleaned for that PID only
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StartedPid:
    pid: int
    create_time: float  # psutil's, to tell our process from a later one that reused the PID
    name: str


_started: list[StartedPid] = []
_running: list[ManagedProcess] = []


def started_pids() -> list[StartedPid]:
    """Every PID this session started (daemons, nginx workers, faked children, QEMU guests)."""
    return list(_started)


def _register(pid: int, name: str) -> StartedPid | None:
    try:
        entry = StartedPid(pid, psutil.Process(pid).create_time(), name)
    except psutil.NoSuchProcess:
        return None
    _started.append(entry)
    return entry


def _alive(entry: StartedPid) -> bool:
    try:
        proc = psutil.Process(entry.pid)
        return proc.create_time() == entry.create_time and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def shm_entries(pid: int) -> list[Path]:
    """libfaketime's shared memory/semaphore pair of ``pid`` (``faketime_shm_<pid>``, ``sem.faketime_sem_<pid>``)."""
    pattern = re.compile(rf"^(sem\.)?faketime_(shm|sem)_{pid}$")
    try:
        names = os.listdir(_SHM_DIR)
    except FileNotFoundError:
        return []
    return [_SHM_DIR / n for n in names if pattern.match(n)]


def leftovers(entries: Sequence[StartedPid] | None = None) -> list[str]:
    """What of ``entries`` (default: everything started) is still alive or still has /dev/shm entries."""
    problems: list[str] = []
    for entry in _started if entries is None else entries:
        if _alive(entry):
            problems.append(f"process {entry.pid} ({entry.name}) still running")
        problems.extend(f"{p} left behind by {entry.pid} ({entry.name})" for p in shm_entries(entry.pid))
    return problems


CAP_SYS_TIME = 25


def could_set_clock(pid: int) -> bool:
    """Whether process ``pid`` has CAP_SYS_TIME in any set (bounding included, so it couldn't even regain it)."""
    with open(f"/proc/{pid}/status") as f:
        caps = {k: int(v, 16) for k, _, v in (ln.partition(":") for ln in f) if k.startswith("Cap")}
    return any(value >> CAP_SYS_TIME & 1 for value in caps.values())


def resolve_program(program: str) -> str:
    """The path to exec for ``program``: the real binary, never a pyenv/asdf bash shim.

    A shim exec()s (after forking helpers) and leaks libfaketime's /dev/shm pair. ``python``/``python3`` mean
    ``sys.executable``: the venv's ``bin/python`` is a *symlink* to the real ELF interpreter (the kernel follows
    it without another exec) and keeps the venv's site-packages, which ``realpath`` would lose.
    """
    if program in ("python", "python3", sys.executable):
        path = sys.executable
    else:
        found = program if os.sep in program else shutil.which(program)
        if found is None:
            raise FileNotFoundError(f"{program} not found on PATH")
        path = found
    real = os.path.realpath(path)
    if "shims" in Path(path).parts or "shims" in Path(real).parts:
        raise ValueError(f"{path} is a version-manager shim; pass the real interpreter (sys.executable)")
    with open(real, "rb") as f:
        magic = f.read(4)
    if magic != b"\x7fELF" and program in ("python", "python3", sys.executable):
        raise ValueError(f"{path} -> {real} is not an ELF interpreter (a wrapper script?)")
    return path


class ManagedProcess:
    """A process this session started; :meth:`stop` ends it by PID and removes only its /dev/shm pair."""

    def __init__(
        self,
        popen: subprocess.Popen[Any],
        name: str,
        *,
        log_path: Path | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.popen = popen
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.stop_timeout_s = stop_timeout_s
        self._entry = _register(popen.pid, name)
        self._extra: list[StartedPid] = []
        self._log_file: IO[bytes] | None = None
        _running.append(self)

    @classmethod
    def start(
        cls,
        cmd: Sequence[str],
        *,
        name: str | None = None,
        clock: FakeClock | None = None,
        drop_sys_time: bool = True,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout_s: float = 5.0,
        **popen_kwargs: Any,
    ) -> ManagedProcess:
        """Start ``cmd`` (``cmd[0]`` resolved to the real binary), optionally under ``clock``.

        With ``drop_sys_time`` (default) the chain is ``setpriv ... -- [env LD_PRELOAD=...] prog``: every exec
        keeps the PID, so the PID we hold is the program's, and only the program itself is preloaded.
        ``log_path`` sends stdout+stderr there (daemons would otherwise fill a pipe nobody reads).
        """
        argv = [resolve_program(cmd[0]), *cmd[1:]]
        if clock is not None:
            if drop_sys_time:
                base_env = clock.env(env, preload=False)
                argv = clock.wrap(argv)
            else:
                base_env = clock.env(env)
        else:
            base_env = dict(os.environ if env is None else env)
        if drop_sys_time:
            argv = [*SETPRIV_NO_SYS_TIME, *argv]
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        log_file = None
        if log_path is not None:
            log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
            popen_kwargs.setdefault("stdout", log_file)
            popen_kwargs.setdefault("stderr", subprocess.STDOUT)
        try:
            popen = subprocess.Popen(argv, env=base_env, **popen_kwargs)
        except BaseException:
            if log_file is not None:
                log_file.close()
            raise
        proc = cls(
            popen,
            name or Path(cmd[0]).name,
            log_path=log_path,
            stop_signal=stop_signal,
            stop_timeout_s=stop_timeout_s,
        )
        proc._log_file = log_file
        return proc

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def all_pids(self) -> list[int]:
        """Our PID plus the adopted children's."""
        return [self.pid, *(entry.pid for entry in self._extra)]

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def adopt_children(self) -> list[int]:
        """Record the current children (e.g. nginx's worker) so stop() can make sure they are gone too."""
        pids: list[int] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.pid).children(recursive=True):
                entry = _register(child.pid, f"{self.name} child")
                if entry is not None:
                    self._extra.append(entry)
                    pids.append(child.pid)
        return pids

    def log_tail(self, lines: int = 25) -> str:
        return _log_tail(self.log_path, lines)

    def stop(self) -> int | None:
        """Signal our PID, SIGKILL after ``stop_timeout_s``, reap, then clean its /dev/shm pair; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)
            try:
                self.popen.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(self.stop_timeout_s)
        # Children we adopted (nginx worker) normally exit with their master; make sure, by PID + start time.
        deadline = time.monotonic() + self.stop_timeout_s
        for entry in self._extra:
            while _alive(entry) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if _alive(entry):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(entry.pid, signal.SIGKILL)
        for entry in [self._entry, *self._extra]:
            if entry is not None and not psutil.pid_exists(entry.pid):
                # Only once the PID is gone (and not yet reused): a live process may still map it. A daemon that
                # dropped privileges (_chrony) can't unlink root-owned entries in sticky /dev/shm itself, and a
                # process that exec()ed after being preloaded never runs libfaketime's destructor.
                for path in shm_entries(entry.pid):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self in _running:
            _running.remove(self)
        return self.popen.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_under_clock(cmd: Sequence[str], clock: FakeClock, **popen_kwargs: Any) -> ManagedProcess:
    """Start the real ``cmd`` following ``clock`` (setpriv without CAP_SYS_TIME, LD_PRELOAD on it only).

    ``popen_kwargs`` go to Popen (``stdin``, ``stdout``, ``text``, ``env`` as the base environment, ``cwd``...),
    plus ManagedProcess.start's ``name``, ``log_path``, ``drop_sys_time``, ``stop_signal``, ``stop_timeout_s``.
    """
    return ManagedProcess.start(cmd, clock=clock, **popen_kwargs)


def stop_all() -> None:
    """Safety net for an aborted session: stop whatever is still running, by PID."""
    for proc in list(_running):
        proc.stop()


atexit.register(stop_all)


def _wait_until(proc: ManagedProcess, what: str, probe: Any, timeout_s: float = _READY_TIMEOUT_S) -> Any:
    """Call ``probe()`` until it returns non-None; fail early (with the log) if ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering:\n{proc.log_tail()}")
        try:
            result = probe()
        except OSError as exc:  # refused / timeout / TLS not up yet
            last = exc
            result = None
        if result is not None:
            return result
        time.sleep(_POLL_S)
    proc.stop()
    raise RuntimeError(f"{what} did not answer within {timeout_s} s (last error: {last!r}):\n{proc.log_tail()}")


# --------------------------------------------------------------------------------------------------------
# Networking helpers
# --------------------------------------------------------------------------------------------------------


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(kind: str = "udp", host: str = "127.0.0.1") -> int:
    """A port that is free right now on ``host`` (loopback). Racy by nature: starters retry on bind failure."""
    sock_type = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}[kind]
    with socket.socket(_family(host), sock_type) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(kind: str, host: str, port: int) -> None:
    """Raise if something already holds ``port``: chronyd binds with SO_REUSEPORT, so a second chronyd on a taken
    port starts "fine" and the kernel then spreads queries over both servers (honest and lying answers mixed)."""
    try:
        with socket.socket(_family(host), {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}[kind]) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise RuntimeError(f"{kind} port {host}:{port} is already in use ({exc.strerror})") from exc


NTP_EPOCH_DELTA = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class NtpReply(NamedTuple):
    leap: int
    version: int
    mode: int
    stratum: int
    offset_s: float
    delay_s: float


def _ntp_ts(raw: bytes) -> float:
    secs, frac = struct.unpack("!II", raw)
    return secs - NTP_EPOCH_DELTA + frac / 2**32


def ntp_query(host: str, port: int, timeout_s: float = 1.0) -> NtpReply:
    """One raw NTPv4 client exchange (no ntplib): enough to know a server is up and what it says."""
    t1 = time.time()
    secs = int(t1) + NTP_EPOCH_DELTA
    transmit = struct.pack("!II", secs, int((t1 % 1) * 2**32))
    packet = bytes([0x23]) + bytes(39) + transmit  # LI 0, VN 4, mode 3 (client)
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(packet, (host, port))
        data, _ = sock.recvfrom(512)
    t4 = time.time()
    if len(data) < 48 or data[24:32] != transmit:
        raise OSError(f"bad NTP reply from {host}:{port} ({len(data)} bytes)")
    t2, t3 = _ntp_ts(data[32:40]), _ntp_ts(data[40:48])
    return NtpReply(
        leap=data[0] >> 6,
        version=(data[0] >> 3) & 7,
        mode=data[0] & 7,
        stratum=data[1],
        offset_s=((t2 - t1) + (t3 - t4)) / 2,
        delay_s=(t4 - t1) - (t3 - t2),
    )


def _http_head(host: str, port: int, context: ssl.SSLContext | None) -> int:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=1)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=1, context=context)
    try:
        conn.request("HEAD", "/")
        return conn.getresponse().status
    finally:
        conn.close()


def _probe_context(tls: bool) -> ssl.SSLContext | None:
    if not tls:
        return None
    # Readiness only asks "is the TLS listener up?"; tests verify the certificate with the test CA themselves.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------------------------------------
# R6: chronyd as an honest or lying loopback NTP server
# --------------------------------------------------------------------------------------------------------


class ChronyServer:
    """A real chronyd ``-x -d`` serving NTP on loopback only; lying when a FakeClock is given.

    A lying server is only correct for |offset| ≥ 1 s: below that chronyd's kernel RX timestamp is real and the
    client sees offset f/2 and delay −f (harness.md §3). Use a fake server in the tests for sub-second cases.
    """

    def __init__(
        self,
        port: int | None = None,
        clock: FakeClock | None = None,
        local_stratum: int = 2,
        bind: str = "127.0.0.1",
        synchronised: bool = True,
    ) -> None:
        if not (bind.startswith("127.") or bind == "::1"):
            raise ValueError(f"loopback only, got bind={bind!r}")
        self._fixed_port = port
        self.port = port or 0
        self.clock = clock
        self.local_stratum = local_stratum
        self.bind = bind
        self.synchronised = synchronised
        self.dir = scratch_dir("chrony")
        self.process: ManagedProcess | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.bind, self.port)

    def _write_conf(self) -> Path:
        lines = [
            f"port {self.port}",
            f"bindaddress {self.bind}",
            f"allow {self.bind}",
            # No trailing comments: chrony 4.3 refuses "local stratum 2  # ..." (Could not parse).
            *([f"local stratum {self.local_stratum}"] if self.synchronised else []),
            "cmdport 0",
            f"pidfile {self.dir}/chronyd.pid",
            f"driftfile {self.dir}/drift",
        ]
        conf = self.dir / "chrony.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o644)
        return conf

    def start(self) -> Self:
        try:
            user = pwd.getpwnam("_chrony")
        except KeyError:
            user = None
        if user is not None and os.geteuid() == 0:
            # chronyd drops to _chrony and then writes its drift file here.
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if self._fixed_port:
                ensure_port_free("udp", self.bind, self.port)
            else:
                self.port = free_port("udp", self.bind)
            conf = self._write_conf()
            family_flag = "-6" if ":" in self.bind else "-4"  # otherwise chronyd also binds the other wildcard
            self.process = ManagedProcess.start(
                ["chronyd", "-x", "-d", family_flag, "-f", str(conf)],
                name=f"chronyd:{self.port}",
                clock=self.clock,
                log_path=self.dir / "chronyd.log",
            )
            try:
                _wait_until(self.process, f"chronyd on {self.bind}:{self.port}", self._probe)
                return self
            except RuntimeError:
                self.process.stop()
                if attempt + 1 == attempts or "Could not open" not in self.process.log_tail():
                    raise
        return self

    def _probe(self) -> NtpReply | None:
        reply = ntp_query(self.bind, self.port, timeout_s=0.2)
        # A `local` server may need a moment before it claims to be synchronised.
        return reply if (reply.leap != 3) == self.synchronised else None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------
# R8: HTTP Date sources (nginx, python -m http.server)
# --------------------------------------------------------------------------------------------------------


class TlsFiles(NamedTuple):
    ca_bundle: Path
    cert: Path
    key: Path


def make_test_ca(tmpdir: Path | str) -> TlsFiles:
    """A throw-away CA (trustme) and a server certificate for ``localhost`` and ``127.0.0.1``."""
    import trustme  # imported here: only HTTPS tests need it

    out = Path(tmpdir)
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    files = TlsFiles(out / "ca.pem", out / "server.crt", out / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_bundle))
    files.cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    files.key.touch(mode=0o600)
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


class NginxServer:
    """A real nginx (``daemon off``, one worker) serving a small index on 127.0.0.1; its Date follows ``clock``."""

    def __init__(
        self,
        port: int | None = None,
        clock: FakeClock | None = None,
        tls: tuple[Path | str, Path | str] | None = None,
    ) -> None:
        self._fixed_port = port
        self.port = port or 0
        self.clock = clock
        self.tls = tls
        self.host = "127.0.0.1"
        self.dir = scratch_dir("nginx")
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    def _write_conf(self) -> Path:
        d = self.dir
        (d / "html").mkdir(exist_ok=True)
        (d / "html" / "index.html").write_text("timeguard test server\n")
        listen = f"listen {self.host}:{self.port}{' ssl' if self.tls else ''};"
        tls_lines = f"    ssl_certificate {self.tls[0]};\n    ssl_certificate_key {self.tls[1]};\n" if self.tls else ""
        # The env lines are REQUIRED: nginx wipes the worker's environment, so without them the worker (which
        # writes the Date header) would tell real time. Harmless when no clock is given (unset → not passed).
        conf = f"""env LD_PRELOAD;
env FAKETIME_TIMESTAMP_FILE;
env FAKETIME_NO_CACHE;
env FAKETIME_DONT_FAKE_MONOTONIC;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  default_type text/plain;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    {listen}
{tls_lines}    root {d}/html;
  }}
}}
"""
        path = d / "nginx.conf"
        path.write_text(conf)
        return path

    def start(self) -> Self:
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port("tcp", self.host)
            conf = self._write_conf()
            # -e: nginx opens its default /var/log/nginx/error.log before reading the config otherwise.
            self.process = ManagedProcess.start(
                ["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                name=f"nginx:{self.port}",
                clock=self.clock,
                log_path=self.dir / "nginx.log",
                stop_signal=signal.SIGQUIT,  # graceful: the worker finishes and exits with the master
            )
            try:
                _wait_until(
                    self.process,
                    f"nginx on {self.url}",
                    lambda: _http_head(self.host, self.port, _probe_context(bool(self.tls))),
                )
                self.process.adopt_children()
                return self
            except RuntimeError:
                self.process.stop()
                log = self.process.log_tail() + _log_tail(self.dir / "error.log")
                if attempt + 1 == attempts or "Address already in use" not in log:
                    raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PythonDateServer:
    """``python -m http.server`` on 127.0.0.1 under ``clock``: a second, independent HTTP Date implementation."""

    def __init__(self, port: int | None = None, clock: FakeClock | None = None) -> None:
        self._fixed_port = port
        self.port = port or 0
        self.clock = clock
        self.host = "127.0.0.1"
        self.dir = scratch_dir("httpserver")
        (self.dir / "index.html").write_text("timeguard test server\n")
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> Self:
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port("tcp", self.host)
            self.process = ManagedProcess.start(
                [sys.executable, "-m", "http.server", str(self.port), "--bind", self.host, "-d", str(self.dir)],
                name=f"http.server:{self.port}",
                clock=self.clock,
                log_path=self.dir.parent / f"{self.dir.name}.log",
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                _wait_until(self.process, f"http.server on {self.url}", lambda: _http_head(self.host, self.port, None))
                return self
            except RuntimeError:
                self.process.stop()
                if attempt + 1 == attempts or "Address already in use" not in self.process.log_tail():
                    raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------------------
# R5: a real kernel whose clock really steps (Debian's kernel under QEMU, TCG)
# --------------------------------------------------------------------------------------------------------
#
# Why QEMU in TCG mode and not User-Mode-Linux: UML runs each guest process as a host process under ptrace and
# moves its FPU/extended state in and out of the host CPU through ptrace calls whose buffer depends on the host
# CPU's XSAVE features and the host kernel; on an AVX-512 Xeon with kernel 6.18, Debian 12's UML dies at boot
# ("userspace - ptrace set fp regs failed, errno = 14", EFAULT). TCG translates every guest instruction in software
# and keeps the guest CPU's registers and XSAVE area in QEMU's own memory, for the fixed model QEMU_CPU: the host's
# extended state is never the guest's, and /dev/kvm is not used. Same kernel, same CPU, same boot on every x86-64
# host.

#: A fixed CPU model, identical on every host: qemu64 is the x86-64 baseline (SSE2/SSE3, no AVX, so no XSAVE
#: feature of the host matters); RDRAND (emulated by TCG from QEMU's own random source) seeds the guest's CRNG at
#: boot — without it Python's start-up blocks ~1 s in getrandom() waiting for entropy.
QEMU_CPU = "qemu64,+rdrand"
#: Debian's generic kernel (the cloud flavour has no 9p): fetched, never installed (see guest_kernel()).
GUEST_KERNEL_PACKAGE = "linux-image-amd64"
#: What the guest init loads to mount the host's / over virtio-9p, in dependency order (each after every module
#: its modinfo ``depends=`` names).
GUEST_MODULES: tuple[str, ...] = (
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "net/9p/9pnet",
    "net/9p/9pnet_virtio",
    "fs/netfs/netfs",
    "fs/fscache/fscache",
    "fs/9p/9p",
)
#: The kernel command-line parameter that carries a run's random token: the only marker of the guest. The host's
#: command line was fixed at its boot and can't contain a token made afterwards.
GUEST_MARK = "timeguard.guest"
GUEST_ENV: tuple[str, ...] = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TMPDIR=/run/tmp",  # the host's / is read-only in the guest; /run is the guest's tmpfs
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
)

GUEST_INIT_SOURCE = r"""/* PID 1 of the timeguard test guest (QEMU, TCG).
 * Loads the 9p modules, mounts the host's / read-only on /host, runs the command in /argv (environment /env)
 * chrooted there, prints TIMEGUARD_GUEST_EXIT=<status>, powers off. It refuses to do anything unless it is PID 1
 * of a kernel whose command line carries this run's token (/token): never on the host, never in a container.
 * A refusal exits without reboot(); as the guest's PID 1 that panics the kernel, and panic=-1 with QEMU's
 * -no-reboot ends QEMU. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *what) { fprintf(stderr, "guest-init: %s: %s\n", what, strerror(errno)); }

static void power_off(int status) {
    printf("TIMEGUARD_GUEST_EXIT=%d\n", status);
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    _exit(status);
}

static size_t slurp(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    ssize_t r;
    if (fd < 0) return 0;
    while (n < size - 1 && (r = read(fd, buf + n, size - 1 - n)) > 0) n += (size_t)r;
    close(fd);
    buf[n] = 0;
    return n;
}

static int loopback_up(void) { /* the guest's own lo: guest scripts may serve on 127.0.0.1 */
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), ok;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    ok = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &ifr) == 0);
    if (s >= 0) close(s);
    return ok;
}

static char **split0(char *buf, size_t n) { /* "a\0b\0" -> {"a", "b", NULL} */
    size_t count = 0, k = 0;
    for (size_t i = 0; i < n; i++) count += buf[i] == 0;
    char **out = calloc(count + 1, sizeof *out);
    for (size_t i = 0; out && i < n && k < count; k++) { out[k] = buf + i; i += strlen(buf + i) + 1; }
    return out;
}

int main(void) {
    static char token[128], mark[256], cmdline[4096], modules[4096], argv_buf[65536], env_buf[65536];
    if (getpid() != 1) {
        fprintf(stderr, "REFUSING: guest-init runs only as PID 1 of the timeguard QEMU test guest\n");
        return 2;
    }
    if (mount("proc", "/proc", "proc", 0, NULL) != 0) { say("mount /proc"); return 2; }
    slurp("/token", token, sizeof token);
    snprintf(mark, sizeof mark, " %s ", token);
    cmdline[0] = ' ';
    slurp("/proc/cmdline", cmdline + 1, sizeof cmdline - 2);
    cmdline[strcspn(cmdline, "\n")] = 0;
    strcat(cmdline, " ");
    if (token[0] == 0 || strstr(cmdline, mark) == NULL) {
        fprintf(stderr, "REFUSING: this kernel was not booted as this run's timeguard QEMU test guest\n");
        return 2;
    }
    slurp("/modules.list", modules, sizeof modules);
    for (char *name = strtok(modules, "\n"); name; name = strtok(NULL, "\n")) {
        char path[512];
        snprintf(path, sizeof path, "/modules/%s.ko", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)) { say(path); power_off(125); }
        close(fd);
    }
    if (mount("host", "/host", "9p", MS_RDONLY, "trans=virtio,version=9p2000.L,cache=loose,msize=512000") != 0) {
        say("mount the host's / (9p) on /host");
        power_off(125);
    }
    if (mount("proc", "/host/proc", "proc", 0, NULL) != 0 || mount("sys", "/host/sys", "sysfs", 0, NULL) != 0
        || mount("dev", "/host/dev", "devtmpfs", 0, NULL) != 0
        || mount("run", "/host/run", "tmpfs", 0, "mode=0755") != 0 || mkdir("/host/run/tmp", 01777) != 0) {
        say("mount the guest's own /proc, /sys, /dev and /run");
        power_off(125);
    }
    if (!loopback_up()) { say("bring lo up"); power_off(125); }
    char **argv = split0(argv_buf, slurp("/argv", argv_buf, sizeof argv_buf));
    char **envp = split0(env_buf, slurp("/env", env_buf, sizeof env_buf));
    if (argv == NULL || argv[0] == NULL || envp == NULL) { fprintf(stderr, "guest-init: no /argv\n"); power_off(125); }
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) { say("fork"); power_off(125); }
    if (child == 0) {
        if (chroot("/host") != 0 || chdir("/") != 0) { say("chroot /host"); _exit(125); }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        dup2(1, 2);
        execve(argv[0], argv, envp);
        say(argv[0]);
        _exit(127);
    }
    int status = 0;
    pid_t reaped;
    while ((reaped = wait(&status)) != child) /* PID 1 also reaps orphans */
        if (reaped < 0 && errno != EINTR) { say("wait"); power_off(125); }
    power_off(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}
"""

# The console lines the guest kernel itself prints at power-off; kept narrow so that nothing a guest script prints
# is ever dropped.
_GUEST_NOISE = re.compile(r"^\[\s*\d+\.\d+\] reboot: Power down$")
_GUEST_EXIT = re.compile(r"^TIMEGUARD_GUEST_EXIT=(\d+)$")


def host_realtime_minus_monotonic_s() -> float:
    """This machine's CLOCK_REALTIME − CLOCK_MONOTONIC, from the tightest of 50 bracketed readings: it changes if
    and only if the host clock is set, so tests and benchmarks compare it before and after a guest run."""
    best: tuple[int, int] | None = None
    for _ in range(50):
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, r - (m1 + m2) // 2)
    assert best is not None
    return best[1] / 1e9


def qemu_guest_script(script_text: str, token: str) -> str:
    """``script_text`` behind the guest guard (``from __future__`` lines stay first, as Python requires).

    The guard refuses at once unless ``/proc/cmdline`` carries ``timeguard.guest=<token>`` — true only in the
    guest booted for this run — and defines ``guest_only(call, *args, **kwargs)``, which checks again and then
    makes that call: every line of a guest script that sets a clock goes through it, so the guard shows there.
    """
    if not re.fullmatch(r"[0-9a-f]{16,64}", token):
        raise ValueError(f"guest token must be 16-64 lowercase hex digits, not {token!r}")
    guard = (
        "import sys as _tg_sys\n"
        "def guest_only(call, *args, **kwargs):\n"
        "    with open('/proc/cmdline') as _tg_f:\n"
        f"        if {f'{GUEST_MARK}={token}'!r} not in _tg_f.read().split():\n"
        "            _tg_sys.exit('REFUSING: not inside the timeguard QEMU test guest (this script sets the clock)')\n"
        "    return call(*args, **kwargs)\n"
        "guest_only(int)  # refuse at once outside the guest\n"
    )
    lines = script_text.splitlines(keepends=True)
    future = [ln for ln in lines if ln.startswith("from __future__ import")]
    body = [ln for ln in lines if not ln.startswith("from __future__ import")]
    return "".join(future) + guard + "".join(body)


def guest_python() -> str:
    """The interpreter the guest runs by default: this one (venv included), through the 9p share of the host's /.

    QEMU's 9p server reads host files as the user running QEMU, i.e. as us, so whatever this process can execute
    the guest can too.
    """
    real = os.path.realpath(sys.executable)
    if not os.access(real, os.R_OK | os.X_OK):
        raise PermissionError(f"{real} is not readable+executable by uid {os.geteuid()}; the guest can't run it")
    return sys.executable


def guest_kernel_cache() -> Path:
    """Where the guest's kernel and init are kept: $TIMEGUARD_GUEST_KERNEL_CACHE, else ~/.cache/timeguard/guest."""
    if explicit := os.environ.get("TIMEGUARD_GUEST_KERNEL_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "timeguard" / "guest"


def _current_kernel_package() -> str | None:
    """The ``linux-image-<abi>-amd64`` that ``linux-image-amd64`` depends on in apt's lists (None without apt)."""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        return None
    proc = subprocess.run(
        [apt_cache, "depends", "--important", GUEST_KERNEL_PACKAGE], capture_output=True, text=True, check=False
    )
    found = re.search(r"Depends:\s*(linux-image-\S+)", proc.stdout)
    return found.group(1) if found else None


def _unpacked_kernel(bzimage: bytes, config: str) -> bytes:
    """The ELF vmlinux inside an xz bzImage when the kernel has PVH (QEMU then starts it directly, ~4 s faster
    under TCG than decompressing in the guest); otherwise the bzImage itself."""
    start = bzimage.find(b"\xfd7zXZ\x00")
    if "CONFIG_PVH=y" not in config.splitlines() or start < 0:
        return bzimage
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    except lzma.LZMAError:
        return bzimage
    return elf if elf.startswith(b"\x7fELF") else bzimage


def _fetch_kernel(package: str, dest: Path) -> None:
    """``apt-get download`` + ``dpkg-deb --fsys-tarfile`` of ``package`` into ``dest``: ``kernel`` and
    ``modules/<name>.ko`` for each of GUEST_MODULES the kernel does not have built in. Nothing is installed: no
    /boot, no bootloader, no package script."""
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt_get is None or dpkg_deb is None:
        raise FileNotFoundError("apt-get and dpkg-deb are needed to fetch Debian's kernel for the QEMU guest")
    download = subprocess.run([apt_get, "download", package], cwd=dest, capture_output=True, text=True, check=False)
    debs = list(dest.glob(f"{package}_*.deb"))
    if download.returncode != 0 or len(debs) != 1:
        raise RuntimeError(f"apt-get download {package} failed (apt-get update first?): {download.stderr.strip()}")
    wanted = {module: Path(module).name for module in GUEST_MODULES}
    (dest / "modules").mkdir()
    bzimage, config, builtin = b"", "", ""
    module_path = re.compile(r"(?:usr/)?lib/modules/[^/]+/kernel/(.+)\.ko(\.xz)?")
    builtin_path = re.compile(r"(?:usr/)?lib/modules/[^/]+/modules\.builtin")
    with subprocess.Popen([dpkg_deb, "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE) as unpack:
        assert unpack.stdout is not None
        with tarfile.open(fileobj=unpack.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                module = module_path.fullmatch(name)
                keep = name.startswith("boot/") or (module and module[1] in wanted) or builtin_path.fullmatch(name)
                if not member.isfile() or not keep:
                    continue
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if name.startswith("boot/vmlinuz-"):
                    bzimage = data
                elif name.startswith("boot/config-"):
                    config = data.decode(errors="replace")
                elif builtin_path.fullmatch(name):
                    builtin = data.decode(errors="replace")
                elif module:
                    ko = lzma.decompress(data) if module[2] else data
                    (dest / "modules" / f"{wanted.pop(module[1])}.ko").write_bytes(ko)
    debs[0].unlink()
    for line in builtin.splitlines():  # "kernel/fs/9p/9p.ko": compiled in, nothing to load
        wanted.pop(line.removeprefix("kernel/").removesuffix(".ko"), None)
    if unpack.returncode != 0 or not bzimage or wanted:
        raise RuntimeError(f"{package}: no vmlinuz, or missing modules {sorted(wanted)} (dpkg-deb {unpack.returncode})")
    (dest / "kernel").write_bytes(_unpacked_kernel(bzimage, config))


def guest_kernel() -> Path:
    """The directory with the guest's ``kernel`` and ``modules/``: Debian's current ``linux-image-amd64``.

    Fetched once per kernel ABI into guest_kernel_cache() (70 MB download, ~10 s; .ci/setup does it, a test that
    finds none does it too) and kept there (~75 MB); an older ABI's directory is removed when a newer one arrives.
    Looked up once per test session (asking apt costs ~0.8 s).
    """
    global _guest_kernel
    if _guest_kernel is None or not (_guest_kernel / "kernel").is_file():
        _guest_kernel = _find_or_fetch_guest_kernel()
    return _guest_kernel


_guest_kernel: Path | None = None


def _find_or_fetch_guest_kernel() -> Path:
    cache = guest_kernel_cache()
    package = _current_kernel_package()
    if package is None:  # no apt (or no lists): whatever was fetched before
        cached = sorted(p.parent for p in cache.glob("linux-image-*/kernel"))
        if cached:
            return cached[-1]
        raise FileNotFoundError(f"no kernel for the QEMU guest in {cache} and apt can't resolve {GUEST_KERNEL_PACKAGE}")
    target = cache / package
    if (target / "kernel").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=cache))
    tmp.chmod(0o755)
    try:
        _fetch_kernel(package, tmp)
        try:
            tmp.rename(target)
        except OSError:  # a concurrent fetch got there first
            if not (target / "kernel").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in cache.glob("linux-image-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def guest_init() -> Path:
    """GUEST_INIT_SOURCE compiled static (gcc, libc6-dev), cached by the hash of its source."""
    digest = hashlib.sha256(GUEST_INIT_SOURCE.encode()).hexdigest()[:16]
    return _build_c(GUEST_INIT_SOURCE, guest_kernel_cache(), f"init-{digest}", ["-static", "-Os"])


def _cpio_newc(entries: Sequence[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """An uncompressed ``newc`` cpio archive (what the kernel unpacks as initramfs) of (name, mode, data, rdev)."""
    out = bytearray()
    for ino, (name, mode, data, (major, minor)) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(encoded), 0)
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode() + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _guest_initramfs(kernel_dir: Path, init: Path, token: str, argv: Sequence[str], env: Sequence[str]) -> bytes:
    def nul_list(items: Sequence[str]) -> bytes:
        return b"".join(item.encode() + b"\0" for item in items)

    names = [n for m in GUEST_MODULES if (kernel_dir / "modules" / f"{(n := Path(m).name)}.ko").is_file()]
    entries = [(d, stat.S_IFDIR | 0o755, b"", (0, 0)) for d in ("dev", "proc", "host", "modules")]
    entries += [
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("init", stat.S_IFREG | 0o755, init.read_bytes(), (0, 0)),
        ("token", stat.S_IFREG | 0o644, f"{GUEST_MARK}={token}".encode(), (0, 0)),
        ("modules.list", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n in names).encode(), (0, 0)),
        ("argv", stat.S_IFREG | 0o644, nul_list(argv), (0, 0)),
        ("env", stat.S_IFREG | 0o644, nul_list(env), (0, 0)),
    ]
    entries += [
        (f"modules/{n}.ko", stat.S_IFREG | 0o644, (kernel_dir / "modules" / f"{n}.ko").read_bytes(), (0, 0))
        for n in names
    ]
    return _cpio_newc(entries)


def qemu_run(
    script_text: str, timeout_s: float = 120, *, mem_mb: int = 256, python: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run Python ``script_text`` as root in a throw-away QEMU (TCG) guest; returns its console and exit code.

    The guest is Debian's kernel with a tiny initramfs (guest_init()): it sees the host's ``/`` read-only over 9p,
    with its own ``/proc``, ``/sys``, ``/dev``, and ``/run`` (tmpfs; ``$TMPDIR=/run/tmp``). Its kernel clock is its
    own: ``clock_settime`` in there steps only the guest, TFD_TIMER_CANCEL_ON_SET really fires. Its ``lo`` is up
    (its own loopback; there is no other network device). QEMU runs without CAP_SYS_TIME. ``returncode`` is the
    script's exit status (125 if the guest died before reporting one), ``stdout`` the guest console, ``stderr``
    QEMU's. Raises ``subprocess.TimeoutExpired`` after killing QEMU when it runs longer than ``timeout_s``.
    """
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    kernel, init = guest_kernel(), guest_init()
    token = secrets.token_hex(16)
    work = scratch_dir("qemu")
    try:
        script = work / "guest.py"
        script.write_text(qemu_guest_script(script_text, token))
        initrd = work / "initrd.cpio"
        initrd.write_bytes(_guest_initramfs(kernel, init, token, [python or guest_python(), str(script)], GUEST_ENV))
        argv = [
            *SETPRIV_NO_SYS_TIME,
            qemu,
            "-accel", "tcg",  # software CPU: no /dev/kvm, no host CPU state in the guest
            "-cpu", QEMU_CPU,
            "-smp", "1",
            "-m", str(mem_mb),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-serial", "stdio",
            "-kernel", str(kernel / "kernel"),
            "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet panic=-1 mitigations=off {GUEST_MARK}={token}",
            "-fsdev", "local,id=host,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=host,mount_tag=host",
        ]  # fmt: skip
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        _register(popen.pid, "qemu-system-x86_64")
        try:
            raw_out, raw_err = popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)  # our own session: QEMU, by the id we started
            popen.communicate()
            raise
        text = raw_out.decode(errors="replace").replace("\r\n", "\n").replace("\r", "")
        output = [ln for ln in text.splitlines() if not _GUEST_NOISE.match(ln)]
        codes = [int(m[1]) for ln in output if (m := _GUEST_EXIT.match(ln))]
        stdout = "\n".join(ln for ln in output if not _GUEST_EXIT.match(ln)) + "\n"
        return subprocess.CompletedProcess(argv, codes[-1] if codes else 125, stdout, raw_err.decode(errors="replace"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

"""Processes this session starts: under setpriv without CAP_SYS_TIME, stopped by PID, /dev/shm cleaned for that PID
only; and the loopback server programs built on them (start on a free port, wait until it answers, stop)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self

import psutil

from tests.support.realprogs.net import ensure_port_free, free_port

if TYPE_CHECKING:
    from tests.support.realprogs.faketime import FakeClock


#: Prefix that removes CAP_SYS_TIME from the bounding and inheritable sets: nothing below it can set the clock.
SETPRIV_NO_SYS_TIME: tuple[str, ...] = ("setpriv", "--bounding-set", "-sys_time", "--inh-caps", "-sys_time", "--")

_SHM_DIR = Path("/dev/shm")
_READY_TIMEOUT_S = 10.0
_POLL_S = 0.02



def log_tail(path: Path | None, lines: int = 25) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(empty log)"




class Lifecycle:
    """``with thing:`` brings ``thing`` up with :meth:`_enter` (``start()``; the thing itself when it already runs)
    and always takes it down with :meth:`_exit` (``stop()``), whatever the block raised."""

    def _enter(self) -> Self:
        return self.start()  # type: ignore[attr-defined,no-any-return]

    def _exit(self) -> None:
        self.stop()  # type: ignore[attr-defined]

    def __enter__(self) -> Self:
        return self._enter()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit()


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


def register(pid: int, name: str) -> StartedPid | None:
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


class ManagedProcess(Lifecycle):
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
        self._entry = register(popen.pid, name)
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
                entry = register(child.pid, f"{self.name} child")
                if entry is not None:
                    self._extra.append(entry)
                    pids.append(child.pid)
        return pids

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)

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

    def _enter(self) -> Self:
        return self  # started by ManagedProcess.start()


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


def wait_until(proc: ManagedProcess, what: str, probe: Any, timeout_s: float = _READY_TIMEOUT_S) -> Any:
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


class LoopbackServer(Lifecycle):
    """A server program on a loopback port that :meth:`start` starts and waits for; ``with`` stops it by PID.

    Without a fixed ``port`` it takes a free one and retries (3 attempts) when another process bound it first
    (the program's log then says :attr:`bind_error`). Subclasses say how to launch and how to probe.
    """

    port_kind: ClassVar[str] = "tcp"
    #: what the program logs when its port was taken between free_port() and its bind()
    bind_error: ClassVar[str] = "Address already in use"
    #: refuse a fixed port that something already holds (a program that binds with SO_REUSEPORT would share it)
    check_fixed_port: ClassVar[bool] = False

    def __init__(self, port: int | None, clock: FakeClock | None, host: str) -> None:
        self._fixed_port = port
        self.port = port or 0
        self.clock = clock
        self.host = host
        self.process: ManagedProcess | None = None

    def _launch(self) -> ManagedProcess:
        raise NotImplementedError

    def _probe(self) -> Any:
        """Something non-None once the server answers (OSError: not yet)."""
        raise NotImplementedError

    def _describe(self) -> str:
        return f"{type(self).__name__} on {self.host}:{self.port}"

    def _log(self, process: ManagedProcess) -> str:
        return process.log_tail()

    def _ready(self, process: ManagedProcess) -> None:
        """Called once the server answers."""

    def start(self) -> Self:
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.port_kind, self.host)
            elif self.check_fixed_port:
                ensure_port_free(self.port_kind, self.host, self.port)
            self.process = process = self._launch()
            try:
                wait_until(process, self._describe(), self._probe)
                self._ready(process)
                return self
            except RuntimeError:
                process.stop()
                if attempt + 1 == attempts or self.bind_error not in self._log(process):
                    raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

"""What /proc (through psutil) says about one process, for discover: its owner, environment and working directory
(with what could not be read, and why), where it imports from, the Python that runs it, whether it sees this host's
root directory, and its uptime. Shared by the celery beat scan (timeguard.host.beat) and the APScheduler one
(timeguard.discover.aps).

Another user's process shows its command line to everyone, but its environment, working directory and open files
only to root and to that user.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from timeguard.secrets import redact_url


@dataclass
class ProcessView:
    """What this user may read of one process: ``env``/``cwd`` None when they could not be read, ``problems``
    then saying so (and as whom to run discover)."""

    pid: int
    uid: int | None
    user: str | None
    env: dict[str, str]
    cwd: str | None
    inspectable: bool
    problems: list[str] = field(default_factory=list)

    @property
    def roots(self) -> list[str]:
        return import_roots(self.cwd, self.env)


T = TypeVar("T")


def scan(select: Callable[[Any, list[str]], T | None],
         pids: Iterable[int] | None = None) -> list[tuple[Any, list[str], T]]:
    """``(process, command line, what select made of it)`` for every process among ``pids`` (default: every
    process; not this one) that ``select(process, command line)`` takes (not None), in pid order. A process running
    inside its parent with the same command line (a worker's pool, an embedded beat's child) is its parent's, and
    left out. A process that ends or hides while it is looked at is left out too."""
    import psutil

    chosen: dict[int, tuple[Any, list[str], T]] = {}
    procs = psutil.process_iter(["pid", "ppid", "cmdline"]) if pids is None else _processes(pids)
    for proc in procs:
        try:
            # process_iter gives None for a command line it may not read (another user's, a zombie's)
            raw = proc.info["cmdline"] if hasattr(proc, "info") else proc.cmdline()
            if not raw or proc.pid == os.getpid():
                continue
            cmdline = list(raw)
            found = select(proc, cmdline)
        except psutil.Error:
            continue
        if found is not None:
            chosen[proc.pid] = (proc, cmdline, found)
    kept = []
    for _, (proc, cmdline, found) in sorted(chosen.items()):
        try:
            parent = proc.ppid()
        except psutil.Error:
            continue
        if not (parent in chosen and chosen[parent][1] == cmdline):
            kept.append((proc, cmdline, found))
    return kept


def _processes(pids: Iterable[int]) -> Iterable[Any]:
    import psutil

    for pid in pids:
        try:
            yield psutil.Process(pid)
        except psutil.Error:
            continue


def view(proc: Any) -> ProcessView:
    """Owner, environment and working directory of ``proc`` (psutil.NoSuchProcess when it ended)."""
    import psutil

    pid = proc.pid
    denied: list[str] = []
    try:
        uid: int | None = proc.uids().real
        user: str | None = proc.username()
    except psutil.AccessDenied:
        uid, user = None, None
    except KeyError:  # a uid without a name
        uid, user = proc.uids().real, None
    env = read(proc.environ, f"/proc/{pid}/environ", denied)
    cwd = read(proc.cwd, f"/proc/{pid}/cwd", denied)
    problems = []
    if denied:
        problems.append(denied_problem(denied, uid, user))
    return ProcessView(pid, uid, user, env or {}, cwd, not denied, problems)


def denied_problem(denied: list[str], uid: int | None, user: str | None) -> str:
    owner = user or f"uid {uid}"
    who = "root" if uid == 0 else f"root or {owner}"
    return (f"permission denied reading {' and '.join(denied)} (the process belongs to {owner}: run timeguard "
            f"discover as {who})")


def read(getter: Any, what: str, denied: list[str]) -> Any:
    """``getter()``; None when the process is a zombie or gone, or when it is not ours to read (``what`` is then
    added to ``denied``)."""
    import psutil

    try:
        return getter()
    except psutil.AccessDenied:
        denied.append(what)
    except (psutil.ZombieProcess, FileNotFoundError):
        pass
    return None


def import_roots(cwd: str | None, env: dict[str, str]) -> list[str]:
    """Where the process imports the project from: its working directory (celery puts it on sys.path), then
    $PYTHONPATH (relative entries are relative to the working directory)."""
    roots = [cwd] if cwd else []
    for entry in env.get("PYTHONPATH", "").split(os.pathsep):
        if entry:
            path = entry if os.path.isabs(entry) or not cwd else os.path.join(cwd, entry)
            if path not in roots:
                roots.append(path)
    return roots


def interpreter(proc: Any, written: str | None, script: str | None, cwd: str | None,
                env: dict[str, str]) -> tuple[str | None, str]:
    """The Python that runs the process, as the application's own virtualenv names it (``/srv/app/.venv/bin/
    python``): ``written`` (argv[0] when it is a Python), else the shebang of ``script`` (the program argv names),
    else $VIRTUAL_ENV's, else /proc/PID/exe — which resolves the venv's symlink to the base interpreter, which has
    not the project's packages."""
    import psutil

    if written:
        if os.path.isabs(written):
            return written, "command line"
        if "/" in written and cwd:
            return os.path.normpath(os.path.join(cwd, written)), "command line (relative to the cwd)"
        if env.get("PATH"):
            found = shutil.which(written, path=env["PATH"])
            if found:
                return found, "command line, found on the process's $PATH"
    if script and cwd and not os.path.isabs(script) and "/" in script:
        script = os.path.join(cwd, script)
    if script and not os.path.isabs(script) and env.get("PATH"):
        script = shutil.which(script, path=env["PATH"]) or script
    if script and os.path.isabs(script):
        found = shebang(script)
        if found:
            return found, f"the shebang of {script}"
    if env.get("VIRTUAL_ENV") and os.path.exists(os.path.join(env["VIRTUAL_ENV"], "bin", "python")):
        return os.path.join(env["VIRTUAL_ENV"], "bin", "python"), "environment $VIRTUAL_ENV"
    try:
        return proc.exe() or None, "/proc/PID/exe (a virtualenv's symlink is resolved: check it)"
    except psutil.Error:
        return None, "unknown (permission denied)"


def shebang(script: str) -> str | None:
    try:
        with open(script, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env" and len(words) > 1:
        return None  # "#!/usr/bin/env python": which one depends on a PATH we may not know
    return words[0]


_URL_RE = re.compile(r"[A-Za-z][\w+.-]*://\S+")


def redact_arg(arg: str) -> str:
    """A command-line word with the password of any URL in it masked (``-b redis://:pw@host``)."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), arg)


def urls_in(arg: str) -> list[str]:
    """The URLs a command-line word holds (``--db=postgres://…``)."""
    return _URL_RE.findall(arg)


def other_root(pid: int) -> bool | None:
    """Whether the process's root directory is another than ours (a container, a chroot), so the paths it
    shows (interpreter, working directory, files) name other files than on this host; None when /proc/PID/root
    cannot be read (another user's process). A private mount namespace with the same root (systemd's PrivateTmp=,
    ProtectSystem=) is the same root."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/root"), os.stat("/")
    except OSError:
        return None
    return (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def uptime_s(pid: int) -> float | None:
    """Seconds since the process started, from the boot-time clock (/proc/uptime and /proc/PID/stat's start
    time): right across wall-clock steps, unlike psutil's create_time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        since_boot = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    try:
        start_ticks = int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None
    return max(0.0, since_boot - start_ticks / os.sysconf("SC_CLK_TCK"))


"""The command hook (``type: command``): run a program with the event, as systemd or cron would run it.

This is how ``systemctl restart celery-beat`` or any site script is wired to a clock step::

    hooks:
      - type: command
        name: restart-beat
        on: [rollback, rollback_while_down]     # the default
        timeout_s: 60
        command: [systemctl, restart, celery-beat]   # argv: no shell, no quoting problems
        env: {BEAT_UNIT: celery-beat}           # extra variables (optional); a secret one as
                                                #   {file: PATH} (relative: $CREDENTIALS_DIRECTORY) or {env: VAR}
        cwd: /srv/app                           # working directory (optional, must exist)
        # shell: true      → command is one string run by /bin/sh -c (explicitly, never by accident)
        # run_in_dry_run: true → run it in dry-run mode too, with TIMEGUARD_DRY_RUN=1 (the script must honour it)
        # kill_grace_s: 2  → on timeout, SIGTERM to its process group, SIGKILL this much later

What the program gets
    * Environment: timeguard's own (without ``NOTIFY_SOCKET``/``WATCHDOG_*``, see :func:`sdnotify.child_env`),
      then ``env:``, then the ``TIMEGUARD_*`` variables of :func:`event_environment`. Every one of those is
      always set; an unknown value is the empty string, so ``set -u`` scripts work.
    * stdin: one JSON object (:func:`stdin_document`): ``{"schema": 1, "hook": NAME, "dry_run": BOOL,
      "event": <Event.to_dict(): the journal's and webhooks' schema>, "verdict": <latest verdict or null>,
      "trusted_now_s": <float or null>}``, then EOF. A program that does not read it is fine.
    * Its own session and process group (``start_new_session``): on timeout the *group* gets SIGTERM, and
      SIGKILL ``kill_grace_s`` later if anything in it is still alive — a script that traps SIGTERM, or a
      grandchild it started, dies too. (A descendant that calls setsid() itself leaves the group; systemd's
      cgroup still ends it when timeguard stops.)

What its exit status means (borgmatic's convention for 75)
    * 0 → ``ok``; ``changed`` instead if a line of its output is exactly ``timeguard: changed`` (it repaired
      something, as opposed to only notifying).
    * 75 (EX_TEMPFAIL) → ``skipped``: "nothing to do here / not applicable", not an error.
    * anything else, death by a signal, a timeout, or a program that cannot be started → ``failed``.
    Output (stdout and stderr together) is kept up to :data:`MAX_OUTPUT_BYTES`: the head and the tail, with a
    marker saying how much was cut. Details give ``argv``, ``exit_code`` or ``signal``, ``timed_out``,
    ``cancelled``, ``killed``, ``output_bytes``, ``output_truncated``, ``pid``, ``duration_s`` (and
    ``left_running``: the pids of what it left running in its group when it exited).

Dry run: the program is *not* run; the result is ``skipped`` and says what would have run. With
``run_in_dry_run: true`` it is run, with ``TIMEGUARD_DRY_RUN=1``, and is trusted to change nothing.

Timeout protocol with the dispatcher (an extension of the contract in api.py): the hook has a writable
``timeout_s`` attribute, which the dispatcher sets from the hook's ``timeout_s``, so the child is killed by
the hook itself at that deadline (a thread cannot be killed; a process group can). It also stops its child
at once when ``ctx.cancelled()`` becomes true. :attr:`CommandHook.max_run_s` is the longest :meth:`handle`
can take (timeout + grace + reaping): a dispatcher that waits that long records the hook's own, more precise
result ("killed after ignoring SIGTERM") instead of abandoning the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from timeguard.events import Event, EventKind
from timeguard.hooks.api import (
    DEFAULT_TIMEOUT_S,
    HookConfigError,
    HookContext,
    HookResult,
    HookStatus,
    convert_options,
    option,
)
from timeguard.sdnotify import child_env
from timeguard.secrets import redact_text
from timeguard.timefmt import iso

#: The soft-fail exit status (EX_TEMPFAIL, borgmatic's SOFT_FAIL_EXIT_CODE): "not applicable", not an error.
EXIT_SKIP = 75
#: A line of output exactly this (surrounding blanks ignored) turns exit 0 into ``changed``.
CHANGED_MARKER = "timeguard: changed"
#: Output kept per run: the first HEAD and the last TAIL bytes (the end of a failing script says why).
MAX_OUTPUT_BYTES = 64 * 1024 - 512  # under the dispatcher's 64 Ki-character cut, marker included
_HEAD_BYTES = 48 * 1024
_TAIL_BYTES = MAX_OUTPUT_BYTES - _HEAD_BYTES
DEFAULT_KILL_GRACE_S = 2.0
#: After the program exits, how long to wait for output still held open by something it left running.
OUTPUT_LINGER_S = 0.5
#: After SIGKILL, how long to wait for the group to disappear (only a process stuck in the kernel takes longer).
_REAP_S = 1.0
_POLL_S = 0.05  # how often ctx.cancelled() is checked while the program runs

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: First words of a ``shell: true`` command that are not programs on PATH (so they are not validated).
_SHELL_WORDS = frozenset({
    "!", ".", ":", "[", "[[", "{", "(", "alias", "break", "case", "cd", "command", "continue", "echo", "eval",
    "exec", "exit", "export", "false", "for", "if", "printf", "read", "readonly", "return", "set", "shift",
    "source", "test", "times", "trap", "true", "type", "ulimit", "umask", "unset", "until", "wait", "while",
})


@dataclass(frozen=True, slots=True)
class CommandOptions:
    command: Any = option(doc="the program and its arguments as a list, e.g. [systemctl, restart, celery-beat]",
                          schema={"anyOf": [{"type": "array", "minItems": 1, "items": {"type": ["string", "number"]}},
                                            {"type": "string", "minLength": 1}]})
    shell: bool = option(False, doc="command is one string run by /bin/sh -c")
    env: Any = option(None, doc="extra variables; a secret one as {file: PATH} or {env: VAR}",
                      schema={"type": "object", "additionalProperties": {"anyOf": [
                          {"type": ["string", "number"]},
                          {"type": "object", "minProperties": 1, "maxProperties": 1,
                           "properties": {"env": {"type": "string"}, "file": {"type": "string"}},
                           "additionalProperties": False}]}})
    cwd: str | None = option(None, doc="working directory (an absolute path that exists)")
    run_in_dry_run: bool = option(False, doc="run it in dry-run mode too, with TIMEGUARD_DRY_RUN=1")
    kill_grace_s: float = option(DEFAULT_KILL_GRACE_S, lo=0, lo_open=True, hi=60,
                                 doc="on timeout, SIGTERM to its process group, SIGKILL this much later")


class CommandHook:
    """Runs one program per event; see the module documentation for the conventions."""

    Options: ClassVar[type[CommandOptions]] = CommandOptions
    default_on: ClassVar[frozenset[EventKind]] = frozenset({EventKind.ROLLBACK, EventKind.ROLLBACK_WHILE_DOWN})

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        shell: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        run_in_dry_run: bool = False,
        kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.argv = tuple(argv)  # with shell: ("/bin/sh", "-c", COMMAND)
        self.shell = shell
        self.env = dict(env or {})
        self.cwd = cwd
        self.run_in_dry_run = run_in_dry_run
        self.kill_grace_s = kill_grace_s
        #: Set by the dispatcher from the hook's ``timeout_s``; the child is killed at this deadline.
        self.timeout_s = timeout_s

    @property
    def max_run_s(self) -> float:
        """The longest :meth:`handle` takes: the timeout, the SIGTERM grace, reaping and output draining."""
        return self.timeout_s + self.kill_grace_s + _REAP_S + OUTPUT_LINGER_S

    @property
    def display(self) -> str:
        """The command as a person would type it, a password in it masked (it is shown, logged and journaled)."""
        return redact_text(self.argv[2] if self.shell else shlex.join(self.argv))

    @property
    def shown_argv(self) -> list[str]:
        """``argv`` for results and the journal: a URL's password or a ``password=`` in it masked."""
        return [redact_text(arg) for arg in self.argv]

    # ------------------------------------------------------------------------------------------ config

    @classmethod
    def from_config(cls, name: str, options: Mapping[str, Any]) -> CommandHook:
        opts, problems = convert_options(CommandOptions, options, hook="command")
        opts = opts or CommandOptions(command=None)  # a bad value was reported and left at its default
        env = _check_env(opts.env, problems)
        cwd = _check_cwd(opts.cwd, problems)
        argv = _check_command(opts.command, opts.shell, env, cwd, problems)
        if problems:
            raise HookConfigError(problems)
        assert argv is not None
        return cls(name, argv, shell=opts.shell, env=env, cwd=cwd, run_in_dry_run=opts.run_in_dry_run,
                   kill_grace_s=opts.kill_grace_s)

    # --------------------------------------------------------------------------------------------- run

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        if ctx.dry_run and not self.run_in_dry_run:
            return HookResult.skipped(f"dry run: would run {self.display}", argv=self.shown_argv, cwd=self.cwd,
                                      would_run=True)
        env = child_env()
        env.update(self.env)
        env.update(event_environment(event, ctx, hook=self.name))
        stdin = stdin_document(event, ctx, hook=self.name).encode()
        started = time.monotonic()
        try:
            run = run_supervised(self.argv, timeout_s=self.timeout_s, grace_s=self.kill_grace_s, stdin=stdin,
                                 env=env, cwd=self.cwd, cancelled=ctx.cancelled)
        except OSError as exc:
            return HookResult.failed(f"could not start {self.display}: {exc.strerror or exc}", argv=self.shown_argv,
                                     cwd=self.cwd, errno=exc.errno)
        return self._result(run, time.monotonic() - started)

    def _result(self, run: _Run, duration_s: float) -> HookResult:
        code = run.returncode
        details: dict[str, Any] = {
            "argv": self.shown_argv, "pid": run.proc.pid, "duration_s": round(duration_s, 3),
            "output_bytes": run.output.total, "output_truncated": run.output.truncated,
            "timed_out": run.timed_out, "cancelled": run.stopped, "killed": run.killed,
        }
        if code is not None and code < 0:
            details["signal"] = _signal_name(-code)
        else:
            details["exit_code"] = code
        if run.left_running:
            details["left_running"] = run.left_running
        output = run.output.text()
        if run.timed_out or run.stopped:
            why = (f"timed out after {self.timeout_s:g} s" if run.timed_out
                   else "cancelled by timeguard (it is stopping, or the run's time was up)")
            if "SIGKILL" in run.killed:
                how = (f"its process group got SIGTERM and, still running {self.kill_grace_s:g} s later, SIGKILL")
            else:
                how = "its process group got SIGTERM and ended"
            return HookResult(HookStatus.FAILED, f"{self.display}: {why}: {how}", details, output)
        if code is None:  # it ignored even SIGKILL (stuck in the kernel): not reaped yet
            return HookResult(HookStatus.FAILED, f"{self.display}: did not end after SIGKILL", details, output)
        if code < 0:
            return HookResult(HookStatus.FAILED, f"{self.display}: killed by {_signal_name(-code)}", details, output)
        if code == 0:
            if any(line.strip() == CHANGED_MARKER for line in output.splitlines()):
                return HookResult(HookStatus.CHANGED, f"{self.display}: exited 0 and changed something", details,
                                  output)
            return HookResult(HookStatus.OK, f"{self.display}: exited 0", details, output)
        if code == EXIT_SKIP:
            return HookResult(HookStatus.SKIPPED, f"{self.display}: not applicable (exit {EXIT_SKIP})", details,
                              output)
        return HookResult(HookStatus.FAILED, f"{self.display}: exited {code}", details, output)


# ---------------------------------------------------------------------------------------- what it gets


def _iso(seconds: float | None) -> str:
    return iso(seconds, "microseconds", none="", utc="+00:00")


def _num(value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    return repr(float(value))


def event_environment(event: Event, ctx: HookContext, *, hook: str) -> dict[str, str]:
    """The ``TIMEGUARD_*`` variables: every one always set, "" where the value is unknown.

    Times come twice: ``…_TIME`` in ISO 8601 UTC and ``…_TIME_S`` in UNIX seconds. The verdict variables are
    the *latest* verdict when the hook runs (the event's own, from detection time, is in the stdin JSON).
    """
    verdict = ctx.verdict if ctx.verdict is not None else event.verdict
    verdict = verdict or {}
    trusted_now = ctx.trusted_now()
    return {
        "TIMEGUARD_HOOK_NAME": hook,
        "TIMEGUARD_EVENT_SCHEMA": str(event.schema),
        "TIMEGUARD_EVENT_KIND": event.kind.value,
        "TIMEGUARD_EVENT_ID": event.id,
        "TIMEGUARD_INCIDENT_ID": event.incident_id,
        "TIMEGUARD_HOST": event.host,
        "TIMEGUARD_BOOT_ID": event.boot_id,
        "TIMEGUARD_STEP_S": _num(event.step_s),
        "TIMEGUARD_WALL_TIME": _iso(event.wall_time_s),
        "TIMEGUARD_WALL_TIME_S": _num(event.wall_time_s),
        "TIMEGUARD_WALL_BEFORE_TIME": _iso(event.wall_before_s),
        "TIMEGUARD_WALL_BEFORE_TIME_S": _num(event.wall_before_s),
        "TIMEGUARD_TRUSTED_TIME": _iso(event.trusted_time_s),
        "TIMEGUARD_TRUSTED_TIME_S": _num(event.trusted_time_s),
        "TIMEGUARD_TRUSTED_NOW": _iso(trusted_now),
        "TIMEGUARD_TRUSTED_NOW_S": _num(trusted_now),
        "TIMEGUARD_VERDICT_STATUS": str(verdict.get("status") or ""),
        "TIMEGUARD_OFFSET_S": _num(verdict.get("offset_s")),
        "TIMEGUARD_OFFSET_LO_S": _num(verdict.get("offset_lo_s")),
        "TIMEGUARD_OFFSET_HI_S": _num(verdict.get("offset_hi_s")),
        "TIMEGUARD_DRY_RUN": "1" if ctx.dry_run else "0",
        "TIMEGUARD_TEST": "1" if event.test else "0",
    }


def stdin_document(event: Event, ctx: HookContext, *, hook: str) -> str:
    """The JSON the program reads on stdin (one line, then EOF)."""
    doc = {
        "schema": 1, "hook": hook, "dry_run": ctx.dry_run, "event": event.to_dict(),
        "verdict": dict(ctx.verdict) if ctx.verdict is not None else None, "trusted_now_s": ctx.trusted_now(),
    }
    return json.dumps(doc, sort_keys=True, default=str) + "\n"


# ------------------------------------------------------------------------------------------ validation


def _check_env(value: Any, problems: list[tuple[str, str]]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(("env", f"must be a mapping of variable names to values, not {value!r}"))
        return {}
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            problems.append((f"env.{key}", "is not a valid variable name (letters, digits, _; not first a digit)"))
        elif key.startswith("TIMEGUARD_"):
            problems.append((f"env.{key}", "TIMEGUARD_* variables are set by timeguard itself"))
        elif isinstance(item, dict) and set(item) in ({"env"}, {"file"}):  # a secret, kept out of the config
            from timeguard.hooks.webhook import read_secret

            kind, source = next(iter(item.items()))
            secret = read_secret({f"v_{kind}": source}, "v", problems, report_as=f"env.{key}")
            if secret is not None:
                env[key] = secret
        elif isinstance(item, bool) or not isinstance(item, str | int | float):
            problems.append((f"env.{key}", "must be text or a number (a secret: {file: PATH} or {env: VAR}), "
                                           f"not {item!r} (quote it)"))
        elif "\0" in str(item):
            problems.append((f"env.{key}", "must not contain a NUL byte"))
        else:
            env[key] = str(item)
    return env


def _check_cwd(value: Any, problems: list[tuple[str, str]]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        problems.append(("cwd", f"must be an absolute directory path, not {value!r}"))
        return None
    if not Path(value).is_dir():
        problems.append(("cwd", f"{value} is not an existing directory"))
        return None
    return value


def _check_command(value: Any, shell: bool, env: Mapping[str, str], cwd: str | None,
                   problems: list[tuple[str, str]]) -> tuple[str, ...] | None:
    path_var = env.get("PATH", os.environ.get("PATH", os.defpath))
    if value is None:  # required: the converter said so
        return None
    if shell:
        if not isinstance(value, str) or not value.strip():
            problems.append(("command", "with shell: true, must be one non-empty string for /bin/sh -c"))
            return None
        try:
            words = shlex.split(value)
        except ValueError:
            words = []  # the shell will report its own syntax error; we cannot tell the program
        first = words[0] if words else ""
        if first and "=" not in first and first not in _SHELL_WORDS:
            problem = _check_program(first, path_var, cwd)
            if problem:
                problems.append(("command", problem))
        return ("/bin/sh", "-c", value)
    if isinstance(value, str):
        problems.append(("command", "is one string: give a list of arguments, e.g. "
                         f"{json.dumps(shlex.split(value) if _splits(value) else [value])}, "
                         "or set shell: true to run it with /bin/sh -c"))
        return None
    if not isinstance(value, list) or not value:
        problems.append(("command", f"must be a non-empty list of arguments, not {value!r}"))
        return None
    bad = [i for i, arg in enumerate(value) if not isinstance(arg, str | int | float) or isinstance(arg, bool)]
    for i in bad:
        problems.append((f"command[{i}]", f"must be text, not {value[i]!r}"))
    if bad:
        return None
    argv = tuple(str(arg) for arg in value)
    if any("\0" in arg for arg in argv):
        problems.append(("command", "an argument contains a NUL byte"))
        return None
    problem = _check_program(argv[0], path_var, cwd)
    if problem:
        problems.append(("command[0]", problem))
    return argv


def _splits(text: str) -> bool:
    try:
        return bool(shlex.split(text))
    except ValueError:
        return False


def _check_program(program: str, path_var: str, cwd: str | None) -> str | None:
    """None when ``program`` can be executed; else what is wrong and what to do (certbot's validate_hook)."""
    if not program:
        return "the program name is empty"
    if "/" not in program:
        if shutil.which(program, path=path_var) is None:
            return f"program {program!r} not found on PATH ({path_var}); give its absolute path or set env.PATH"
        return None
    if not program.startswith("/"):
        if cwd is None:
            return (f"{program!r} is relative to the daemon's working directory, which is not yours to "
                    "choose: give an absolute path (or set cwd)")
        program = os.path.join(cwd, program)
    path = Path(program)
    if not path.exists():
        return f"{program} does not exist"
    if path.is_dir():
        return f"{program} is a directory, not a program"
    if not os.access(path, os.X_OK):
        mode = path.stat().st_mode & 0o777
        return f"{program} is not executable (mode {mode:04o}): chmod +x it"
    return None


# ------------------------------------------------------------------------------------------ supervising


def run_supervised(argv: Sequence[str], *, timeout_s: float, grace_s: float = DEFAULT_KILL_GRACE_S,
                   stdin: bytes = b"", env: Mapping[str, str] | None = None, cwd: str | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> _Run:
    """Run ``argv`` in its own process group until it exits, ``timeout_s`` passes or ``cancelled()``: then the
    group gets SIGTERM and, ``grace_s`` later, SIGKILL. Feeds ``stdin``; keeps the head and tail of its output.
    The one supervisor of child programs (the command hook, a repair owner's stop/start). OSError: it could not
    be started."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True, close_fds=True,
    )
    run = _Run(proc, stdin, deadline=started + timeout_s, grace_s=grace_s, cancelled=cancelled)
    try:
        run.supervise()
    finally:
        run.close()
    return run


@dataclass
class _Output:
    """Combined stdout/stderr: the head and the tail, and how much there was."""

    head: bytearray = field(default_factory=bytearray)
    tail: bytearray = field(default_factory=bytearray)
    total: int = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = _HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            del self.tail[:-_TAIL_BYTES]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        if not self.truncated:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        head, tail = self.head.decode("utf-8", "replace"), self.tail.decode("utf-8", "replace")
        cut = self.total - len(self.head) - len(self.tail)
        return f"{head}\n[… {cut} bytes of output cut (of {self.total}) …]\n{tail}"


class _Run:
    """One child: feeds its stdin, collects its output, watches the deadline, kills its process group.

    The child is not reaped until its group is dealt with (``waitid(WNOWAIT)`` peeks): while it is a zombie
    its pid cannot be reused, so ``killpg(pid)`` can never hit a stranger's group.
    """

    def __init__(self, proc: subprocess.Popen[bytes], stdin: bytes, *, deadline: float, grace_s: float,
                 cancelled: Callable[[], bool]) -> None:
        self.proc = proc
        self.pgid = proc.pid  # start_new_session: the child leads its own group
        self.deadline = deadline
        self.grace_s = grace_s
        self.cancelled = cancelled
        self.output = _Output()
        self.returncode: int | None = None
        self.timed_out = False
        self.stopped = False  # ctx.cancelled(): the daemon stops, or the dispatcher gave up on the run
        self.killed: list[str] = []  # signals sent to the group
        self.left_running: list[int] = []
        self._stdin = memoryview(stdin)
        self._sel = selectors.DefaultSelector()
        self._pidfd: int | None = None
        assert proc.stdin is not None and proc.stdout is not None
        self._in_fd: int | None = proc.stdin.fileno()
        self._out_fd: int | None = proc.stdout.fileno()
        os.set_blocking(self._in_fd, False)
        os.set_blocking(self._out_fd, False)
        self._sel.register(self._out_fd, selectors.EVENT_READ, "out")
        if self._stdin:
            self._sel.register(self._in_fd, selectors.EVENT_WRITE, "in")
        else:
            self._close_stdin()
        with contextlib.suppress(AttributeError, OSError):  # pidfd: Linux ≥ 5.3; else we poll
            self._pidfd = os.pidfd_open(proc.pid)
            self._sel.register(self._pidfd, selectors.EVENT_READ, "exit")

    def supervise(self) -> None:
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if exited_at is None and self._exited():
                exited_at = now
            if exited_at is not None:
                if self._out_fd is None or now - exited_at >= OUTPUT_LINGER_S:
                    break
                wait = exited_at + OUTPUT_LINGER_S - now
            else:
                if now >= self.deadline:
                    self.timed_out = True
                    self._kill_group()
                    return
                if self.cancelled():
                    self.stopped = True
                    self._kill_group()
                    return
                wait = min(self.deadline - now, _POLL_S)
            self._pump(wait)
        # Exited on its own. Whatever it left in its group keeps running (it may be meant to) and is reported.
        self.left_running = _live_group_members(self.pgid)
        self.returncode = self.proc.wait()

    def _kill_group(self) -> None:
        self._signal_group(signal.SIGTERM)
        end = time.monotonic() + self.grace_s
        while time.monotonic() < end:
            self._pump(_POLL_S)
            if self._exited() and not _live_group_members(self.pgid):
                break
        else:
            self._signal_group(signal.SIGKILL)
        end = time.monotonic() + _REAP_S
        while time.monotonic() < end:
            self._pump(0.01)
            if self._exited() and not _live_group_members(self.pgid):
                break
        self._pump(0)
        if self._exited():
            self.returncode = self.proc.wait()

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return
        self.killed.append(sig.name)

    def _exited(self) -> bool:
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped (by Popen's own bookkeeping)
            return True
        return info is not None and info.si_pid == self.proc.pid

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the child to exit, read output or take more of stdin."""
        for key, _ in self._sel.select(max(timeout, 0)):
            if key.data == "out":
                self._read()
            elif key.data == "in":
                self._write()
            elif key.data == "exit":
                self._sel.unregister(key.fd)  # stays readable once exited: stop waking on it
        if self._out_fd is not None:
            self._read()

    def _read(self) -> None:
        assert self._out_fd is not None
        while True:
            try:
                chunk = os.read(self._out_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._sel.unregister(self._out_fd)
                self._out_fd = None
                return
            self.output.add(chunk)

    def _write(self) -> None:
        assert self._in_fd is not None
        try:
            written = os.write(self._in_fd, self._stdin)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: it exited or closed stdin without reading all of it; that is its choice
            written = len(self._stdin)
        self._stdin = self._stdin[written:]
        if not self._stdin:
            self._sel.unregister(self._in_fd)
            self._close_stdin()

    def _close_stdin(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self._in_fd = None

    def close(self) -> None:
        self._sel.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies, from /proc (empty where /proc cannot tell)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return sorted(members)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"

"""A small script run by the application's own interpreter: how timeguard reads what only the application can.

Django settings (the celery_beat target's ``django:`` option), pickled celery schedule entries and APScheduler
jobs can only be read with the application's code importable — its virtualenv, its ``sys.path``, its environment.
timeguard never imports that code into itself (its process has other secrets and another lifetime): it runs *that*
interpreter on a script, with the application's path and environment file, as the application's user where one is
configured, under a deadline, and reads one JSON answer.

The protocol: the script gets :data:`PRELUDE` first — ``args`` (the JSON payload of argv[1]; its ``path`` is put
first on ``sys.path``), ``answer(**kw)`` (prints the one answer line and exits) and ``failed(kind)`` (answers
``{error: kind, detail: the exception's last line}``). Anything the application prints goes to stderr; the answer is
the one stdout line that starts with :data:`MARK`. An answer with ``error`` is the caller's to explain.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timeguard.repair.envfile import EnvFileError, parse
from timeguard.repair.target import RepairError
from timeguard.secrets import redact_text

MARK = "TIMEGUARD-APP-ANSWER "
#: What of timeguard's environment a script run as another ``user`` sees (besides LC_*): its own may hold secrets.
PASSED_TO_USER = frozenset({"PATH", "LANG", "LANGUAGE", "TZ"})

PRELUDE = r'''
import json, sys, traceback
_tg_out, sys.stdout = sys.stdout, sys.stderr
args = json.loads(sys.argv[1])
sys.path[:0] = args.get("path", [])
def answer(**kw):
    _tg_out.write("\n" + MARK + json.dumps(kw, default=str) + "\n")
    _tg_out.flush()
    sys.exit(0)
def failed(kind):
    lines = [l.strip() for l in traceback.format_exc().strip().splitlines() if l.strip()]
    answer(error=kind, detail=lines[-1] if lines else "")
'''.replace("MARK", repr(MARK))


class AppRunError(RepairError):
    """The script could not be run or gave no answer: what and where, naming the option to fix (never a secret)."""


@dataclass(frozen=True, slots=True)
class AppInterpreter:
    """How to run the application's code: its interpreter, ``sys.path`` (the first entry is also the working
    directory), environment file (systemd ``EnvironmentFile=`` syntax), user and a deadline. ``key`` is the option
    that configured it (``django``, ``app``…), for messages."""

    python: str
    path: tuple[str, ...] = ()
    environment_file: str | None = None
    user: str | None = None
    timeout_s: float = 30.0
    key: str = "app"

    def run(self, script: str, payload: Mapping[str, Any], *, doing: str, error: type[RepairError] = AppRunError,
            env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Run ``script`` (after :data:`PRELUDE`) with ``payload`` (``path`` added) and return its answer.

        ``doing`` says what the script does, for messages ("reading the settings proj.settings"); ``env`` is added
        to the environment last. Raises ``error`` when the interpreter cannot be run, times out (its process group
        is killed), exits without an answer or answers garbage."""
        python = self.python
        if not os.path.exists(python):
            raise error(f"{self.key}.python {python}: no such file (the application's interpreter)")
        if not os.access(python, os.X_OK) or os.path.isdir(python):
            raise error(f"{self.key}.python {python}: not an executable file")
        environ = dict(os.environ)
        run_as: dict[str, Any] = {}
        if self.user is not None:
            run_as, home = self._run_as(error)
            environ = {k: v for k, v in os.environ.items() if k in PASSED_TO_USER or k.startswith("LC_")}
            environ.update({"HOME": home, "USER": self.user, "LOGNAME": self.user})
        if self.environment_file is not None:
            where = f"{self.key}.environment_file {self.environment_file}"
            try:
                text = Path(self.environment_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise error(f"{where}: {getattr(exc, 'strerror', None) or exc}") from None
            try:
                environ.update(parse(text, where))
            except EnvFileError as exc:
                raise error(str(exc)) from None
        environ.update(env or {})
        argv = [python, "-c", PRELUDE + script, json.dumps({**payload, "path": list(self.path)})]
        try:
            child = subprocess.Popen(argv, env=environ, cwd=self.path[0] if self.path else "/",
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True, **run_as)
        except OSError as exc:
            raise error(f"{self.key}.python {python}: cannot run it: {exc.strerror or exc}") from None
        try:
            stdout, stderr = child.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # its own session: the application may have started more
                os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            raise error(f"{self.key}: {doing} in {python} did not finish within {self.timeout_s:g} s "
                        f"({self.key}.timeout_s); it was killed") from None
        out, err = stdout.decode("utf-8", "replace"), stderr.decode("utf-8", "replace")
        lines = [line[len(MARK):] for line in out.splitlines() if line.startswith(MARK)]
        if not lines:
            tail = redact_text(last_line(err) or last_line(out) or "no output")
            raise error(f"{self.key}: {python} exited {child.returncode} without {doing}: {tail}")
        try:
            answer = json.loads(lines[-1])
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError:
            raise error(f"{self.key}: {doing} in {python} printed an unreadable answer "
                        f"({last_line(lines[-1])[:80]!r})") from None
        return answer

    def _run_as(self, error: type[RepairError]) -> tuple[dict[str, Any], str]:
        import pwd

        assert self.user is not None
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:
            raise error(f"{self.key}.user {self.user!r}: no such user") from None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            raise error(f"{self.key}.user {self.user!r}: running the application's code as another user needs "
                        f"root (timeguard runs as uid {os.geteuid()}); leave user out to run it as this one")
        groups = os.getgrouplist(self.user, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}, entry.pw_dir


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""

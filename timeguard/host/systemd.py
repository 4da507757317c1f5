"""What systemd says about a process: the unit it runs in (from /proc/PID/cgroup, readable by everyone) and that
unit's EnvironmentFile= (``systemctl show``), and whether such a file assigns the variables a project reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

_UNIT_RE = re.compile(r"^/system\.slice/(?:[^/]+\.slice/)*([^/]+\.service)$")
_USER_UNIT_RE = re.compile(r"/user@\d+\.service/(?:[^/]+\.slice/)*([^/]+\.service)$")


def systemd_unit(pid: int) -> tuple[str | None, str | None]:
    """(system unit, user unit) of a process, from /proc/PID/cgroup (readable by everyone)."""
    try:
        return unit_from_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    except OSError:
        return None, None


def unit_from_cgroup(text: str) -> tuple[str | None, str | None]:
    """(system unit, user unit) from the text of /proc/PID/cgroup: ``0::/system.slice/x.service`` (cgroup v2) or
    the ``name=systemd`` hierarchy (v1); a service in a sub-slice (``system-celery.slice/celery@a.service``)
    too. A scope (a login session, a container) is no unit to stop."""
    for line in text.splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        if hierarchy not in ("", "name=systemd"):
            continue
        system = _UNIT_RE.match(path)
        if system:
            return system.group(1), None
        user = _USER_UNIT_RE.search(path)
        if user:
            return None, user.group(1)
    return None, None


def environment_file(unit: str) -> str | None:
    """The unit's EnvironmentFile= as systemctl reports it; None without systemd, without one, or with several
    (the hook reads one file: the variables then come from the beat's environment instead)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        out = subprocess.run([systemctl, "show", "--property=EnvironmentFiles", "--value", "--", unit],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    files = environment_files(out.stdout) if out.returncode == 0 else []
    return files[0] if len(files) == 1 else None


def environment_files(shown: str) -> list[str]:
    """The paths in ``systemctl show --property=EnvironmentFiles --value``: one per line,
    ``/etc/default/celery (ignore_errors=no)``."""
    paths = [line.rsplit(" (ignore_errors=", 1)[0].strip() for line in shown.splitlines()]
    return [p for p in paths if p.startswith("/")]


def missing_from(path: str, names: list[str]) -> list[str]:
    """Which of ``names`` the environment file ``path`` does not assign (``NAME=`` or ``export NAME=`` at the
    start of a line); all of them when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return list(names)
    assigned = set(re.findall(r"^[ \t]*(?:export[ \t]+)?([A-Za-z_]\w*)[ \t]*=", text, re.MULTILINE))
    return [n for n in names if n not in assigned]

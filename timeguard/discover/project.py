"""What a celery project's own files say about its beat, read as text — never imported, never run (reading runs
none of the application's code, so discover is safe as root on any project).

Three things are looked up, each with the file and line it came from:

* the Django settings module a celery app module sets for itself —
  ``os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")`` in ``proj/celery.py`` or ``manage.py`` —
  when the process's environment does not name it (setdefault changes the process's memory, not
  /proc/PID/environ);
* the scheduler (``beat_scheduler`` in the app's configuration, ``CELERY_BEAT_SCHEDULER`` in Django settings read
  with the ``CELERY`` namespace, celery 3's ``CELERYBEAT_SCHEDULER``) when the command line names none;
* beat's maximum sleep (``beat_max_loop_interval``, ``CELERY_BEAT_MAX_LOOP_INTERVAL``, ``CELERYBEAT_MAX_LOOP_INTERVAL``
  — celery/app/defaults.py; the scheduler's own default applies when it is 0 or unset).

Only plain literals assigned at the top of a line are understood; anything computed (``env("X")``) is not a
value, and the caller falls back to celery's defaults and says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

#: A project file larger than this is not a settings or app module: skipped, never read whole.
MAX_FILE_BYTES = 1 << 20

_SETTINGS_RE = re.compile(
    r"""^\s*os\.environ\.setdefault\(\s*['"]DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([A-Za-z_][\w.]*)['"]\s*\)""",
    re.MULTILINE)
_SCHEDULER_RE = re.compile(
    r"""^\s*(?:[\w.]*\.)?(CELERY_BEAT_SCHEDULER|CELERYBEAT_SCHEDULER|beat_scheduler)\s*=\s*['"]([^'"\s]+)['"]""",
    re.MULTILINE)
_MAX_LOOP_RE = re.compile(
    r"""^\s*(?:[\w.]*\.)?(CELERY_BEAT_MAX_LOOP_INTERVAL|CELERYBEAT_MAX_LOOP_INTERVAL|beat_max_loop_interval)"""
    r"""\s*=\s*([0-9]+(?:\.[0-9]*)?)\s*(?:#.*)?$""",
    re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Found:
    """A value and where it was read: ``path:line``."""

    value: str
    where: str


def module_files(module: str, roots: list[str]) -> list[Path]:
    """The files that may define the module ``module`` (``a.b`` → ``a/b.py``, ``a/b/__init__.py``) under each
    import root, existing ones only, in import order."""
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", module):
        return []
    rel = Path(*module.split("."))
    out: list[Path] = []
    for root in roots:
        for candidate in (Path(root) / rel.with_suffix(".py"), Path(root) / rel / "__init__.py"):
            if candidate.is_file() and candidate not in out:
                out.append(candidate)
    return out


def app_files(app: str | None, roots: list[str]) -> list[Path]:
    """The files of the celery app ``-A app`` names, as celery's find_app looks for it: the module (``proj``,
    ``proj.celery`` of ``proj.celery:app``) and, for a package, its ``celery`` submodule."""
    if not app:
        return []
    module = app.split(":", 1)[0]
    files = module_files(module, roots)
    if any(f.name == "__init__.py" for f in files):
        files += [f for f in module_files(f"{module}.celery", roots) if f not in files]
    return files


def _read(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _search(pattern: re.Pattern[str], files: list[Path], group: int) -> Found | None:
    """The last assignment in the last file (later files are read later by celery: the app, then settings)."""
    found = None
    for path in files:
        text = _read(path)
        if text is None:
            continue
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start(group)) + 1  # the leading whitespace may span blank lines
            found = Found(match.group(group), f"{path}:{line}")
    return found


def settings_module(files: list[Path]) -> Found | None:
    """The module a ``DJANGO_SETTINGS_MODULE`` setdefault in ``files`` names."""
    return _search(_SETTINGS_RE, files, 1)


def scheduler(files: list[Path]) -> Found | None:
    return _search(_SCHEDULER_RE, files, 2)


def max_loop_interval(files: list[Path]) -> Found | None:
    found = _search(_MAX_LOOP_RE, files, 2)
    if found is not None and float(found.value) == 0:
        return None  # 0 is celery's "unset": the scheduler's own default applies
    return found

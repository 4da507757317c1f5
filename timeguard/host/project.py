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

A value is a literal or an environment variable the process has (``os.environ["X"]``, ``os.environ.get("X",
default)``, ``os.getenv``, inside ``int()``/``float()``); a settings module's ``from .base import *`` is followed.
Anything else (``env.int("X")``, a conditional) is not a value, and the caller falls back to celery's defaults
and says so. The parsing is ``ast.parse`` of the right-hand side only: nothing is executed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: A project file larger than this is not a settings or app module: skipped, never read whole.
MAX_FILE_BYTES = 1 << 20
#: How deep ``from .base import *`` chains are followed (settings/production.py → base.py → …).
MAX_STAR_DEPTH = 4

_SETTINGS_RE = re.compile(
    r"""^[ \t]*os\.environ\.setdefault\([ \t]*['"]DJANGO_SETTINGS_MODULE['"][ \t]*,[ \t]*['"]([A-Za-z_][\w.]*)['"]""",
    re.MULTILINE)
_SCHEDULER_NAMES = ("CELERY_BEAT_SCHEDULER", "CELERYBEAT_SCHEDULER", "beat_scheduler")
_MAX_LOOP_NAMES = ("CELERY_BEAT_MAX_LOOP_INTERVAL", "CELERYBEAT_MAX_LOOP_INTERVAL", "beat_max_loop_interval")
#: The environment variables a settings module reads: os.environ["X"], os.environ.get("X"), os.getenv("X"),
#: django-environ's env("X") / env.str("X") / env.db("X"), and dj-database-url's config() (DATABASE_URL, or env=).
_ENV_READ_RE = re.compile(
    r"""(?:os\.environ(?:\.get)?|os\.getenv|\benv(?:\.\w+)?)[\[(][ \t]*['"]([A-Za-z_]\w*)['"]""")
_DJ_DATABASE_URL_RE = re.compile(r"""dj_database_url\.config\(([^)]*)\)""")
_ENV_DB_RE = re.compile(r"""\benv\.db(?:_url)?\(\s*\)""")
_STAR_RE = re.compile(r"^from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+\*", re.MULTILINE)


def _assignment_re(names: tuple[str, ...]) -> re.Pattern[str]:
    """``NAME = value`` at the start of a line, ``app.conf.NAME = value``, or ``NAME=value,`` in a call."""
    return re.compile(rf"^[ \t]*(?:[\w.]*\.)?(?:{'|'.join(names)})[ \t]*=[ \t]*(?P<value>[^\n]+)$", re.MULTILINE)


_SCHEDULER_RE = _assignment_re(_SCHEDULER_NAMES)
_MAX_LOOP_RE = _assignment_re(_MAX_LOOP_NAMES)
_REDBEAT_URL_RE = _assignment_re(("CELERY_REDBEAT_REDIS_URL", "REDBEAT_REDIS_URL", "redbeat_redis_url"))


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


def with_star_imports(files: list[Path], roots: list[str]) -> list[Path]:
    """``files`` with the modules they ``from X import *`` (absolute or relative) before each: a settings module
    built on a shared one (``from .base import *``) inherits its values, and its own assignments win."""
    out: list[Path] = []

    def add(path: Path, depth: int) -> None:
        if path in out:
            return
        text = _read(path)
        if text is not None and depth < MAX_STAR_DEPTH:
            for match in _STAR_RE.finditer(text):
                for imported in _star_files(path, match.group(1), match.group(2), roots):
                    add(imported, depth + 1)
        if path not in out:
            out.append(path)

    for path in files:
        add(path, 0)
    return out


def _star_files(importer: Path, dots: str, module: str, roots: list[str]) -> list[Path]:
    if not dots:
        return module_files(module, roots) if module else []
    base = importer.parent
    for _ in range(len(dots) - 1):
        base = base.parent
    return module_files(module, [str(base)]) if module else []


def _search(pattern: re.Pattern[str], files: list[Path], env: Mapping[str, str] | None = None) -> Found | None:
    """The last value assigned in the last file (celery reads the app, then the settings; a later assignment
    wins): a literal, or an environment variable the process has (``os.environ["X"]``, ``os.environ.get("X",
    default)``, ``os.getenv``, inside ``int()``/``float()``/``str()``)."""
    found = None
    for path in files:
        text = _read(path)
        if text is None:
            continue
        for match in pattern.finditer(text):
            value = _evaluate(match.group("value"), env or {})
            if value is None:
                continue
            line = text.count("\n", 0, match.start("value")) + 1
            found = Found(value[0], f"{path}:{line}" + (f" (${value[1]})" if value[1] else ""))
    return found


def _evaluate(source: str, env: Mapping[str, str]) -> tuple[str, str | None] | None:
    """(value, the environment variable it came from) of a right-hand side, or None when it is anything but a
    literal or an environment lookup: nothing is ever executed."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError:
        return None
    if isinstance(node, ast.Tuple) and len(node.elts) == 1:
        node = node.elts[0]  # ``beat_scheduler='x',`` — a keyword argument of app.conf.update(…) on its own line
    return _node_value(node, env)


def _node_value(node: ast.expr, env: Mapping[str, str]) -> tuple[str, str | None] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float) and not isinstance(
            node.value, bool):
        return str(node.value), None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("int", "float", "str") \
            and len(node.args) == 1 and not node.keywords:
        return _node_value(node.args[0], env)
    variable, default = _environment_lookup(node)
    if variable is None:
        return None
    if variable in env:
        return env[variable], variable
    return (default, None) if default is not None else None


def _environment_lookup(node: ast.expr) -> tuple[str | None, str | None]:
    """``os.environ["X"]`` → ("X", None); ``os.environ.get("X", "d")`` / ``os.getenv("X", "d")`` → ("X", "d")."""
    if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" and isinstance(
            node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value, None
    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv") and node.args \
            and not node.keywords and all(isinstance(a, ast.Constant) for a in node.args) and len(node.args) <= 2:
        values = [a.value for a in node.args]  # type: ignore[attr-defined]
        if not isinstance(values[0], str):
            return None, None
        default = values[1] if len(values) == 2 and isinstance(values[1], str | int | float) else None
        return values[0], None if default is None else str(default)
    return None, None


def settings_module(files: list[Path]) -> Found | None:
    """The module the first ``DJANGO_SETTINGS_MODULE`` setdefault in ``files`` (in the order they run) names: a
    later setdefault changes nothing."""
    for path in files:
        text = _read(path) or ""
        match = _SETTINGS_RE.search(text)
        if match is not None:
            return Found(match.group(1), f"{path}:{text.count(chr(10), 0, match.start(1)) + 1}")
    return None


def scheduler(files: list[Path], env: Mapping[str, str] | None = None) -> Found | None:
    return _search(_SCHEDULER_RE, files, env)


def max_loop_interval(files: list[Path], env: Mapping[str, str] | None = None) -> Found | None:
    found = _search(_MAX_LOOP_RE, files, env)
    try:
        if found is not None and float(found.value) == 0:
            return None  # 0 is celery's "unset": the scheduler's own default applies
    except ValueError:
        return found  # the caller says it is not a number
    return found


def redbeat_redis_url(files: list[Path], env: Mapping[str, str] | None = None) -> Found | None:
    """RedBeat's ``redbeat_redis_url`` (Django: ``CELERY_REDBEAT_REDIS_URL``); RedBeat uses the broker without it."""
    return _search(_REDBEAT_URL_RE, files, env)


def environment_names(files: list[Path]) -> list[str]:
    """The environment variables ``files`` read, in the order first read (a settings module's inputs: what the
    repair's reading of the settings needs in its environment too)."""
    names: list[str] = []
    for path in files:
        text = _read(path) or ""
        found = [(m.start(), m.group(1)) for m in _ENV_READ_RE.finditer(text)]
        for match in _DJ_DATABASE_URL_RE.finditer(text):
            named = re.search(r"""env\s*=\s*['"]([A-Za-z_]\w*)['"]""", match.group(1))
            found.append((match.start(), named.group(1) if named else "DATABASE_URL"))
        found += [(m.start(), "DATABASE_URL") for m in _ENV_DB_RE.finditer(text)]
        for _, name in sorted(found):
            if name not in names:
                names.append(name)
    return names

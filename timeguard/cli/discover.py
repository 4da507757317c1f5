"""``timeguard discover``: the celery beats and APScheduler applications running on this host, what each runs, and
the hooks that repair them.

Exit codes (as grep: found, not found, trouble): 0 one or more beats or APScheduler applications found (and, with
--write, the hooks written or nothing to write); 1 none found; 2 --write wrote nothing (declined, not a terminal
without --yes, the file cannot be edited safely or the result would not validate) or the configuration could not
be read; 3 bad arguments (as every timeguard command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_FOUND = 0
EXIT_NONE = 1
EXIT_TROUBLE = 2

DESCRIPTION = (
    "Find every celery beat running on this host (celery beat, python -m celery beat, celery worker -B, the "
    "older celerybeat and manage.py forms) and say what it runs: its scheduler (django-celery-beat's "
    "DatabaseScheduler, celery's default shelve PersistentScheduler, RedBeat, other), its max interval, app, Django "
    "settings module, database, interpreter, working directory and systemd unit, read from /proc and the "
    "project's files (its code is never run). Beats owned by another user are listed with what could not be read "
    "(as root everything can). Also finds APScheduler 3 applications by evidence: a Python process holding an "
    "APScheduler job store open (an SQLite file with its table, a PostgreSQL/MariaDB database that a URL in its "
    "environment or command line names, a Redis database with its keys) whose own interpreter imports "
    "apscheduler; Python processes that cannot be looked into are listed. Prints a hooks: snippet for each beat "
    "and job store timeguard can repair; --write adds it to the configuration. Needs no configuration; with one, "
    "what its hooks already repair is marked. Exit 0 when a beat or an APScheduler application is found, 1 when "
    "none is, 2 when --write wrote nothing or the configuration cannot be read, 3 for bad arguments."
)


def add_parser(sub: Any, config_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = sub.add_parser("discover", help="find the celery beats and APScheduler applications on this host and "
                            "print the hooks that repair them (exit 1: none found)", description=DESCRIPTION)
    config_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pid", type=_pid, action="append", metavar="PID",
                        help="look only at this process (repeatable)")
    parser.add_argument("--write", action="store_true",
                        help="add the hooks to the configuration file (--config, else $TIMEGUARD_CONFIG, else "
                        "/etc/timeguard/timeguard.yaml), after asking; keeps a backup (FILE.bak); saves the "
                        "variables a beat's settings read from its environment beside it (NAME.env, mode 0600); "
                        "commented entries (placeholders, a password to give by hand) are not written")
    parser.add_argument("--yes", action="store_true", help="with --write: do not ask")


def _pid(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**22 + 1:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return int(text)


def cmd_discover(args: argparse.Namespace) -> int:
    from timeguard import config
    from timeguard.discover.aps import find_apps
    from timeguard.discover.snippet import aps_plan, plan
    from timeguard.host.beat import find_beats

    path = config.discover(args.config)
    configured: list[Any] = []
    if path is not None and (path.exists() or not args.write):  # --write may create the file
        try:
            configured = _configured_hooks(path)
        except ValueError as exc:
            print(f"timeguard discover: {exc}", file=sys.stderr)
            return EXIT_TROUBLE
    beats = find_beats(args.pid)
    scan = find_apps(args.pid)
    target = Path(args.config) if args.config else (path or config.DEFAULT_PATH)
    rows = plan(beats, configured, env_dir=str(target.absolute().parent))
    # the beats' hooks count as configured: names stay unique across both lists
    aps_rows = aps_plan(scan.apps, configured + [s.hook for _, _, s in rows if s.hook is not None])
    to_write = [s for _, covered, s in rows if s.hook is not None and not covered]
    to_write += [s for _, _, covered, s in aps_rows if s.hook is not None and not covered]
    if args.json:
        print(json.dumps({
            "config": str(path) if path else None,
            "beats": [{**b.to_dict(), "covered_by": c, "shares_hook": s.shares, "hook": s.hook, "snippet": s.text,
                       "planned_hook": s.planned, "no_hook_because": s.why_not} for b, c, s in rows],
            "apscheduler": [{**a.to_dict(), "store": st.to_dict(), "covered_by": c, "hook": s.hook,
                             "snippet": s.text, "planned_hook": s.planned, "no_hook_because": s.why_not}
                            for a, st, c, s in aps_rows],
            "not_inspected": {str(pid): why for pid, why in sorted(scan.not_inspected.items())},
        }, indent=2))
    else:
        sys.stdout.write(human(rows, path, aps_rows, scan.not_inspected))
    if not beats and not scan.apps:
        return EXIT_NONE
    if args.write:
        return write(target, to_write, yes=args.yes, quiet=args.json)
    return EXIT_FOUND


def _configured_hooks(path: Path) -> list[Any]:
    """The raw ``hooks`` of the configuration (not validated: discover works on a file that does not validate;
    only the hooks' names and repair options are read)."""
    from timeguard import config

    try:
        data, _ = config._parse(path.read_text(encoding="utf-8"), str(path))  # the loader's parser (listing.py)
    except OSError as exc:
        raise ValueError(f"cannot read the configuration {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"the configuration {path} is not UTF-8 text: {exc.reason}") from None
    except config.ConfigError as exc:
        raise ValueError(f"cannot read the configuration:\n{exc}") from None
    hooks = data.get("hooks") if isinstance(data, dict) else None
    return list(hooks) if isinstance(hooks, list) else []


# --------------------------------------------------------------------------------------------- output

_KIND_NAMES = {"django_celery_beat.DatabaseScheduler": "DatabaseScheduler", "celery.PersistentScheduler":
               "shelve (default)", "redbeat.RedBeatScheduler": "RedBeat", "other": "other", "unknown": "?"}


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    if s >= 60:
        return f"{s // 60}m {s % 60}s"
    return f"{s}s"


def _interval(beat: Any) -> str:
    if beat.max_interval_s is None:
        return "?"
    text = f"{beat.max_interval_s:g} s"
    return text if beat.max_interval_given else f"{text} (default)"


def _status(beat: Any, covered: str | None, snippet: Any) -> str:
    if not beat.inspectable:
        return "not inspectable"
    if covered:
        return f"covered by hook {covered}"
    if snippet.shares:
        return f"shares hook {snippet.shares}"
    if snippet.hook is not None:
        return "repairable: hook below"
    return "no hook: see below"


def human(rows: list[tuple[Any, str | None, Any]], path: Path | None,
          aps_rows: list[tuple[Any, Any, str | None, Any]] = (), not_inspected: dict[int, str] | None = None) -> str:
    out = _beats(rows, path) if rows else []
    out += _apps(aps_rows, path, not_inspected or {})
    hooks = [s for _, c, s in rows if not c] + [s for _, _, c, s in aps_rows if not c]
    if hooks:
        from timeguard.discover.snippet import render

        where = path or "/etc/timeguard/timeguard.yaml"
        out += ["", f"# for {where} (timeguard discover --write adds the uncommented hooks):", ""]
        out.append(render(hooks).rstrip("\n"))
    if not rows:
        note = "" if os.geteuid() == 0 else " (as root, processes hidden from this user by hidepid are seen too)"
        out.insert(0, f"no celery beat is running on this host{note}")
    return "\n".join(out) + "\n"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]


def _apps(rows: list[tuple[Any, Any, str | None, Any]], path: Path | None, not_inspected: dict[int, str]) -> list[str]:
    """The APScheduler applications: one table line per job store, then each application's details."""
    out: list[str] = []
    if rows:
        apps = {a.pid: a for a, _, _, _ in rows}
        out += ["", f"{len(apps)} APScheduler application{'s' if len(apps) != 1 else ''} on this "
                "host:", ""]
        out += _table(("PID", "USER", "UP", "APSCHEDULER", "JOB STORE", "JOBS", "STATUS"), [
            (str(a.pid), a.user or str(a.uid), _uptime(a.uptime_s), a.apscheduler or "?", st.shown, str(st.jobs),
             f"covered by hook {c}" if c else "repairable: hook below" if s.hook is not None else "no hook: see below")
            for a, st, c, s in rows])
        for app in apps.values():
            out += ["", f"pid {app.pid}: {' '.join(app.command)}"]
            details = [("interpreter", app.interpreter and f"{app.interpreter} ({app.interpreter_from})"),
                       ("cwd", app.cwd), ("unit", app.unit or (app.user_unit and f"{app.user_unit} (a systemd "
                                                                                 "--user unit)"))]
            details += [("job store", f"{st.shown} ({st.kind}; {st.found_by})") for st in app.stores]
            details += [("covered by", f"hook {c} in {path}") for a, _, c, _ in rows if a is app and c]
            out += [f"  {name:<14}{value}" for name, value in details if value]
            out += [f"  problem       {p}" for p in app.problems]
    if not_inspected:
        out += ["", f"{len(not_inspected)} Python process{'es' if len(not_inspected) != 1 else ''} could not be "
                "looked into for an APScheduler job store:"]
        out += [f"  pid {pid}: {why}" for pid, why in sorted(not_inspected.items())]
    elif not rows:
        out += ["no APScheduler application was found (a Python process holding an APScheduler job store open)"]
    return out


def _beats(rows: list[tuple[Any, str | None, Any]], path: Path | None) -> list[str]:
    header = ("PID", "USER", "UP", "SCHEDULER", "MAX INTERVAL", "APP", "SETTINGS", "STATUS")
    out = [f"{len(rows)} celery beat{'s' if len(rows) != 1 else ''} on this host:", ""]
    out += _table(header, [
        (str(b.pid), b.user or str(b.uid), _uptime(b.uptime_s), _KIND_NAMES.get(b.scheduler, b.scheduler),
         _interval(b), b.app or "-", b.settings or "-", _status(b, c, s)) for b, c, s in rows])
    for beat, covered, _ in rows:
        out += ["", f"pid {beat.pid}: {' '.join(beat.command)}"]
        details = [("scheduler", f"{beat.scheduler_name} ({beat.scheduler_from})"),
                   ("max interval", beat.max_interval_s and f"{beat.max_interval_s:g} s ({beat.max_interval_from})"),
                   ("app", beat.app and f"{beat.app} ({beat.app_from})"),
                   ("interpreter", beat.interpreter and f"{beat.interpreter} ({beat.interpreter_from})"),
                   ("cwd", beat.cwd), ("settings", beat.settings and f"{beat.settings} ({beat.settings_from})"),
                   ("database", beat.database and f"{beat.database} ({beat.database_from})"),
                   ("schedule file", beat.schedule_file and (
                       f"{beat.schedule_file}" + {True: " (open)", False: " (not open now)", None: ""}[
                           beat.schedule_file_open])),
                   ("unit", beat.unit or (beat.user_unit and f"{beat.user_unit} (a systemd --user unit)")),
                   ("environment", beat.environment_file), ("covered by", covered and f"hook {covered} in {path}"),
                   ("root", beat.other_root and "another root directory (a container or a chroot)")]
        out += [f"  {name:<14}{value}" for name, value in details if value]
        out += [f"  problem       {p}" for p in beat.problems]
    return out


# ---------------------------------------------------------------------------------------------- --write


def write(path: Path, snippets: list[Any], *, yes: bool, quiet: bool = False) -> int:
    """Add each snippet's hook to ``path`` (created if missing), after asking unless ``yes``; the old file is
    kept as FILE.bak (or .bak.2, …). Refuses, changing nothing, when the result would not validate where the old
    file did."""
    from timeguard.discover.configfile import EditError, add_hooks

    say = (lambda text: print(text, file=sys.stderr)) if quiet else print
    if not snippets:
        say("nothing to write: no beat needs a hook this timeguard can configure")
        return EXIT_FOUND
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else None
    except (OSError, UnicodeDecodeError) as exc:
        return _refuse(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    new = old or ""
    try:
        for snippet in snippets:
            new = add_hooks(new, [snippet.hook], comment=f"found by timeguard discover: {snippet.found_for}")
    except EditError as exc:
        return _refuse(f"{path}: {exc}")
    problems = _new_problems(old or "", new, str(path))
    if problems:
        return _refuse(f"{path}: the hooks would not validate, nothing written:\n" + "\n".join(
            f"  {p}" for p in problems))
    environments = [s.environment for s in snippets if s.environment is not None]
    for env_path, values in environments:
        if Path(env_path).exists() and Path(env_path).read_bytes() != _env_text(values).encode():
            return _refuse(f"{env_path} exists and holds something else: move it away, or write the hook's "
                           "django.environment_file by hand")
    names = ", ".join(s.hook["name"] for s in snippets)
    files = "".join(f" and {p}" for p, _ in environments)
    if not yes:
        if not sys.stdin.isatty():
            return _refuse("not a terminal to ask on: give --yes to write without asking")
        # the question goes to stderr: stdout may be the --json answer
        sys.stderr.write(f"add {len(snippets)} hook{'s' if len(snippets) != 1 else ''} ({names}) to {path}{files}? "
                         "[y/N] ")
        sys.stderr.flush()
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            return _refuse("nothing written")
    for env_path, values in environments:
        _write_environment(Path(env_path), values)
    backup = _replace(path, old, new)
    say(f"added {names} to {path}" + (f" (the old file is {backup})" if backup else " (a new file)")
        + "".join(f"; wrote {p} (mode 0600)" for p, _ in environments))
    return EXIT_FOUND


def _env_text(values: dict[str, str]) -> str:
    """systemd EnvironmentFile= syntax (systemd.exec(5)): single quotes take the value as written; a value with a
    single quote or a newline goes in double quotes with its backslash, quote, dollar and newline escaped."""
    lines = ["# written by timeguard discover: the variables the beat's Django settings read, from its environment"]
    for name, value in values.items():
        if "'" not in value and "\n" not in value and "\\" not in value:
            lines.append(f"{name}='{value}'")
        else:
            escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
                       .replace("\n", "\\n"))
            lines.append(f'{name}="{escaped}"')
    return "\n".join(lines) + "\n"


def _write_environment(path: Path, values: dict[str, str]) -> None:
    """The environment file, readable by its owner only (it may hold the database password); kept as it is when
    it already holds exactly this."""
    text = _env_text(values)
    if path.exists():
        return  # write() checked that it holds exactly this
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _refuse(message: str) -> int:
    print(f"timeguard discover: {message}", file=sys.stderr)
    return EXIT_TROUBLE


def _new_problems(old: str, new: str, origin: str) -> list[str]:
    """The validation problems ``new`` has that ``old`` had not (a file that already had problems is not the
    snippet's fault, and the hooks are checked all the same)."""
    from timeguard import config
    from timeguard.hooks.registry import HOOK_TYPES

    def problems(text: str) -> list[str]:
        try:
            config.loads(text, origin, resolve_secrets=False, hook_types=HOOK_TYPES)
        except config.ConfigError as exc:
            return [p.format(origin) for p in exc.problems]
        return []

    before = set(problems(old))
    return [p for p in problems(new) if p not in before]


def _replace(path: Path, old: str | None, new: str) -> Path | None:
    """Write ``new`` to ``path`` atomically (same owner and mode), keeping ``old`` as the first free FILE.bak."""
    import tempfile

    backup = None
    if old is not None:
        backup = path.with_name(path.name + ".bak")
        n = 2
        while backup.exists():
            backup = path.with_name(f"{path.name}.bak.{n}")
            n += 1
        st = path.stat()
        fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o7777)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(old)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        st = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return backup

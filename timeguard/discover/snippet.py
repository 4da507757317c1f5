"""The ``hooks:`` entry that would repair a discovered beat, and whether a configured hook covers it already.

* DatabaseScheduler → a ``type: celery_beat`` hook reading the project's own Django settings with its own
  interpreter: ``django: {settings, python, path: [cwd]}`` (``environment_file`` when the unit has one),
  ``beat_max_interval_s`` when beat's max interval was set explicitly (the hook's default is DatabaseScheduler's
  5 s), ``beat_service`` when beat runs in a systemd system unit (the repair then stops it, repairs, starts it).
* PersistentScheduler (shelve) → a ``type: celery_shelve`` hook (schedule file, beat's interpreter, ``path: [cwd]``,
  ``beat_service``); without a unit a commented one with stop/start placeholders (refused without a way to stop).
* RedBeat → a ``type: redbeat`` hook with ``redis_url`` (redbeat_redis_url, else the broker's URL); a URL with a
  password, or none found, gives a commented entry instead (the password is never copied; a placeholder is not a
  valid hook).
* anything else → a comment saying there is no repair for it.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from timeguard.host.argv import DATABASE, REDBEAT, SHELVE
from timeguard.host.beat import Beat
from timeguard.repair.apscheduler_jobs import DEFAULT_JOBS_KEY, DEFAULT_RUN_TIMES_KEY, DEFAULT_TABLE
from timeguard.secrets import MASK

HOOK_TYPE = "celery_beat"
SHELVE_HOOK_TYPE = "celery_shelve"
REDBEAT_HOOK = "redbeat"
DEFAULT_REDIS_KEYS = (DEFAULT_JOBS_KEY, DEFAULT_RUN_TIMES_KEY)


@dataclass(frozen=True, slots=True)
class Snippet:
    """What discover proposes for one beat: ``hook`` (a valid hook's options) or None, and ``text`` — the list
    item(s) to put under ``hooks:``, commented when ``hook`` is None."""

    beat: Any  # the Beat, or the APScheduler application (timeguard.discover.aps.App), it is for
    hook: dict[str, Any] | None
    text: str
    why_not: str | None = None  # why there is no hook (for the table)
    shares: str | None = None  # the hook proposed for another beat on the same settings and database
    #: The environment file the hook names that --write creates: its path and variables (values: secrets).
    environment: tuple[str, dict[str, str]] | None = None
    #: The hook a commented entry shows (placeholders to fill in, or an option to set by hand), for --json.
    planned: dict[str, Any] | None = None
    #: What --write's comment above the hook says it was found for.
    origin: str = ""

    @property
    def found_for(self) -> str:
        beat = self.beat
        return self.origin or f"celery beat pid {beat.pid} ({beat.form}, app {beat.app or '?'})"


def hook_name(beat: Beat, taken: set[str]) -> str:
    """``celery-beat-<unit or app>``, unique among ``taken`` (which it extends)."""
    return unique_name(beat.unit, f"celery-beat-{beat.app or beat.pid}", taken)


def unique_name(unit: str | None, fallback: str, taken: set[str]) -> str:
    """The unit's name without ``.service``, else ``fallback``, made unique among ``taken`` (which it extends)."""
    base = unit.removesuffix(".service") if unit else fallback
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "celery-beat"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def plan(beats: list[Beat], configured: list[Any], env_dir: str) -> list[tuple[Beat, str | None, Snippet]]:
    """(beat, the configured hook covering it, its snippet) for every beat. Beats of one project on one database
    (same settings, directory, unit and settings environment: two beats, or a beat restarted in a second copy)
    share one hook, whose ``beat_max_interval_s`` is the slowest one's: the repair must wait for every beat."""
    taken = {str(h.get("name")) for h in configured if isinstance(h, Mapping)}
    covered = {b.pid: covered_by(b, configured) for b in beats}
    groups: dict[tuple[Any, ...], list[Beat]] = {}
    for b in beats:
        if not covered[b.pid]:
            groups.setdefault(_group_key(b), []).append(b)
    rows: list[tuple[Beat, str | None, Snippet]] = []
    proposed: dict[tuple[Any, ...], Snippet] = {}
    for b in beats:
        if covered[b.pid]:
            rows.append((b, covered[b.pid], make(b, set(taken), env_dir)))
            continue
        key = _group_key(b)
        first = proposed.get(key)
        if first is not None and first.hook is not None:
            name = first.hook["name"]
            rows.append((b, None, Snippet(b, None, f"# celery beat pid {b.pid}: shares the hook {name} (same "
                                          "settings, directory and database)\n", why_not=f"shares hook {name}",
                                          shares=name)))
            continue
        members = groups[key]
        slowest = max((m.max_interval_s or 0.0 for m in members), default=0.0)
        leader = b if len(members) == 1 else dataclasses.replace(
            b, max_interval_s=slowest, max_interval_given=any(m.max_interval_given for m in members))
        snippet = make(leader, taken, env_dir,
                       also=[m.pid for m in members if m is not b] if len(members) > 1 else ())
        proposed[key] = snippet
        rows.append((b, None, snippet))
    return rows


def _group_key(beat: Beat) -> tuple[Any, ...]:
    if beat.scheduler != DATABASE or not (beat.inspectable and beat.settings and beat.cwd):
        return ("pid", beat.pid)
    # the database when the environment names it; else every variable the settings read may choose it
    database = beat.database or tuple(sorted(beat.settings_values.items()))
    return (beat.settings, beat.cwd, beat.unit, database)


def make(beat: Beat, taken: set[str], env_dir: str = "/etc/timeguard", also: Sequence[int] = ()) -> Snippet:
    """The snippet for ``beat``; a hook name not in ``taken`` (added to it). ``env_dir``: where an environment
    file for the settings' variables goes (beside the configuration)."""
    head = [f"# celery beat pid {beat.pid} ({beat.form}, app {beat.app or '?'}, user {beat.user or beat.uid}): "
            f"{beat.scheduler_name}"]
    if also:
        head.append(f"# and pid {', '.join(map(str, also))} on the same settings and database: beat_max_interval_s "
                    "is the slowest one's")
    if not beat.inspectable:
        return _commented(beat, head, "not inspectable: " + "; ".join(beat.problems))
    if beat.other_root:
        return _commented(beat, head, "it runs under another root directory (a container or a chroot): its paths "
                          "are not this host's; run timeguard discover, and the repair, where it runs")
    if beat.scheduler == DATABASE:
        missing = [what for what, value in (("the Django settings module", beat.settings),
                                             ("the interpreter", beat.interpreter), ("the working directory",
                                                                                     beat.cwd)) if not value]
        if missing:
            return _commented(beat, head, f"{' and '.join(missing)} could not be found: give django.settings, "
                              "django.python and django.path by hand")
        django: dict[str, Any] = {"settings": beat.settings, "python": beat.interpreter, "path": [beat.cwd]}
        if beat.uid not in (None, 0) and beat.user:
            django["user"] = beat.user  # read the settings as the beat reads them, not as root
        name = hook_name(beat, taken)
        environment = None
        if beat.environment_file:
            django["environment_file"] = beat.environment_file
        elif beat.settings_environment:
            path = f"{env_dir.rstrip('/')}/{name}.env"
            django["environment_file"] = path
            environment = (path, {k: beat.settings_values[k] for k in beat.settings_environment})
            names = ", ".join(f"${k}" for k in beat.settings_environment)
            head.append(f"# its settings read {names} from the beat's environment: timeguard discover --write "
                        f"saves them to {path} (mode 0600)")
        hook: dict[str, Any] = {"type": HOOK_TYPE, "name": name, "django": django}
        if beat.max_interval_given and beat.max_interval_s is not None:
            hook["beat_max_interval_s"] = _number(beat.max_interval_s)
        if beat.unit:
            hook["beat_service"] = beat.unit
        return Snippet(beat, hook, "\n".join(head) + "\n" + hook_text(hook), environment=environment)
    if beat.scheduler == SHELVE:
        return _shelve(beat, head, taken)
    if beat.scheduler == REDBEAT:
        return _redbeat(beat, head, taken)
    return _commented(beat, head, f"timeguard has no repair for the scheduler {beat.scheduler_name}")


def _shelve(beat: Beat, head: list[str], taken: set[str]) -> Snippet:
    """celery's default PersistentScheduler: a ``type: celery_shelve`` hook — its schedule file (resolved against
    beat's working directory), beat's interpreter (it unpickles the entries) and ``beat_service``. Without a unit
    the entry stays commented with stop/start placeholders: the hook is refused without a way to stop beat."""
    missing = [what for what, value in (("the schedule file", beat.schedule_file),
                                         ("the interpreter", beat.interpreter)) if not value]
    if missing:
        return _commented(beat, head, f"{' and '.join(missing)} could not be found: give schedule_file and python "
                          "by hand")
    hook: dict[str, Any] = {"type": SHELVE_HOOK_TYPE, "name": hook_name(beat, taken),
                            "schedule_file": beat.schedule_file, "python": beat.interpreter}
    if beat.cwd:
        hook["path"] = [beat.cwd]  # a schedule class of the project's own unpickles from there
    if beat.environment_file:
        hook["environment_file"] = beat.environment_file
    if beat.uid not in (None, 0) and beat.user:
        hook["user"] = beat.user
    if beat.unit:
        hook["beat_service"] = beat.unit
        return Snippet(beat, hook, "\n".join(head) + "\n" + hook_text(hook))
    planned = {**hook, "stop_command": ["FILL-IN", "stop"], "start_command": ["FILL-IN", "start"]}
    return _commented(beat, head, "it runs in no systemd unit, and the celery_shelve repair needs beat stopped (it "
                      "rewrites the file from memory): the hook is refused without a way to stop it — fill in "
                      "stop_command and start_command (or beat_service) and uncomment", planned)


def _redbeat(beat: Beat, head: list[str], taken: set[str]) -> Snippet:
    """A ``type: redbeat`` hook on the Redis beat uses (redbeat_redis_url, else the broker's, as RedBeatConfig
    reads them). RedBeat repairs live, so no beat_service. A URL with a password is shown redacted, so that hook is
    only a comment naming redis_url_env; without a URL, a comment with a placeholder."""
    name = hook_name(beat, taken)
    url = beat.broker
    if url and "://" in url and MASK not in url:
        hook = {"type": REDBEAT_HOOK, "name": name, "redis_url": url}
        head = [*head, "# RedBeat repairs live (beat reads Redis each tick): no restart; key_prefix: redbeat: unless "
                "the app sets redbeat_key_prefix"]
        return Snippet(beat, hook, "\n".join(head) + "\n" + render_items([hook]))
    if url:
        planned = {"type": REDBEAT_HOOK, "name": name, "redis_url_env": "REDBEAT_REDIS_URL"}
        why = (f"RedBeat on {url}: the URL holds a password, which timeguard does not copy into its configuration: "
               "put the URL in the daemon's environment (e.g. a systemd drop-in's Environment=REDBEAT_REDIS_URL=…) "
               "and uncomment")
    else:
        planned = {"type": REDBEAT_HOOK, "name": name, "redis_url": "redis://FILL-IN:6379/0"}
        why = "RedBeat, but its Redis URL (redbeat_redis_url, else the broker's) could not be found: fill it in"
    return _commented(beat, head, why, planned)


def _commented(beat: Any, head: list[str], why: str, planned: dict[str, Any] | None = None, *,
               origin: str = "") -> Snippet:
    lines = [*head, f"# {why}"]
    if planned is not None:
        lines += [f"# {line}" for line in hook_text(planned).splitlines()]
    return Snippet(beat, None, "\n".join(lines) + "\n", why_not=why, planned=planned, origin=origin)


#: Options by which a hook can stop its scheduler's owner, so its forward-jump guard may.
_OWNER_KEYS = ("beat_service", "service", "stop_command")


def hook_text(hook: Mapping[str, Any]) -> str:
    """The hook as a YAML list item; where it can stop the scheduler, a commented ``guard: stop`` line under it —
    suggested, never on by default (the default ``alert`` only alerts)."""
    text = render_items([hook])
    if any(hook.get(k) is not None for k in _OWNER_KEYS):
        text += ("  # guard: stop  # optional: stop it while the host clock is proven ahead (it would stamp the "
                 "future), repair and start it once the clock is right\n")
    return text


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def render_items(hooks: Iterable[Mapping[str, Any]]) -> str:
    """Hooks as YAML list items (``- type: …``), block style, keys in the order given."""
    return yaml.safe_dump([dict(h) for h in hooks], sort_keys=False, default_flow_style=False, width=1000)


def render(snippets: Iterable[Snippet]) -> str:
    """A ``hooks:`` block holding every snippet (commented ones as comments), ready to paste."""
    body = "".join(s.text for s in snippets)
    return "hooks:\n" + "".join(f"  {line}\n" if line else "\n" for line in body.splitlines())


# ---------------------------------------------------------------------------------------- coverage


def covered_by(beat: Beat, hooks: Iterable[Any]) -> str | None:
    """The name of a configured hook that repairs this beat already: a celery_beat hook (or ``type: repair``
    with ``target: celery_beat``) with the beat's unit, its Django settings (and working directory, when the hook
    names its path), or its database; for a RedBeat beat, a redbeat hook on its Redis database."""
    for hook in hooks:
        if not isinstance(hook, Mapping):
            continue
        kind = hook.get("type")
        if kind == SHELVE_HOOK_TYPE or (kind == "repair" and hook.get("target") == SHELVE_HOOK_TYPE):
            if beat.schedule_file and hook.get("schedule_file") == beat.schedule_file:
                return str(hook.get("name", "?"))
            continue
        if beat.scheduler == REDBEAT and (kind == REDBEAT_HOOK or (kind == "repair" and
                                                                   hook.get("target") == REDBEAT_HOOK)):
            url = hook.get("redis_url")
            if isinstance(url, str) and beat.broker and _same_database(url, beat.broker):
                return str(hook.get("name", "?"))
            continue
        if kind != HOOK_TYPE and not (kind == "repair" and hook.get("target") == HOOK_TYPE):
            continue
        name = str(hook.get("name", "?"))
        if beat.unit and hook.get("beat_service") == beat.unit:
            return name
        django = hook.get("django")
        if isinstance(django, Mapping) and beat.settings and django.get("settings") == beat.settings:
            paths = django.get("path")
            if not isinstance(paths, list) or not beat.cwd or beat.cwd in paths:
                return name
        url = hook.get("database_url")
        if isinstance(url, str) and beat.database and _same_database(url, beat.database):
            return name
    return None


_SCHEMES = {"postgres": "postgresql", "pgsql": "postgresql", "mariadb": "mysql"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "redis": 6379, "rediss": 6379}


def _database_key(url: str) -> tuple[str, ...] | None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.split("+", 1)[0]
    scheme = _SCHEMES.get(scheme, scheme)
    if scheme == "sqlite":
        return (scheme, urllib.parse.unquote(parts.path))
    # the default port written or not is one server; Redis's database 0 likewise
    path = parts.path.strip("/") or ("0" if scheme.startswith("redis") else "")
    return (scheme, (parts.hostname or "localhost").lower(), str(port or _DEFAULT_PORTS.get(scheme, "")), path)


def _same_database(a: str, b: str) -> bool:
    key = _database_key(a)
    return key is not None and key == _database_key(b)


# ------------------------------------------------------------------------------------- APScheduler


APS_HOOK = "apscheduler"


def aps_plan(apps: list[Any], configured: list[Any]) -> list[tuple[Any, Any, str | None, Snippet]]:
    """(application, job store, the configured hook covering it, its snippet): one ``type: apscheduler`` hook per
    job store (a hook repairs one store)."""
    taken = {str(h.get("name")) for h in configured if isinstance(h, Mapping)}
    rows = []
    for app in apps:
        for store in app.stores:
            covered = aps_covered_by(app, store, configured)
            rows.append((app, store, covered, make_aps(app, store, set(taken) if covered else taken)))
    return rows


def make_aps(app: Any, store: Any, taken: set[str]) -> Snippet:
    """The ``type: apscheduler`` hook for one job store of ``app`` (a timeguard.discover.aps.App): the store's URL
    (or, when it holds a password, the ``_env`` option to set by hand: the password is never copied), the
    application's interpreter and import path (only it unpickles the job states), its user, and ``service`` when
    it runs in a systemd unit — without one the entry stays commented with stop/start placeholders: the repair
    needs the application stopped (a running scheduler sleeps on its in-memory wake-up time and writes its jobs
    back)."""
    origin = f"APScheduler application pid {app.pid} ({store.kind} job store {store.shown})"
    head = [f"# APScheduler {app.apscheduler or '?'} pid {app.pid} (user {app.user or app.uid}): {store.kind} job "
            f"store {store.shown}, {store.jobs} job{'s' if store.jobs != 1 else ''} (found by {store.found_by})"]
    if app.other_root or not app.apscheduler or not app.apscheduler.startswith("3."):
        return _commented(app, head, "; ".join(app.problems) or "its APScheduler version is unknown", origin=origin)
    if not app.interpreter:
        return _commented(app, head, "its interpreter could not be found: give python by hand", origin=origin)
    hook: dict[str, Any] = {"type": APS_HOOK, "name": unique_name(app.unit, f"apscheduler-{app.pid}", taken)}
    key = "redis_url" if store.kind == "redis" else "jobstore_url"
    why = []
    if store.has_password:
        hook[f"{key}_env"] = store.url_env or ("APSCHEDULER_REDIS_URL" if store.kind == "redis"
                                               else "APSCHEDULER_JOBSTORE_URL")
        why.append(f"the store's URL holds a password, which timeguard does not copy into its configuration: put "
                   f"the URL in the daemon's environment as ${hook[f'{key}_env']} (e.g. a systemd drop-in's "
                   f"Environment=), or in a file named by {key}_file")
    else:
        hook[key] = store.url
    if store.tablename and store.tablename != DEFAULT_TABLE:
        hook["tablename"] = store.tablename
    if store.jobs_key and (store.jobs_key, store.run_times_key) != DEFAULT_REDIS_KEYS:
        hook["jobs_key"], hook["run_times_key"] = store.jobs_key, store.run_times_key
    hook["python"] = app.interpreter
    paths = [p for p in app.path if p.startswith("/")]
    if paths:
        hook["path"] = paths
    if app.uid not in (None, 0) and app.user:
        hook["user"] = app.user  # unpickle as the application does, not as root
    if app.unit:
        hook["service"] = app.unit
    else:
        hook["stop_command"], hook["start_command"] = ["FILL-IN", "stop"], ["FILL-IN", "start"]
        where = f" (only a systemd --user unit, {app.user_unit})" if app.user_unit else ""
        why.append(f"it runs in no systemd unit{where}, and the apscheduler repair needs the application stopped "
                   "(a running scheduler sleeps on its in-memory wake-up time and writes its jobs back): fill in "
                   "stop_command and start_command (or service) and uncomment")
    if why:
        return _commented(app, head, "; ".join(why), hook, origin=origin)
    return Snippet(app, hook, "\n".join(head) + "\n" + hook_text(hook), origin=origin)


def aps_covered_by(app: Any, store: Any, hooks: Iterable[Any]) -> str | None:
    """The name of a configured apscheduler hook on this store (same database, or same Redis database and keys)
    or on the application's unit."""
    for hook in hooks:
        if not isinstance(hook, Mapping):
            continue
        if hook.get("type") != APS_HOOK and not (hook.get("type") == "repair" and hook.get("target") == APS_HOOK):
            continue
        name = str(hook.get("name", "?"))
        if app.unit and hook.get("service") == app.unit:
            return name
        if store.kind == "redis":
            url = hook.get("redis_url")
            keys = (hook.get("jobs_key") or DEFAULT_REDIS_KEYS[0], hook.get("run_times_key") or DEFAULT_REDIS_KEYS[1])
            if isinstance(url, str) and _same_database(url, store.url) and keys == (store.jobs_key,
                                                                                    store.run_times_key):
                return name
            continue
        url = hook.get("jobstore_url")
        if isinstance(url, str) and _same_database(url, store.url) and (
                hook.get("tablename") or DEFAULT_TABLE) == store.tablename:
            return name
    return None

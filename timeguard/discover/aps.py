"""Every APScheduler 3.x application running on this host, found by evidence, not by name: an APScheduler app is
any Python program, so a process counts only when

1. it runs a Python (its executable, argv[0] or its script's shebang), and
2. it holds a job store open that is confirmed to be APScheduler's —
   * an SQLite file among its open files (/proc/PID/fd) with a table of APScheduler's columns (``id``,
     ``next_run_time``, ``job_state``: ``apscheduler_jobs`` by default, apscheduler/jobstores/sqlalchemy.py; the
     other tables' columns are read only when that one is not there);
   * a TCP connection to PostgreSQL or MariaDB/MySQL whose address a database URL in its environment
     (/proc/PID/environ, root or its owner only) or on its command line names, and that database holds such a
     table (dj-database-url forms, timeguard.repair.dburl);
   * a TCP connection to Redis (a ``redis://`` URL it has names the address, or port 6379) whose database — the
     one Redis's CLIENT LIST shows for that very connection — holds APScheduler's keys: the hash
     ``apscheduler.jobs`` and the ZSET ``apscheduler.run_times`` (RedisJobStore's defaults), else another hash and
     ZSET pair sharing a member whose hash value is a pickle (a bounded SCAN), and
3. its own interpreter, with its import path, imports ``apscheduler`` (asked through timeguard.repair.apprun, as
   the repair itself runs it — as the process's user when it is not root).

Nothing of the application is imported into timeguard; the job states are counted, never unpickled here. A
process whose files and connections cannot be read (another user's, without root) is counted as not inspected.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from timeguard.host import argv as argvmod
from timeguard.host import process
from timeguard.host.systemd import systemd_unit
from timeguard.repair.apprun import AppInterpreter, AppRunError
from timeguard.repair.apscheduler_jobs import DEFAULT_JOBS_KEY, DEFAULT_RUN_TIMES_KEY, DEFAULT_TABLE
from timeguard.repair.dburl import DatabaseUrlError, connect_url
from timeguard.secrets import redact_url

SQL = "sql"
REDIS = "redis"
JOB_COLUMNS = frozenset({"id", "next_run_time", "job_state"})
#: The servers a connection's remote port suggests when no URL of the process names its address.
WELL_KNOWN_PORTS = {5432: "postgresql", 3306: "mysql", 6379: "redis"}
_SQL_SCHEMES = ("postgres", "postgresql", "pgsql", "mysql", "mariadb")
#: How many keys of each type the search for a renamed RedisJobStore pair looks at (the defaults are looked up
#: directly).
SCAN_KEYS = 1000
SCAN_ZSETS = 50
SCAN_CALLS = 20
IMPORT_TIMEOUT_S = 20.0
SQLITE_MAGIC = b"SQLite format 3\x00"

PROBE = r'''
try:
    import apscheduler
except Exception:
    failed("no_apscheduler")
try:
    from importlib.metadata import version
    found = version("apscheduler")
except Exception:
    found = getattr(apscheduler, "__version__", None) or "?"
answer(version=found, module=getattr(apscheduler, "__file__", None))
'''


@dataclass
class JobStore:
    """A job store one application uses, confirmed to hold APScheduler's table or keys."""

    kind: str  # SQL or REDIS
    shown: str  # its URL, password masked
    found_by: str  # what led to it: "open file …", "connection to 127.0.0.1:5432, URL in environment $X"
    jobs: int  # rows / hash fields
    tablename: str | None = None
    jobs_key: str | None = None
    run_times_key: str | None = None
    url_env: str | None = None  # the application's environment variable the URL came from
    has_password: bool = False
    url: str = field(default="", repr=False)  # as the application has it (may hold a password): never printed

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["url"]
        return out


@dataclass
class App:
    """One running APScheduler application (the names follow :class:`timeguard.host.beat.Beat`)."""

    pid: int
    user: str | None
    uid: int | None
    uptime_s: float | None
    command: list[str]
    interpreter: str | None
    interpreter_from: str
    cwd: str | None
    path: list[str]  # its import roots: the working directory, then $PYTHONPATH
    apscheduler: str | None = None  # the version its interpreter imports
    stores: list[JobStore] = field(default_factory=list)
    unit: str | None = None
    user_unit: str | None = None
    other_root: bool | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stores"] = [s.to_dict() for s in self.stores]
        return out


@dataclass
class Scan:
    """What the scan found: the applications, and the Python processes it could not look into (pid → why)."""

    apps: list[App] = field(default_factory=list)
    not_inspected: dict[int, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- the scan


def find_apps(pids: Iterable[int] | None = None) -> Scan:
    """Every APScheduler application among ``pids`` (default: every process) but celery beats (discover lists
    those as beats) and a child with its parent's command line (a pool process: its parent's)."""
    import psutil

    def python_not_beat(proc: Any, cmdline: list[str]) -> bool | None:
        return True if argvmod.parse(cmdline) is None and _runs_python(proc, cmdline) else None

    scan = Scan()
    for proc, cmdline, _ in process.scan(python_not_beat, pids):
        try:
            app = inspect_app(proc, cmdline, scan)
        except psutil.NoSuchProcess:
            continue
        if app is not None:
            scan.apps.append(app)
    return scan


def _runs_python(proc: Any, cmdline: list[str]) -> bool:
    import psutil

    if argvmod.is_python(cmdline[0]):
        return True
    try:
        if argvmod.is_python(proc.exe()):
            return True
    except psutil.Error:
        pass
    found = process.shebang(cmdline[0]) if os.path.isabs(cmdline[0]) else None
    return found is not None and argvmod.is_python(found)


def inspect_app(proc: Any, cmdline: list[str], scan: Scan) -> App | None:
    """The application ``proc`` runs, when it uses a job store confirmed to be APScheduler's and its interpreter
    imports apscheduler; None otherwise (a process not ours to read is noted in ``scan.not_inspected``)."""
    import psutil

    seen = process.view(proc)
    denied: list[str] = []
    files = process.read(proc.open_files, f"/proc/{proc.pid}/fd", denied) or []
    connections = process.read(lambda: proc.net_connections(kind="tcp"), f"/proc/{proc.pid}/fd", denied) or []
    if not seen.inspectable or denied:
        scan.not_inspected[proc.pid] = (seen.problems or [process.denied_problem(denied, seen.uid, seen.user)])[0]
        return None
    problems: list[str] = []
    urls = _urls(seen.env, cmdline)
    found = _sqlite_stores(f.path for f in files) + _server_stores(connections, urls, problems)
    unique: dict[tuple[Any, ...], JobStore] = {}
    for store in found:  # one URL both in the environment and on the command line: one store
        unique.setdefault((store.kind, store.url, store.tablename, store.jobs_key), store)
    stores = list(unique.values())
    if not stores:
        return None
    written, rest = argvmod.skip_python(cmdline)
    script = rest[0] if rest and rest[0] != "-m" else (None if written else cmdline[0])
    python, python_from = process.interpreter(proc, written, script, seen.cwd, seen.env)
    app = App(pid=proc.pid, user=seen.user, uid=seen.uid, uptime_s=process.uptime_s(proc.pid),
              command=[process.redact_arg(a) for a in cmdline], interpreter=python, interpreter_from=python_from,
              cwd=seen.cwd, path=seen.roots, stores=stores, problems=problems)
    app.other_root = process.other_root(proc.pid)
    app.unit, app.user_unit = systemd_unit(proc.pid)
    if app.other_root:
        problems.append("it runs under another root directory (a container or a chroot): its interpreter is not "
                        "this host's to ask")
        return app
    try:
        app.apscheduler = _apscheduler_version(app)
    except (AppRunError, psutil.Error) as exc:
        if "no_apscheduler" in str(exc):
            return None  # a store of that shape, but not this process's scheduler
        problems.append(f"its interpreter could not be asked whether it imports apscheduler: {exc}")
        return app
    if not app.apscheduler.startswith("3."):
        problems.append(f"APScheduler {app.apscheduler}: timeguard repairs the job stores of APScheduler 3.x")
    return app


def _apscheduler_version(app: App) -> str:
    """The APScheduler version the application's interpreter imports, with its import path, as its user; an
    AppRunError (naming ``no_apscheduler`` when it imports none)."""
    if app.interpreter is None:
        raise AppRunError("its interpreter is unknown")
    user = app.user if app.uid not in (None, 0) and os.geteuid() == 0 and app.user else None
    interpreter = AppInterpreter(app.interpreter, tuple(app.path), user=user, timeout_s=IMPORT_TIMEOUT_S,
                                 key="python")
    found = interpreter.run(PROBE, {}, doing="importing apscheduler")
    if found.get("error"):
        raise AppRunError(f"{found['error']}: {found.get('detail', '')}")
    return str(found.get("version") or "?")


# ------------------------------------------------------------------------------------------- evidence


@dataclass(frozen=True, slots=True)
class _Url:
    url: str
    where: str  # "environment $X" or "command line"
    env: str | None


def _urls(env: dict[str, str], cmdline: list[str]) -> list[_Url]:
    """Every database or Redis URL the process's environment or command line holds (the environment first)."""
    out = [_Url(value.strip(), f"environment ${name}", name) for name, value in sorted(env.items())
           if _scheme(value) is not None]
    out += [_Url(url, "command line", None) for arg in cmdline for url in process.urls_in(arg)
            if _scheme(url) is not None]
    return out


def _scheme(url: str) -> str | None:
    """postgresql, mysql, sqlite or redis for a URL of one of them (any driver suffix), else None."""
    scheme, sep, _ = url.strip().partition("://")
    if not sep:
        return None
    base = scheme.lower().split("+", 1)[0]
    if base in _SQL_SCHEMES:
        return "mysql" if base in ("mysql", "mariadb") else "postgresql"
    if base in ("redis", "rediss", "sqlite"):
        return "redis" if base.startswith("redis") else "sqlite"
    return None


def _sqlite_stores(paths: Iterable[str]) -> list[JobStore]:
    stores = []
    for path in sorted(set(paths)):
        try:
            with open(path, "rb") as f:
                if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    continue
        except OSError:
            continue
        url = f"sqlite:///{path}"
        for table, jobs in _sql_job_tables(url):
            stores.append(JobStore(SQL, url, f"open file {path}", jobs, tablename=table, url=url))
    return stores


def _sql_job_tables(url: str) -> list[tuple[str, int]]:
    """(table, rows) of every table with APScheduler's three columns in the database ``url`` (default schema);
    nothing when it cannot be reached or read."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(connect_url(url, option="url"), poolclass=sa.pool.NullPool)
    except (ImportError, DatabaseUrlError):
        return []
    found = []
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            names = inspector.get_table_names()
            # APScheduler's default name first: the other tables' columns are read only when it is not there
            for table in [DEFAULT_TABLE] if DEFAULT_TABLE in names else names:
                if {c["name"] for c in inspector.get_columns(table)} >= JOB_COLUMNS:
                    count = conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one()
                    found.append((table, int(count)))
    except Exception:  # noqa: BLE001 - refused, wrong password, gone: not confirmed
        return []
    finally:
        engine.dispose()
    return found


def _addresses(host: str, port: int) -> set[tuple[str, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return set()
    return {(str(info[4][0]), port) for info in infos}


def _url_address(url: str, kind: str) -> set[tuple[str, int]]:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or {"postgresql": 5432, "mysql": 3306, "redis": 6379}[kind]
    except (ValueError, KeyError):
        return set()
    return _addresses(parts.hostname or "localhost", port)


def _server_stores(connections: Iterable[Any], urls: list[_Url], problems: list[str]) -> list[JobStore]:
    """The job stores behind the process's TCP connections: each remote address a URL names (its kind from the
    URL's scheme) or a well-known port suggests."""
    established = [c for c in connections if c.raddr and c.status == "ESTABLISHED"]
    remote = {(str(c.raddr.ip), int(c.raddr.port)) for c in established}
    stores: list[JobStore] = []
    named: set[tuple[str, int]] = set()
    for candidate in urls:
        kind = _scheme(candidate.url)
        if kind in (None, "sqlite"):
            continue
        assert kind is not None
        hits = _url_address(candidate.url, kind) & remote
        if not hits:
            continue
        named |= hits
        if kind == "redis":
            locals_ = [c.laddr for c in established if (str(c.raddr.ip), int(c.raddr.port)) in hits]
            stores += _redis_stores(candidate.url, locals_, f"connection to {_where(hits)}, URL in {candidate.where}",
                                    candidate.env)
            continue
        shown = redact_url(candidate.url)
        for table, jobs in _sql_job_tables(candidate.url):
            stores.append(JobStore(SQL, shown, f"connection to {_where(hits)}, URL in {candidate.where}", jobs,
                                   tablename=table, url_env=candidate.env, has_password=_has_password(candidate.url),
                                   url=candidate.url))
    for address in sorted(remote - named):
        server = WELL_KNOWN_PORTS.get(address[1])
        if server == "redis":
            host = f"[{address[0]}]" if ":" in address[0] else address[0]
            locals_ = [c.laddr for c in established if (str(c.raddr.ip), int(c.raddr.port)) == address]
            stores += _redis_stores(f"redis://{host}:{address[1]}/0", locals_, f"connection to {_where({address})}",
                                    None)
        elif server is not None:
            problems.append(f"connected to {server} at {_where({address})}, but no database URL in its environment "
                            "or command line names that address: if it holds the job store, give jobstore_url by "
                            "hand")
    return stores


def _where(addresses: set[tuple[str, int]]) -> str:
    return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sorted(addresses))


def _has_password(url: str) -> bool:
    try:
        return urllib.parse.urlsplit(url).password is not None
    except ValueError:
        return True


def _redis_stores(url: str, local_addresses: list[Any], found_by: str, env: str | None) -> list[JobStore]:
    """The RedisJobStore pairs in the database each of the process's connections to this server uses (CLIENT LIST
    says which; the URL's own database when it may not be asked)."""
    try:
        import redis
    except ImportError:
        return []
    parts = urllib.parse.urlsplit(url)
    databases: set[int] = set()
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        mine = {_addr(a.ip, a.port) for a in local_addresses}
        for entry in client.client_list():
            if _addr(*str(entry.get("addr", "")).rsplit(":", 1)) in mine:
                databases.add(int(entry.get("db", 0)))
    except (redis.RedisError, ValueError, TypeError):
        databases = {int(parts.path.strip("/") or 0)} if parts.path.strip("/").isdigit() else {0}
    stores = []
    for db in sorted(databases):
        db_url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, ""))
        try:
            pairs = _redis_pairs(redis.Redis.from_url(db_url, socket_timeout=5))
        except redis.RedisError:
            continue
        for jobs_key, run_times_key, jobs in pairs:
            stores.append(JobStore(REDIS, redact_url(db_url), found_by, jobs, jobs_key=jobs_key,
                                   run_times_key=run_times_key, url_env=env, has_password=_has_password(db_url),
                                   url=db_url))
    return stores


def _scan(client: Any, kind: str, most: int) -> list[bytes]:
    """Up to ``most`` keys of type ``kind``, from at most SCAN_CALLS SCANs of SCAN_KEYS keys each: a database of
    millions of keys is sampled, not walked."""
    found: list[bytes] = []
    cursor = 0
    for _ in range(SCAN_CALLS):
        cursor, keys = client.scan(cursor=cursor, count=SCAN_KEYS, _type=kind)
        found += keys
        if not cursor or len(found) >= most:
            break
    return found[:most]


def _addr(host: Any, port: Any) -> tuple[str, str]:
    return str(host).strip("[]"), str(port)


def _redis_pairs(client: Any) -> list[tuple[str, str, int]]:
    """(jobs hash, run-times ZSET, jobs) of this database: RedisJobStore's default keys when they are there, else
    every hash + ZSET pair that shares a member whose hash value is a pickle (protocol 2 or later: ``\\x80``)."""
    if client.type(DEFAULT_JOBS_KEY) == b"hash" and client.type(DEFAULT_RUN_TIMES_KEY) == b"zset":
        return [(DEFAULT_JOBS_KEY, DEFAULT_RUN_TIMES_KEY, int(client.hlen(DEFAULT_JOBS_KEY)))]
    zsets = _scan(client, "zset", SCAN_ZSETS)
    if not zsets:
        return []
    hashes = _scan(client, "hash", SCAN_KEYS)
    pairs = []
    for zset in zsets:
        first = client.zrange(zset, 0, 0)
        if not first or not hashes:
            continue
        pipe = client.pipeline(transaction=False)
        for key in hashes:
            pipe.hget(key, first[0])
        for key, value in zip(hashes, pipe.execute(), strict=True):
            if isinstance(value, bytes) and value[:1] == b"\x80":
                pairs.append((key.decode(), zset.decode(), int(client.hlen(key))))
                break
    return pairs

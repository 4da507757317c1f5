"""Shared helpers for the benchmarks: the real-program harness, measured child processes, statistics, and the
summary table every benchmark ends with.

Safety (shared/TESTING.md): every program a benchmark starts runs under ``setpriv --bounding-set -sys_time
--inh-caps -sys_time`` (so nothing can set the clock), talks only to 127.0.0.0/8 or ::1, and is stopped by its PID.
``chronyd`` is only ever run as ``-Q`` (query, capital Q) with ``-f /dev/null`` or as a ``-x`` server; ``htpdate``
only with ``-q``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import realprogs

REPO = Path(__file__).resolve().parents[1]

SETPRIV: tuple[str, ...] = realprogs.SETPRIV_NO_SYS_TIME


def timeguard_cmd() -> list[str]:
    """The installed console script next to this interpreter (what a user runs), else ``python -m timeguard``."""
    script = Path(sys.executable).parent / "timeguard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "timeguard"]


def need_programs(*names: str) -> None:
    missing = [n for n in names if not (shutil.which(n) or any(os.access(f"{d}/{n}", os.X_OK) for d in ("/usr/sbin",
                                                                                                         "/sbin")))]
    if missing:
        sys.exit(f"missing programs: {', '.join(missing)} (run .ci/setup as root: chrony, htpdate, faketime, ...)")


def program(name: str) -> str:
    found = shutil.which(name) or next((p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)),
                                       None)
    if found is None:
        sys.exit(f"{name} is not installed")
    return found


# --------------------------------------------------------------------------------------------------------------
# A child process measured on its own: wall time (CLOCK_MONOTONIC) and its peak RSS (wait4's ru_maxrss)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Measured:
    argv: list[str]
    returncode: int
    wall_s: float
    maxrss_kb: int  # only meaningful with run_measured(..., rss=True)
    stdout: str
    stderr: str
    timed_out: bool = False


GNU_TIME = "/usr/bin/time"


def run_measured(argv: Sequence[str], *, timeout_s: float = 60.0, env: dict[str, str] | None = None,
                 cwd: str | None = None, rss: bool = False) -> Measured:
    """Run ``argv`` (already prefixed with setpriv by the caller where needed), wall time on CLOCK_MONOTONIC, and
    kill it by PID if it outlives ``timeout_s``.

    ``rss=True``: ``maxrss_kb`` is the program's own peak RSS, measured by GNU time (Debian ``time``), which forks
    it from a 1-2 MB process. Our own ``wait4`` figure is not that: Python starts children with vfork, and at exec
    the kernel folds the *parent's* high-water mark (this whole benchmark process) into the child's ``ru_maxrss``.
    """
    argv = list(argv)
    rss_file = None
    if rss:
        if not os.access(GNU_TIME, os.X_OK):
            sys.exit("GNU time (/usr/bin/time, Debian package `time`) is needed to measure a child's peak RSS")
        fd, rss_file = tempfile.mkstemp(prefix="tg-rss-")
        os.close(fd)
        argv = [GNU_TIME, "-o", rss_file, "-f", "%M", *argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd)
        result: dict[str, object] = {}

        def reap() -> None:
            _, status, usage = os.wait4(popen.pid, 0)
            result["ended"] = time.monotonic()
            result["status"] = status
            result["maxrss"] = usage.ru_maxrss

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout_s)
        timed_out = waiter.is_alive()
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGKILL)
            waiter.join(10)
        popen.returncode = os.waitstatus_to_exitcode(int(result["status"]))  # type: ignore[arg-type]
        out.seek(0)
        err.seek(0)
        maxrss_kb = int(result["maxrss"])  # type: ignore[arg-type]
        if rss_file is not None:
            text = Path(rss_file).read_text().strip().splitlines()
            os.unlink(rss_file)
            maxrss_kb = int(text[-1])  # "Command exited with non-zero status N" may come first
        return Measured(
            argv=list(argv),
            returncode=popen.returncode,
            wall_s=float(result["ended"]) - started,  # type: ignore[arg-type]
            maxrss_kb=maxrss_kb,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            timed_out=timed_out,
        )


class LoopbackChrony(realprogs.ChronyServer):
    """The harness's chronyd server (``-x``, under setpriv), answering every 127.0.0.0/8 client.

    The harness allows only its bind address as a client; bound to 127.0.0.2, a query from an unbound socket
    comes from 127.0.0.1 and would be dropped. Several servers on distinct loopback addresses are needed because
    chronyd -Q keys its sources by address.
    """

    def _write_conf(self) -> Path:
        conf = super()._write_conf()
        text = conf.read_text().replace(f"allow {self.bind}\n", "allow 127.0.0.0/8\n")
        conf.write_text(text)
        return conf


# --------------------------------------------------------------------------------------------------------------
# chronyd -Q: the NTP peer (query only: never sets the clock; and under setpriv without CAP_SYS_TIME anyway)
# --------------------------------------------------------------------------------------------------------------

_WRONG_BY = re.compile(r"System clock wrong by (-?[0-9.]+) seconds")


def chrony_workdir() -> Path:
    """A scratch directory chronyd can write its pid file in after dropping to _chrony."""
    path = realprogs.scratch_dir("chronyq")
    with contextlib.suppress(KeyError, PermissionError):
        user = pwd.getpwnam("_chrony")
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


@dataclass
class ChronyQuery:
    measured: Measured
    offset_s: float | None  # "System clock wrong by X seconds": X = true − host, timeguard's sign convention

    @property
    def wall_s(self) -> float:
        return self.measured.wall_s

    @property
    def answered(self) -> bool:
        return self.offset_s is not None

    def describe(self) -> str:
        if self.offset_s is None:
            return f"NO ANSWER (rc {self.measured.returncode})"
        return f"offset {self.offset_s:+.6f} s"


def chronyd_query(servers: Sequence[tuple[str, int]], timeout_s: float, workdir: Path, *, tag: str = "q",
                  maxsamples: int = 4, rss: bool = False, server_options: str = "",
                  extra: Sequence[str] = ()) -> ChronyQuery:
    """``chronyd -Q -f /dev/null -t T "server A port P iburst maxsamples 4" ... "pidfile ..."``.

    chrony keys its sources by IP address: two servers on 127.0.0.1 with different ports give "Could not add
    source" for the second, so every server a query combines must have its own loopback address.
    ``server_options`` go on every server line (``nts ntsport K``), ``extra`` are more directives
    (``ntstrustedcerts CA``).
    """
    lines = [f"server {host} port {port} iburst maxsamples {maxsamples} {server_options}".rstrip()
             for host, port in servers]
    argv = [*SETPRIV, program("chronyd"), "-Q", "-f", "/dev/null", "-t", f"{timeout_s:g}", *lines, *extra,
            f"pidfile {workdir}/{tag}.pid"]
    if any(h == "::1" or ":" in h for h, _ in servers):
        argv.insert(argv.index("-Q") + 1, "-6")
    m = run_measured(argv, timeout_s=timeout_s + 30, rss=rss)
    if "Could not add source" in m.stderr:
        raise RuntimeError(f"chronyd refused a source (one address per server!):\n{m.stderr}")
    found = _WRONG_BY.findall(m.stderr + m.stdout)
    return ChronyQuery(m, float(found[-1]) if found else None)


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): p99 of 20 values is the largest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float | None, digits: int = 1) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.{digits}f} ms"


def sec(seconds: float | None, digits: int = 3) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds:.{digits}f} s"


def mib(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f} MiB"


# --------------------------------------------------------------------------------------------------------------
# The summary every benchmark prints (markdown), and its exit status
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    value: str
    target: str
    ok: bool | None  # None: informational, no target
    peer: str = "-"
    ratio: str = "-"


@dataclass
class Report:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(  # noqa: PLR0917 - a table row reads best positionally
        self, metric: str, value: str, target: str = "-", ok: bool | None = None, peer: str = "-", ratio: str = "-"
    ) -> None:
        self.rows.append(Row(metric, value, target, ok, peer, ratio))
        verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
        print(f"  [{verdict}] {metric}: {value}   target {target}   peer {peer}   ratio {ratio}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.ok is False]

    def markdown(self) -> str:
        lines = [f"**{self.title}** (`benchmarks/{self.name}.py`)", "",
                 "| metric | timeguard | target | result | peer (same run) | ratio timeguard/peer |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            verdict = "—" if r.ok is None else ("PASS" if r.ok else "**FAIL**")
            lines.append(f"| {r.metric} | {r.value} | {r.target} | {verdict} | {r.peer} | {r.ratio} |")
        lines.extend(f"\n{n}" for n in self.notes)
        return "\n".join(lines) + "\n"

    def finish(self) -> None:
        """Print the table, save it for run_all.sh ($BENCH_RESULTS_DIR), and exit 1 if a target was missed."""
        text = self.markdown()
        print("\n" + "=" * 100 + "\n" + text)
        out_dir = os.environ.get("BENCH_RESULTS_DIR")
        if out_dir:
            Path(out_dir, f"{self.name}.md").write_text(text)
            Path(out_dir, f"{self.name}.json").write_text(json.dumps(
                {"name": self.name, "rows": [r.__dict__ for r in self.rows], "notes": self.notes}, indent=1))
        missed = self.failed
        if missed:
            print(f"{self.name}: {len(missed)} target(s) missed: " + "; ".join(r.metric for r in missed))
            realprogs.stop_all()
            sys.exit(1)
        print(f"{self.name}: all targets met")


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "-"
    return f"{a / b:.2f}×"


def wait_first_check(proc: realprogs.ManagedProcess, journal: Path) -> None:
    """Until the daemon ``proc`` has written its first check into ``journal`` (30 s at most; its log if not)."""
    from timeguard.store.journal import Journal, JournalError

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not proc.alive():
            raise SystemExit(f"{proc.name} exited ({proc.returncode}):\n{proc.log_tail(40)}")
        if journal.exists():
            try:
                with Journal(journal, readonly=True) as j:
                    checked = j.check_count() >= 1
            except JournalError:  # created but not yet initialised by the daemon
                checked = False
            if checked:
                return
        time.sleep(0.1)
    raise SystemExit(f"{proc.name} made no check within 30 s:\n{proc.log_tail(40)}")


@contextlib.contextmanager
def cleanup() -> Iterator[None]:
    """Stop (by PID) everything the harness started, whatever happens."""
    try:
        yield
    finally:
        realprogs.stop_all()




def machine() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
            f"Python {sys.version.split()[0]}")

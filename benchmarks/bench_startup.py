"""Start-up cost and peak memory of the CLI, vs the interpreter's floor and vs chronyd -Q.

* ``timeguard check --help`` wall time, median of 20, against ``python -c pass`` (the floor any Python CLI pays),
  both under the same setpriv prefix as everything else here.
* Peak RSS of one ``timeguard check`` (GNU time's ``%M``: the ``ru_maxrss`` of that one process) against a small
  local config: 2 chronyd NTP servers and 1 nginx HTTPS server with a test CA. Peer: ``chronyd -Q``'s peak RSS
  against the same
  2 NTP servers, in the same run.
* Which imports dominate: ``python -X importtime`` of ``check --help`` and of a real ``check`` (top 5 top-level
  imports by cumulative time).

Targets: peak RSS of one check ≤ 35 MiB (the memory target of time_anchors.md §8(b) P7 as set for the daemon);
the wall times are reported without a target (§8(b) sets none for the CLI's start-up).

Run: .venv/bin/python -m benchmarks.bench_startup [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import yaml

from benchmarks._common import (
    REPO,
    SETPRIV,
    LoopbackChrony,
    Report,
    chrony_workdir,
    chronyd_query,
    cleanup,
    machine,
    median,
    mib,
    ms,
    need_programs,
    ratio,
    run_measured,
    timeguard_cmd,
)
from tests.support.realprogs import NginxServer, make_test_ca, scratch_dir

RSS_TARGET_MIB = 35.0
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def top_imports(stderr: str, count: int = 5) -> list[tuple[str, float]]:
    """Top-level imports (no indentation) by cumulative µs, from ``-X importtime`` output."""
    found = []
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m and not m.group(3):
            found.append((m.group(4), int(m.group(2)) / 1e6))
    return sorted(found, key=lambda item: -item[1])[:count]


def top_packages(stderr: str, count: int = 5) -> list[tuple[str, float]]:
    """Top non-timeguard root packages (``requests``, ``ssl``...) by cumulative µs, wherever they were imported."""
    best: dict[str, float] = {}
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m and "." not in m.group(4) and not m.group(4).startswith(("timeguard", "site", "encodings")):
            best[m.group(4)] = max(best.get(m.group(4), 0.0), int(m.group(2)) / 1e6)
    return sorted(best.items(), key=lambda item: -item[1])[:count]


def total_import_s(stderr: str) -> float:
    return sum(int(m.group(1)) for line in stderr.splitlines() if (m := _IMPORT_LINE.match(line))) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    need_programs("chronyd", "nginx", "setpriv")
    print(f"machine: {machine()}")
    report = Report("bench_startup", "4. CLI start-up and peak memory")
    tg = timeguard_cmd()

    # 1. --help vs the floor (interleaved, so that background load hits both alike).
    help_walls, floor_walls = [], []
    run_measured([*SETPRIV, *tg, "check", "--help"])  # warm the page cache
    for _ in range(args.runs):
        m = run_measured([*SETPRIV, *tg, "check", "--help"])
        assert m.returncode == 0, m.stderr
        help_walls.append(m.wall_s)
        floor_walls.append(run_measured([*SETPRIV, sys.executable, "-c", "pass"]).wall_s)
    report.row(f"`timeguard check --help` wall, median of {args.runs}", ms(median(help_walls)), "—", None,
               f"`python -c pass`: {ms(median(floor_walls))}", ratio(median(help_walls), median(floor_walls)))
    report.row("… above the interpreter floor", ms(median(help_walls) - median(floor_walls)), "—", None)

    with cleanup():
        chronies = [LoopbackChrony(bind=f"127.0.0.{i}").start() for i in (1, 2)]
        tls = make_test_ca(scratch_dir("ca"))
        nginx = NginxServer(tls=(tls.cert, tls.key)).start()
        directory = scratch_dir("startup")
        config = directory / "timeguard.yaml"
        config.write_text(yaml.safe_dump({
            "state_dir": str(directory),
            "sources": {"ntp": [{"host": c.bind, "port": c.port} for c in chronies],
                        "http": [{"url": nginx.url, "ca_bundle": str(tls.ca_bundle)}]},
        }))
        check = [*SETPRIV, *tg, "check", "--json", "--config", str(config)]
        run_measured(check, timeout_s=30)  # warm-up
        rss, walls = [], []
        floor_rss = run_measured([*SETPRIV, sys.executable, "-c", "pass"], rss=True).maxrss_kb
        for _ in range(3):
            m = run_measured(check, timeout_s=30, rss=True)
            status = json.loads(m.stdout)["status"]
            if status != "OK":
                raise SystemExit(f"the check against the local servers said {status}:\n{m.stdout}")
            rss.append(m.maxrss_kb)
            walls.append(m.wall_s)
        q = chronyd_query([(c.bind, c.port) for c in chronies], 10, chrony_workdir(), rss=True)
        if not q.answered:
            raise SystemExit(f"chronyd -Q did not answer:\n{q.measured.stderr}")
        report.row("peak RSS of one `timeguard check` (2 NTP + 1 HTTPS), max of 3", mib(max(rss)),
                   f"≤ {RSS_TARGET_MIB:g} MiB", max(rss) / 1024 <= RSS_TARGET_MIB,
                   f"chronyd -Q (2 NTP): {mib(q.measured.maxrss_kb)}", ratio(max(rss), q.measured.maxrss_kb))
        report.row("… for comparison, `python -c pass`", mib(floor_rss), "—", None)
        report.row("wall of that check, median", ms(median(walls), 0), "—", None,
                   f"chronyd -Q -t 10: {ms(q.wall_s, 0)}", ratio(median(walls), q.wall_s))

        # 3. Which imports dominate.
        env_py = [*SETPRIV, sys.executable, "-X", "importtime", "-m", "timeguard"]
        help_imp = run_measured([*env_py, "check", "--help"], cwd=str(REPO))
        check_imp = run_measured([*env_py, "check", "--json", "--config", str(config)], timeout_s=30, cwd=str(REPO))
    for label, m in (("check --help", help_imp), ("check (a real run)", check_imp)):
        tops = top_imports(m.stderr)
        print(f"\n-X importtime, {label}: {total_import_s(m.stderr) * 1e3:.0f} ms of imports in total; top 5 top-level "
              "imports by cumulative time:")
        for name, seconds in tops:
            print(f"  {seconds * 1e3:7.1f} ms  {name}")
        packages = top_packages(m.stderr)
        print("  top 5 packages wherever imported: " + ", ".join(f"{n} {s * 1e3:.1f} ms" for n, s in packages))
        report.row(f"imports of `{label}`: total; top 5 top-level cumulative", f"{total_import_s(m.stderr) * 1e3:.0f} "
                   "ms; " + ", ".join(f"{n} {s * 1e3:.0f}" for n, s in tops) + " ms", "—", None)
        report.row("… of which packages (top 5)", ", ".join(f"{n} {s * 1e3:.0f}" for n, s in packages) + " ms",
                   "—", None)
    report.note("Wall times are under `setpriv` (as every process the benchmarks start), page cache warm. Peak RSS "
                "is GNU time's %M (ru_maxrss of that one process, started by GNU time, a 1-2 MB process; not wait4 "
                "from the benchmark, whose vfork makes the kernel charge the parent's high-water mark to the child).")
    report.finish()


if __name__ == "__main__":
    main()

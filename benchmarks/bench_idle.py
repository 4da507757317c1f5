"""What the daemon costs while nothing happens: CPU and memory of `timeguard run` over an idle window.

``timeguard run`` (under setpriv, real clock) with 3 FakeNTPServer sources at the default intervals (NTP every
64 s, 1-s step-detector tick, floor every 60 s), journal in a scratch state_dir. After its first check, over
``--seconds`` (default 600; ``--seconds 60`` for a quick run): CPU = Δ(utime + stime) of /proc/<pid>/stat (every
thread, dead ones included) as % of one core; memory = VmRSS (sampled every second, max kept) and VmHWM at the end.

In the same window, a second daemon whose config adds one HTTPS Date source (a loopback FakeDateServer with a test
CA, named by ``ca_bundle``; its default interval is 900 s, so it is queried at start-up only): the HTTP and TLS stack
is what costs memory, and the RSS target holds for this daemon too.

Peer: chronyd cannot run as an NTP *client* here without being allowed to set the clock, so the peer is a real
chronyd ``-x`` running as an NTP *server* (``local stratum 2``, loopback, under setpriv), idle over the same window
— chrony's resident cost, not the cost of its client loop.

Targets (time_anchors.md §8(b) P6/P7 as set for this issue): CPU ≤ 0.1 % of one core, RSS ≤ 35 MiB.

Run: .venv/bin/python -m benchmarks.bench_idle [--seconds 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from benchmarks._common import REPO, Report, cleanup, machine, mib, need_programs, ratio, wait_first_check
from tests.support.fake_http import FakeDateServer, running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import ChronyServer, ManagedProcess, scratch_dir

CPU_TARGET_PCT = 0.1
RSS_TARGET_MIB = 35.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def schedstat_s(pid: int) -> float:
    """On-CPU time in ns resolution, summed over the live threads (exited threads are not included)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            continue
    return total / 1e9


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def threads(pid: int) -> int:
    return status_kb(pid, "Threads")


def start_daemon(name: str, ntp: list[FakeNTPServer], https: FakeDateServer | None) -> tuple[ManagedProcess, Path]:
    directory = scratch_dir(name)
    state = directory / "state"
    sources: dict[str, list[dict[str, object]]] = {"ntp": [{"host": "127.0.0.1", "port": s.port} for s in ntp],
                                                   "http": []}
    if https is not None:
        sources["http"] = [{"url": https.url, "ca_bundle": https.ca_bundle}]
    config = directory / "timeguard.yaml"
    config.write_text(yaml.safe_dump({"state_dir": str(state), "sources": sources,
                                      "logging": {"format": "json", "level": "info"}}))
    proc = ManagedProcess.start([sys.executable, "-m", "timeguard", "run", "--config", str(config)], name=name,
                                log_path=directory / "daemon.log", cwd=str(REPO))
    return proc, state / "journal.sqlite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="idle window (default 600)")
    args = parser.parse_args()
    need_programs("chronyd", "setpriv")
    print(f"machine: {machine()}")
    report = Report("bench_idle", f"6. Idle daemon over {args.seconds:g} s")
    with cleanup(), running(tls=True) as https:
        ntp = [FakeNTPServer() for _ in range(3)]
        ntp_b = [FakeNTPServer() for _ in range(3)]
        try:
            chrony = ChronyServer().start()
            daemon, journal = start_daemon("idle-ntp", ntp, None)
            daemon_b, journal_b = start_daemon("idle-ntp-https", ntp_b, https)
            wait_first_check(daemon, journal)
            wait_first_check(daemon_b, journal_b)
            time.sleep(2.0)  # let the start-up check's threads finish
            procs = {"timeguard": daemon.pid, "timeguard+https": daemon_b.pid, "chronyd": chrony.process.pid}
            print(f"pids {procs}; idle window {args.seconds:g} s starting now")
            cpu0 = {k: cpu_s(p) for k, p in procs.items()}
            sched0 = schedstat_s(procs["chronyd"])
            requests0 = sum(len(s.received) for s in ntp)
            t0 = time.monotonic()
            rss_max = dict.fromkeys(procs, 0)
            next_print = t0 + 60
            while (now := time.monotonic()) - t0 < args.seconds:
                for k, p in procs.items():
                    rss_max[k] = max(rss_max[k], status_kb(p, "VmRSS"))
                if not (daemon.alive() and daemon_b.alive() and chrony.process.alive()):
                    raise SystemExit("a measured process exited during the window")
                if now >= next_print:
                    print(f"  {now - t0:5.0f} s: " + ", ".join(
                        f"{k} cpu {cpu_s(p) - cpu0[k]:.2f} s rss {status_kb(p, 'VmRSS') / 1024:.1f} MiB"
                        for k, p in procs.items()), flush=True)
                    next_print += 60
                time.sleep(min(1.0, max(0.0, args.seconds - (now - t0))))
            window = time.monotonic() - t0
            cpu1 = {k: cpu_s(p) for k, p in procs.items()}
            chrony_sched = schedstat_s(procs["chronyd"]) - sched0
            hwm = {k: status_kb(p, "VmHWM") for k, p in procs.items()}
            rss_end = {k: status_kb(p, "VmRSS") for k, p in procs.items()}
            nthreads = {k: threads(p) for k, p in procs.items()}
            requests = sum(len(s.received) for s in ntp) - requests0
        finally:
            for server in ntp + ntp_b:
                server.close()
    pct = {k: (cpu1[k] - cpu0[k]) / window * 100 for k in procs}
    for k in procs:
        print(f"  {k:15} cpu {cpu1[k] - cpu0[k]:.3f} s over {window:.1f} s = {pct[k]:.4f} % of a core; VmRSS max "
              f"{rss_max[k] / 1024:.1f} MiB, at end {rss_end[k] / 1024:.1f} MiB, VmHWM {hwm[k] / 1024:.1f} MiB, "
              f"{nthreads[k]} threads")
    print(f"  the 3-NTP daemon sent {requests} NTP requests in the window (4 per server per check, every 64 s)")
    report.row(f"CPU, % of one core over {window:.0f} s (3 NTP sources)", f"{pct['timeguard']:.4f} %",
               f"≤ {CPU_TARGET_PCT:g} %", pct["timeguard"] <= CPU_TARGET_PCT,
               f"chronyd -x server, idle: {pct['chronyd']:.4f} % ({chrony_sched * 1e3:.2f} ms on CPU by "
               f"schedstat = {chrony_sched / window * 100:.5f} %)",
               ratio(pct["timeguard"], chrony_sched / window * 100))
    report.row("RSS: VmRSS max / VmHWM (3 NTP sources)", f"{mib(rss_max['timeguard'])} / {mib(hwm['timeguard'])}",
               f"≤ {RSS_TARGET_MIB:g} MiB", max(rss_max["timeguard"], hwm["timeguard"]) / 1024 <= RSS_TARGET_MIB,
               f"chronyd: {mib(rss_max['chronyd'])} / {mib(hwm['chronyd'])}",
               ratio(rss_max["timeguard"], rss_max["chronyd"]))
    report.row("RSS: VmRSS max / VmHWM (3 NTP + 1 HTTPS source)",
               f"{mib(rss_max['timeguard+https'])} / {mib(hwm['timeguard+https'])}",
               f"≤ {RSS_TARGET_MIB:g} MiB",
               max(rss_max["timeguard+https"], hwm["timeguard+https"]) / 1024 <= RSS_TARGET_MIB,
               f"chronyd: {mib(rss_max['chronyd'])} / {mib(hwm['chronyd'])}",
               ratio(rss_max["timeguard+https"], rss_max["chronyd"]))
    report.row("CPU, % of one core (3 NTP + 1 HTTPS source)", f"{pct['timeguard+https']:.4f} %", "—", None, "-",
               "-")
    report.row("threads (3 NTP sources)", str(nthreads["timeguard"]), "—", None, f"chronyd: {nthreads['chronyd']}",
               "-")
    report.note("The peer is chronyd -x as an idle NTP server (chrony as a client would need to set the clock). "
                "CPU is utime+stime from /proc/<pid>/stat (10-ms ticks) over the window after the first check.")
    report.finish()


if __name__ == "__main__":
    main()

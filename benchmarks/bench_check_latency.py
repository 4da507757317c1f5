"""One `timeguard check` against 8 loopback sources, 2 of them dead, under one deadline.

Sources (time_anchors.md §8(b) P5: "≤ timeout + 0.2 s for any number of dead sources"):

* 4 real chronyd servers (``-x``, ``local stratum 2``) on 127.0.0.1–127.0.0.4, and 1 dead NTP server: a UDP port
  on 127.0.0.5 that is bound but never read (a blackhole);
* 2 real nginx HTTPS servers with a throw-away test CA, and 1 dead HTTP server: a TCP port that accepts
  connections (the kernel completes the handshake) but never answers.

Measured for timeout_s 2.0 and 5.0, N runs each: the ``duration_s`` the check reports (in-process, from start to
verdict) and the wall time of the whole CLI process (interpreter start-up and imports included).
Target: max duration ≤ timeout + 0.2 s.

Peer: ``chronyd -Q -f /dev/null -t <timeout>`` with the same 5 NTP servers (4 live + the dead one; chrony has no
HTTP source, so the HTTPS servers are not part of its run). chrony keys sources by IP address, which is why each
NTP server has its own loopback address.

Run: .venv/bin/python -m benchmarks.bench_check_latency [--runs 10] [--chrony-runs 3] [--timeouts 2.0 5.0]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

import yaml

from benchmarks._common import (
    SETPRIV,
    LoopbackChrony,
    Report,
    chrony_workdir,
    chronyd_query,
    cleanup,
    machine,
    median,
    need_programs,
    ratio,
    run_measured,
    sec,
    timeguard_cmd,
)
from tests.support.fake_http import blackhole
from tests.support.realprogs import NginxServer, make_test_ca, scratch_dir

MARGIN_S = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timeguard check runs per timeout (default 10)")
    parser.add_argument("--chrony-runs", type=int, default=3, help="chronyd -Q runs per timeout (default 3)")
    parser.add_argument("--timeouts", type=float, nargs="+", default=[2.0, 5.0])
    args = parser.parse_args()
    need_programs("chronyd", "nginx", "setpriv")

    report = Report("bench_check_latency", "1. One check, 8 sources (2 dead): deadline kept")
    print(f"machine: {machine()}")
    with cleanup():
        chronies = [LoopbackChrony(bind=f"127.0.0.{i}").start() for i in range(1, 5)]
        tls = make_test_ca(scratch_dir("ca"))
        nginxes = [NginxServer(tls=(tls.cert, tls.key)).start() for _ in range(2)]
        dead_ntp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead_ntp.bind(("127.0.0.5", 0))
        dead_port = dead_ntp.getsockname()[1]
        chrony_dir = chrony_workdir()
        with dead_ntp, blackhole() as hole:
            print(f"NTP: chronyd {[f'{c.bind}:{c.port}' for c in chronies]}, dead 127.0.0.5:{dead_port} (UDP, never "
                  f"read); HTTPS: nginx {[n.url for n in nginxes]}, dead {hole} (accepts, never answers)")
            first_walls: dict[str, tuple[float, float]] = {}
            for timeout in sorted(args.timeouts):
                directory = scratch_dir("check")
                cfg = {
                    "timeout_s": timeout,
                    "state_dir": str(directory),
                    "sources": {
                        "ntp": [*({"host": c.bind, "port": c.port, "name": f"chrony{i}"}
                                  for i, c in enumerate(chronies, 1)),
                                {"host": "127.0.0.5", "port": dead_port, "name": "ntp-dead"}],
                        "http": [*({"url": n.url, "ca_bundle": str(tls.ca_bundle), "name": f"nginx{i}"}
                                   for i, n in enumerate(nginxes, 1)),
                                 {"url": hole, "allow_plain_http": True, "name": "http-dead"}],
                    },
                }
                config = directory / "timeguard.yaml"
                config.write_text(yaml.safe_dump(cfg))
                argv = [*SETPRIV, *timeguard_cmd(), "check", "--json", "--config", str(config)]
                run_measured(argv, timeout_s=timeout + 30)  # warm-up (page cache), not counted
                durations, walls, wrong, https = [], [], [], []
                for i in range(args.runs):
                    m = run_measured(argv, timeout_s=timeout + 30)
                    try:
                        data = json.loads(m.stdout)
                    except ValueError:
                        sys.exit(f"timeguard check printed no JSON (rc {m.returncode}):\n{m.stdout}\n{m.stderr}")
                    states = {s["name"]: s["state"] for s in data["sources"]}
                    expected = {**{f"chrony{k}": "truechimer" for k in range(1, 5)}, "ntp-dead": "unreachable",
                                "nginx1": "truechimer", "nginx2": "truechimer", "http-dead": "unreachable"}
                    if data["status"] != "OK" or states != expected:
                        wrong.append(f"run {i}: {data['status']} {states}")
                    durations.append(data["duration_s"])
                    https.extend((src["requests"], (src["offset_hi_s"] - src["offset_lo_s"]) / 2)
                                 for src in data["sources"] if src["name"].startswith("nginx")
                                 and src["offset_hi_s"] is not None)
                    walls.append(m.wall_s)
                    print(f"  timeout {timeout:g}: run {i + 1}: duration_s {data['duration_s']:.3f}, "
                          f"wall {m.wall_s:.3f} s, {data['status']}, "
                          f"http: {next(s['reason'] for s in data['sources'] if s['name'] == 'nginx1')}", flush=True)
                chrony_walls, chrony_answers = [], 0
                for _ in range(args.chrony_runs):
                    q = chronyd_query([(c.bind, c.port) for c in chronies] + [("127.0.0.5", dead_port)], timeout,
                                      chrony_dir)
                    chrony_walls.append(q.wall_s)
                    chrony_answers += q.answered
                    print(f"  timeout {timeout:g}: chronyd -Q wall {q.wall_s:.3f} s, {q.describe()}", flush=True)
                limit = timeout + MARGIN_S
                peer_wall = median(chrony_walls)
                peer_text = (f"chronyd -Q, 5 NTP only: wall median {sec(peer_wall)}; "
                             f"answered {chrony_answers}/{len(chrony_walls)}")
                report.row(f"timeout {timeout:g} s: check duration_s median / max (N={args.runs})",
                           f"{sec(median(durations))} / {sec(max(durations))}", f"max ≤ {limit:g} s",
                           max(durations) <= limit, peer_text, ratio(median(durations), peer_wall))
                report.row(f"timeout {timeout:g} s: CLI process wall median / max",
                           f"{sec(median(walls))} / {sec(max(walls))}", "— (start-up included)", None,
                           f"chronyd -Q wall median {sec(peer_wall)}", ratio(median(walls), peer_wall))
                report.row(f"timeout {timeout:g} s: correct verdicts (OK, 6 truechimers, 2 unreachable)",
                           f"{args.runs - len(wrong)}/{args.runs}", f"{args.runs}/{args.runs}", not wrong)
                for w in wrong:
                    print("  WRONG:", w)
                report.row(f"timeout {timeout:g} s: HTTPS requests done of 7, median (min); bound ± median",
                           f"{median([r for r, _ in https]):g} ({min(r for r, _ in https)}); "
                           f"{median([b for _, b in https]) * 1e3:.1f} ms", "—", None)
                first_walls.setdefault("tg", (timeout, median(walls)))
            # chronyd -Q's own time to an answer: a deadline it does not hit.
            answer_walls = []
            for _ in range(args.chrony_runs):
                q = chronyd_query([(c.bind, c.port) for c in chronies] + [("127.0.0.5", dead_port)], 10, chrony_dir)
                print(f"  chronyd -Q -t 10: wall {q.wall_s:.3f} s, {q.describe()}", flush=True)
                if q.answered:
                    answer_walls.append(q.wall_s)
            timeout, tg_wall = first_walls["tg"]
            report.row(f"time to a verdict, CLI wall (timeout {timeout:g} s, 8 sources incl. HTTPS)", sec(tg_wall),
                       "—", None, f"chronyd -Q -t 10 time to its answer (5 NTP): median {sec(median(answer_walls))}, "
                       f"answered {len(answer_walls)}/{args.chrony_runs}", ratio(tg_wall, median(answer_walls)))
    report.note("chronyd -Q queries only the 5 NTP servers (chrony has no HTTP source); with `iburst maxsamples 4` "
                "it needs about 5.1 s with 4 live and 1 dead server on loopback, so at -t 2 and -t 5 it ends with "
                "\"Timeout reached\" and no offset; its time to an answer is measured with -t 10. "
                "chrony keys sources by IP address, so each NTP server has its own 127.0.0.x address.")
    report.finish()


if __name__ == "__main__":
    main()

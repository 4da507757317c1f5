"""NTP offsets at known sub-second offsets: timeguard's own NTP client vs `chronyd -Q` on the same server.

Servers: FakeNTPServer (tests/support/fake_ntp.py) answering from this machine's clock + a chosen offset (sub-second
ones included, which a chronyd under libfaketime cannot serve), one on ::1, and a real chronyd (``-x``,
``local stratum 2``) at +0. The truth is exact: every server reads this machine's clock.

timeguard: ``timeguard.measure.ntp.query_ntp(host, port)`` (4 packets, the least-delay reply kept).
Peer: ``chronyd -Q -f /dev/null -t 10 "server H port P iburst maxsamples 4" "pidfile ..."`` (query only, under
setpriv without CAP_SYS_TIME), one chronyd per server, all at the same time; its "System clock wrong by X seconds"
is the offset in timeguard's sign convention (true − host).

Target: |timeguard − chronyd| ≤ 1 ms on every server, and both within 1 ms of the injected offset.

Run: .venv/bin/python -m benchmarks.bench_ntp_accuracy
"""

from __future__ import annotations

import argparse
import socket
from concurrent.futures import ThreadPoolExecutor

from benchmarks._common import (
    LoopbackChrony,
    Report,
    chrony_workdir,
    chronyd_query,
    cleanup,
    machine,
    median,
    ms,
    need_programs,
)
from tests.support.fake_ntp import FakeNTPServer
from timeguard.measure.ntp import query_ntp

OFFSETS = [-2.25, -0.71, -0.33, -0.05, 0.0, 0.0004, 0.25, 0.71, 1.5]
IPV6_OFFSET = -0.4
TOLERANCE_S = 0.001


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timeguard queries per server (median kept; default 3)")
    args = parser.parse_args()
    need_programs("chronyd", "setpriv")
    print(f"machine: {machine()}")
    report = Report("bench_ntp_accuracy", "3. NTP offset vs chronyd -Q on the same servers")
    with cleanup():
        servers: list[tuple[str, str, int, float]] = []  # label, host, port, truth
        fakes = [FakeNTPServer(offset_s=o) for o in OFFSETS]
        servers += [(f"fake {o:+g} s", "127.0.0.1", f.port, o) for f, o in zip(fakes, OFFSETS, strict=True)]
        if ipv6_available():
            fake6 = FakeNTPServer(offset_s=IPV6_OFFSET, host="::1")
            fakes.append(fake6)
            servers.append((f"fake {IPV6_OFFSET:+g} s on ::1", "::1", fake6.port, IPV6_OFFSET))
        else:
            report.note("IPv6 is not available here: the ::1 server was skipped.")
        chrony = LoopbackChrony().start()
        servers.append(("chronyd -x server +0 s", chrony.bind, chrony.port, 0.0))
        try:
            tg: dict[str, tuple[float, float]] = {}  # offset (median of repeats), bound
            for label, host, port, _ in servers:
                samples = [query_ntp(host, port, timeout_s=2.0) for _ in range(args.repeat)]
                usable = [s for s in samples if s.usable]
                if not usable:
                    raise SystemExit(f"timeguard got no offset from {label}: {samples[0].reason}")
                tg[label] = (median([float(s.offset_s) for s in usable]),  # type: ignore[arg-type]
                             median([float(s.error_s) for s in usable]))  # type: ignore[arg-type]
            workdir = chrony_workdir()
            with ThreadPoolExecutor(len(servers)) as pool:
                queries = list(pool.map(lambda item: chronyd_query([(item[1][1], item[1][2])], 10, workdir,
                                                                   tag=f"q{item[0]}"), enumerate(servers)))
        finally:
            for fake in fakes:
                fake.close()

    print(f"\n{'server':<28} {'injected':>10} {'timeguard':>12} {'± bound':>10} {'chronyd -Q':>12} "
          f"{'tg − chrony':>12} {'tg − truth':>11} {'chrony − truth':>14}")
    diffs, tg_errs, chrony_errs, missing = [], [], [], []
    for (label, _, _, truth), q in zip(servers, queries, strict=True):
        offset, bound = tg[label]
        if q.offset_s is None:
            missing.append(label)
            print(f"{label:<28} {truth:+10.4f} {offset:+12.6f} {ms(bound, 3):>10} {'NO ANSWER':>12}")
            continue
        diffs.append(abs(offset - q.offset_s))
        tg_errs.append(abs(offset - truth))
        chrony_errs.append(abs(q.offset_s - truth))
        print(f"{label:<28} {truth:+10.4f} {offset:+12.6f} {ms(bound, 3):>10} {q.offset_s:+12.6f} "
              f"{(offset - q.offset_s) * 1e6:+10.1f}µs {(offset - truth) * 1e6:+9.1f}µs "
              f"{(q.offset_s - truth) * 1e6:+12.1f}µs")
    n = len(servers)
    report.row(f"\\|timeguard − chronyd -Q\\| median / max ({n} servers)", f"{ms(median(diffs), 3)} / "
               f"{ms(max(diffs, default=float('nan')), 3)}", f"max ≤ {TOLERANCE_S * 1e3:g} ms",
               not missing and max(diffs) <= TOLERANCE_S)
    report.row("\\|timeguard − injected\\| median / max", f"{ms(median(tg_errs), 3)} / "
               f"{ms(max(tg_errs, default=float('nan')), 3)}", f"max ≤ {TOLERANCE_S * 1e3:g} ms",
               max(tg_errs) <= TOLERANCE_S,
               f"chronyd -Q: {ms(median(chrony_errs), 3)} / {ms(max(chrony_errs, default=float('nan')), 3)}",
               "-")
    report.row("\\|chronyd -Q − injected\\| max (the peer matches the truth too)",
               ms(max(chrony_errs, default=float("nan")), 3), f"max ≤ {TOLERANCE_S * 1e3:g} ms",
               not missing and max(chrony_errs) <= TOLERANCE_S)
    report.row("servers chronyd -Q answered", f"{n - len(missing)}/{n}", f"{n}/{n}", not missing)
    report.note(f"Offsets {', '.join(f'{o:+g}' for o in OFFSETS)} s (FakeNTPServer), {IPV6_OFFSET:+g} s on ::1, and a "
                f"real chronyd at +0; timeguard: median of {args.repeat} query_ntp calls (4 packets each); chronyd -Q: "
                "one run per server, all concurrently.")
    report.finish()


if __name__ == "__main__":
    main()

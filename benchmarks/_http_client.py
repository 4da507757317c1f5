"""Helper process for bench_http_accuracy: timeguard's HTTP Date source, one query per stdin line.

Reads ``N URL`` lines, answers each with one JSON line. A long-lived process per concurrent slot, as htpdate is a
process per query: concurrent measurements share no interpreter (no GIL), and the interpreter start-up and imports
happen once, before any measurement, instead of competing for the CPU with queries that are timing their probes.
"""

from __future__ import annotations

import json
import sys
import time

from timeguard.measure.http import query_http


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        n, url = line.split()
        started = time.monotonic()
        s = query_http(url, requests_count=int(n), timeout_s=20, allow_plain_http=True)
        took = time.monotonic() - started
        print(json.dumps({"usable": s.usable, "offset": s.offset_s, "lo": s.offset_lo_s, "hi": s.offset_hi_s,
                          "requests": s.requests, "reason": s.reason, "took": took}), flush=True)


if __name__ == "__main__":
    main()

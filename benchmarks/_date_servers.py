"""Helper process for bench_http_accuracy: FakeDateServers (tests/support/fake_http.py) at the offsets given.

``python -m benchmarks._date_servers 0.25 -1.3 ...`` prints one JSON line ``[[offset, port], ...]`` and serves until its
stdin closes (or it is signalled). The servers live in their own process, like a remote server: the client
being measured does not share an interpreter (and a GIL) with them.
"""

from __future__ import annotations

import json
import sys

from tests.support.fake_http import FakeDateServer


def main() -> None:
    servers = [FakeDateServer(offset_s=float(arg)).start() for arg in sys.argv[1:]]
    print(json.dumps([[s.offset_s, s.port] for s in servers]), flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    for server in servers:
        server.stop()


if __name__ == "__main__":
    main()

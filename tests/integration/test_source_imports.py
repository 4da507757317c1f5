"""What a daemon with NTP and HTTPS sources loads (issue 10: ≤ 35 MiB resident): the HTTP source is the standard
library's, so neither requests nor its stack is imported unless a webhook/Slack hook is configured; nor are the
modules the sources gave up for memory (statistics: decimal and fractions; secrets: hmac and hashlib).

A fresh interpreter imports the agent (everything ``timeguard run`` imports for its loop), builds the probes of a
config with one NTP and one HTTPS source exactly as the agent does (``measure.check.probes``), measures both
against loopback servers, and lists the modules it then holds.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer

CHILD = r"""
import json, sys
import timeguard.agent
from timeguard import config
from timeguard.measure.check import measure_all, probes

cfg = config.loads(sys.argv[1], "test.yaml")
samples = measure_all(probes(cfg), 5.0)
print(json.dumps({"samples": [[s.name, s.usable, s.reason] for s in samples], "modules": sorted(sys.modules)}))
"""

#: OpenSSL and cryptography: pyOpenSSL is the NTS source's, loaded only when an NTS source is configured.
NOT_LOADED = ("requests", "urllib3", "charset_normalizer", "idna", "certifi", "statistics", "decimal", "hmac",
              "OpenSSL", "cryptography")


def test_a_daemon_with_ntp_and_https_sources_loads_neither_requests_nor_what_the_sources_gave_up():
    ntp = FakeNTPServer(offset_s=0.0)
    try:
        with running(tls=True, offset_s=0.0) as https:
            yaml_text = json.dumps({
                "sources": {"ntp": [{"host": "127.0.0.1", "port": ntp.port}],
                            "http": [{"url": https.url, "ca_bundle": https.ca_bundle}]},
                "http": {"requests": 2},
            })
            out = subprocess.run([sys.executable, "-c", CHILD, yaml_text], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
            served = len(https.served)
    finally:
        ntp.close()
    result = json.loads(out)
    usable = {name: (ok, reason) for name, ok, reason in result["samples"]}
    assert len(usable) == 2
    assert all(ok for ok, _ in usable.values()), usable  # both sources really measured
    assert served == 2
    assert "http.client" in result["modules"]
    assert "ssl" in result["modules"]
    assert [m for m in result["modules"] if m.split(".")[0] in NOT_LOADED] == []
    assert [m for m in result["modules"] if m.startswith("timeguard.measure.nts")] == []

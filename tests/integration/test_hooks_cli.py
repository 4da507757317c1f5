"""`timeguard hooks test NAME`: a synthetic event at one hook, for real, from the command line."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import yaml

from tests.support.realprogs import scratch_dir
from tests.support.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()


def run(config, *args):
    return subprocess.run([sys.executable, "-m", "timeguard", "hooks", "test", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "TG_SECRET": SECRET})


def test_hooks_test_sends_a_marked_event_and_says_what_happened():
    with Receiver(SECRET) as receiver:
        directory = scratch_dir("hooks-cli")
        config = directory / "tg.yaml"
        config.write_text(yaml.safe_dump({
            "state_dir": str(directory / "state"),
            "hooks": [
                {"type": "webhook", "name": "ops", "url": receiver.url, "allow_plain_http": True,
                 "secret_env": "TG_SECRET"},
                {"type": "command", "name": "fails", "command": ["/bin/sh", "-c", "echo nope >&2; exit 3"]},
            ],
        }))
        proc = run(config, "ops", "--event", "forward_jump")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("hook ops (webhook), test event forward_jump: OK: ")
        assert receiver.wait_received(1, 5)
        got = receiver.accepted()[0]
        assert got.verified is True
        body = got.json()
        assert body["type"] == "timeguard.forward_jump" and body["data"]["test"] is True

        proc = run(config, "ops", "--dry-run", "--json")
        data = json.loads(proc.stdout)
        assert proc.returncode == 0 and data["dry_run"] is True and data["status"] == "skipped"
        assert len(receiver.accepted()) == 1  # a dry run sends nothing

        proc = run(config, "fails")
        assert proc.returncode == 1 and "FAILED" in proc.stdout and "nope" in proc.stdout

        proc = run(config, "nobody")
        assert proc.returncode == 2 and "no hook named 'nobody' (configured: ops, fails)" in proc.stderr
        proc = run(config, "ops", "--event", "rolback")
        assert proc.returncode == 2 and "unknown event kind 'rolback'" in proc.stderr

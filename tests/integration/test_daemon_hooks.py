"""End to end: the daemon under libfaketime, real receivers on loopback, hooks fired by real clock steps."""

from __future__ import annotations

import base64
import json
import os
import time

import yaml

from tests.support.daemon import checks, events, start, wait_for, write_config
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import FakeClock, scratch_dir
from tests.support.receiver import Receiver
from timeguard.events import EventKind
from timeguard.store.journal import Journal

DAYS_180 = 180 * 86400
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def test_rollback_reaches_webhook_and_slack_once_and_a_signature_survives_a_wrong_clock(ftshim):
    # libfaketime with a 1-s cache: with NO_CACHE every GIL hand-over of this many-threaded moment (hooks, outbox,
    # re-armed checks) re-reads the rc file and the daemon crawls — an artefact of the harness, not of timeguard.
    # Detection latency under NO_CACHE is tested in test_daemon.py; here the clock is from the detection on.
    fake_clock = FakeClock(scratch_dir("clock"), ftshim=ftshim, cache_duration_s=1)
    servers = [FakeNTPServer() for _ in range(3)]
    hook_log = scratch_dir("hooks") / "command.jsonl"
    with running() as http, Receiver(SECRET) as ops, Receiver() as slack, Receiver(SECRET) as jumps:
        directory = scratch_dir("daemon")
        config = write_config(directory, {"ntp": servers, "http": http})
        cfg = yaml.safe_load(config.read_text())
        cfg["hooks"] = [
            {"type": "webhook", "name": "ops", "on": ["rollback"], "url": ops.url, "allow_plain_http": True,
             "secret_env": "TG_WEBHOOK_SECRET"},
            {"type": "slack", "name": "chat", "on": ["rollback"], "webhook_url": slack.url + "slack",
             "allow_plain_http": True},
            {"type": "webhook", "name": "jumps", "on": ["forward_jump"], "url": jumps.url, "allow_plain_http": True,
             "secret_env": "TG_WEBHOOK_SECRET"},
            {"type": "command", "name": "script", "on": ["rollback"],
             "command": ["/bin/sh", "-c", f"cat >> {hook_log}; echo >> {hook_log}"]},
        ]
        config.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "TG_WEBHOOK_SECRET": SECRET}
        with start(config, fake_clock, directory / "daemon.log", env=env) as proc:
            wait_for("the first checks", lambda: checks(config) >= 2, 15, proc)

            fake_clock.set(DAYS_180)
            wait_for("offset_critical", lambda: events(config, EventKind.OFFSET_CRITICAL), 8, proc)
            assert jumps.wait_received(1, 3.0), "forward_jump webhook not delivered"

            fake_clock.set(0)
            detected = wait_for("the rollback", lambda: events(config, EventKind.ROLLBACK), 5, proc)[0].monotonic_s
            assert ops.wait_received(1, 2.0) and slack.wait_received(1, 2.0), proc.log_tail(40)
            latency = max(ops.accepted()[0].mono, slack.accepted()[0].mono) - detected
            time.sleep(2.0)  # nothing more arrives: one incident, one message
            assert proc.alive()
        rollback = events(config, EventKind.ROLLBACK)[0]
        log_text = (directory / "daemon.log").read_text()

    print(f"rollback delivered to webhook and Slack {latency * 1000:.0f} ms after its detection")
    assert latency <= 2.0, "\n".join(x for x in log_text.splitlines() if "alert" in x or "hook" in x or "step" in x)
    assert len(ops.accepted()) == 1 and len(slack.accepted()) == 1
    webhook = ops.accepted()[0]
    assert webhook.verified is True, webhook.reason
    body = webhook.json()
    assert body["type"] == "timeguard.rollback" and body["data"]["incident_id"] == rollback.incident_id
    assert body["data"]["step_s"] == rollback.step_s
    message = slack.accepted()[0].json()
    assert "rolled back" in message["text"] and message["attachments"][0]["color"] == "danger"
    # sent while the host clock was 180 days ahead: stamped with the trusted time, so the receiver's
    # ±5 min check against its own real clock passed
    assert len(jumps.accepted()) == 1 and jumps.accepted()[0].verified is True, jumps.accepted()[0].reason
    assert jumps.accepted()[0].headers["timeguard-time-source"] == "trusted"
    # the command hook got the event on stdin
    lines = [json.loads(x) for x in hook_log.read_text().splitlines() if x.strip()]
    assert [x["event"]["kind"] for x in lines] == ["rollback"]
    with Journal(config.parent / "state" / "journal.sqlite", readonly=True) as j:
        runs = {r.hook: r for r in j.hook_runs(event_id=rollback.id)}
    assert {name: run.status.value for name, run in runs.items()} == {"ops": "ok", "chat": "ok", "script": "ok"}
    for server in servers:
        server.close()

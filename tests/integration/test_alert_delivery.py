"""Alerts that are never lost, against a real HTTP receiver on loopback that verifies signatures.

The receiver (tests/support/receiver.py) fails with 500s, throttles with 429 + Retry-After, hangs, and goes
down for a while; the outbox's worker is a real thread, or a real process killed with SIGKILL mid-delivery and
restarted; and a sender whose wall clock is 3 days off (libfaketime) still gets its signature accepted because
it stamps the trusted time — while the control, stamped with the host clock, is rejected.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.realprogs import FakeClock, ManagedProcess, run_under_clock, scratch_dir
from tests.support.receiver import Receiver
from tests.support.require import need_program
from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookContext, HookStatus
from timeguard.hooks.outbox import JournalHistory, Outbox, OutboxStore
from timeguard.hooks.slack import SlackHook
from timeguard.hooks.webhook import WebhookHook
from timeguard.store.journal import Journal

SECRET = "whsec_" + base64.b64encode(b"timeguard-integration-secret-32b").decode()
DAY = 86400.0


class Log:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, _level: str) -> Any:
        return lambda event, **kw: self.entries.append((event, kw))


def event(incident: str, kind: EventKind = EventKind.ROLLBACK, **kw: Any) -> Event:
    now = time.time()
    return Event(kind=kind, incident_id=incident, wall_time_s=now, monotonic_s=time.monotonic(), boot_id="test",
                 step_s=kw.pop("step_s", -3600.0), trusted_time_s=now, **kw)


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


@pytest.fixture
def receiver():
    r = Receiver(SECRET).start()
    yield r
    r.stop()


def webhook(url: str, monkeypatch: pytest.MonkeyPatch, **options: Any) -> WebhookHook:
    monkeypatch.setenv("TG_IT_SECRET", SECRET)
    return WebhookHook.from_config("ops", {"url": url, "allow_plain_http": True, "secret_env": "TG_IT_SECRET",
                                           "request_timeout_s": 0.5, **options})


def context(box: Outbox, journal: Journal) -> HookContext:
    return HookContext(dry_run=False, trusted_now=time.time, verdict=None, history=JournalHistory(journal),
                       hostname="test", enqueue=box.enqueue)


def wait_until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


# ---------------------------------------------------------------------------------- through every failure


def test_every_event_is_delivered_through_500s_429s_a_hang_and_an_outage(journal, receiver, monkeypatch):
    hook = webhook(receiver.url, monkeypatch)
    box = Outbox(journal, {"ops": hook}, trusted_now=time.time, base_backoff_s=0.05, max_backoff_s=0.4,
                 epoch="it", log=Log())
    ctx = context(box, journal)
    box.start()
    ids: list[str] = []

    def burst(tag: str, n: int = 4) -> None:
        for i in range(n):
            result = hook.handle(event(f"{tag}-{i}"), ctx)
            assert result.status is HookStatus.OK, result
            ids.append(result.details["delivery_id"])

    try:
        receiver.fail_next(5)
        burst("errors")
        assert receiver.wait_accepted(ids, 10)
        receiver.throttle_next(2, retry_after="1")
        burst("throttled")
        assert receiver.wait_accepted(ids, 10)
        receiver.hang(1.2)
        burst("hang")
        assert receiver.wait_accepted(ids, 15)
        receiver.down_for(1.0)
        burst("down")
        assert receiver.wait_accepted(ids, 15), f"missing: {set(ids) - receiver.accepted_ids()}"
        assert wait_until(lambda: box.stats()["pending"] == 0, 5)
    finally:
        box.stop()

    assert len(ids) == len(set(ids)) == 16
    by_id = receiver.by_id()
    assert receiver.accepted_ids() == set(ids)  # every event, exactly once after dedupe on the id
    assert set(by_id) == set(ids)  # nothing else arrived
    for delivery_id, records in by_id.items():
        bodies = {json.loads(r.body)["data"]["id"] for r in records}
        assert len(bodies) == 1 and delivery_id.startswith(bodies.pop())  # duplicates carry the same id/event
        assert all(r.verified for r in records)
    assert sum(r.status == 500 for r in receiver.received) == 5
    hung = [r for r in receiver.received if r.status == 0]
    assert hung and all(len(by_id[r.id]) >= 2 for r in hung)  # resent, same id, after the receiver hung
    for delivery_id in ids:
        records = by_id[delivery_id]
        for before, after in itertools.pairwise(records):
            if before.status == 429:
                assert after.mono - before.mono >= 0.95  # Retry-After: 1 honoured
    assert box.stats()["delivered"] == 16 and box.stats()["dead"] == 0


# -------------------------------------------------------------------------------------------- dead letters


def test_dead_letter_after_the_attempt_limit_and_after_the_age_limit(journal, receiver, monkeypatch):
    hook = webhook(receiver.url, monkeypatch)
    log = Log()
    receiver.go_down()  # nobody listens: connection refused, every time
    box = Outbox(journal, {"ops": hook}, trusted_now=time.time, base_backoff_s=0.02, max_backoff_s=0.05,
                 max_attempts=3, epoch="it", log=log)
    ctx = context(box, journal)
    box.start()
    try:
        for i in range(3):
            hook.handle(event(f"down-{i}"), ctx)
        assert wait_until(lambda: box.stats()["dead"] == 3, 10)
    finally:
        box.stop()
    dead = OutboxStore(journal).entries(state="dead")
    assert all(e.attempts == 3 and "gave up after 3 attempts" in e.last_error for e in dead)
    assert all("refused" in e.last_error.lower() for e in dead), [e.last_error for e in dead]
    assert sum(1 for name, _ in log.entries if name == "alert_dead") == 3

    receiver.come_up()
    receiver.fail_next(1000)  # up, but failing: the age limit ends it
    aged = Outbox(journal, {"ops": hook}, trusted_now=time.time, base_backoff_s=0.05, max_backoff_s=0.1,
                  max_age_s=0.6, epoch="it", log=Log())
    ctx = context(aged, journal)
    aged.start()
    try:
        started = time.monotonic()
        hook.handle(event("aging"), ctx)
        assert wait_until(lambda: aged.stats()["dead"] == 4, 10)
        assert time.monotonic() - started < 3
    finally:
        aged.stop()
    [last] = OutboxStore(journal).entries(state="dead", incident_id="aging")
    assert "age limit" in last.last_error and last.attempts >= 3
    stats = aged.stats()
    assert stats["dead"] == 4 and stats["pending"] == 0 and stats["last_dead"]["id"] == last.id


# ---------------------------------------------------------------------------------------------- coalescing


def test_a_flapping_clock_gives_one_message_then_at_most_one_update_per_interval(journal, receiver, monkeypatch):
    hook = webhook(receiver.url, monkeypatch)
    box = Outbox(journal, {"ops": hook}, trusted_now=time.time, min_interval_s=1.0, epoch="it", log=Log())
    ctx = context(box, journal)
    box.start()
    events = []
    try:
        started = time.monotonic()
        for i in range(10):  # 10 steps of one incident in 2 s
            events.append(event("flap", EventKind.ROLLBACK if i % 2 == 0 else EventKind.FORWARD_JUMP,
                                detail={"transition": i + 1}))
            hook.handle(events[-1], ctx)
            time.sleep(0.2)
        assert wait_until(lambda: box.stats()["pending"] == 0, 5)
    finally:
        box.stop()
    messages = receiver.accepted()
    assert messages[0].mono - started < 0.5  # the first one at once
    assert len(messages) <= 1 + math.ceil(2.0 / 1.0) + 1
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(messages)]
    assert all(gap >= 0.95 for gap in gaps), gaps
    carried = [json.loads(m.body)["data"]["coalesced"] for m in messages]
    assert sum(c["events"] for c in carried) == 10
    assert [i for c in carried for i in c["event_ids"]] == [e.id for e in events]  # none lost, in order
    assert [c["message"] for c in carried] == list(range(1, len(messages) + 1))
    assert json.loads(messages[-1].body)["data"]["detail"]["transition"] == 10  # the last word is the newest


def test_with_the_default_interval_ten_events_in_two_seconds_are_one_message(journal, receiver, monkeypatch):
    hook = webhook(receiver.url, monkeypatch)
    box = Outbox(journal, {"ops": hook}, trusted_now=time.time, epoch="it", log=Log())  # min_interval_s = 60
    ctx = context(box, journal)
    box.start()
    try:
        for _ in range(10):
            hook.handle(event("flap"), ctx)
            time.sleep(0.2)
        time.sleep(0.3)
    finally:
        box.stop()
    assert len(receiver.accepted()) == 1
    [held] = OutboxStore(journal).entries(state="pending")
    assert held.events == 9 and held.message == 2  # the update, waiting for its minute


# ----------------------------------------------------------------------------------- a real process, killed

DRIVER = r'''
"""An outbox worker in its own process (the daemon's part of it), driven by a JSON argument."""
import json, os, sys, time

from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookContext
from timeguard.hooks.outbox import JournalHistory, Outbox, OutboxStore
from timeguard.hooks.webhook import WebhookHook
from timeguard.store.journal import Journal

args = json.loads(sys.argv[1])
out = open(args["out"], "a", buffering=1)


def say(**kw):
    out.write(json.dumps(kw, default=str) + "\n")


class Log:
    def __getattr__(self, level):
        return lambda event, **kw: print(json.dumps({"level": level, "event": event, **kw}, default=str),
                                         file=sys.stderr, flush=True)


offset = args.get("trusted_offset_s")
trusted_now = (lambda: time.time() + offset) if offset is not None else (lambda: None)
journal = Journal(args["journal"])
hook = WebhookHook.from_config("ops", {"url": args["url"], "allow_plain_http": True, "secret_env": "TG_SECRET",
                                       "request_timeout_s": args["timeout_s"]})
box = Outbox(journal, {"ops": hook}, trusted_now=trusted_now, base_backoff_s=0.1, max_backoff_s=0.5, log=Log())
say(started=True, pid=os.getpid(), host_time=time.time())
ctx = HookContext(dry_run=False, trusted_now=trusted_now, verdict=None, history=JournalHistory(journal),
                  hostname="driver", enqueue=box.enqueue)
for i in range(args.get("enqueue", 0)):
    now = time.time()
    ev = Event(kind=EventKind.ROLLBACK, incident_id=f"incident-{i}", wall_time_s=now, monotonic_s=time.monotonic(),
               boot_id="driver", step_s=-3 * 86400.0, trusted_time_s=None if offset is None else now + offset)
    result = hook.handle(ev, ctx)
    say(queued=result.details.get("delivery_id"), status=result.status.value)
box.start()
deadline = time.monotonic() + args.get("run_s", 30)
while time.monotonic() < deadline:
    if args.get("until_done") and box.stats()["pending"] == 0:
        break
    time.sleep(0.05)
box.stop(2)
say(stats=box.stats())
'''


def start_driver(tmp: Path, name: str, clock: FakeClock | None = None, **args: Any) -> tuple[ManagedProcess, Path]:
    driver = tmp / "alert_driver.py"
    driver.write_text(DRIVER)
    out = tmp / f"{name}.jsonl"
    env = {**os.environ, "TG_SECRET": SECRET}
    cmd = [sys.executable, str(driver), json.dumps({"out": str(out), **args})]
    log = tmp / f"{name}.log"
    if clock is not None:
        return run_under_clock(cmd, clock, log_path=log, env=env, name=name), out
    need_program("setpriv", "util-linux")
    return ManagedProcess.start(cmd, log_path=log, env=env, name=name), out


def lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


@pytest.mark.real
def test_kill_9_mid_delivery_then_restart_delivers_everything_with_the_same_ids(receiver):
    tmp = scratch_dir("alerts-kill9")
    state = tmp / "journal.sqlite"
    receiver.hang(120)  # every request is read, recorded, and never answered
    first, out = start_driver(tmp, "first", journal=str(state), url=receiver.url, timeout_s=60, enqueue=5, run_s=120)
    try:
        assert receiver.wait_received(4, 15), first.log_tail()  # 4 in flight (the per-hook cap), 1 waiting
        queued = [line["queued"] for line in lines(out) if "queued" in line]
        assert len(queued) == 5
        with Journal(state, readonly=True) as j:
            assert OutboxStore(j).stats()["in_flight"] == 4 and OutboxStore(j).stats()["pending"] == 5
        os.kill(first.pid, signal.SIGKILL)  # mid-delivery: the process we started, by its PID
        first.popen.wait(10)
        assert first.returncode == -signal.SIGKILL
    finally:
        first.stop()
    in_flight_when_killed = {r.id for r in receiver.received}
    assert len(in_flight_when_killed) == 4
    receiver.release_hang()

    second, out2 = start_driver(tmp, "second", journal=str(state), url=receiver.url, timeout_s=5, run_s=30,
                                until_done=True)
    try:
        second.popen.wait(40)
    finally:
        second.stop()
    assert second.returncode == 0, second.log_tail()
    assert receiver.accepted_ids() == set(queued)  # none lost
    by_id = receiver.by_id()
    for delivery_id in in_flight_when_killed:
        assert len(by_id[delivery_id]) == 2  # the hung attempt, then the resend: the same id
        assert len({r.body for r in by_id[delivery_id]}) == 1  # the same message, byte for byte
    assert all(r.verified for r in receiver.received)
    final = next(line["stats"] for line in lines(out2) if "stats" in line)
    assert final["delivered"] == 5 and final["pending"] == 0 and final["dead"] == 0


# ------------------------------------------------------------------------------ a sender with a wrong clock


@pytest.mark.real
@pytest.mark.parametrize("offset_days", [-3, +3])
def test_signature_passes_when_the_host_clock_is_days_off_but_trusted_time_is_used(receiver, fake_clock,
                                                                                 offset_days):
    fake_clock.set(offset_days * DAY)
    tmp = scratch_dir("alerts-faketime")
    proc, out = start_driver(tmp, "faked", fake_clock, journal=str(tmp / "journal.sqlite"), url=receiver.url,
                             timeout_s=5, enqueue=1, run_s=20, until_done=True,
                             trusted_offset_s=-offset_days * DAY)  # the known correction, as a verdict gives it
    try:
        proc.popen.wait(30)
    finally:
        proc.stop()
    assert proc.returncode == 0, proc.log_tail()
    said = lines(out)
    host_time = next(line["host_time"] for line in said if "host_time" in line)
    assert abs(host_time - (time.time() + offset_days * DAY)) < 60  # the sender really lived days off
    [got] = receiver.received
    assert got.verified is True and got.status == 200, got.reason
    assert got.headers["timeguard-time-source"] == "trusted"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 60
    assert next(line["stats"] for line in said if "stats" in line)["delivered"] == 1


@pytest.mark.real
def test_control_stamped_with_the_wrong_host_clock_is_rejected(receiver, fake_clock):
    fake_clock.set(-3 * DAY)
    tmp = scratch_dir("alerts-faketime-control")
    proc, out = start_driver(tmp, "control", fake_clock, journal=str(tmp / "journal.sqlite"), url=receiver.url,
                             timeout_s=5, enqueue=1, run_s=20, until_done=True)  # no verdict: trusted_now is None
    try:
        proc.popen.wait(30)
    finally:
        proc.stop()
    assert proc.returncode == 0, proc.log_tail()
    [got] = receiver.received
    assert got.verified is False and "too old" in got.reason and got.status == 401
    assert got.headers["timeguard-time-source"] == "host"
    stats = next(line["stats"] for line in lines(out) if "stats" in line)
    assert stats["dead"] == 1 and "401" in stats["last_dead"]["last_error"]


# ---------------------------------------------------------------------------------------------------- Slack


def test_slack_message_shape_and_429_retry_after_honoured(journal):
    with Receiver() as slack_receiver:  # Slack signs nothing
        hook = SlackHook.from_config("ops-slack", {"webhook_url": slack_receiver.url, "allow_plain_http": True,
                                                   "request_timeout_s": 2})
        slack_receiver.throttle_next(1, retry_after="date:2")  # an HTTP-date 2 s after the server's Date
        box = Outbox(journal, {"ops-slack": hook}, trusted_now=lambda: None, epoch="it", log=Log())
        ctx = HookContext(dry_run=False, trusted_now=lambda: time.time() - 3 * DAY, verdict=None,
                          history=JournalHistory(journal), hostname="h", enqueue=box.enqueue)
        box.start()
        try:
            result = hook.handle(event("slack-1", step_s=-180 * DAY), ctx)
            assert result.status is HookStatus.OK
            assert slack_receiver.wait_for(lambda r: any(x.accepted for x in r.received), 10)  # no id: unsigned
        finally:
            box.stop()
        first, second = slack_receiver.received
        assert first.status == 429 and second.status == 200
        assert second.mono - first.mono >= 1.9  # Retry-After (an HTTP-date, read against the server's Date)
        message = second.json()
        assert message["text"].startswith("[CRITICAL] Clock rolled back −180.0 days on ")
        [attachment] = message["attachments"]
        assert attachment["color"] == "danger" and attachment["fallback"] == message["text"]
        assert attachment["blocks"][0]["type"] == "section" and "Step" in json.dumps(attachment["blocks"])

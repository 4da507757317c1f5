"""The outbox's policy on an injected monotonic clock: durability, ids, backoff, limits, coalescing, restarts."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.events import Event, EventKind
from timeguard.hooks import outbox as outbox_mod
from timeguard.hooks.api import Delivery, DeliveryResult, HookRun, HookStatus
from timeguard.hooks.outbox import OUTBOX_KEY, Outbox, OutboxStore, backoff_s, split_payload
from timeguard.store import journal as jmod
from timeguard.store.journal import Journal, JournalError


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class FakeDeliverer:
    def __init__(self, name: str, results: list[Any] | None = None) -> None:
        self.name = name
        self.results = list(results or [])
        self.calls: list[Delivery] = []

    def deliver(self, delivery: Delivery, *, trusted_now: Any) -> DeliveryResult:
        self.calls.append(delivery)
        if self.results:
            result = self.results.pop(0)
            return result(delivery) if callable(result) else result
        return DeliveryResult(True)


class Log:
    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.entries.append((level, event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.entries if e == event]


def ev(incident: str = "inc1", kind: EventKind = EventKind.ROLLBACK, **kw: Any) -> Event:
    return Event(kind=kind, incident_id=incident, wall_time_s=1_700_000_000.0, monotonic_s=10.0, boot_id="b",
                 step_s=-3600.0, **kw)


FAIL = DeliveryResult(False, "HTTP 500")


@pytest.fixture
def journal(tmp_path):
    with Journal(tmp_path / "journal.sqlite") as j:
        yield j


def make(journal: Journal, *deliverers: FakeDeliverer, clock: Clock | None = None, **kw: Any) -> Outbox:
    kw.setdefault("rng", random.Random(7))
    kw.setdefault("log", Log())
    return Outbox(journal, {d.name: d for d in deliverers}, trusted_now=lambda: None, clock=clock or Clock(),
                  epoch="boot-A", **kw)


# ---------------------------------------------------------------------------------------------- durability


def test_enqueue_commits_before_it_returns(journal, tmp_path):
    box = make(journal, FakeDeliverer("hook"))
    event = ev()
    delivery_id = box.enqueue("hook", event, {"n": 1})
    assert delivery_id == f"{event.id}.hook"
    with Journal(tmp_path / "journal.sqlite") as other:  # another connection sees the committed row
        [entry] = OutboxStore(other).entries()
    assert entry.id == delivery_id and entry.state == "pending" and entry.payload == {"n": 1}


def test_delivery_id_is_stable_and_enqueue_is_idempotent(journal):
    hook = FakeDeliverer("hook", [FAIL, FAIL])
    clock = Clock()
    box = make(journal, hook, clock=clock, base_backoff_s=1, max_backoff_s=1)
    event = ev()
    first = box.enqueue("hook", event, {"n": 1})
    assert box.enqueue("hook", event, {"n": 1}) == first
    for _ in range(3):
        box.run_once()
        clock.advance(5)
    assert [c.id for c in hook.calls] == [first] * 3
    assert [c.attempts for c in hook.calls] == [0, 1, 2]
    assert OutboxStore(journal).entries()[0].state == "delivered"


def test_one_delivery_id_per_event_per_hook(journal):
    a, b = FakeDeliverer("a"), FakeDeliverer("b")
    box = make(journal, a, b)
    event = ev()
    assert box.enqueue("a", event, {}) != box.enqueue("b", event, {})
    assert box.run_once() == 2
    assert [c.id for c in a.calls] == [f"{event.id}.a"] and [c.id for c in b.calls] == [f"{event.id}.b"]


def test_a_payload_that_is_not_json_is_refused_before_any_write(journal):
    box = make(journal, FakeDeliverer("hook"))
    with pytest.raises(TypeError):
        box.enqueue("hook", ev(), {"x": object()})
    assert OutboxStore(journal).entries() == []


# ------------------------------------------------------------------------------------------------- retries


def test_backoff_with_full_jitter_then_delivered(journal):
    hook = FakeDeliverer("hook", [FAIL, FAIL, FAIL])
    clock = Clock()
    box = make(journal, hook, clock=clock, base_backoff_s=2, max_backoff_s=100)
    box.enqueue("hook", ev(), {})
    waits = []
    for _ in range(3):
        assert box.run_once() == 1
        entry = OutboxStore(journal).entries()[0]
        waits.append(entry.next_mono - clock.t)
        if entry.next_mono > clock.t:
            assert box.run_once() == 0  # not before its time
        clock.t = entry.next_mono
    assert box.run_once() == 1
    assert 0 <= waits[0] <= 2 and 0 <= waits[1] <= 4 and 0 <= waits[2] <= 8
    assert OutboxStore(journal).entries()[0].state == "delivered"
    assert OutboxStore(journal).entries()[0].attempts == 4


@given(attempts=st.integers(1, 80), base=st.floats(0.01, 10), cap=st.floats(0.01, 1000))
def test_backoff_stays_in_its_bounds(attempts, base, cap):
    wait = backoff_s(attempts, base_s=base, cap_s=cap, rng=random.Random(attempts))
    assert 0 <= wait <= min(cap, base * 2 ** (attempts - 1)) + 1e-9


def test_retry_after_is_honoured(journal):
    hook = FakeDeliverer("hook", [DeliveryResult(False, "HTTP 429", retry_after_s=30)])
    clock = Clock()
    box = make(journal, hook, clock=clock, base_backoff_s=0.01)
    box.enqueue("hook", ev(), {})
    box.run_once()
    clock.advance(29.9)
    assert box.run_once() == 0
    clock.advance(0.2)
    assert box.run_once() == 1 and len(hook.calls) == 2


def test_permanent_failure_is_dead_at_once(journal):
    log = Log()
    hook = FakeDeliverer("hook", [DeliveryResult(False, "HTTP 410 Gone", permanent=True)])
    box = make(journal, hook, log=log)
    box.enqueue("hook", ev(), {})
    box.run_once()
    [entry] = OutboxStore(journal).entries()
    assert entry.state == "dead" and "HTTP 410 Gone" in entry.last_error
    stats = box.stats()
    assert stats["dead"] == 1 and stats["pending"] == 0 and stats["last_dead"]["id"] == entry.id
    assert log.named("alert_dead") and log.named("alert_dead")[0]["delivery_id"] == entry.id


def test_dead_after_max_attempts(journal):
    hook = FakeDeliverer("hook", [FAIL] * 10)
    clock = Clock()
    box = make(journal, hook, clock=clock, max_attempts=3, base_backoff_s=0.1, max_backoff_s=0.1)
    box.enqueue("hook", ev(), {})
    for _ in range(6):
        box.run_once()
        clock.advance(1)
    assert len(hook.calls) == 3
    [entry] = OutboxStore(journal).entries()
    assert entry.state == "dead" and entry.attempts == 3 and "gave up after 3 attempts" in entry.last_error


def test_dead_after_max_age_with_a_last_attempt_at_the_limit(journal):
    hook = FakeDeliverer("hook", [FAIL] * 100)
    clock = Clock()
    box = make(journal, hook, clock=clock, max_age_s=100, base_backoff_s=60, max_backoff_s=60,
               rng=random.Random(1))
    box.enqueue("hook", ev(), {})
    while OutboxStore(journal).entries()[0].state == "pending" and clock.t < 2000:
        box.run_once()
        entry = OutboxStore(journal).entries()[0]
        if entry.state == "pending":
            assert entry.next_mono <= 1000 + 100  # never scheduled past the age limit
            clock.t = max(entry.next_mono, clock.t)
    entry = OutboxStore(journal).entries()[0]
    assert entry.state == "dead" and "age limit" in entry.last_error
    assert clock.t == pytest.approx(1100)  # the last attempt was made at the limit


def test_a_retry_after_past_the_age_limit_is_dead_now(journal):
    hook = FakeDeliverer("hook", [DeliveryResult(False, "HTTP 503", retry_after_s=7200)])
    box = make(journal, hook, max_age_s=3600)
    box.enqueue("hook", ev(), {})
    box.run_once()
    entry = OutboxStore(journal).entries()[0]
    assert entry.state == "dead" and "asked to wait 7200 s, past the age limit" in entry.last_error


def test_a_deliverer_that_raises_or_returns_junk_is_a_failed_attempt(journal):
    def boom(_d: Delivery) -> DeliveryResult:
        raise RuntimeError("bug")

    hook = FakeDeliverer("hook", [boom, lambda _d: "junk"])
    clock = Clock()
    box = make(journal, hook, clock=clock, base_backoff_s=0.1, max_backoff_s=0.1)
    box.enqueue("hook", ev(), {})
    box.run_once()
    assert "deliver() raised RuntimeError: bug" in OutboxStore(journal).entries()[0].last_error
    clock.advance(1)
    box.run_once()
    assert "not a DeliveryResult" in OutboxStore(journal).entries()[0].last_error
    clock.advance(1)
    box.run_once()
    assert OutboxStore(journal).entries()[0].state == "delivered"


# ---------------------------------------------------------------------------------------------- coalescing


def test_events_of_one_incident_coalesce_into_one_message(journal):
    hook = FakeDeliverer("hook")
    box = make(journal, hook)
    events = [ev(detail={"transition": i}) for i in range(10)]
    ids = {box.enqueue("hook", e, {"transition": i}) for i, e in enumerate(events)}
    assert ids == {f"{events[0].id}.hook"}
    assert box.run_once() == 1
    [call] = hook.calls
    body, info = split_payload(call.payload)
    assert body == {"transition": 9}  # the newest payload
    assert info["events"] == 10 and info["updates"] == 9 and info["message"] == 1
    assert info["event_ids"] == [e.id for e in events] and info["kinds"] == ["rollback"]


def test_after_a_send_the_next_update_waits_for_the_interval_and_carries_everything(journal):
    hook = FakeDeliverer("hook")
    clock = Clock()
    box = make(journal, hook, clock=clock, min_interval_s=60)
    box.enqueue("hook", ev(), {"n": 0})
    box.run_once()
    later = []
    for i in range(1, 6):
        clock.advance(5)
        later.append(ev(kind=EventKind.FORWARD_JUMP if i % 2 else EventKind.ROLLBACK))
        box.enqueue("hook", later[-1], {"n": i})
        assert box.run_once() == 0  # rate-limited
    clock.t = 1000 + 60 - 0.01
    assert box.run_once() == 0
    clock.t = 1000 + 60
    assert box.run_once() == 1
    body, info = split_payload(hook.calls[1].payload)
    assert body == {"n": 5} and info["message"] == 2 and info["events"] == 5
    assert info["kinds"] == ["forward_jump", "rollback"] and hook.calls[1].id == f"{later[0].id}.hook"


def test_other_incidents_are_not_held_back(journal):
    hook = FakeDeliverer("hook")
    box = make(journal, hook, min_interval_s=60)
    box.enqueue("hook", ev("a"), {})
    box.run_once()
    box.enqueue("hook", ev("a"), {})
    box.enqueue("hook", ev("b"), {})
    assert box.run_once() == 1 and hook.calls[-1].incident_id == "b"


def test_an_update_never_overtakes_the_message_it_updates(journal):
    hook = FakeDeliverer("hook", [FAIL, FAIL])
    clock = Clock()
    box = make(journal, hook, clock=clock, base_backoff_s=10, max_backoff_s=10, min_interval_s=5)
    first = box.enqueue("hook", ev(), {"n": 1})
    box.run_once()  # fails: the first message is retrying (its id may have been seen: it is not rewritten)
    second = box.enqueue("hook", ev(kind=EventKind.RECOVERED), {"n": 2})
    assert second != first
    assert box.run_once() == 0  # the update waits for the first message
    clock.advance(10)
    box.run_once()  # first fails again
    clock.advance(10)
    box.run_once()  # first delivered; the update now waits min_interval after it
    assert [c.id for c in hook.calls] == [first] * 3
    clock.advance(5)
    box.run_once()
    assert [c.id for c in hook.calls][-1] == second
    assert split_payload(hook.calls[-1].payload)[0] == {"n": 2}


def test_an_event_during_an_attempt_is_not_lost_in_it(journal):
    """The claim marks the attempt before the request: an event arriving meanwhile starts a new message."""
    box: Outbox
    late = ev()

    def enqueue_during(_d: Delivery) -> DeliveryResult:
        box.enqueue("hook", late, {"n": 2})
        return DeliveryResult(True)

    hook = FakeDeliverer("hook", [enqueue_during])
    clock = Clock()
    box = make(journal, hook, clock=clock, min_interval_s=1)
    box.enqueue("hook", ev(), {"n": 1})
    box.run_once()
    clock.advance(1)
    box.run_once()
    assert [split_payload(c.payload)[0] for c in hook.calls] == [{"n": 1}, {"n": 2}]
    assert hook.calls[1].id == f"{late.id}.hook"


# -------------------------------------------------------------------------------------------------- restarts


def test_a_crash_mid_attempt_is_resent_with_the_same_id(journal, tmp_path):
    clock = Clock()
    box = make(journal, FakeDeliverer("hook"), clock=clock)
    delivery_id = box.enqueue("hook", ev(), {})
    entry = OutboxStore(journal).eligible(epoch="boot-A")[0]
    assert OutboxStore(journal).claim(entry.id, attempts=0, epoch="boot-A", now_mono=clock.t, now_wall=0) is not None
    # ... the process dies here, mid-request. A new one on the same journal:
    assert OutboxStore(journal).eligible(epoch="boot-A") == []  # in flight in this boot: not eligible...
    hook = FakeDeliverer("hook")
    again = make(journal, hook, clock=clock)
    again.start()  # ...until a start resumes it
    try:
        deadline = time.monotonic() + 5
        while not hook.calls and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        again.stop()
    assert [c.id for c in hook.calls] == [delivery_id] and hook.calls[0].attempts == 1
    assert OutboxStore(journal).entries()[0].state == "delivered"


def test_after_a_reboot_the_age_so_far_is_kept_and_the_downtime_not_counted(journal):
    clock = Clock(5000.0)
    hook = FakeDeliverer("hook", [FAIL] * 10)
    box = make(journal, hook, clock=clock, max_age_s=1000, base_backoff_s=100, max_backoff_s=100)
    box.enqueue("hook", ev(), {})
    clock.advance(300)  # the message is 300 s old at its first attempt
    box.run_once()
    # Reboot: a new boot id, and CLOCK_MONOTONIC starts again near zero.
    boot_b = Clock(50.0)
    after = Outbox(journal, {"hook": hook}, trusted_now=lambda: None, clock=boot_b, epoch="boot-B",
                   max_age_s=1000, base_backoff_s=100, max_backoff_s=100, rng=random.Random(3), log=Log())
    assert after.run_once() == 1  # another boot's times can't be compared: due now
    entry = OutboxStore(journal).entries()[0]
    assert entry.epoch == "boot-B" and entry.enqueued_mono == pytest.approx(50 - 300)
    assert after.stats()["oldest_pending_age_s"] == pytest.approx(300)


def test_stats_for_status(journal):
    clock = Clock()
    box = make(journal, FakeDeliverer("a", [FAIL]), FakeDeliverer("b", [DeliveryResult(False, "x", permanent=True)]),
               clock=clock)
    box.enqueue("a", ev("i1"), {})
    box.enqueue("b", ev("i2"), {})
    box.enqueue("a", ev("i3"), {})
    clock.advance(42)
    box.run_once()
    stats = box.stats()
    assert stats["pending"] == 1 and stats["dead"] == 1 and stats["delivered"] == 1 and stats["in_flight"] == 0
    assert stats["oldest_pending_age_s"] == pytest.approx(42)
    assert stats["by_hook"] == {"a": {"pending": 1, "delivered": 1, "dead": 0},
                                "b": {"pending": 0, "delivered": 0, "dead": 1}}
    assert OutboxStore(journal).stats()["oldest_pending_age_s"] is None  # no clock given: no age


def test_the_readonly_cli_reads_outbox_stats(journal, tmp_path):
    box = make(journal, FakeDeliverer("hook"))
    box.enqueue("hook", ev(), {})
    with Journal(tmp_path / "journal.sqlite", readonly=True) as ro:
        assert OutboxStore(ro).stats()["pending"] == 1


def test_delivered_rows_are_pruned_pending_and_dead_never(journal, monkeypatch):
    monkeypatch.setattr(outbox_mod, "MAX_DELIVERED", 3)
    monkeypatch.setattr(outbox_mod, "PRUNE_EVERY", 1)
    box = make(journal, FakeDeliverer("hook", [DeliveryResult(False, "x", permanent=True)]))
    for i in range(6):
        box.enqueue("hook", ev(f"i{i}"), {})
    box.run_once()
    states = [e.state for e in OutboxStore(journal).entries()]
    assert states.count("dead") == 1 and states.count("delivered") == 3


# ---------------------------------------------------------------------------------------------- the worker


class Gate:
    """A deliverer that blocks until released (a hanging receiver)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.calls: list[str] = []

    def deliver(self, delivery: Delivery, *, trusted_now: Any) -> DeliveryResult:
        self.calls.append(delivery.id)
        self.started.release()
        self.release.wait(10)
        return DeliveryResult(True)


def test_the_worker_delivers_promptly_and_a_hanging_hook_holds_up_only_itself(journal):
    slow, fast = Gate("slow"), FakeDeliverer("fast")
    box = Outbox(journal, {"slow": slow, "fast": fast}, trusted_now=lambda: None, epoch="boot-A",
                 per_hook_in_flight=2, log=Log())
    box.start()
    try:
        for i in range(4):
            box.enqueue("slow", ev(f"s{i}"), {})
        assert slow.started.acquire(timeout=5) and slow.started.acquire(timeout=5)
        started = time.monotonic()
        box.enqueue("fast", ev("f"), {})
        while not fast.calls and time.monotonic() - started < 5:
            time.sleep(0.005)
        assert fast.calls and time.monotonic() - started < 1.0
        assert len(slow.calls) == 2  # its cap: two in flight, two waiting
        assert box.stats()["in_flight"] == 2
        slow.release.set()
        deadline = time.monotonic() + 5
        while box.stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert box.stats()["delivered"] == 5
    finally:
        slow.release.set()
        box.stop()


def test_the_worker_survives_journal_errors(journal, monkeypatch):
    log = Log()
    hook = FakeDeliverer("hook")
    box = Outbox(journal, {"hook": hook}, trusted_now=lambda: None, epoch="boot-A", log=log)
    real = OutboxStore.eligible
    calls = {"n": 0}

    def flaky(store: OutboxStore, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise JournalError("disk full (simulated)")
        return real(store, **kw)

    monkeypatch.setattr(OutboxStore, "eligible", flaky)
    box.enqueue("hook", ev(), {})
    box.start()
    try:
        deadline = time.monotonic() + 5
        while not hook.calls and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        box.stop()
    assert hook.calls and log.named("outbox_worker_error")


def test_stop_reports_abandoned_attempts_which_resume_later(journal):
    gate = Gate("hook")
    box = Outbox(journal, {"hook": gate}, trusted_now=lambda: None, epoch="boot-A", log=Log())
    box.start()
    box.enqueue("hook", ev(), {})
    assert gate.started.acquire(timeout=5)
    assert box.stop(timeout=0.1) == 1
    assert OutboxStore(journal).stats()["in_flight"] == 1
    gate.release.set()


def test_split_payload_without_info():
    body, info = split_payload({"a": 1})
    assert body == {"a": 1} and info["events"] == 1 and info["message"] == 1
    assert OUTBOX_KEY == "_outbox"


# --------------------------------------------------------------------------------------------- hook runs


def test_hook_runs_are_recorded_and_filtered(journal, monkeypatch):
    monkeypatch.setattr(jmod, "MAX_HOOK_RUNS", 3)

    def run(hook: str, event_id: str, status: HookStatus = HookStatus.OK) -> HookRun:
        return HookRun(hook=hook, hook_type="webhook", event_id=event_id, incident_id="inc", event_kind="rollback",
                       status=status, summary="queued", details={"delivery_id": f"{event_id}.{hook}"},
                       output="", duration_s=0.01, dry_run=False, test=False, wall_s=1.0, monotonic_s=2.0)

    journal.record_hook_run(run("a", "e0"))
    journal.record_hook_run(run("a", "e1"))
    journal.record_hook_run(run("b", "e1", HookStatus.FAILED))
    journal.record_hook_run(run("a", "e2"))
    runs = journal.hook_runs()
    assert [(r.hook, r.event_id) for r in runs] == [("a", "e1"), ("b", "e1"), ("a", "e2")]  # pruned to 3
    assert journal.hook_runs(event_id="e1", hook="b")[0].status is HookStatus.FAILED
    assert journal.hook_runs(hook="a", limit=1)[0].event_id == "e2"
    assert runs[0].details == {"delivery_id": "e1.a"}


def test_a_schema_1_journal_is_upgraded_in_place(tmp_path, monkeypatch):
    path = tmp_path / "journal.sqlite"
    with monkeypatch.context() as m:
        m.setattr(jmod, "_MIGRATIONS", jmod._MIGRATIONS[:1])
        with Journal(path) as old:
            old.record_event(ev())
            assert old.health()["schema"] == 1
    with Journal(path) as upgraded:
        assert upgraded.health()["schema"] == len(jmod._MIGRATIONS) and len(upgraded.events()) == 1
        make(upgraded, FakeDeliverer("hook")).enqueue("hook", ev(), {})
        assert OutboxStore(upgraded).stats()["pending"] == 1

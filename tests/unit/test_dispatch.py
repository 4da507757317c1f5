"""Hooks in isolation: a hook that raises, one that hangs, one that returns junk — the others are unaffected."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest

from timeguard.config import HookSpec
from timeguard.events import Event, EventKind
from timeguard.hooks import dispatch as dispatch_mod
from timeguard.hooks.api import HookContext, HookResult, HookStatus
from timeguard.hooks.dispatch import Dispatcher

release = threading.Event()


class Recorder:
    def __init__(self) -> None:
        self.runs: list[Any] = []

    def record_hook_run(self, run: Any) -> None:
        self.runs.append(run)


class FakeType:
    default_on: ClassVar[frozenset[EventKind]] = frozenset({EventKind.ROLLBACK})

    def __init__(self, name: str, behaviour: str) -> None:
        self.name = name
        self.behaviour = behaviour
        self.seen: list[tuple[Event, HookContext]] = []

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any]) -> FakeType:
        if options.get("behaviour") == "broken-config":
            raise RuntimeError("plugin bug at build time")
        return cls(name, options["behaviour"])

    def handle(self, event: Event, ctx: HookContext) -> HookResult:
        self.seen.append((event, ctx))
        if self.behaviour == "raise":
            raise ValueError("boom")
        if self.behaviour == "hang":
            release.wait()
            return HookResult.ok("finally")
        if self.behaviour == "junk":
            return "not a result"  # type: ignore[return-value]
        return HookResult.ok("done", trusted=ctx.trusted_now(), dry_run=ctx.dry_run)


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch):
    monkeypatch.setattr(dispatch_mod, "find_type", lambda name: FakeType)
    release.clear()
    yield
    release.set()


def spec(name: str, behaviour: str, *, timeout_s: float = 0.5, on=None, dry_run=False) -> HookSpec:
    return HookSpec(type="fake", name=name, on=on, timeout_s=timeout_s, dry_run=dry_run,
                    options={"behaviour": behaviour})


def event(kind=EventKind.ROLLBACK, **kw) -> Event:
    return Event(kind=kind, incident_id="inc", wall_time_s=1000.0, monotonic_s=1.0, boot_id="b", **kw)


def make(specs, recorder=None) -> Dispatcher:
    return Dispatcher(specs, recorder=recorder, trusted_now=lambda: 12345.0,
                      verdict=lambda: {"status": "OK"}, hostname="h")


def test_a_raising_a_hanging_and_a_junk_hook_do_not_delay_a_good_one():
    journal = Recorder()
    d = make([spec("hang", "hang"), spec("raise", "raise"), spec("junk", "junk"), spec("good", "ok")], journal)
    started = time.monotonic()
    flags = d.dispatch(event())
    good_flag = flags[3]
    assert good_flag.wait(1.0)
    good_latency = time.monotonic() - started
    for flag in flags:
        assert flag.wait(2.0)
    by_hook = {r.hook: r for r in journal.runs}
    assert good_latency < 0.2, good_latency  # not held up by the hanging hook's 0.5 s timeout
    assert by_hook["good"].status is HookStatus.OK and by_hook["good"].details["trusted"] == 12345.0
    assert by_hook["raise"].status is HookStatus.FAILED and by_hook["raise"].summary == "raised ValueError: boom"
    assert by_hook["junk"].summary == "hook returned str, not a HookResult"
    assert by_hook["hang"].status is HookStatus.FAILED
    assert by_hook["hang"].summary == "timed out after 0.5 s (abandoned)"
    assert 0.5 <= by_hook["hang"].duration_s < 0.7
    assert all(r.incident_id == "inc" and r.event_kind == "rollback" for r in journal.runs)
    d.stop()


def test_a_stuck_hook_is_not_run_again_until_it_returns():
    journal = Recorder()
    d = make([spec("hang", "hang", timeout_s=0.2)], journal)
    for flag in d.dispatch(event()):
        assert flag.wait(2)
    for flag in d.dispatch(event()):
        assert flag.wait(2)
    assert journal.runs[1].summary.startswith("not run: its run for event ")
    release.set()
    time.sleep(0.1)
    release.clear()
    for flag in d.dispatch(event()):
        assert flag.wait(2)
    assert journal.runs[2].summary == "timed out after 0.2 s (abandoned)"  # ran again (and hung again)
    d.stop()


def test_only_the_kinds_a_hook_wants():
    journal = Recorder()
    d = make([spec("default", "ok"), spec("jumps", "ok", on=("forward_jump",))], journal)
    assert len(d.dispatch(event(EventKind.ROLLBACK))) == 1  # the type's default_on
    assert len(d.dispatch(event(EventKind.FORWARD_JUMP))) == 1
    assert d.dispatch(event(EventKind.RECOVERED)) == []
    time.sleep(0.2)
    assert sorted(r.hook for r in journal.runs) == ["default", "jumps"]
    d.stop()


def test_run_now_dry_run_and_unknown_names():
    journal = Recorder()
    d = make([spec("good", "ok", dry_run=True)], journal)
    run = d.run_now("good", event(EventKind.TEST, test=True))
    assert run.status is HookStatus.OK and run.dry_run and run.test and run.details["dry_run"] is True
    assert d.run_now("good", event(), dry_run=False).dry_run is False
    with pytest.raises(KeyError, match="no hook named 'nope' \\(configured: good\\)"):
        d.run_now("nope", event())


def test_a_hook_that_fails_to_build_is_recorded_not_raised():
    journal = Recorder()
    d = make([spec("bad", "broken-config"), spec("good", "ok")], journal)
    assert d.hooks[0].error == "RuntimeError: plugin bug at build time"
    for flag in d.dispatch(event()):
        assert flag.wait(2)
    by_hook = {r.hook: r for r in journal.runs}
    assert by_hook["bad"].status is HookStatus.FAILED and "hook unusable" in by_hook["bad"].summary
    assert by_hook["good"].status is HookStatus.OK
    d.stop()


def test_long_output_is_truncated():
    assert dispatch_mod._truncate("x" * (dispatch_mod.MAX_OUTPUT + 10)).endswith("[… 10 more characters cut]")


def test_a_run_can_read_the_verdict_now_except_a_test_events():
    """A repair hook whose event came before the evidence waits for the verdict (repair/hook.py): the context gives
    it the dispatcher's verdict source; a test event (`timeguard hooks test`, no daemon forming verdicts) does not."""
    verdicts = iter([{"status": "UNKNOWN"}, {"status": "OK"}, {"status": "OK", "later": True}])
    d = Dispatcher([spec("good", "ok")], trusted_now=lambda: 1.0, verdict=lambda: next(verdicts),
                   hostname="h")
    d.run_now("good", event())
    [(_, ctx)] = d.hooks[0].hook.seen
    assert ctx.verdict == {"status": "UNKNOWN"}
    assert ctx.current_verdict is not None and ctx.current_verdict() == {"status": "OK"}
    d.run_now("good", event(EventKind.TEST, test=True))
    assert d.hooks[0].hook.seen[1][1].current_verdict is None

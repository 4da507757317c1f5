"""The guard in the daemon (timeguard/daemon/guard.py) with a real journal, a real dispatcher and real stop/start
commands (``sh`` appending to a file) around an in-memory repair target: what it does at each verdict, what the
journal keeps across a restart, and what a reload that removes the hook or turns the guard to alert does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.unit.test_agent import reading
from tests.unit.test_repair_target import NOW, MemoryKind, memory_kind  # noqa: F401 - the fixture
from timeguard import logs
from timeguard.config import HookSpec
from timeguard.daemon.guard import GuardRunner
from timeguard.daemon.recorder import Recorder
from timeguard.events import EventKind
from timeguard.hooks.api import HookStatus
from timeguard.hooks.dispatch import Dispatcher
from timeguard.repair.guard import Act
from timeguard.store.journal import Journal

DAY = 86400.0
RIGHT = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": True}
AHEAD = {"status": "CRITICAL", "offset_s": -180 * DAY, "offset_lo_s": -180 * DAY - 0.2,
         "offset_hi_s": -180 * DAY + 0.2, "ntp_http_agree": True}
SPOOFED = {**AHEAD, "status": "SOURCES_INCONSISTENT", "ntp_http_agree": False}


class World:
    """The daemon's parts the guard talks to, on a journal in ``tmp``; ``verdict`` is what the sources say now."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.owner_log = tmp, tmp / "owner.log"
        self.verdict: dict[str, Any] | None = None
        self.mono = 100.0  # CLOCK_MONOTONIC as the runner reads it
        self.journal = Journal.in_state_dir(tmp)
        self.recorder = Recorder(self.journal, boot_id="b", log=logs.get())
        self.runner = self.new_runner()

    def new_runner(self) -> GuardRunner:
        return GuardRunner(self.recorder, clock=lambda: reading(NOW + 180 * DAY, self.mono),
                           trusted_now=lambda: NOW, verdict=lambda: self.verdict, log=logs.get())

    def spec(self, guard: str = "stop", **extra: Any) -> HookSpec:
        options = {"target": "memory", "guard": guard,
                   "stop_command": ["sh", "-c", f"echo stop >> {self.owner_log}"],
                   "start_command": ["sh", "-c", f"echo start >> {self.owner_log}"], **extra}
        return HookSpec("repair", "sched", None, 10.0, False, options)

    def install(self, *specs: HookSpec, hooks_see: dict[str, Any] | None = None) -> Dispatcher:
        """``hooks_see``: the verdict the hooks' own evidence check gets (default: the guard's)."""
        seen = (lambda: self.verdict) if hooks_see is None else (lambda: hooks_see)
        dispatcher = Dispatcher(specs, recorder=self.journal, trusted_now=lambda: NOW, verdict=seen,
                                hostname="h", log=logs.get())
        self.recorder.dispatcher = dispatcher
        self.runner.configure(dispatcher)
        return dispatcher

    def owner(self) -> list[str]:
        return self.owner_log.read_text().split() if self.owner_log.exists() else []

    def accruing(self) -> list[Any]:
        return [e for e in self.journal.events(kinds=[EventKind.FUTURE_STATE_ACCRUING])
                if "stores" in e.detail]


@pytest.fixture
def world(tmp_path: Path, memory_kind: type[MemoryKind]) -> World:  # noqa: F811
    MemoryKind.store = {"a": NOW + 100.0}  # stamped while the host was ahead, before the stop
    return World(tmp_path)


def test_stop_while_ahead_then_repair_and_start_once_right(world: World) -> None:
    world.install(world.spec())
    world.verdict = AHEAD
    assert world.runner.look() == [("sched", Act.STOP)]
    assert world.owner() == ["stop"]
    note = world.journal.guards()["sched"]
    assert note.target == "memory" and note.ahead_s == pytest.approx(180 * DAY - 0.2)
    [event] = world.accruing()
    assert event.detail["stores"][0] | {} == {"hook": "sched", "target": "memory", "where": "memory",
                                              "guard": "stop", "action": "stopped"}
    assert world.runner.look() == []  # still ahead: stays stopped, no second alert
    world.verdict = SPOOFED  # the sources disagree: neither "ahead" nor "right" — it stays stopped
    assert world.runner.look() == [] and world.owner() == ["stop"]
    world.verdict = RIGHT
    assert world.runner.look() == [("sched", Act.RESTORE)]
    assert world.owner() == ["stop", "start"]  # no second stop: the repair ran with the owner already stopped
    assert MemoryKind.store == {"a": NOW}
    assert MemoryKind.calls[-1]["owner_stopped"] is True
    assert world.journal.guards() == {}
    runs = [r for r in world.journal.hook_runs() if r.hook == "sched"]
    assert [r.status for r in runs] == [HookStatus.CHANGED]
    assert world.accruing()[-1].detail["stores"][0]["action"] == "started"


def test_a_restarted_daemon_still_repairs_and_starts(world: World) -> None:
    world.install(world.spec())
    world.verdict = AHEAD
    world.runner.look()
    world.runner = world.new_runner()  # the daemon restarts: the journal's note is all it knows
    world.install(world.spec())
    assert world.runner.stopped_hooks == ["sched"]
    announced = len(world.accruing())
    # still ahead: it makes sure once (the stop may never have run if the daemon died after the note), quietly
    assert world.runner.look() == [("sched", Act.STOP)]
    assert world.runner.look() == []
    assert len(world.accruing()) == announced
    world.verdict = RIGHT
    assert world.runner.look() == [("sched", Act.RESTORE)]
    assert world.owner() == ["stop", "stop", "start"] and MemoryKind.store == {"a": NOW}


def test_a_failed_stop_is_announced_and_retried(world: World) -> None:
    from timeguard.daemon.guard import RETRY_S

    spec = world.spec(stop_command=["sh", "-c", f"echo failed-stop >> {world.owner_log}; exit 3"])
    world.install(spec)
    world.verdict = AHEAD
    assert world.runner.look() == [("sched", Act.STOP)]
    [event] = world.accruing()
    assert event.detail["stores"][0]["action"] == "stop_failed" and "exited 3" in event.detail["stores"][0]["error"]
    assert world.runner.look() == []  # not before RETRY_S
    world.mono += RETRY_S + 1
    assert world.runner.look() == [("sched", Act.STOP)]
    assert world.owner() == ["failed-stop", "failed-stop"]


def test_alert_only_names_the_store_and_stops_nothing(world: World) -> None:
    world.install(world.spec(guard="alert"))
    world.verdict = AHEAD
    assert world.runner.look() == [("sched", Act.ALERT)]
    assert world.runner.look() == []
    assert world.owner() == [] and world.journal.guards() == {}
    [event] = world.accruing()
    assert event.detail["stores"][0]["action"] == "alerting" and event.detail["ahead_s"] > 179 * DAY


def test_a_spoofed_verdict_stops_nothing(world: World) -> None:
    world.install(world.spec())
    for verdict in (SPOOFED, {**AHEAD, "ntp_http_agree": None}, None):
        world.verdict = verdict
        assert world.runner.look() == []
    assert world.owner() == [] and world.accruing() == []


@pytest.mark.parametrize("change", ["removed", "alert"])
def test_a_reload_that_drops_the_guard_starts_the_scheduler_loudly(world: World, change: str) -> None:
    world.install(world.spec())
    world.verdict = AHEAD
    world.runner.look()
    world.install(*([] if change == "removed" else [world.spec(guard="alert")]))
    assert world.runner.look() == [("sched", Act.RELEASE)]
    assert world.owner() == ["stop", "start"] and world.journal.guards() == {}
    assert MemoryKind.store == {"a": NOW + 100.0}  # not repaired: the clock is not right
    released = world.accruing()[-1].detail["stores"][0]
    assert released["action"] == "released"
    assert released["why"] == ("its hook was removed" if change == "removed" else "its hook is now guard: alert")


def test_guard_stop_is_refused_without_a_way_to_stop(memory_kind: type[MemoryKind]) -> None:  # noqa: F811
    from timeguard.hooks.api import HookConfigError
    from timeguard.repair.hook import CeleryBeatHook, RepairHook

    memory_kind.needs_owner_stopped = False
    try:
        with pytest.raises(HookConfigError) as info:
            RepairHook.from_config("m", {"target": "memory", "guard": "stop"})
        [(key, problem)] = info.value.problems
        assert key == "guard" and "service" in problem and "stop_command" in problem
        with pytest.raises(HookConfigError) as info:
            RepairHook.from_config("m", {"target": "memory", "guard": "halt"})
        assert info.value.problems == [("guard", "must be one of alert, stop, not 'halt'")]
    finally:
        memory_kind.needs_owner_stopped = True
    with pytest.raises(HookConfigError) as info:
        CeleryBeatHook.from_config("b", {"database_url": "sqlite:////tmp/x.db", "guard": "stop"})
    assert info.value.problems[0][0] == "guard" and "beat_service" in info.value.problems[0][1]
    hook = CeleryBeatHook.from_config("b", {"database_url": "sqlite:////tmp/x.db", "guard": "stop",
                                            "beat_service": "celery-beat.service"})
    assert hook.guard.value == "stop" and hook.stop_command == ["systemctl", "stop", "celery-beat.service"]
    assert CeleryBeatHook.from_config("b", {"database_url": "sqlite:////tmp/x.db"}).guard.value == "alert"


def test_future_state_accruing_is_paged_by_default_and_says_which_stores() -> None:
    """What webhooks (JSON, Alertmanager) and Slack say of the guard's event: the stores and what was done."""
    from timeguard.events import Event
    from timeguard.hooks.api import HookContext
    from timeguard.hooks.slack import SlackHook
    from timeguard.hooks.webhook import DEFAULT_ON, alert_name, headline, severity

    stores = [{"hook": "beat", "target": "celery_beat", "where": "postgresql://app:***@db/app", "guard": "stop",
               "action": "stopped"},
              {"hook": "jobs", "target": "apscheduler", "where": "redis://127.0.0.1/12", "guard": "alert",
               "action": "alerting"}]
    event = Event(kind=EventKind.FUTURE_STATE_ACCRUING, incident_id="i", wall_time_s=NOW + 180 * DAY,
                  monotonic_s=1.0, boot_id="b", host="h", trusted_time_s=NOW,
                  detail={"stores": stores, "ahead_s": 180 * DAY})
    assert EventKind.FUTURE_STATE_ACCRUING in DEFAULT_ON
    assert (severity(event), alert_name(event)) == ("critical", "FutureStateAccruing")
    assert headline(event) == ("Clock 180.0 days ahead, schedulers stamp the future: beat "
                               "(postgresql://app:***@db/app): stopped; jobs (redis://127.0.0.1/12): still running")
    started = Event(kind=EventKind.FUTURE_STATE_ACCRUING, incident_id="i", wall_time_s=NOW, monotonic_s=2.0,
                    boot_id="b", host="h", detail={"stores": [{**stores[0], "action": "started"}], "ahead_s": None})
    assert headline(started) == "Scheduler guard: beat (postgresql://app:***@db/app): started again"
    assert severity(started) == "info"  # the all-clear
    slack = SlackHook.from_config("chat", {"webhook_url": "https://hooks.slack.com/services/T/B/x"})
    payload = slack.build_payload(event, HookContext(dry_run=False, trusted_now=lambda: NOW, verdict=None,
                                                     hostname="h"))
    assert payload["text"].startswith("[CRITICAL] Clock 180.0 days ahead, schedulers stamp the future: beat"), payload


def test_config_schema_has_guard_for_every_repair_hook_type() -> None:
    """``config schema``: every repair hook type (``repair`` and each ``type: <target>``) documents ``guard``."""
    from timeguard.config import json_schema
    from timeguard.hooks.registry import HOOK_TYPES
    from timeguard.repair.hook import RepairHook

    repair_types = {"repair", *RepairHook.family()}
    seen = set()
    for rule in json_schema(HOOK_TYPES.schemas())["properties"]["hooks"]["items"]["allOf"]:
        hook_type = rule["if"]["properties"]["type"]["const"]
        guard = rule["then"].get("properties", {}).get("guard")
        if hook_type in repair_types:
            seen.add(hook_type)
            assert guard is not None and guard["enum"] == ["alert", "stop"] and guard["default"] == "alert", guard
        else:
            assert guard is None, hook_type
    assert seen == repair_types


def test_a_reload_releases_at_once_even_while_a_failed_restore_waits_for_its_retry(world: World) -> None:
    """CI: the guard restored on a verdict that said "right" for an instant (a round that straddled the step),
    the hook's own evidence check saw the host ahead and refused; the reload that set guard: alert then waited
    RETRY_S behind that failed restore, and the scheduler stayed stopped 30 s. A reload is the operator's new
    decision: it is carried out at the next look."""
    world.install(world.spec())
    world.verdict = AHEAD
    assert world.runner.look() == [("sched", Act.STOP)]
    world.install(world.spec(), hooks_see=AHEAD)
    world.verdict = RIGHT
    with capture_logs() as logged:
        assert world.runner.look() == [("sched", Act.RESTORE)]
    assert world.journal.guards() != {} and world.owner() == ["stop"]  # refused: it stays stopped
    # a refusal is not a failure: a warning that says why, not an error that pages
    [deferred] = [e for e in logged if e["event"].startswith("guard_restore")]
    assert (deferred["event"], deferred["log_level"], deferred["status"]) == ("guard_restore_deferred", "warning",
                                                                              "skipped")
    assert "ahead" in deferred["summary"], deferred
    world.verdict = AHEAD
    assert world.runner.look() == []  # the failed restore is not retried before RETRY_S
    world.install(world.spec(guard="alert"))
    assert world.runner.look() == [("sched", Act.RELEASE)]
    assert world.owner() == ["stop", "start"] and world.journal.guards() == {}


def test_a_restore_whose_start_fails_is_an_error_and_is_tried_again(world: World) -> None:
    from timeguard.daemon.guard import RETRY_S

    world.install(world.spec())
    world.verdict = AHEAD
    assert world.runner.look() == [("sched", Act.STOP)]
    world.install(world.spec(start_command=["sh", "-c", f"echo failed-start >> {world.owner_log}; exit 4"]))
    world.verdict = RIGHT
    with capture_logs() as logged:
        assert world.runner.look() == [("sched", Act.RESTORE)]
    [failed] = [e for e in logged if e["event"].startswith("guard_restore")]
    assert (failed["event"], failed["log_level"], failed["status"]) == ("guard_restore_failed", "error", "failed")
    assert world.journal.guards() != {}  # still stopped, as far as the guard knows: tried again
    assert world.runner.look() == []
    world.mono += RETRY_S + 1
    assert world.runner.look() == [("sched", Act.RESTORE)]
    assert world.owner() == ["stop", "failed-start", "failed-start"]

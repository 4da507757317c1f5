"""The RepairTarget plumbing without a database: the generic hook's handling of a target's needs (its owner
stopped, its options, the evidence rule), target discovery, and the command line's lazy target list."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookConfigError, HookContext, HookStatus
from timeguard.repair import target as target_mod
from timeguard.repair.hook import CeleryBeatHook, RepairHook
from timeguard.repair.target import BaseTarget, Change, KindEntry, Outcome, Plan, TargetKind

NOW = 1_765_000_000.0
GOOD = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": True}


class MemoryTarget(BaseTarget):
    """A store in memory: {item: epoch s}; records every apply call."""

    def __init__(self, store: dict[str, float], calls: list[dict[str, Any]]) -> None:
        self.store, self.calls = store, calls
        self.where, self.fingerprint = "memory", "memory"

    def plan(self, now_s: float) -> Plan:
        return Plan(now_s, 0.0, tuple(Change(k, k, "t", v, now_s, "future") for k, v in self.store.items()
                                      if v > now_s))

    def audit(self, now_s: float) -> Any:
        return self.audit_of(self.plan(now_s), now_s)

    def apply(self, now_fn, *, undo_log, incident_id, cancelled=lambda: False, owner_stopped=False) -> Outcome:
        plan = self.plan(now_fn())
        self.calls.append({"owner_stopped": owner_stopped, "undo_log": undo_log})
        for change in plan.changes:
            self.store[change.item] = change.new_s
        return Outcome(incident_id, "r", plan, ({"number": 1},) if plan.changes else (), True)

    def undo(self, undo_log, incident_id, now_fn, *, dry_run=False) -> Any:
        raise NotImplementedError


class MemoryKind(TargetKind):
    name = "memory"
    cli_name = "memory"
    options: ClassVar[frozenset[str]] = frozenset({"size"})
    needs_owner_stopped = True
    store: ClassVar[dict[str, float]] = {}
    calls: ClassVar[list[dict[str, Any]]] = []

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MemoryKind:
        if "size" in options and not isinstance(options["size"], int):
            raise HookConfigError([("size", "must be a whole number")])
        return cls(options)

    def open(self) -> MemoryTarget:
        return MemoryTarget(self.store, self.calls)


@pytest.fixture
def memory_kind(monkeypatch):
    monkeypatch.setattr(target_mod, "_kinds", {**target_mod.kinds(), "memory": KindEntry("memory", MemoryKind, None),
                                               "broken": KindEntry("broken", None, "failed to import x: boom")})
    MemoryKind.store = {"a": NOW + 86400.0, "b": NOW - 5.0}
    MemoryKind.calls = []
    return MemoryKind


def ctx(verdict=GOOD, **kw) -> HookContext:
    return HookContext(dry_run=False, trusted_now=lambda: NOW, verdict=verdict, hostname="h", **kw)


def test_a_target_that_needs_its_owner_stopped_is_refused_without_a_way_to_stop_it(memory_kind):
    with pytest.raises(HookConfigError) as info:
        RepairHook.from_config("m", {"target": "memory"})
    [(key, problem)] = info.value.problems
    assert key == "service" and "only with its owner stopped" in problem and "stop_command" in problem
    hook = RepairHook.from_config("m", {"target": "memory", "service": "app.service"})
    assert hook.stop_command == ["systemctl", "stop", "app.service"]
    assert hook.start_command == ["systemctl", "start", "app.service"]


def test_the_owner_is_stopped_around_the_repair_and_started_after_it(memory_kind, tmp_path: Path):
    log = tmp_path / "owner.log"
    hook = RepairHook.from_config("m", {"target": "memory", "stop_command": ["sh", "-c", f"echo stop >> {log}"],
                                        "start_command": ["sh", "-c", f"echo start >> {log}"]})
    event = Event(kind=EventKind.ROLLBACK, incident_id="i", wall_time_s=NOW, monotonic_s=1.0, boot_id="b")
    result = hook.handle(event, ctx())
    assert result.status is HookStatus.CHANGED and result.summary == "repaired memory: 1 value(s) in 1 round(s)"
    assert log.read_text().split() == ["stop", "start"]
    assert memory_kind.calls == [{"owner_stopped": True, "undo_log": None}]
    assert memory_kind.store == {"a": NOW, "b": NOW - 5.0}
    failing = RepairHook.from_config("m", {"target": "memory", "stop_command": ["false"], "start_command": ["true"]})
    memory_kind.store["a"] = NOW + 99.0
    refused = failing.handle(event, ctx())
    assert refused.status is HookStatus.FAILED and refused.summary.startswith("stop_command false exited 1")
    assert memory_kind.store["a"] == NOW + 99.0  # a stop that failed: nothing written


@given(offset=st.floats(allow_nan=True, allow_infinity=True))
def test_every_target_is_repaired_only_under_the_evidence_rule(offset):
    """The hook, not the target, applies the rule: a verdict it refuses never reaches the target."""
    from timeguard.repair.evidence import evidence_problem

    verdict = {**GOOD, "offset_s": offset, "offset_lo_s": offset - 0.01, "offset_hi_s": offset + 0.01}
    opened: list[int] = []

    class Spy(RepairHook):
        def target(self):  # type: ignore[override]
            opened.append(1)
            raise AssertionError("opened")

    hook = Spy(name="m", kind=MemoryKind({}), max_offset_s=1.0, stop_command=None, start_command=None)
    event = Event(kind=EventKind.ROLLBACK, incident_id="i", wall_time_s=NOW, monotonic_s=1.0, boot_id="b")
    if evidence_problem(verdict) is not None:
        assert hook.handle(event, ctx(verdict)).status is HookStatus.SKIPPED
        assert hook.audit(ctx(verdict)).outcome.value == "skipped"
        assert opened == []


def test_target_options_unknown_names_and_discovery_errors(memory_kind):
    with pytest.raises(HookConfigError) as info:
        RepairHook.from_config("m", {"target": "memory", "size": "big", "sise": 1, "service": "a.service"})
    assert info.value.problems[0] == ("sise", "unknown option of a repair hook (did you mean 'size'?)")
    assert info.value.problems[1] == ("size", "must be a whole number")
    with pytest.raises(HookConfigError) as info:
        RepairHook.from_config("m", {"target": "memory", "qqqqq": 1})
    assert info.value.problems == [("qqqqq", "unknown option of a repair hook; its options: max_offset_s, "
                                             "stop_command, start_command, guard, service, size, target")]
    with pytest.raises(HookConfigError, match="repair target 'broken' is unusable: failed to import x: boom"):
        RepairHook.from_config("m", {"target": "broken"})
    # the installed list grows with the built-in targets (apscheduler, …): the test's own two must be in it
    with pytest.raises(HookConfigError,
                       match=r"unknown repair target 'nope' \(installed: [a-z_, ]*\bcelery_beat, [a-z_, ]*\bmemory\b"):
        RepairHook.from_config("m", {"target": "nope"})
    with pytest.raises(HookConfigError, match="name the repair target"):
        RepairHook.from_config("m", {})
    # type: celery_beat is the same hook bound to its target; its owner's unit is beat_service
    with pytest.raises(HookConfigError) as info:
        CeleryBeatHook.from_config("b", {"database_url_env": "X", "service": "x"})
    assert info.value.problems[0][0] == "service" and "beat_service" in info.value.problems[0][1]


def test_a_command_other_than_repair_does_not_look_for_targets():
    """Finding targets imports importlib.metadata and every target's module (~70 ms): `timeguard check` and the
    other commands do not pay for it; `timeguard repair` and its help do."""
    code = ("import sys; from timeguard.cli.main import build_parser; p = build_parser(); "
            "p.parse_args(['check']); print('timeguard.repair.target' in sys.modules); "
            "p.parse_args(['repair', 'undo', 'X']); print('timeguard.repair.target' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "True"]


def test_undo_finds_the_target_in_the_record_and_asks_for_what_it_cannot_know(tmp_path: Path, capsys, monkeypatch):
    """`timeguard repair undo INCIDENT` reads which target the incident repaired from the undo log; celery_beat's
    database URL holds a password, so it is never stored: without --database-url the undo says what to give."""
    from timeguard.cli.main import main
    from timeguard.repair.celery_beat import URL_ENV
    from timeguard.repair.undo import UndoLog
    from timeguard.store.journal import Journal

    monkeypatch.delenv(URL_ENV, raising=False)
    config = tmp_path / "timeguard.yaml"
    config.write_text(f"state_dir: {tmp_path}\n")
    with Journal.in_state_dir(tmp_path) as journal:
        UndoLog(journal).record("celery_beat", "inc-9", "r", "sqlite:///beat.sqlite3#django_celery_beat_",
                                [("periodictask:1", "t", "last_run_at", "old", "new")], applied_wall_s=1.0,
                                applied_mono_s=1.0)
    assert main(["repair", "undo", "inc-9", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("timeguard repair: a celery_beat repair is undone in its database: give --database-url (or "
                   f"${URL_ENV}); it repaired sqlite:///beat.sqlite3#django_celery_beat_")
    assert main(["repair", "undo", "inc-9", "--config", str(config), "--database-url", "sqlite:///other.sqlite3"]) == 1
    assert capsys.readouterr().err.strip() == (
        "timeguard repair: incident inc-9 repaired sqlite:///beat.sqlite3#django_celery_beat_, not "
        "sqlite:///other.sqlite3#django_celery_beat_")


def test_an_owner_command_that_overruns_the_hook_s_timeout_is_killed_with_its_process_group(memory_kind, tmp_path):
    """The owner's stop runs under the command hook's supervisor with the hook's timeout_s (set by the
    dispatcher from the configuration), not a fixed 120 s: at the deadline its whole group — a child it left
    running too — gets SIGTERM, and nothing is repaired."""
    import os
    import time

    from timeguard.config import HookSpec
    from timeguard.hooks import dispatch

    pidfile = tmp_path / "grandchild.pid"
    stop = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 60"]
    spec = HookSpec("repair", "m", None, 0.5, False, {"target": "memory", "stop_command": stop,
                                                       "start_command": ["true"]})
    configured = dispatch.build(spec)
    assert configured.error is None and configured.hook.timeout_s == 0.5
    event = Event(kind=EventKind.ROLLBACK, incident_id="i", wall_time_s=NOW, monotonic_s=1.0, boot_id="b")
    started = time.monotonic()
    result = configured.hook.handle(event, ctx())
    assert time.monotonic() - started < 10
    assert result.status is HookStatus.FAILED
    assert result.summary.startswith(f"stop_command {' '.join(stop)}: timed out after 0.5 s"), result.summary
    assert "SIGTERM" in result.summary
    assert memory_kind.store["a"] == NOW + 86400.0 and memory_kind.calls == []  # nothing repaired
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{grandchild}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(grandchild, 9)
        pytest.fail("the stop command's child outlived its group's SIGTERM")


# ``timeguard repair TARGET --hook NAME`` with a target that needs its owner stopped: the command line stops and
# starts the owner around the repair as the hook does (real ``sh`` programs as its commands), not for a dry run.


def _cli_config(tmp_path: Path, log: Path) -> Path:
    cfg = tmp_path / "timeguard.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "hooks": [
        {"type": "repair", "target": "memory", "name": "mem", "timeout_s": 20,
         "stop_command": ["sh", "-c", f"echo stop >> {log}"], "start_command": ["sh", "-c", f"echo start >> {log}"]},
    ]}))
    return cfg


def test_the_owner_is_stopped_and_started_around_a_repair_from_the_command_line(memory_kind: type[MemoryKind],
                                                                                tmp_path: Path, capsys) -> None:
    from timeguard.cli.main import main

    log = tmp_path / "owner.log"
    cfg = _cli_config(tmp_path, log)
    now = time.time()
    memory_kind.store = {"a": now + 86400.0, "b": now - 5.0}

    assert main(["repair", "memory", "--config", str(cfg), "--hook", "mem", "--trust-local-clock", "--dry-run"]) == 0
    assert not log.exists() and memory_kind.calls == []  # a dry run stops nothing and writes nothing
    assert memory_kind.store["a"] == now + 86400.0

    assert main(["repair", "memory", "--config", str(cfg), "--hook", "mem", "--trust-local-clock"]) == 0
    assert log.read_text().split() == ["stop", "start"]
    assert [call["owner_stopped"] for call in memory_kind.calls] == [True]
    assert memory_kind.store["a"] <= time.time()
    capsys.readouterr()

    assert main(["repair", "memory", "--config", str(cfg), "--hook", "nope", "--trust-local-clock"]) == 1
    assert capsys.readouterr().err.strip() == (f"timeguard repair: --hook nope is not in {cfg} (memory hooks there: "
                                               "mem)")


def test_a_stop_that_fails_writes_nothing_and_starts_nothing(memory_kind: type[MemoryKind], tmp_path: Path,
                                                            capsys) -> None:
    from timeguard.cli.main import main

    cfg = tmp_path / "timeguard.yaml"
    started = tmp_path / "started"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "hooks": [
        {"type": "repair", "target": "memory", "name": "mem", "stop_command": ["false"],
         "start_command": ["touch", str(started)]}]}))
    now = time.time()
    memory_kind.store = {"a": now + 86400.0}
    assert main(["repair", "memory", "--config", str(cfg), "--hook", "mem", "--trust-local-clock"]) == 1
    assert "stop_command false exited 1" in capsys.readouterr().err
    assert memory_kind.store == {"a": now + 86400.0} and memory_kind.calls == [] and not started.exists()

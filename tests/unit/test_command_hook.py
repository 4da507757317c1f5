"""The command hook with real processes: what the program receives, what its exit status means, and that a
timeout kills its whole process group — a script that traps SIGTERM and the grandchildren it started too."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from timeguard import config
from timeguard.config import HookSpec
from timeguard.events import Event, EventKind
from timeguard.hooks.api import HookConfigError, HookContext, HookStatus
from timeguard.hooks.command import CHANGED_MARKER, EXIT_SKIP, MAX_OUTPUT_BYTES, CommandHook
from timeguard.hooks.dispatch import MAX_OUTPUT, Dispatcher
from timeguard.hooks.registry import HOOK_TYPES

VERDICT = {"status": "OK", "offset_s": 3600.25, "offset_lo_s": 3600.0, "offset_hi_s": 3600.5, "summary": "ok"}


def make_event(**kw) -> Event:
    fields = {"kind": EventKind.ROLLBACK, "incident_id": "inc-1", "wall_time_s": 1_700_000_000.5,
              "monotonic_s": 42.0, "boot_id": "boot-1", "host": "db1", "step_s": -3600.25,
              "wall_before_s": 1_700_003_600.75, "trusted_time_s": 1_700_003_600.75,
              "verdict": {"status": "CRITICAL"}, "detail": {"why": "test"}}
    fields.update(kw)
    return Event(**fields)


def make_ctx(*, dry_run=False, verdict=VERDICT, trusted=1_700_003_601.0, cancelled=lambda: False) -> HookContext:
    return HookContext(dry_run=dry_run, trusted_now=lambda: trusted, verdict=verdict, hostname="db1",
                       cancelled=cancelled)


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def hook(command, *, timeout_s: float = 5.0, **options) -> CommandHook:
    h = CommandHook.from_config("t", {"command": command, **options})
    h.timeout_s = timeout_s  # what the dispatcher does with the hook's timeout_s
    return h


def alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie (an orphan's zombie waits for PID 1, which may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] not in (b"Z", b"X")


def read_pids(*paths: Path) -> list[int]:
    deadline = time.monotonic() + 2
    while not all(p.exists() and p.read_text().strip() for p in paths):
        assert time.monotonic() < deadline, "the script did not write its pids"
        time.sleep(0.01)
    return [int(p.read_text()) for p in paths]


# ------------------------------------------------------------------------------------------- what it gets


def test_the_program_gets_the_event_in_timeguard_variables_and_as_json_on_stdin(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("TIMEGUARD_STEP_S", "stale value from the daemon's environment")
    work = tmp_path / "work"
    work.mkdir()
    prog = script(tmp_path, "record.sh", f"""\
        env > {tmp_path}/env.txt
        cat > {tmp_path}/stdin.json
        pwd > {tmp_path}/pwd.txt
        """)
    event = make_event()
    result = hook([prog], env={"SITE": "eu-1", "PORT": 8080}, cwd=str(work)).handle(event, make_ctx())

    assert result.status is HookStatus.OK, result
    env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert env["TIMEGUARD_EVENT_KIND"] == "rollback"
    assert env["TIMEGUARD_EVENT_ID"] == event.id
    assert env["TIMEGUARD_INCIDENT_ID"] == "inc-1"
    assert env["TIMEGUARD_HOOK_NAME"] == "t"
    assert env["TIMEGUARD_HOST"] == "db1"
    assert env["TIMEGUARD_BOOT_ID"] == "boot-1"
    assert env["TIMEGUARD_EVENT_SCHEMA"] == "1"
    assert float(env["TIMEGUARD_STEP_S"]) == -3600.25
    assert env["TIMEGUARD_WALL_TIME"] == "2023-11-14T22:13:20.500000+00:00"
    assert float(env["TIMEGUARD_WALL_TIME_S"]) == 1_700_000_000.5
    assert env["TIMEGUARD_WALL_BEFORE_TIME"] == "2023-11-14T23:13:20.750000+00:00"
    assert env["TIMEGUARD_TRUSTED_TIME"] == "2023-11-14T23:13:20.750000+00:00"
    assert float(env["TIMEGUARD_TRUSTED_TIME_S"]) == 1_700_003_600.75
    assert float(env["TIMEGUARD_TRUSTED_NOW_S"]) == 1_700_003_601.0
    # The latest verdict (the event's own, from detection time, is in the JSON).
    assert env["TIMEGUARD_VERDICT_STATUS"] == "OK"
    assert float(env["TIMEGUARD_OFFSET_S"]) == 3600.25
    assert float(env["TIMEGUARD_OFFSET_LO_S"]) == 3600.0 and float(env["TIMEGUARD_OFFSET_HI_S"]) == 3600.5
    assert env["TIMEGUARD_DRY_RUN"] == "0" and env["TIMEGUARD_TEST"] == "0"
    assert env["SITE"] == "eu-1" and env["PORT"] == "8080"
    assert "PATH" in env  # the daemon's environment is inherited...
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # ...except what addresses its systemd manager
        assert var not in env

    doc = json.loads((tmp_path / "stdin.json").read_text())
    assert Event.from_dict(doc["event"]) == event
    assert doc["event"]["verdict"] == {"status": "CRITICAL"}
    assert doc["verdict"] == VERDICT
    assert doc["hook"] == "t" and doc["dry_run"] is False and doc["schema"] == 1
    assert doc["trusted_now_s"] == 1_700_003_601.0
    assert (tmp_path / "pwd.txt").read_text().strip() == str(work)


def test_unknown_values_are_set_empty_so_set_u_scripts_work(tmp_path):
    prog = script(tmp_path, "strict.sh", f"""\
        set -eu
        echo "step=[$TIMEGUARD_STEP_S] trusted=[$TIMEGUARD_TRUSTED_TIME] now=[$TIMEGUARD_TRUSTED_NOW_S]" \
             "status=[$TIMEGUARD_VERDICT_STATUS] offset=[$TIMEGUARD_OFFSET_S] test=$TIMEGUARD_TEST" > {tmp_path}/out
        """)
    event = make_event(kind=EventKind.TEST, step_s=None, wall_before_s=None, trusted_time_s=None, verdict=None,
                       test=True)
    result = hook([prog]).handle(event, make_ctx(verdict=None, trusted=None))
    assert result.status is HookStatus.OK, result
    assert (tmp_path / "out").read_text().strip() == "step=[] trusted=[] now=[] status=[] offset=[] test=1"


def test_a_shell_command_runs_only_with_shell_true_and_sees_the_variables(tmp_path):
    command = 'echo "kind=$TIMEGUARD_EVENT_KIND" && echo to-stderr >&2'
    result = hook(command, shell=True).handle(  # noqa: S604 — the shell is the subject of this test
        make_event(), make_ctx())
    assert result.status is HookStatus.OK
    assert result.output == "kind=rollback\nto-stderr\n"  # stdout and stderr together, in order
    assert result.details["argv"] == ["/bin/sh", "-c", 'echo "kind=$TIMEGUARD_EVENT_KIND" && echo to-stderr >&2']


def test_a_large_event_is_fed_to_a_reader_and_does_not_block_a_program_that_ignores_stdin(tmp_path):
    event = make_event(detail={"blob": "x" * 300_000})  # far more than a pipe buffer
    started = time.monotonic()
    result = hook(["true"], timeout_s=5).handle(event, make_ctx())
    assert result.status is HookStatus.OK and time.monotonic() - started < 1.0
    copy = tmp_path / "copy.json"
    result = hook(["sh", "-c", f"cat > {copy}"]).handle(event, make_ctx())
    assert result.status is HookStatus.OK
    assert json.loads(copy.read_text())["event"]["detail"]["blob"] == "x" * 300_000


# ----------------------------------------------------------------------------------------- exit statuses


@pytest.mark.parametrize(("body", "status", "summary", "detail"), [
    ("echo hello", HookStatus.OK, "exited 0", {"exit_code": 0}),
    (f"echo restarting; echo '{CHANGED_MARKER}'", HookStatus.CHANGED, "exited 0 and changed something",
     {"exit_code": 0}),
    (f"echo 'not our scheduler here'; exit {EXIT_SKIP}", HookStatus.SKIPPED, "not applicable (exit 75)",
     {"exit_code": 75}),
    ("echo 'database down' >&2; exit 3", HookStatus.FAILED, "exited 3", {"exit_code": 3}),
    (f"echo '{CHANGED_MARKER}'; exit 1", HookStatus.FAILED, "exited 1", {"exit_code": 1}),  # marker needs exit 0
    ("kill -USR1 $$", HookStatus.FAILED, "killed by SIGUSR1", {"signal": "SIGUSR1"}),
])
def test_the_exit_status_gives_the_result(tmp_path, body, status, summary, detail):
    prog = script(tmp_path, "prog.sh", body)
    result = hook([prog]).handle(make_event(), make_ctx())
    assert result.status is status
    assert result.summary == f"{prog}: {summary}"
    for key, value in detail.items():
        assert result.details[key] == value
    assert result.details["timed_out"] is False and result.details["killed"] == []


def test_output_is_kept_head_and_tail_and_says_how_much_was_cut(tmp_path):
    prog = script(tmp_path, "noisy.sh", """\
        echo FIRST-LINE
        head -c 300000 /dev/zero | tr '\\0' 'x'
        echo
        echo 'the error that explains it' >&2
        """)
    result = hook([prog]).handle(make_event(), make_ctx())
    assert result.status is HookStatus.OK
    assert result.details["output_bytes"] == len("FIRST-LINE\n") + 300_000 + 1 + len("the error that explains it\n")
    assert result.details["output_truncated"] is True
    assert result.output.startswith("FIRST-LINE\nxxx")
    assert result.output.endswith("xxx\nthe error that explains it\n")
    assert "bytes of output cut (of 300039)" in result.output
    # Within the dispatcher's own limit, so it is stored as the hook shaped it.
    assert len(result.output.encode()) <= MAX_OUTPUT_BYTES + 100 < MAX_OUTPUT


# --------------------------------------------------------------------------------------------- timeouts


def test_a_timeout_kills_the_whole_group_even_a_script_and_a_grandchild_that_ignore_sigterm(tmp_path):
    prog = script(tmp_path, "stubborn.sh", f"""\
        trap '' TERM
        echo $$ > {tmp_path}/main.pid
        sh -c 'trap "" TERM; echo $$ > {tmp_path}/grandchild.pid; while :; do sleep 0.05; done' &
        sleep 1000 &
        echo $! > {tmp_path}/sleeper.pid
        echo started
        while :; do sleep 0.05; done
        """)
    h = hook([prog], timeout_s=0.5, kill_grace_s=0.5)
    started = time.monotonic()
    result = h.handle(make_event(), make_ctx())
    took = time.monotonic() - started

    pids = read_pids(tmp_path / "main.pid", tmp_path / "grandchild.pid", tmp_path / "sleeper.pid")
    assert result.status is HookStatus.FAILED
    assert result.details["timed_out"] is True
    assert result.details["killed"] == ["SIGTERM", "SIGKILL"]
    assert result.details["signal"] == "SIGKILL"
    assert result.summary == (f"{prog}: timed out after 0.5 s: its process group got SIGTERM and, still running "
                              "0.5 s later, SIGKILL")
    assert "started" in result.output
    assert 1.0 <= took < 0.5 + 0.5 + 0.5, took  # timeout + grace, then it returns at once
    assert h.max_run_s >= 1.0
    assert not [pid for pid in pids if alive(pid)], "a member of the group survived"


def test_a_program_that_honours_sigterm_ends_at_the_timeout_without_waiting_for_the_grace(tmp_path):
    prog = script(tmp_path, "sleeper.sh", f"""\
        sleep 1000 &
        echo $! > {tmp_path}/sleeper.pid
        wait
        """)
    started = time.monotonic()
    result = hook([prog], timeout_s=0.5, kill_grace_s=10).handle(make_event(), make_ctx())
    took = time.monotonic() - started
    (sleeper,) = read_pids(tmp_path / "sleeper.pid")
    assert result.status is HookStatus.FAILED and result.details["killed"] == ["SIGTERM"]
    assert result.summary == f"{prog}: timed out after 0.5 s: its process group got SIGTERM and ended"
    assert 0.5 <= took < 0.5 + 0.5, took
    assert not alive(sleeper)


def test_a_cancelled_run_stops_its_program_at_once(tmp_path):
    stop_at = time.monotonic() + 0.3
    started = time.monotonic()
    result = hook(["sleep", "1000"], timeout_s=60).handle(
        make_event(), make_ctx(cancelled=lambda: time.monotonic() >= stop_at))
    took = time.monotonic() - started
    assert result.status is HookStatus.FAILED
    assert result.summary == ("sleep 1000: cancelled by timeguard (it is stopping, or the run's time was up): "
                              "its process group got SIGTERM and ended")
    assert 0.3 <= took < 0.3 + 0.5, took


def test_a_program_that_exits_leaving_a_background_child_is_not_waited_for(tmp_path):
    prog = script(tmp_path, "detach.sh", f"""\
        sleep 1000 &
        echo $! > {tmp_path}/bg.pid
        echo done
        """)
    started = time.monotonic()
    result = hook([prog], timeout_s=30).handle(make_event(), make_ctx())
    took = time.monotonic() - started
    (bg,) = read_pids(tmp_path / "bg.pid")
    try:
        assert result.status is HookStatus.OK and result.output == "done\n"
        assert took < 1.5, took  # it holds our output pipe open: we stop waiting after OUTPUT_LINGER_S
        assert result.details["left_running"] == [bg]
        assert alive(bg)  # left alone: it may be meant to run on
    finally:
        os.kill(bg, signal.SIGKILL)  # ours: this test started it


# -------------------------------------------------------------------------------------------- dry run


def test_dry_run_does_not_run_the_program_and_says_what_it_would_run(tmp_path):
    marker = tmp_path / "ran"
    prog = script(tmp_path, "touch.sh", f"touch {marker}\n")
    result = hook([prog, "--now"]).handle(make_event(), make_ctx(dry_run=True))
    assert result.status is HookStatus.SKIPPED
    assert result.summary == f"dry run: would run {prog} --now"
    assert result.details["argv"] == [prog, "--now"]
    assert not marker.exists()


def test_run_in_dry_run_runs_it_with_timeguard_dry_run_set(tmp_path):
    prog = script(tmp_path, "check.sh", f'echo "$TIMEGUARD_DRY_RUN" > {tmp_path}/dry\n')
    result = hook([prog], run_in_dry_run=True).handle(make_event(), make_ctx(dry_run=True))
    assert result.status is HookStatus.OK
    assert (tmp_path / "dry").read_text().strip() == "1"


# ----------------------------------------------------------------------------------------- validation


def not_executable(tmp_path: Path) -> str:
    path = tmp_path / "plain.sh"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize(("options", "key", "message"), [
    ({}, "command", "is required"),
    ({"command": "/bin/echo hi"}, "command", 'give a list of arguments, e.g. ["/bin/echo", "hi"], or set shell: true'),
    ({"command": []}, "command", "must be a non-empty list"),
    ({"command": ["echo", {"a": 1}]}, "command[1]", "must be text"),
    ({"command": ["no-such-program-tg"]}, "command[0]", "program 'no-such-program-tg' not found on PATH"),
    ({"command": ["/nonexistent/tg-prog"]}, "command[0]", "/nonexistent/tg-prog does not exist"),
    ({"command": ["bin/tg-prog"]}, "command[0]", "give an absolute path"),
    ({"command": ["/tmp"]}, "command[0]", "is a directory"),
    ({"command": "no-such-program-tg --now", "shell": True}, "command", "not found on PATH"),
    ({"command": ["true"], "shell": True}, "command", "with shell: true, must be one non-empty string"),
    ({"command": ["true"], "shell": "yes"}, "shell", "must be true or false"),
    ({"command": ["true"], "env": {"TIMEGUARD_STEP_S": "1"}}, "env.TIMEGUARD_STEP_S", "set by timeguard itself"),
    ({"command": ["true"], "env": {"1BAD": "x"}}, "env.1BAD", "not a valid variable name"),
    ({"command": ["true"], "env": {"DEBUG": True}}, "env.DEBUG", "must be text or a number"),
    ({"command": ["true"], "env": ["A=1"]}, "env", "must be a mapping"),
    ({"command": ["true"], "cwd": "/nonexistent-tg"}, "cwd", "is not an existing directory"),
    ({"command": ["true"], "cwd": "relative"}, "cwd", "must be an absolute directory path"),
    ({"command": ["true"], "kill_grace_s": 0}, "kill_grace_s", "must be > 0, not 0"),
    ({"command": ["true"], "kill_grace_s": 61}, "kill_grace_s", "must be ≤ 60, not 61"),
    ({"command": ["true"], "run_in_dry_run": 1}, "run_in_dry_run", "must be true or false"),
    ({"command": ["true"], "comand": ["x"]}, "comand", "did you mean 'command'?"),
])
def test_bad_options_are_refused_at_config_time_with_the_key(options, key, message):
    with pytest.raises(HookConfigError) as info:
        CommandHook.from_config("t", options)
    assert [k for k, _ in info.value.problems] == [key], info.value.problems
    assert message in info.value.problems[0][1]


def test_a_program_that_is_not_executable_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(HookConfigError) as info:
        CommandHook.from_config("t", {"command": [not_executable(tmp_path)]})
    assert info.value.problems == [("command[0]", f"{tmp_path}/plain.sh is not executable (mode 0644): chmod +x it")]


def test_every_problem_is_reported_at_once():
    with pytest.raises(HookConfigError) as info:
        CommandHook.from_config("t", {"command": ["no-such-program-tg"], "env": {"TIMEGUARD_X": "1"},
                                      "cwd": "/nonexistent-tg", "shel": True})
    assert sorted(k for k, _ in info.value.problems) == ["command[0]", "cwd", "env.TIMEGUARD_X", "shel"]


def test_programs_are_found_on_the_path_the_hook_sets_and_relative_to_its_cwd(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script(bindir, "site-repair", "echo repaired\n")
    h = hook(["site-repair"], env={"PATH": f"{bindir}:/usr/bin:/bin"})
    assert h.handle(make_event(), make_ctx()).output == "repaired\n"
    h = hook(["./bin/site-repair"], cwd=str(tmp_path))
    assert h.handle(make_event(), make_ctx()).output == "repaired\n"


@pytest.mark.parametrize("command", ["cd /tmp && true", "FOO=1 true", "exec true", "'unbalanced"])
def test_a_shell_command_starting_with_a_builtin_or_assignment_is_not_looked_up(command):
    assert CommandHook.from_config("t", {"command": command, "shell": True}).shell


def test_a_program_removed_after_validation_is_a_failed_run(tmp_path):
    prog = script(tmp_path, "gone.sh", "true\n")
    h = hook([prog])
    os.unlink(prog)
    result = h.handle(make_event(), make_ctx())
    assert result.status is HookStatus.FAILED
    assert result.summary == f"could not start {prog}: No such file or directory"


def test_config_validate_reports_a_missing_program_with_its_path_and_line():
    text = textwrap.dedent("""\
        hooks:
          - type: command
            name: restart-beat
            command: [no-such-program-tg, restart]
        """)
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "t.yaml", hook_types=HOOK_TYPES)
    (problem,) = info.value.problems
    assert problem.path == "hooks[0].command[0]" and problem.line == 4
    assert "program 'no-such-program-tg' not found on PATH" in problem.message


def test_a_valid_command_hook_loads_with_the_type_default_kinds():
    cfg = config.loads('hooks:\n  - {type: command, name: ok, command: ["true"], timeout_s: 3}\n',
                       hook_types=HOOK_TYPES)
    (spec,) = cfg.hooks
    assert (spec.type, spec.name, spec.on, spec.timeout_s) == ("command", "ok", None, 3.0)
    assert spec.options == {"command": ["true"]}
    assert CommandHook.default_on == frozenset({EventKind.ROLLBACK, EventKind.ROLLBACK_WHILE_DOWN})


# ----------------------------------------------------------------------------------- through the dispatcher


class Journal:
    def __init__(self) -> None:
        self.runs: list = []

    def record_hook_run(self, run) -> None:
        self.runs.append(run)


def test_the_dispatcher_gives_the_hook_its_timeout_and_records_exit_status_and_output(tmp_path):
    prog = script(tmp_path, "fail.sh", "echo 'cannot reach the scheduler' >&2\nexit 4\n")
    spec = HookSpec(type="command", name="repair", on=None, timeout_s=7.0, dry_run=False,
                    options={"command": [prog]})
    journal = Journal()
    d = Dispatcher([spec], recorder=journal, trusted_now=lambda: 1.0, verdict=lambda: VERDICT,
                   hostname="h")
    try:
        (configured,) = d.hooks
        assert isinstance(configured.hook, CommandHook) and configured.hook.timeout_s == 7.0
        assert configured.kinds == CommandHook.default_on
        run = d.run_now("repair", make_event())
    finally:
        d.stop()
    assert run.status is HookStatus.FAILED and run.summary == f"{prog}: exited 4"
    assert run.details["exit_code"] == 4 and run.output == "cannot reach the scheduler\n"
    assert journal.runs == [run]


def test_python_programs_work_too(tmp_path):
    prog = tmp_path / "hook.py"
    prog.write_text("import json, sys\nprint(json.load(sys.stdin)['event']['kind'])\n")
    result = hook([sys.executable, str(prog)]).handle(make_event(), make_ctx())
    assert result.status is HookStatus.OK and result.output == "rollback\n"


def test_through_the_dispatcher_a_command_that_ignores_sigterm_still_dies_and_detection_is_not_delayed(tmp_path):
    prog = script(tmp_path, "stubborn.sh", f"""\
        trap '' TERM
        echo $$ > {tmp_path}/main.pid
        sh -c 'trap "" TERM; echo $$ > {tmp_path}/grandchild.pid; while :; do sleep 0.05; done' &
        while :; do sleep 0.05; done
        """)
    spec = HookSpec(type="command", name="stubborn", on=["rollback"], timeout_s=0.5, dry_run=False,
                    options={"command": [prog], "kill_grace_s": 0.5})
    journal = Journal()
    d = Dispatcher([spec], recorder=journal, trusted_now=lambda: 1.0, verdict=lambda: VERDICT,
                   hostname="h")
    try:
        started = time.monotonic()
        flags = d.dispatch(make_event())
        queued = time.monotonic() - started
        assert queued < 0.05, queued  # the caller (detection) never waits for the hook
        assert flags[0].wait(0.5 + 0.5 + 0.5)
        pids = read_pids(tmp_path / "main.pid", tmp_path / "grandchild.pid")
        deadline = started + 0.5 + 0.5 + 0.5
        while [pid for pid in pids if alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not [pid for pid in pids if alive(pid)], "the group outlived timeout + grace"
    finally:
        d.stop()
    (run,) = journal.runs
    assert run.status is HookStatus.FAILED and "timed out after 0.5 s" in run.summary

"""The proof that a third party can add a hook without touching timeguard: examples/timeguard-hook-example is
installed with pip into a directory of its own, found through its entry point by a separate `timeguard`
process, validated, listed, and run — alone, next to a plugin that fails to import, and against a second
package that registers the same name."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.support.require import need
from timeguard.config import HookSpec
from timeguard.events import Event, EventKind
from timeguard.hooks import registry
from timeguard.hooks.api import ALL_REAL_KINDS, HookConfigError, HookContext, HookStatus

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "timeguard-hook-example"


def _venv_builds_wheels() -> bool:
    """setuptools < 70.1 needs the `wheel` package to build one (--no-build-isolation uses the venv's)."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    from importlib.metadata import version

    major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed by pip into its own --target directory (what PYTHONPATH then points at)."""
    target = pip_install(EXAMPLE, tmp_path_factory.mktemp("plugin"))
    assert list(target.glob("timeguard_hook_example-0.1.0.dist-info"))
    return target


def pip_install(example: Path, work: Path) -> Path:
    """``example`` installed by pip (offline when the venv can build wheels) into ``work``/site."""
    source = work / "src"
    # A copy: pip builds in the source tree, and its build/ and *.egg-info must not land in the repository.
    shutil.copytree(example, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--target",
           str(target), str(source)]
    if _venv_builds_wheels():
        cmd[4:4] = ["--no-build-isolation", "--no-index"]  # offline: the venv's setuptools builds it
    # Otherwise pip builds it in an isolated environment with setuptools and wheel from the configured index.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    need(proc.returncode == 0, f"pip could not install the example plugin: {(proc.stdout + proc.stderr)[-2000:]}")
    return target


def fake_dist(root: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """A minimal installed distribution (dist-info with METADATA and entry_points.txt) and its modules."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[timeguard.hooks]\n" + "".join(f"{name} = {value}\n" for name, value in entry_points.items()))
    for module, text in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(text))
    return root


def timeguard(*args: str, path: list[Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TIMEGUARD_CONFIG", "PYTHONPATH")}
    if path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in path)
    return subprocess.run([sys.executable, "-m", "timeguard", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=60, check=False)


def hooks_list(config: Path, path: list[Path], cwd: Path) -> tuple[int, dict]:
    proc = timeguard("hooks", "list", "--json", "--config", str(config), path=path, cwd=cwd)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def write_config(tmp_path: Path, hooks: str) -> Path:
    path = tmp_path / "timeguard.yaml"
    path.write_text("hooks:\n" + textwrap.indent(textwrap.dedent(hooks), "  "))
    return path


# ------------------------------------------------------------------------------------- found and listed


def test_the_installed_example_is_discovered_validated_and_listed(site, tmp_path):
    config = write_config(tmp_path, f"""\
        - type: logfile
          name: clock-audit
          path: {tmp_path}/events.jsonl
          fsync: true
        """)
    code, data = hooks_list(config, [site], tmp_path)
    assert code == 0, data
    logfile = next(t for t in data["types"] if t["name"] == "logfile")
    assert logfile["state"] == "loaded" and logfile["error"] is None
    assert logfile["distribution"] == "timeguard-hook-example 0.1.0"
    assert logfile["value"] == "timeguard_hook_example:LogfileHook"
    assert logfile["used_by"] == ["clock-audit"]
    assert logfile["default_on"] == sorted(k.value for k in ALL_REAL_KINDS)
    (hook,) = data["hooks"]
    assert (hook["name"], hook["type"], hook["state"], hook["on_default"]) == ("clock-audit", "logfile", "ready", True)
    command = next(t for t in data["types"] if t["name"] == "command")  # the built-ins are listed alongside
    assert command["state"] == "loaded" and command["distribution"].startswith("timeguard ")

    proc = timeguard("config", "validate", str(config), path=[site], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr

    # Without the plugin on the path the very same file is invalid: the type came from the installed package.
    proc = timeguard("config", "validate", str(config), path=[], cwd=tmp_path)
    assert proc.returncode == 1
    assert "hooks[0].type: unknown hook type 'logfile'" in proc.stderr


def test_the_plugins_own_option_checks_reach_config_validate_with_lines(site, tmp_path):
    config = write_config(tmp_path, """\
        - type: logfile
          name: clock-audit
          path: relative/events.jsonl
          fsyncc: true
        """)
    proc = timeguard("config", "validate", str(config), path=[site], cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{config}:4: hooks[0].path: must be an absolute file path, not 'relative/events.jsonl'" in proc.stderr
    assert f"{config}:5: hooks[0].fsyncc: unknown option of a logfile hook (did you mean 'fsync'?)" in proc.stderr
    code, data = hooks_list(config, [site], tmp_path)
    assert code == 1
    assert data["hooks"][0]["state"] == "unusable"
    assert [p["path"] for p in data["hooks"][0]["problems"]] == ["hooks[0].path", "hooks[0].fsyncc"]


def test_a_plugin_that_fails_to_import_is_listed_with_its_error_and_does_not_stop_the_others(site, tmp_path):
    broken = fake_dist(tmp_path / "broken-site", "tg-pager", "0.2", {"pager": "tg_pager:PagerHook"}, {
        "tg_pager": """\
            import tg_pager_sdk  # a dependency the package forgot to declare
            class PagerHook: ...
            """})
    config = write_config(tmp_path, f"""\
        - {{type: logfile, name: clock-audit, path: {tmp_path}/events.jsonl}}
        - {{type: pager, name: on-call}}
        """)
    code, data = hooks_list(config, [site, broken], tmp_path)
    assert code == 1  # a configured hook is unusable
    types = {t["name"]: t for t in data["types"]}
    assert types["logfile"]["state"] == "loaded"
    assert types["pager"]["state"] == "failed" and types["pager"]["distribution"] == "tg-pager 0.2"
    assert "failed to import tg_pager:PagerHook: ModuleNotFoundError: No module named 'tg_pager_sdk'" in (
        types["pager"]["error"])
    assert types["pager"]["error"].endswith("update or uninstall tg-pager 0.2")
    hooks = {h["name"]: h for h in data["hooks"]}
    assert hooks["clock-audit"]["state"] == "ready"
    assert hooks["on-call"]["state"] == "unusable"
    assert "hook type 'pager' is unusable: failed to import" in hooks["on-call"]["problems"][0]["message"]

    proc = timeguard("hooks", "list", "--config", str(config), path=[site, broken], cwd=tmp_path)
    assert proc.returncode == 1
    assert any(line.split()[:3] == ["clock-audit", "logfile", "ready"] for line in proc.stdout.splitlines())

    proc = timeguard("config", "validate", str(config), path=[site, broken], cwd=tmp_path)
    assert proc.returncode == 1
    assert "invalid, 1 error:" in proc.stderr and "hooks[1].type: hook type 'pager' is unusable" in proc.stderr


def test_two_packages_registering_the_same_name_are_refused_naming_both(site, tmp_path):
    other = fake_dist(tmp_path / "other-site", "tg-other-logfile", "2.0", {"logfile": "tg_other_logfile:Hook"},
                      {"tg_other_logfile": "class Hook:\n    pass\n"})
    config = write_config(tmp_path, f"- {{type: logfile, name: clock-audit, path: {tmp_path}/e.jsonl}}\n")
    code, data = hooks_list(config, [site, other], tmp_path)
    assert code == 1
    logfile = next(t for t in data["types"] if t["name"] == "logfile")
    assert logfile["state"] == "duplicate"
    assert logfile["error"] == ("duplicate hook type 'logfile' from tg-other-logfile 2.0 and "
                                "timeguard-hook-example 0.1.0: uninstall one of them")
    proc = timeguard("config", "validate", str(config), path=[site, other], cwd=tmp_path)
    assert proc.returncode == 1
    assert "duplicate hook type 'logfile' from tg-other-logfile 2.0 and timeguard-hook-example 0.1.0" in proc.stderr


# ----------------------------------------------------------------------------------------------- it runs


@pytest.fixture
def plugin(site, monkeypatch):
    """The installed example, importable in this process and discovered by the registry."""
    monkeypatch.syspath_prepend(str(site))
    registry._cache.clear()
    yield registry.find_type("logfile")
    registry._cache.clear()
    for name in [m for m in sys.modules if m.startswith("timeguard_hook_example")]:
        del sys.modules[name]


def event(**kw) -> Event:
    fields = {"kind": EventKind.ROLLBACK, "incident_id": "inc-7", "wall_time_s": 1_700_000_000.0,
              "monotonic_s": 10.0, "boot_id": "b", "step_s": -86_400.0, "trusted_time_s": 1_700_086_400.0}
    fields.update(kw)
    return Event(**fields)


def ctx(dry_run: bool = False) -> HookContext:
    return HookContext(dry_run=dry_run, trusted_now=lambda: 1_700_086_401.0, verdict={"status": "OK"}, hostname="h")


def test_the_example_appends_one_json_line_per_event(plugin, tmp_path):
    assert plugin.__module__ == "timeguard_hook_example"
    log = tmp_path / "events.jsonl"
    hook = plugin.from_config("clock-audit", {"path": str(log)})
    first, second = event(), event(kind=EventKind.RECOVERED, step_s=None)
    result = hook.handle(first, ctx())
    assert result.status is HookStatus.OK
    assert result.summary == f"appended the rollback event to {log}"
    assert hook.handle(second, ctx()).status is HookStatus.OK
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [Event.from_dict(line["event"]) for line in lines] == [first, second]
    assert lines[0]["hook"] == "clock-audit" and lines[0]["logged_at_trusted_s"] == 1_700_086_401.0

    dry = hook.handle(event(), ctx(dry_run=True))
    assert dry.status is HookStatus.SKIPPED and dry.summary.startswith("dry run: would append ")
    assert len(log.read_text().splitlines()) == 2

    log.unlink()
    (tmp_path / "events.jsonl").mkdir()  # a directory where the file should be: a FAILED result, not a raise
    failed = hook.handle(event(), ctx())
    assert failed.status is HookStatus.FAILED and failed.summary.startswith(f"cannot append to {log}: ")


def test_the_examples_option_validation(plugin, tmp_path):
    with pytest.raises(HookConfigError) as info:
        plugin.from_config("x", {"path": str(tmp_path / "missing-dir" / "e.jsonl"), "fsync": "yes", "colour": 1})
    assert sorted(k for k, _ in info.value.problems) == ["colour", "fsync", "path"]
    with pytest.raises(HookConfigError, match="path: is required"):
        plugin.from_config("x", {})


class Recorder:
    """Where the dispatcher records runs (the journal's record_hook_run)."""

    def __init__(self) -> None:
        self.runs: list = []

    def record_hook_run(self, run) -> None:
        self.runs.append(run)


def test_the_example_through_the_dispatcher_records_its_runs(plugin, tmp_path):
    from timeguard.hooks.dispatch import Dispatcher

    log = tmp_path / "events.jsonl"
    spec = HookSpec(type="logfile", name="clock-audit", on=None, timeout_s=5.0, dry_run=False,
                    options={"path": str(log)})
    journal = Recorder()
    d = Dispatcher([spec], recorder=journal, trusted_now=lambda: 1_700_086_401.0,
                   verdict=lambda: {"status": "OK"}, hostname="h")
    try:
        assert d.hooks[0].kinds == ALL_REAL_KINDS  # the plugin's default_on
        real = event()
        flags: list[threading.Event] = d.dispatch(real)
        assert len(flags) == 1 and flags[0].wait(5)
        test_run = d.run_now("clock-audit", event(kind=EventKind.TEST, test=True, step_s=None))
    finally:
        d.stop()
    assert test_run.status is HookStatus.OK and test_run.test is True
    runs = journal.runs
    assert [(r.event_kind, r.status, r.hook_type) for r in runs] == [
        ("rollback", HookStatus.OK, "logfile"), ("test", HookStatus.OK, "logfile")]
    assert runs[0].event_id == real.id and runs[0].incident_id == "inc-7"
    kinds = [json.loads(line)["event"]["kind"] for line in log.read_text().splitlines()]
    assert kinds == ["rollback", "test"]


# ------------------------------------------------------------------------------- a third-party repair target

REPAIR_EXAMPLE = REPO / "examples" / "timeguard-repair-example"
DAY = 86_400.0
GOOD_VERDICT = {"status": "OK", "offset_s": 0.01, "offset_lo_s": 0.0, "offset_hi_s": 0.02, "ntp_http_agree": True}


@pytest.fixture(scope="module")
def repair_site(tmp_path_factory) -> Path:
    """examples/timeguard-repair-example installed by pip into its own --target directory."""
    target = pip_install(REPAIR_EXAMPLE, tmp_path_factory.mktemp("repair-plugin"))
    assert list(target.glob("timeguard_repair_example-0.1.0.dist-info"))
    return target


def schedule(path: Path, now: float) -> dict:
    """A schedule a clock 180 days ahead left behind: two future stamps, one past, one unreadable."""
    jobs = {"backup": {"last_run": now - 3600, "every_s": 86400}, "report": {"last_run": now + 180 * DAY},
            "nightly": {"last_run": now + 30 * DAY}, "broken": {"last_run": "yesterday"}}
    path.write_text(json.dumps({"jobs": jobs}))
    return jobs


def repair_config(tmp_path: Path, hooks: str = "") -> Path:
    path = tmp_path / "timeguard.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n" + (f"hooks:\n{textwrap.indent(hooks, '  ')}" if hooks else ""))
    return path


def test_the_repair_example_runs_through_timeguard_repair_dry_run_apply_and_undo(repair_site, tmp_path):
    """`timeguard repair example` exists because the package is installed: dry run, apply (undo recorded in the
    journal, keyed by the target), undo (the record names the file), and refusal of what it cannot read."""
    sched = tmp_path / "schedule.json"
    now = time.time()
    jobs = schedule(sched, now)
    before = sched.read_bytes()
    config = repair_config(tmp_path)
    base = ("repair", "example", "--config", str(config), "--schedule-file", str(sched), "--trust-local-clock")

    dry = timeguard(*base, "--dry-run", path=[repair_site], cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "--trust-local-clock: assuming this host's clock is right" in dry.stderr and "schedule file" in dry.stderr
    table = dry.stdout.splitlines()
    assert table[0].split()[:2] == ["ITEM", "FIELD"]
    assert sorted(line.split()[0] for line in table[1:3]) == ["nightly", "report"]
    assert "values it cannot read" in dry.stdout and "broken last_run 'yesterday'" in dry.stdout
    as_json = json.loads(timeguard(*base, "--dry-run", "--json", path=[repair_site], cwd=tmp_path).stdout)
    assert as_json["schedule_file"] == str(sched) and as_json["counts"] == {"last_run": 2}
    future = ("report", "nightly")
    assert {c["item"]: c["old_s"] for c in as_json["changes"]} == {n: jobs[n]["last_run"] for n in future}
    assert sched.read_bytes() == before  # a dry run changes nothing

    applied = timeguard(*base, path=[repair_site], cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "repaired: 2 value(s), 1 round(s)" in applied.stdout
    incident = applied.stdout.rsplit("undo: timeguard repair undo ", 1)[1].split()[0]
    after = json.loads(sched.read_text())["jobs"]
    for name in ("report", "nightly"):
        assert now <= after[name]["last_run"] <= time.time()
    assert after["backup"] == jobs["backup"] and after["broken"] == jobs["broken"]  # past and unreadable: as they were
    again = timeguard(*base, path=[repair_site], cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.startswith("nothing to repair")  # idempotent

    from timeguard.repair.undo import UndoLog
    from timeguard.store.journal import Journal

    with Journal.in_state_dir(tmp_path / "state") as journal:
        records = UndoLog(journal).records(incident)
    assert {(r["target"], r["fingerprint"], r["item"], r["field"]) for r in records} == {
        ("example", f"file:{sched}", name, "last_run") for name in ("report", "nightly")}

    undo = ("repair", "undo", incident, "--config", str(config))
    would = timeguard(*undo, "--dry-run", path=[repair_site], cwd=tmp_path)
    assert would.returncode == 0, would.stderr
    assert sorted(line.split()[2] for line in would.stdout.splitlines()) == ["nightly", "report"]
    assert json.loads(sched.read_text())["jobs"] == after
    restored = timeguard(*undo, path=[repair_site], cwd=tmp_path)
    assert restored.returncode == 0, restored.stderr
    assert json.loads(sched.read_text())["jobs"] == jobs  # every old value back, exactly
    assert "nothing left to undo" in timeguard(*undo, path=[repair_site], cwd=tmp_path).stdout
    unknown = timeguard("repair", "undo", "no-such-incident", "--config", str(config), path=[repair_site],
                        cwd=tmp_path)
    assert unknown.returncode == 1 and "no repair recorded for incident no-such-incident" in unknown.stderr

    # A file it cannot parse is refused in one line and left byte for byte as it was.
    sched.write_text('{"jobs": {"report": {"last_run": 1e12}')
    broken = sched.read_bytes()
    bad = timeguard(*base, path=[repair_site], cwd=tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith(f"timeguard repair: {sched}: not JSON")
    assert "Traceback" not in bad.stderr and sched.read_bytes() == broken

    # Without the package the target does not exist: a usage error naming the built-in ones (3: the `repair`
    # parser is the top-level, Nagios-style one; its subcommands' own usage errors exit 2).
    gone = timeguard(*base, path=[], cwd=tmp_path)
    assert gone.returncode == 3 and "invalid choice: 'example'" in gone.stderr and "celery-beat" in gone.stderr


@pytest.fixture
def repair_kinds(repair_site):
    """The example's target kind, found in this process through its entry point."""
    from timeguard.repair import target

    sys.path.insert(0, str(repair_site))
    target._kinds = None
    yield target.kinds()
    sys.path.remove(str(repair_site))
    target._kinds = None
    for name in [m for m in sys.modules if m.startswith("timeguard_repair_example")]:
        del sys.modules[name]


def test_the_repair_example_through_the_generic_hook(repair_kinds, tmp_path):
    """`type: repair, target: example`: options checked (with the evidence options the hook adds), the daemon's
    audit finds the future stamps, the repair runs only with evidence and records its undo by target."""
    from timeguard.repair.hook import RepairHook
    from timeguard.repair.undo import UndoLog
    from timeguard.store.journal import Journal

    assert repair_kinds["example"].kind is not None and repair_kinds["celery_beat"].kind is not None
    with pytest.raises(HookConfigError) as info:
        RepairHook.from_config("s", {"target": "example", "schedule_file": "relative.json", "max_offset_s": math.nan,
                                     "stop_command": ["true"], "colour": 1})
    assert [k for k, _ in info.value.problems] == ["colour", "schedule_file", "max_offset_s", "stop_command"]
    with pytest.raises(HookConfigError, match="unknown repair target 'exampel'"):
        RepairHook.from_config("s", {"target": "exampel"})
    with pytest.raises(HookConfigError, match="must not exceed tolerance_s"):
        RepairHook.from_config("s", {"target": "example", "schedule_file": "/x.json", "tolerance_s": 5,
                                     "max_offset_s": 10})

    sched = tmp_path / "schedule.json"
    now = time.time()
    jobs = schedule(sched, now)
    hook = RepairHook.from_config("sched", {"target": "example", "schedule_file": str(sched)})
    assert hook.default_on == {EventKind.ROLLBACK, EventKind.ROLLBACK_WHILE_DOWN, EventKind.FUTURE_STATE_FOUND}
    with Journal(tmp_path / "journal.sqlite") as journal:
        def context(verdict, dry_run=False):
            return HookContext(dry_run=dry_run, trusted_now=lambda: now, verdict=verdict, undo_log=UndoLog(journal),
                               hostname="h")

        found = hook.audit(context(GOOD_VERDICT))
        assert found.outcome.value == "found" and found.summary.startswith("2 value(s) in the future in ")
        assert "180 days ahead" in found.summary and "1 value(s) it cannot read" in found.summary
        spoofed = {**GOOD_VERDICT, "offset_s": -180 * DAY, "offset_lo_s": -180 * DAY - 1, "offset_hi_s": -180 * DAY}
        refused = hook.handle(event(), context(spoofed))
        assert refused.status is HookStatus.SKIPPED and "ahead of the sources" in refused.summary
        dry = hook.handle(event(), context(GOOD_VERDICT, dry_run=True))
        assert dry.status is HookStatus.SKIPPED and dry.summary.startswith("dry run: would change 2 timestamp(s)")
        assert json.loads(sched.read_text())["jobs"] == jobs
        done = hook.handle(event(), context(GOOD_VERDICT))
        assert done.status is HookStatus.CHANGED, done.summary
        assert done.summary.startswith(f"repaired {sched}: 2 value(s) in 1 round(s)")
        assert {r["item"] for r in UndoLog(journal).records("inc-7", target="example")} == {"report", "nightly"}
        assert hook.audit(context(GOOD_VERDICT)).outcome.value == "clean"
    after = json.loads(sched.read_text())["jobs"]
    assert after["report"]["last_run"] == after["nightly"]["last_run"] == now


@pytest.mark.parametrize("head", ["- type: repair\n  target: example\n", "- type: example\n"])
def test_a_repair_hook_for_the_example_is_validated_by_config_validate(repair_site, tmp_path, head):
    """`type: repair` + `target: example`, or `type: example`: the target's one entry point is enough (no hook
    entry point) for its options and the evidence options to be checked, listed and in the schema; without the
    package the type is unknown."""
    config = repair_config(tmp_path, f"{head}  name: sched\n  schedule_file: {tmp_path}/schedule.json\n"
                                     "  tolerance_s: .nan\n")
    line = 4 + head.count("\n") + 1
    proc = timeguard("config", "validate", str(config), path=[repair_site], cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{config}:{line}: hooks[0].tolerance_s: must be a finite number from 0 to 31622400 (got nan)" in proc.stderr
    config.write_text(config.read_text().replace("  tolerance_s: .nan\n", "  max_offset_s: 0.5\n"))
    proc = timeguard("config", "validate", str(config), path=[repair_site], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = timeguard("hooks", "list", "--config", str(config), "--json", path=[repair_site], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "example" in listed.stdout
    schema = json.loads(timeguard("config", "schema", path=[repair_site], cwd=tmp_path).stdout)
    assert "example" in json.dumps(schema)
    missing = timeguard("config", "validate", str(config), path=[], cwd=tmp_path)
    assert missing.returncode == 1
    assert re.search(r"unknown (hook type|repair target) 'example' \(installed: ", missing.stderr), missing.stderr

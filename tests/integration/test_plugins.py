"""The proof that a third party can add a hook without touching timeguard: examples/timeguard-hook-example is
installed with pip into a directory of its own, found through its entry point by a separate `timeguard`
process, validated, listed, and run — alone, next to a plugin that fails to import, and against a second
package that registers the same name."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
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
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    # A copy: pip builds in the source tree, and its build/ and *.egg-info must not land in the repository.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-deps", "--target",
           str(target), str(source)]
    if _venv_builds_wheels():
        cmd[4:4] = ["--no-build-isolation", "--no-index"]  # offline: the venv's setuptools builds it
    # Otherwise pip builds it in an isolated environment with setuptools and wheel from the configured index.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    need(proc.returncode == 0, f"pip could not install the example plugin: {(proc.stdout + proc.stderr)[-2000:]}")
    assert list(target.glob("timeguard_hook_example-0.1.0.dist-info"))
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
    return HookContext(dry_run=dry_run, trusted_now=lambda: 1_700_086_401.0, verdict={"status": "OK"}, journal=None,
                       hostname="h")


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
    d = Dispatcher([spec], journal=None, recorder=journal, trusted_now=lambda: 1_700_086_401.0,
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

"""The hook-type registry with fake entry points (certbot's rules: sorted, duplicates refused naming both
packages, a plugin that fails to import reported without stopping the others), and `timeguard hooks list`
built on it."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from timeguard.cli import main as cli
from timeguard.events import EventKind
from timeguard.hooks import listing, registry
from timeguard.hooks.api import HookConfigError, HookResult, convert_options, option
from timeguard.hooks.registry import GROUP, UnknownHookType


class GoodHook:
    default_on: ClassVar[frozenset[EventKind]] = frozenset({EventKind.ROLLBACK})

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any]) -> GoodHook:
        if "url" not in options:
            raise HookConfigError([("url", "is required")])
        return cls(name)

    def handle(self, event, ctx) -> HookResult:
        return HookResult.ok("done")


class OtherHook(GoodHook):
    default_on: ClassVar[frozenset[EventKind]] = frozenset({EventKind.FORWARD_JUMP, EventKind.RECOVERED})


class FamilyHook(GoodHook):
    """Stands for a type per member: ``alpha`` usable, ``broken`` not, ``good`` shadowed by an entry point."""

    @classmethod
    def family(cls) -> dict[str, tuple[Any, str | None]]:
        return {"alpha": (OtherHook, None), "broken": (None, "its target failed to import"), "good": (OtherHook, None)}


class BrokenFamilyHook(GoodHook):
    @classmethod
    def family(cls) -> dict[str, tuple[Any, str | None]]:
        raise RuntimeError("cannot list")


def not_a_hook_type() -> None:
    """An entry point that names something without from_config."""


@dataclass(frozen=True)
class FakeDist:
    name: str
    version: str = "1.0"

    @property
    def metadata(self) -> dict[str, str]:
        return {"Name": self.name}


class FakeEntryPoint:
    """What registry reads of an entry point: name, value, dist and load() (the real loading)."""

    def __init__(self, name: str, value: str, dist: FakeDist | None) -> None:
        self.name, self.value, self.dist = name, value, dist

    def load(self) -> Any:
        return importlib.metadata.EntryPoint(self.name, self.value, GROUP).load()


def ep(name: str, attr: str, dist: str | None = "acme-hooks", version: str = "1.0") -> FakeEntryPoint:
    value = attr if ":" in attr else f"{__name__}:{attr}"
    return FakeEntryPoint(name, value, FakeDist(dist, version) if dist else None)


@pytest.fixture
def installed(monkeypatch):
    """Install a list of fake entry points as the whole group; the registry re-reads them."""

    def install(*eps: FakeEntryPoint) -> dict[str, registry.TypeEntry]:
        def entry_points(**selection: Any) -> list[FakeEntryPoint]:
            assert selection == {"group": GROUP}
            return list(eps)

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        return registry.discover(refresh=True)

    yield install
    registry._cache.clear()  # the next test discovers the real installation again


@pytest.fixture
def broken_module(tmp_path, monkeypatch):
    """An importable module that raises ImportError, as a plugin missing its own dependency does."""
    (tmp_path / "tg_broken_plugin.py").write_text(textwrap.dedent("""\
        X = 1
        raise ImportError("tg_broken_plugin needs libfoo >= 2")
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tg_broken_plugin"
    sys.modules.pop("tg_broken_plugin", None)


# -------------------------------------------------------------------------------------------- discovery


def test_types_are_sorted_by_name_whatever_order_they_are_found_in(installed):
    found = installed(ep("zulu", "GoodHook"), ep("alpha", "OtherHook"), ep("mike", "GoodHook"))
    assert list(found) == ["alpha", "mike", "zulu"]
    assert all(entry.loaded and entry.error is None for entry in found.values())
    assert found["alpha"].hook_type is OtherHook
    assert found["alpha"].distribution == "acme-hooks 1.0"
    assert found["alpha"].value == f"{__name__}:OtherHook"


def test_a_family_lists_its_members_beside_the_entry_points_which_win(installed):
    found = installed(ep("fam", "FamilyHook"), ep("good", "GoodHook"), ep("odd", "BrokenFamilyHook"))
    assert list(found) == sorted(found)
    assert found["alpha"].hook_type is OtherHook and found["alpha"].value == f"{__name__}:FamilyHook[alpha]"
    assert found["alpha"].distribution == "acme-hooks 1.0"
    assert found["good"].hook_type is GoodHook  # the entry point, not the family's member
    assert registry.find_type("alpha") is OtherHook
    with pytest.raises(UnknownHookType, match="hook type 'broken' is unusable: its target failed to import"):
        registry.find_type("broken")
    # a family that cannot list itself costs its members only, and says so
    assert found["odd"].loaded and "FamilyHook.family() failed: RuntimeError: cannot list" in found["odd:*"].error


def test_a_plugin_that_fails_to_import_is_reported_with_its_error_and_the_others_still_load(installed, broken_module):
    found = installed(ep("broken", f"{broken_module}:Hook", dist="tg-broken", version="0.3"),
                      ep("good", "GoodHook"))
    assert found["good"].loaded
    broken = found["broken"]
    assert not broken.loaded and broken.hook_type is None
    assert broken.distribution == "tg-broken 0.3"
    assert broken.error.startswith("failed to import tg_broken_plugin:Hook: ImportError: tg_broken_plugin needs "
                                   "libfoo >= 2 (")
    assert "tg_broken_plugin.py:2)" in broken.error  # where it failed
    assert broken.error.endswith("; update or uninstall tg-broken 0.3")


@pytest.mark.parametrize(("value", "error"), [
    ("tg_no_such_module:Hook", "failed to import tg_no_such_module:Hook: ModuleNotFoundError: No module named "
                               "'tg_no_such_module'"),
    (f"{__name__}:NoSuchClass", f"failed to import {__name__}:NoSuchClass: AttributeError:"),
    (f"{__name__}:not_a_hook_type", f"{__name__}:not_a_hook_type is not a timeguard hook type (it has no "
                                    "from_config classmethod)"),
])
def test_an_entry_point_that_names_no_hook_type_is_unusable_and_says_why(installed, value, error):
    found = installed(ep("odd", value), ep("good", "GoodHook"))
    assert not found["odd"].loaded and error in found["odd"].error
    assert found["good"].loaded
    with pytest.raises(UnknownHookType, match="hook type 'odd' is unusable: "):
        registry.find_type("odd")
    assert registry.find_type("good") is GoodHook


def test_two_packages_registering_the_same_name_are_both_refused_naming_both(installed):
    found = installed(ep("pager", "GoodHook", dist="pager-one", version="1.2"),
                      ep("pager", "OtherHook", dist="pager-two", version="0.9"), ep("good", "GoodHook"))
    pager = found["pager"]
    assert not pager.loaded
    assert pager.distribution == "pager-one 1.2 and pager-two 0.9"
    assert pager.error == ("duplicate hook type 'pager' from pager-one 1.2 and pager-two 0.9: "
                           "uninstall one of them")
    with pytest.raises(UnknownHookType, match=re.escape("pager-one 1.2 and pager-two 0.9")):
        registry.find_type("pager")
    assert found["good"].loaded


def test_the_same_registration_seen_twice_is_not_a_duplicate(installed):
    # One distribution found on two sys.path entries (an editable install next to its source tree).
    found = installed(ep("good", "GoodHook", dist="acme"), ep("good", "GoodHook", dist="acme"))
    assert found["good"].loaded


def test_an_entry_point_without_a_distribution_still_loads(installed):
    assert installed(ep("good", "GoodHook", dist=None))["good"].distribution == "unknown distribution"


def test_discovery_is_cached_until_refreshed(installed, monkeypatch):
    first = installed(ep("good", "GoodHook"))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [ep("other", "OtherHook")])
    assert registry.discover() is first
    assert list(registry.discover(refresh=True)) == ["other"]


def test_an_unknown_type_names_the_installed_ones(installed, broken_module):
    installed(ep("good", "GoodHook"), ep("broken", f"{broken_module}:Hook"), ep("alpha", "OtherHook"))
    with pytest.raises(UnknownHookType, match=r"unknown hook type 'slak' \(installed: alpha, good\)"):
        registry.find_type("slak")


def test_the_built_in_command_hook_is_registered_by_timeguard_itself():
    registry._cache.clear()
    entry = registry.discover(refresh=True)["command"]
    from timeguard.hooks.command import CommandHook

    assert entry.hook_type is CommandHook
    assert entry.distribution.startswith("timeguard ")
    assert entry.value == "timeguard.hooks.command:CommandHook"


# ---------------------------------------------------------------------------------------------- listing

CONFIG = """\
hooks:
  - type: good
    name: ops
    url: https://example.com/hook
    timeout_s: 3
  - type: good
    name: no-url
    on: [rollback, recovered]
  - type: broken
    name: pager
    dry_run: true
  - type: dup
    name: twice
  - type: slak
    name: typo
"""


@pytest.fixture
def zoo(installed, broken_module):
    return installed(ep("good", "GoodHook"), ep("broken", f"{broken_module}:Hook", dist="tg-broken", version="0.3"),
                     ep("dup", "GoodHook", dist="dup-a"), ep("dup", "OtherHook", dist="dup-b"))


def test_hooks_list_shows_every_configured_hook_with_its_state_even_when_the_config_is_invalid(zoo, tmp_path):
    path = tmp_path / "timeguard.yaml"
    path.write_text(CONFIG)
    result = listing.collect(path)
    assert result.readable and result.config_problems == []
    by_name = {h.name: h for h in result.hooks}
    assert [h.name for h in result.hooks] == ["ops", "no-url", "pager", "twice", "typo"]

    ops = by_name["ops"]
    assert (ops.state, ops.type, ops.on, ops.on_default, ops.timeout_s, ops.dry_run) == (
        "ready", "good", ["rollback"], True, 3, False)
    assert by_name["no-url"].state == "unusable" and by_name["no-url"].on == ["rollback", "recovered"]
    assert [str(p) for p in by_name["no-url"].problems] == ["line 6: hooks[1].url: is required"]
    pager = by_name["pager"]
    assert pager.state == "unusable" and pager.dry_run is True and pager.on == []  # its type's default: unknown
    assert "failed to import tg_broken_plugin:Hook: ImportError" in pager.problems[0].message
    assert "duplicate hook type 'dup' from dup-a 1.0 and dup-b 1.0" in by_name["twice"].problems[0].message
    assert "unknown hook type 'slak' (installed: good)" in by_name["typo"].problems[0].message
    assert result.exit_code == 1

    types = {t.name: t for t in result.types}
    assert [t.name for t in result.types] == ["broken", "dup", "good"]
    assert (types["good"].state, types["good"].used_by, types["good"].default_on) == (
        "loaded", ["ops", "no-url"], ["rollback"])
    assert types["broken"].state == "failed" and types["broken"].distribution == "tg-broken 0.3"
    assert types["dup"].state == "duplicate" and types["dup"].used_by == ["twice"]


def test_hooks_list_text_reads_like_certbot_plugins(zoo, tmp_path, capsys):
    path = tmp_path / "timeguard.yaml"
    path.write_text(CONFIG)
    assert cli.main(["hooks", "list", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"Configured hooks ({path}):"
    assert lines[1].split() == ["ops", "good", "ready", "on:", "rollback", "(default)", "timeout", "3", "s"]
    assert lines[2].split()[:3] == ["no-url", "good", "UNUSABLE"]
    assert lines[3].strip() == "line 6: hooks[1].url: is required"
    assert "dry run" in next(line for line in lines if line.lstrip().startswith("pager"))
    assert "Hook types (entry-point group timeguard.hooks):" in lines
    good = next(line for line in lines if line.lstrip().startswith("good "))
    assert good.split() == ["good", "acme-hooks", "1.0", "loaded", f"{__name__}:GoodHook"]
    assert any("FAILED" in line and "tg_broken_plugin needs libfoo" in line for line in lines)
    assert any("DUPLICATE" in line and "uninstall one of them" in line for line in lines)
    assert "used by: ops, no-url" in out


def test_hooks_list_json(zoo, tmp_path, capsys):
    path = tmp_path / "timeguard.yaml"
    path.write_text(CONFIG)
    assert cli.main(["hooks", "list", "--json", "--config", str(path)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["config"] == str(path) and data["readable"] is True
    assert [(h["name"], h["state"]) for h in data["hooks"]] == [
        ("ops", "ready"), ("no-url", "unusable"), ("pager", "unusable"), ("twice", "unusable"), ("typo", "unusable")]
    assert data["hooks"][1]["problems"] == [{"path": "hooks[1].url", "message": "is required", "line": 6}]
    assert {t["name"]: t["state"] for t in data["types"]} == {"broken": "failed", "dup": "duplicate", "good": "loaded"}


def test_hooks_list_exits_0_when_every_hook_is_ready_and_notes_other_config_errors(zoo, tmp_path, capsys):
    path = tmp_path / "timeguard.yaml"
    path.write_text("thresholds: {warning_s: -1}\nhooks:\n  - {type: good, name: ops, url: x}\n")
    assert cli.main(["hooks", "list", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "and the configuration has 1 other error: the daemon will not start with it" in out
    result = listing.collect(path)
    assert [p.path for p in result.config_problems] == ["thresholds.warning_s"]


def test_hooks_list_without_hooks_or_without_a_readable_config(zoo, tmp_path, capsys):
    assert listing.collect(None).hooks == [] and listing.collect(None).exit_code == 0
    missing = tmp_path / "missing.yaml"
    assert cli.main(["hooks", "list", "--config", str(missing)]) == 1
    out = capsys.readouterr().out
    assert "cannot read the configuration:" in out and "cannot read the file" in out
    assert "Hook types (entry-point group timeguard.hooks):" in out  # the installed types are still listed
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("hooks: [\n")
    assert listing.collect(bad_yaml).readable is False
    not_a_list = tmp_path / "mapping.yaml"
    not_a_list.write_text("hooks: {type: good}\n")
    result = listing.collect(not_a_list)
    assert result.hooks == [] and result.exit_code == 1


# ------------------------------------------------------------------------------------- secrets of plugins


class TokenHook(GoodHook):
    """A plugin that reads its secret with timeguard's helper, and declares its options."""

    OPTIONS: ClassVar[set[str]] = {"token", "token_file", "token_env"}

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any]) -> TokenHook:
        from timeguard import secrets
        from timeguard.hooks.webhook import read_secret

        problems: list[tuple[str, str]] = []
        token = read_secret(options, "token", problems, inline_ok=True)
        if problems:
            raise HookConfigError(problems)
        if token is None:
            raise secrets.Unresolved("token")
        return cls(name)


class BareHook(GoodHook):
    """A plugin that declares no options at all."""

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any]) -> BareHook:
        return cls(name)


@pytest.fixture
def token_types(installed):
    return installed(ep("token", "TokenHook"), ep("bare", "BareHook"))


def test_options_of_a_type_are_its_own_or_its_module_s():
    from timeguard.hooks.command import CommandHook
    from timeguard.hooks.slack import SlackHook
    from timeguard.repair.hook import CeleryBeatHook

    assert registry.options_of(TokenHook) == {"token", "token_file", "token_env"}
    assert "webhook_url_file" in registry.options_of(SlackHook)
    assert "database_url_env" in registry.options_of(CeleryBeatHook)  # its bound target's options
    assert "env" in registry.options_of(CommandHook)  # its Options dataclass
    assert registry.options_of(BareHook) is None
    module = type(sys)("tg_module_options_plugin")  # a plugin declaring them at module level, the older way
    module.OPTIONS = ("path", "fsync")
    module.Hook = type("Hook", (BareHook,), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    try:
        assert registry.options_of(module.Hook) == {"path", "fsync"}
    finally:
        del sys.modules[module.__name__]


@dataclass(frozen=True, slots=True)
class TypedOptions:
    port: int = option(lo=1, hi=65535, doc="where it listens")
    mode: str = option("fast", choices=("fast", "safe"), doc="how")
    token: str | None = option(None, secret=True, doc="the API token")


class TypedHook(GoodHook):
    """A plugin with typed options: timeguard's converter checks them, config gives path and line."""

    Options = TypedOptions

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any]) -> TypedHook:
        _, problems = convert_options(TypedOptions, options, hook="typed")
        if problems:
            raise HookConfigError(problems)
        return cls(name)


def test_a_plugin_s_typed_options_get_config_s_checks_and_a_schema(installed, tmp_path):
    from timeguard import config

    installed(ep("typed", "TypedHook"))
    path = tmp_path / "timeguard.yaml"
    path.write_text("hooks:\n  - type: typed\n    name: t\n    port: 70000\n    mdoe: safe\n"
                    "  - {type: typed, name: u, port: 80, mode: slow, token: inline}\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(path, hook_types=registry.HOOK_TYPES)
    assert [(p.path, p.line, p.message) for p in info.value.problems] == [
        ("hooks[0].port", 4, "must be ≤ 65535, not 70000"),
        ("hooks[0].mdoe", 5, "unknown option of a typed hook (did you mean 'mode'?)"),
        ("hooks[1].mode", 6, "must be one of fast, safe, not 'slow'"),
    ]
    assert registry.options_of(TypedHook) == {"port", "mode", "token_env", "token_file"}
    schema = registry.HOOK_TYPES.schemas()["typed"]
    assert schema["required"] == ["port"] and schema["properties"]["mode"]["enum"] == ["fast", "safe"]


def test_a_plugin_s_unreadable_secret_is_a_warning_in_hooks_list_and_an_error_for_the_daemon(
        token_types, tmp_path, capsys, monkeypatch):
    from timeguard import config

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    path = tmp_path / "timeguard.yaml"
    path.write_text("hooks:\n  - {type: token, name: t, token_file: /nonexistent/cred/token}\n"
                    "  - {type: token, name: env, token_env: TG_REGISTRY_UNSET}\n")
    assert cli.main(["hooks", "list", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["t", "token", "ready"]
    assert lines[2].strip().startswith("warning: line 2: hooks[0].token_file: cannot read /nonexistent/cred/token")
    assert lines[4].strip().startswith("warning: line 3: hooks[1].token_env: environment variable TG_REGISTRY_UNSET")
    with pytest.raises(config.ConfigError) as info:
        config.load(path, hook_types=registry.HOOK_TYPES)
    assert [p.path for p in info.value.problems] == ["hooks[0].token_file", "hooks[1].token_env"]


def test_a_plugin_s_inline_secret_is_warned_with_the_way_out_it_declares(token_types, tmp_path):
    from timeguard import config

    path = tmp_path / "timeguard.yaml"
    path.write_text("hooks:\n  - {type: token, name: t, token: s3cr3t-value}\n"
                    "  - {type: bare, name: b, url: x, api_key: s3cr3t-value}\n")
    warnings = {w.path: w for w in config.load(path, hook_types=registry.HOOK_TYPES).warnings}
    assert "token_file (a systemd credential" in warnings["hooks[0].token"].message
    assert "see its documentation" in warnings["hooks[1].api_key"].message
    result = listing.collect(path)
    assert [[w.path for w in h.warnings] for h in result.hooks] == [["hooks[0].token"], ["hooks[1].api_key"]]
    assert "s3cr3t" not in json.dumps(result.to_dict())


def test_hooks_list_refuses_an_alias_bomb_at_once(token_types, tmp_path):
    path = tmp_path / "timeguard.yaml"
    rows = ['a0: &a0 "x"'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 13)]
    path.write_text("\n".join(rows) + "\nhooks: [{type: bare, name: b, url: *a12}]\n")
    result = listing.collect(path)  # 10**12 values if expanded: it returns because nothing was
    assert result.readable is False and "alias bomb" in result.config_problems[0].message

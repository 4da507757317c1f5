from __future__ import annotations

from pathlib import Path

import pytest

from timeguard import config

REPO = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "t.yaml")
    return str(info.value).splitlines()


def test_embedded_defaults_load_and_match_the_documented_example():
    cfg = config.load(None)
    assert len(cfg.sources.ntp) >= 4 and len(cfg.sources.http) >= 3
    assert len({s.host.split(".")[-2] for s in cfg.sources.ntp}) >= 4  # several operators
    assert all(s.url.startswith("https://") for s in cfg.sources.http)
    assert cfg.thresholds.warning_s < cfg.thresholds.critical_s
    # config generate prints config/timeguard.yaml: one text, two places
    assert (REPO / "config" / "timeguard.yaml").read_text() == config.default_text()


def test_user_file_merges_over_defaults_and_lists_replace(tmp_path):
    path = tmp_path / "tg.yaml"
    path.write_text("thresholds:\n  warning_s: 0.1\nsources:\n  ntp:\n    - {host: 127.0.0.1, port: 11123}\n")
    cfg = config.load(path)
    assert cfg.thresholds.warning_s == 0.1
    assert cfg.thresholds.critical_s == config.load(None).thresholds.critical_s
    assert [(s.host, s.port) for s in cfg.sources.ntp] == [("127.0.0.1", 11123)]
    assert cfg.sources.http == config.load(None).sources.http
    assert cfg.origin == str(path)


def test_every_error_at_once_with_key_path_and_line():
    text = """\
sources:
  ntp:
    - host: a
      port: 99999
    - hots: b
  http:
    - url: http://plain.example/
    - url: ftp://x/
thresholds:
  warning_s: 2
  critical_s: 1
tresholds: {}
timeout_s: abc
ntp:
  samples: 1.5
consensus:
  min_sources: 0
"""
    lines = problems(text)
    assert lines == [
        "t.yaml:4: sources.ntp[0].port: must be ≤ 65535, not 99999",
        "t.yaml:5: sources.ntp[1].host: is required",
        "t.yaml:5: sources.ntp[1].hots: unknown key (did you mean 'host'?)",
        "t.yaml:7: sources.http[0].url: plain http:// can be forged by anyone on the path; use https://, "
        "or set allow_plain_http: true for a network you trust",
        "t.yaml:8: sources.http[1].url: must be an https:// URL with a host, not 'ftp://x/'",
        "t.yaml:11: thresholds.critical_s: must be greater than thresholds.warning_s (2)",
        "t.yaml:12: tresholds: unknown key (did you mean 'thresholds'?)",
        "t.yaml:13: timeout_s: must be a number of seconds, not text 'abc'",
        "t.yaml:15: ntp.samples: must be a whole number, not a number 1.5",
        "t.yaml:17: consensus.min_sources: must be ≥ 1, not 0",
    ]


#: Bad input and the message naming it (tests/unit/test_config_schema.py checks the schema refuses these too).
BAD_INPUT = [
    ("timeout_s: [", "t.yaml:1: (top level): not valid YAML"),
    ("timeout_s: 1\ntimeout_s: 2\n", "t.yaml:2: timeout_s: duplicate key"),
    ("- a\n- b\n", "t.yaml:1: (top level): must be a mapping of keys, not a list"),
    ("timeout_s: .nan\n", "t.yaml:1: timeout_s: must be a finite number"),
    ("timeout_s: -1\n", "t.yaml:1: timeout_s: must be > 0, not -1"),
    ("timeout_s: true\n", "t.yaml:1: timeout_s: must be a number of seconds, not true/false True"),
    ("sources: {ntp: {host: a}}\n", "t.yaml:1: sources.ntp: must be a list, not a mapping"),
    ("sources: {ntp: [{host: ''}]}\n", "t.yaml:1: sources.ntp[0].host: must be non-empty text"),
    ("sources: {ntp: [{host: a}, {host: a}]}\n", "same source as sources.ntp[0] (a:123)"),
    ("sources: {ntp: [], http: []}\n", "consensus.min_sources: is 2 but only 0 sources are configured"),
    ("sources: {http: [{url: 'https://x/', ca_bundle: /nonexistent.pem}]}\n",
     "sources.http[0].ca_bundle: cannot read the CA bundle '/nonexistent.pem'"),
    ("sources: {http: [{url: 'https://x/', allow_plain_http: yes please}]}\n",
     "sources.http[0].allow_plain_http: must be true or false"),
    ("? [a, b]\n: 1\n", "keys must be names"),
    ("sources: {ntp: [{host: a, operator: ''}]}\n", "t.yaml:1: sources.ntp[0].operator: must be non-empty text"),
    ("sources: {http: [{url: 'https://x/', operator: 7}]}\n", "sources.http[0].operator: must be"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_INPUT)
def test_bad_input_is_named_precisely(text, expected):
    assert any(expected in line for line in problems(text)), problems(text)


def test_a_sources_operator_is_configured_or_its_hosts_last_two_labels():
    """The evidence rule counts authenticated sources of independent operators (issue 13)."""
    cfg = config.loads("sources: {ntp: [{host: ntp1.example.org}, {host: 10.0.0.1, operator: Example.ORG}],\n"
                       "          http: [{url: 'https://www.cloudflare.com/'}, {url: 'https://[::1]:8443/'},\n"
                       "                 {url: 'https://time.example.net/', operator: cloudflare.com}]}")
    assert [s.owner for s in cfg.sources.ntp] == ["example.org", "example.org"]
    assert [s.owner for s in cfg.sources.http] == ["cloudflare.com", "::1", "cloudflare.com"]


def test_plain_http_allowed_explicitly():
    cfg = config.loads("sources: {http: [{url: 'http://127.0.0.1:8080/', allow_plain_http: true}]}")
    assert cfg.sources.http[0].allow_plain_http is True


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read the file: No such file"):
        config.load(tmp_path / "missing.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(config.ConfigError, match="not UTF-8 text"):
        config.load(binary)


def test_empty_file_is_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert config.load(empty) == config.load(None)


def test_discovery_order(tmp_path, monkeypatch):
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.yaml")
    assert config.discover(None) is None
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path)
    assert config.discover(None) == tmp_path
    monkeypatch.setenv(config.ENV_VAR, "/from/env.yaml")
    assert config.discover(None) == Path("/from/env.yaml")
    assert config.discover("/explicit.yaml") == Path("/explicit.yaml")


def test_to_dict_round_trips():
    import yaml

    cfg = config.load(None)
    assert config.loads(yaml.safe_dump(config.to_dict(cfg))) == cfg


# ------------------------------------------------- config validates its own keys; hooks' options by their types

BAD_HOOKS = """\
thresholds: {warning_s: 0.5}
hooks:
  - type: command
    name: fix
    command: [no-such-program-tg]
  - type: no-such-type
    name: other
"""


def test_validating_the_config_imports_no_hook_or_plugin_module():
    """config.loads checks its own keys (a hook's type, name, on, timeout_s, dry_run included) without importing
    timeguard.hooks or any plugin: the hook types check their options only when the caller hands them in."""
    import subprocess
    import sys

    code = ("import sys, timeguard.config as c\n"
            f"cfg = c.loads({BAD_HOOKS!r}, 't.yaml')\n"
            "assert [h.name for h in cfg.hooks] == ['fix', 'other']\n"
            "print(sorted(m for m in sys.modules if m.startswith('timeguard.hooks') or 'entry_points' in m))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_hook_types_report_each_hooks_options_with_path_and_line():
    from timeguard.hooks.registry import HOOK_TYPES

    with pytest.raises(config.ConfigError) as info:
        config.loads(BAD_HOOKS, "t.yaml", hook_types=HOOK_TYPES)
    found = {(p.path, p.line) for p in info.value.problems}
    assert found == {("hooks[0].command[0]", 5), ("hooks[1].type", 6)}, info.value.problems
    assert "unknown hook type 'no-such-type'" in str(info.value)


@pytest.mark.parametrize("command", [["config", "validate"], ["status"], ["hooks", "list"]])
def test_the_command_line_still_checks_the_hooks_options(tmp_path, capsys, command):
    from timeguard.cli.main import main

    path = tmp_path / "t.yaml"
    path.write_text(f"state_dir: {tmp_path}\n" + BAD_HOOKS)
    try:
        code = main([*command, "--config", str(path)])
    except SystemExit as exc:  # status: load_config_or_exit
        code = exc.code
    assert code == 1
    err = capsys.readouterr()
    assert "hooks[0].command[0]" in err.out + err.err and "no-such-type" in err.out + err.err

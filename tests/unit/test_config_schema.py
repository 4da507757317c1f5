"""``timeguard config schema``: the JSON Schema editors read comes from the same dataclasses and option specs the
converter checks, so it accepts what ``config validate`` accepts and refuses what it refuses — except the checks a
schema cannot express, which are listed here by name."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_config import BAD_INPUT
from timeguard import config
from timeguard.hooks.registry import HOOK_TYPES

REPO = Path(__file__).resolve().parents[2]

#: Problems only ``config validate`` finds: YAML itself, values that depend on each other or on the machine, and
#: NaN (JSON has none: its comparisons are all false, so a bound cannot refuse it).
VALIDATE_ONLY = ("not valid YAML", "duplicate key", "keys must be names", "finite number", "same source as",
                 "sources are configured", "cannot read the CA bundle")


class Yaml12(yaml.SafeLoader):
    """YAML as an editor's language server reads it (1.2 booleans): ``on:`` is a key, not true."""


Yaml12.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Yaml12.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                             list("tTfF"))


def load(text: str) -> Any:
    return yaml.load(text, Loader=Yaml12)  # noqa: S506 - a SafeLoader


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = config.json_schema(HOOK_TYPES.schemas())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def accepts(validator: jsonschema.Draft202012Validator, data: Any) -> bool:
    return not list(validator.iter_errors(data))


def test_the_command_prints_a_draft_2020_12_schema(capsys):
    from timeguard.cli.main import main

    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    # every section of the configuration, and every built-in hook type's options with their docs
    assert set(schema["properties"]) == {f for f in config.Config.__dataclass_fields__ if f not in ("origin",
                                                                                                    "warnings")}
    branches = {b["if"]["properties"]["type"]["const"]: b["then"]
                for b in schema["properties"]["hooks"]["items"]["allOf"]}
    assert {"command", "webhook", "slack", "repair", "celery_beat"} <= set(branches)
    assert branches["command"]["properties"]["kill_grace_s"]["maximum"] == 60
    assert branches["webhook"]["properties"]["format"]["enum"] == ["json", "alertmanager"]
    assert "secret" not in branches["webhook"]["properties"]  # refused inline: only its _env/_file keys
    assert {"secret_env", "secret_file"} <= set(branches["webhook"]["properties"])
    assert "webhook_url" in branches["slack"]["properties"]  # Slack's may be inline
    assert all(p.get("description") for p in branches["command"]["properties"].values())


def test_the_default_configuration_is_valid(validator):
    assert accepts(validator, load((REPO / "config" / "timeguard.yaml").read_text()))
    assert accepts(validator, load(config.default_text()))


def documented_examples() -> list[tuple[str, str]]:
    """The READMEs' YAML blocks, and the hooks config/timeguard.yaml shows in comments."""
    defaults = (REPO / "config" / "timeguard.yaml").read_text()
    commented = defaults[defaults.index("For example:\n"):defaults.index("\nhooks:")].splitlines()[1:]
    found = [("config/timeguard.yaml#hooks", "hooks:\n" + "\n".join(line[2:] for line in commented))]
    for doc in [REPO / "README.md", *sorted((REPO / "examples").glob("*/README.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            found.append((f"{doc.relative_to(REPO)}#{i}", block))
    return found


@pytest.mark.parametrize(("where", "text"), documented_examples(), ids=[w for w, _ in documented_examples()])
def test_every_documented_example_that_validates_matches_the_schema(validator, where, text):
    try:
        config.loads(text, where, resolve_secrets=False)  # without the hook types: a plugin may not be installed
    except config.ConfigError as exc:
        pytest.skip(f"not a valid configuration here: {exc}")
    assert accepts(validator, load(text)), list(validator.iter_errors(load(text)))


def test_the_documented_examples_are_mostly_valid():
    valid = 0
    for where, text in documented_examples():
        try:
            config.loads(text, where, resolve_secrets=False)
            valid += 1
        except config.ConfigError:
            pass
    assert valid >= 4  # the test above is not all skips


@pytest.mark.parametrize(("text", "expected"), BAD_INPUT)
def test_the_config_tests_bad_input_is_refused_unless_only_validate_can_tell(validator, text, expected):
    try:
        data = load(text)
    except yaml.YAMLError:
        assert any(k in expected for k in VALIDATE_ONLY)
        return
    if any(k in expected for k in VALIDATE_ONLY):
        return  # the reason is in VALIDATE_ONLY: config validate's alone
    assert not accepts(validator, data), expected


BAD_HOOK_OPTIONS = [
    {"type": "command", "name": "c", "command": ["true"], "shell": "yes"},
    {"type": "command", "name": "c", "command": ["true"], "kill_grace_s": 0},
    {"type": "command", "name": "c", "command": ["true"], "kill_grace_s": 61},
    {"type": "command", "name": "c", "command": ["true"], "comand": ["x"]},
    {"type": "command", "name": "c", "command": ["true"], "env": ["A=1"]},
    {"type": "command", "name": "c", "command": []},
    {"type": "command", "name": "c"},
    {"type": "webhook", "name": "w", "url": "https://a.example/", "format": "xml"},
    {"type": "webhook", "name": "w", "url": "https://a.example/", "request_timeout_s": 0},
    {"type": "webhook", "name": "w", "url": "https://a.example/", "urll": 1},
    {"type": "webhook", "name": "w", "url": "https://a.example/", "secret": "whsec_inline"},
    {"type": "webhook", "name": "w"},
    {"type": "slack", "name": "s", "webhook_url_env": "X", "allow_plain_http": "no"},
    {"type": "repair", "name": "r", "stop_command": ["a"], "start_command": ["b"]},  # no target
    {"type": "celery_beat", "name": "r", "stop_command": "systemctl stop beat"},
    {"type": "celery_beat", "name": "r", "databse_url_env": "DB"},
    {"type": "command", "name": "c", "command": ["true"], "on": ["rolback"]},
    {"type": "command", "command": ["true"]},
]


@pytest.mark.parametrize("hook", BAD_HOOK_OPTIONS)
def test_bad_hook_options_are_refused_by_the_types_and_the_schema(validator, hook):
    text = yaml.safe_dump({"hooks": [hook]})
    with pytest.raises(config.ConfigError):
        config.loads(text, "t.yaml", resolve_secrets=False, hook_types=HOOK_TYPES)
    assert not accepts(validator, {"hooks": [hook]})


# Every section key with a scalar value: the converter and the schema agree on any value of any type. (Not
# thresholds and consensus, whose values are checked against each other and against the sources.)
SCALAR_KEYS = [
    (section, name) for section in ("ntp", "http", "daemon", "logging", "metrics")
    for name in getattr(config, {"ntp": "NtpOptions", "http": "HttpOptions", "daemon": "DaemonOptions",
                                 "logging": "LoggingOptions", "metrics": "MetricsOptions"}[section])
    .__dataclass_fields__
] + [("", "timeout_s"), ("", "state_dir")]

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
    st.sampled_from(["", " ", "info", "json", "127.0.0.1:9958", "/x.prom", "/var/lib/timeguard", "debug"]),
    st.text(max_size=5), st.lists(st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(SCALAR_KEYS), value=VALUES)
def test_the_schema_and_the_converter_agree_on_any_value(validator, key, value):
    section, name = key
    data = {section: {name: value}} if section else {name: value}
    if section == "metrics" and isinstance(value, str):
        return  # listen/textfile have formats only validate checks (HOST:PORT, *.prom)
    try:
        config.loads(yaml.safe_dump(data), "t.yaml")
        valid = True
    except config.ConfigError:
        valid = False
    assert accepts(validator, data) == valid, (data, valid)


def test_nan_is_the_one_number_only_validate_refuses(validator):
    assert accepts(validator, {"timeout_s": math.nan})  # JSON has no NaN: a schema's bounds never see one
    with pytest.raises(config.ConfigError, match="finite number"):
        config.loads("timeout_s: .nan\n")



SHELVE = {"type": "celery_shelve", "name": "s", "schedule_file": "/srv/app/celerybeat-schedule",
          "python": "/usr/bin/python3", "beat_service": "beat.service"}


@pytest.mark.parametrize(("hook", "missing", "fix"), [
    ({k: v for k, v in SHELVE.items() if k != "schedule_file"}, "'schedule_file' is a required property",
     {"schedule_file": "/srv/app/celerybeat-schedule"}),
    ({k: v for k, v in SHELVE.items() if k != "python"}, "'python' is a required property",
     {"python": "/usr/bin/python3"}),
    ({k: v for k, v in SHELVE.items() if k != "beat_service"}, "beat_service",  # no way to stop beat
     {"stop_command": ["/bin/true"], "start_command": ["/bin/true"]}),
    ({"type": "apscheduler", "name": "a", "redis_url": "redis://127.0.0.1:6379/0", "python": "/usr/bin/python3",
      "stop_command": ["/bin/true"]}, "start_command", {"start_command": ["/bin/true"]}),
])
def test_each_repair_types_required_keys_are_flagged_by_the_schema(validator, hook, missing, fix):
    """An editor reading the schema marks a hook that lacks a key its type requires — as config validate does;
    with the key, both accept it."""
    with pytest.raises(config.ConfigError):
        config.loads(yaml.safe_dump({"hooks": [hook]}), "<t>", resolve_secrets=False, hook_types=HOOK_TYPES)
    errors = [e for top in validator.iter_errors({"hooks": [hook]}) for e in [top, *(top.context or [])]]
    assert any(missing in e.message for e in errors), [e.message for e in errors]
    complete = {"hooks": [{**hook, **fix}]}
    config.loads(yaml.safe_dump(complete), "<t>", resolve_secrets=False, hook_types=HOOK_TYPES)
    assert accepts(validator, complete), list(validator.iter_errors(complete))

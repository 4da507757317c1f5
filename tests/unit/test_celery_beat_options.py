"""The celery_beat target's typed options: the ``django:`` option's shape (checked without running anything), the
schema ``config schema``/``config generate`` show, and the command line's options over a configured hook's."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import yaml

from timeguard import config
from timeguard.cli import repair as repair_cli
from timeguard.hooks.api import HookConfigError
from timeguard.hooks.registry import HOOK_TYPES
from timeguard.repair import django_settings
from timeguard.repair.celery_beat import URL_ENV, CeleryBeatKind, CeleryBeatOptions
from timeguard.repair.hook import CeleryBeatHook, RepairHook
from timeguard.repair.target import RepairError

DJANGO = {"settings": "proj.settings", "python": "/srv/app/.venv/bin/python", "path": ["/srv/app"]}


def test_a_hook_with_only_django_is_valid_and_reads_nothing_when_configured() -> None:
    hook = CeleryBeatHook.from_config("beat", {"django": {**DJANGO, "python": "/nonexistent/python"}})
    assert hook.kind.django is not None and hook.kind.django.settings == "proj.settings"
    assert hook.kind._probed is None
    text = yaml.safe_dump({"hooks": [{"type": "celery_beat", "name": "beat", "django": DJANGO,
                                      "beat_service": "celery-beat.service"}]})
    loaded = config.loads(text, "t.yaml", hook_types=HOOK_TYPES)
    assert loaded.hooks[0].options["django"] == DJANGO


@pytest.mark.parametrize(("django", "key", "why"), [
    ("proj.settings", "django", "must be a mapping"),
    ({"python": "/srv/app/.venv/bin/python"}, "django.settings", "is required: the settings module"),
    ({"settings": "proj settings", "python": "/p"}, "django.settings", "is required: the settings module"),
    ({"settings": "proj.settings"}, "django.python", "is required: the absolute path"),
    ({"settings": "proj.settings", "python": "python3"}, "django.python", "is required: the absolute path"),
    ({**DJANGO, "path": ["relative/dir"]}, "django.path", "absolute directory"),
    ({**DJANGO, "path": 5}, "django.path", "absolute directory"),
    ({**DJANGO, "environment_file": "app.env"}, "django.environment_file", "absolute file path"),
    ({**DJANGO, "user": ""}, "django.user", "non-empty text"),
    ({**DJANGO, "database_alias": 3}, "django.database_alias", "non-empty text"),
    ({**DJANGO, "timeout_s": 0}, "django.timeout_s", "from 1 to 600"),
    ({**DJANGO, "timeout_s": True}, "django.timeout_s", "from 1 to 600"),
    ({**DJANGO, "setings": "x"}, "django.setings", "unknown option of django"),
])
def test_each_bad_django_shape_names_its_key(django: object, key: str, why: str) -> None:
    with pytest.raises(HookConfigError) as info:
        CeleryBeatHook.from_config("beat", {"django": django})
    assert [(k, m) for k, m in info.value.problems if k == key and why in m], info.value.problems


def test_no_database_at_all_says_both_ways() -> None:
    with pytest.raises(HookConfigError) as info:
        CeleryBeatHook.from_config("beat", {"use_tz": False})
    assert info.value.problems == [("database_url", "give django (the project's settings: {settings, python, path}) "
                                    "or exactly one of database_url, database_url_env, database_url_file")]


def test_a_bad_django_line_in_the_file_names_path_and_line() -> None:
    text = ("hooks:\n  - type: celery_beat\n    name: beat\n    django:\n      settings: proj.settings\n"
            "      python: bin/python\n")
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "beat.yaml", hook_types=HOOK_TYPES)
    [problem] = info.value.problems
    assert str(problem.path) == "hooks[0].django.python" and "absolute path" in problem.message


def test_the_schema_shows_every_typed_option_with_its_doc(capsys: pytest.CaptureFixture[str]) -> None:
    from timeguard.cli.main import main

    properties = CeleryBeatHook.options_schema()["properties"]
    for name in CeleryBeatOptions.__dataclass_fields__:
        assert properties[name].get("description"), name
    assert properties["django"]["required"] == ["settings", "python"]
    assert set(properties["django"]["properties"]) == set(django_settings.KEYS)  # the schema and the check agree
    assert properties["use_tz"]["anyOf"][0]["type"] == "boolean"
    assert properties["max_rounds"]["type"] == "integer"
    assert set(CeleryBeatKind.options) == set(CeleryBeatOptions.__dataclass_fields__)
    # type: repair with target: celery_beat takes the same options (its schema stays open)
    RepairHook.from_config("r", {"target": "celery_beat", "django": DJANGO})
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    branches = {b["if"]["properties"]["type"]["const"]: b["then"]
                for b in schema["properties"]["hooks"]["items"]["allOf"]}
    assert "django" in branches["celery_beat"]["properties"]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="timeguard")
    repair_cli.add_parser(parser.add_subparsers(dest="command"), lambda p: p.add_argument("--config"))
    return parser.parse_args(["repair", "celery-beat", *argv])


def test_command_line_options_override_the_hook_s_and_a_database_replaces_it(monkeypatch) -> None:
    monkeypatch.setenv(URL_ENV, "sqlite:////from/the/environment.sqlite3")
    base = {"django": DJANGO, "beat_max_interval_s": 2, "max_rounds": 2, "beat_service": "beat.service"}
    # with --hook the environment variable is not used: the hook says where the database is
    assert CeleryBeatKind.cli_options(_parse("--max-rounds", "5"), base) == {**base, "max_rounds": 5}
    replaced = CeleryBeatKind.cli_options(_parse("--database-url", "postgres://b@db/app", "--no-use-tz"), base)
    assert replaced == {"beat_max_interval_s": 2, "max_rounds": 2, "beat_service": "beat.service",
                        "database_url": "postgres://b@db/app", "use_tz": False}
    django = CeleryBeatKind.cli_options(_parse("--django-settings", "p.s", "--django-python", "/v/bin/python",
                                               "--django-path", "/a", "--django-path", "/b",
                                               "--django-env-file", "/e.env", "--django-user", "app"))
    assert django == {"django": {"settings": "p.s", "python": "/v/bin/python", "path": ["/a", "/b"],
                                 "environment_file": "/e.env", "user": "app"}}
    assert CeleryBeatKind.cli_options(_parse()) == {"database_url": "sqlite:////from/the/environment.sqlite3"}
    # relative paths on the command line are relative to where it runs (a hook's must be absolute)
    relative = CeleryBeatKind.cli_options(_parse("--django-settings", "p.s", "--django-python", "venv/bin/python",
                                                 "--django-path", "."))
    assert relative["django"] == {"settings": "p.s", "python": os.path.abspath("venv/bin/python"),
                                  "path": [os.getcwd()]}


@pytest.mark.parametrize(("argv", "message"), [
    ((), "give the database: --django-settings MODULE --django-python PATH (the project's settings), --database-url "
         f"URL (or ${URL_ENV}), or --hook NAME (a celery_beat hook of the configuration)"),
    (("--database-url", "postgres://b:hunter22@db:70000/app"),
     "--database-url postgres://b:***@db:70000/app: the port must be a number from 1 to 65535"),
    (("--django-settings", "p.s"), "--django-python: is required: the absolute path of the application's "
                                   "interpreter (e.g. /srv/app/.venv/bin/python)"),
])
def test_command_line_mistakes_name_the_command_line_option(argv: tuple[str, ...], message: str,
                                                            monkeypatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)
    with pytest.raises(RepairError) as info:
        CeleryBeatKind.kind_from_args(_parse(*argv))
    assert str(info.value) == message


def test_repair_without_a_database_names_the_configured_hook(tmp_path: Path, capsys, monkeypatch) -> None:
    from timeguard.cli.main import main

    monkeypatch.delenv(URL_ENV, raising=False)
    cfg = tmp_path / "timeguard.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path), "hooks": [
        {"type": "celery_beat", "name": "beat", "django": DJANGO},
        {"type": "command", "name": "note", "command": ["true"]}]}))
    assert main(["repair", "celery-beat", "--config", str(cfg), "--trust-local-clock"]) == 2  # a usage error
    assert "the configuration (" in (err := capsys.readouterr().err) and "--hook beat uses it" in err
    assert main(["repair", "celery-beat", "--config", str(cfg), "--hook", "note", "--trust-local-clock"]) == 1
    assert capsys.readouterr().err.strip() == ("timeguard repair: --hook note is a command hook, not a celery_beat "
                                               "repair (celery_beat hooks there: beat)")
    assert main(["repair", "celery-beat", "--config", str(cfg), "--hook", "beat", "--trust-local-clock"]) == 1
    assert capsys.readouterr().err.strip() == ("timeguard repair: django.python /srv/app/.venv/bin/python: no such "
                                               "file (the application's interpreter)")

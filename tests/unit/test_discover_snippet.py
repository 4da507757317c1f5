"""The hooks ``timeguard discover`` proposes: a celery_beat hook for a DatabaseScheduler beat that parses as YAML
and passes validation, commented entries for the schedulers without a hook type yet, names that never clash,
the coverage of already configured hooks — and ``--write``'s text edit of a configuration file, which keeps
every comment and refuses what it cannot do safely."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from timeguard import config
from timeguard.cli import discover as cli
from timeguard.discover.configfile import EditError, add_hooks
from timeguard.discover.snippet import covered_by, make, plan, render
from timeguard.hooks.registry import HOOK_TYPES
from timeguard.host.argv import DATABASE, OTHER, REDBEAT, SHELVE, UNKNOWN
from timeguard.host.beat import Beat


def beat(**changes: Any) -> Beat:
    """A DatabaseScheduler beat as discover reports one, run by the book in a systemd unit."""
    base = Beat(pid=4242, user="app", uid=998, uptime_s=3600.0,
                command=["/srv/app/.venv/bin/python", "/srv/app/.venv/bin/celery", "-A", "proj", "beat", "-S",
                         "django", "--max-interval", "1"],
                form="celery beat", scheduler=DATABASE, scheduler_name="django", scheduler_from="command line",
                max_interval_s=1.0, max_interval_from="command line", max_interval_given=True, app="proj",
                app_from="command line", interpreter="/srv/app/.venv/bin/python", interpreter_from="command line",
                cwd="/srv/app", settings="proj.settings", settings_from="environment $DJANGO_SETTINGS_MODULE",
                database="postgres://app:***@db.internal/app", database_from="environment $DATABASE_URL",
                unit="celery-beat.service")
    return dataclasses.replace(base, **changes)


def validate(hooks: list[dict[str, Any]]) -> list[str]:
    """The validation problems of a configuration holding ``hooks`` (empty: valid)."""
    text = yaml.safe_dump({"hooks": hooks}, sort_keys=False)
    try:
        config.loads(text, "<snippet>", resolve_secrets=False, hook_types=HOOK_TYPES)
    except config.ConfigError as exc:
        return [p.format("<snippet>") for p in exc.problems]
    return []


# --------------------------------------------------------------------------------------------- snippets


def test_a_database_scheduler_beat_gets_a_celery_beat_hook_from_its_django_settings():
    snippet = make(beat(), set())
    assert snippet.hook == {
        "type": "celery_beat", "name": "celery-beat", "beat_service": "celery-beat.service",
        "django": {"settings": "proj.settings", "python": "/srv/app/.venv/bin/python", "path": ["/srv/app"],
                   "user": "app"},  # the settings are read as the beat's user, not as root
        "beat_max_interval_s": 1,
    }
    # the text is the hook, as a YAML list item after a comment naming the process
    assert yaml.safe_load(snippet.text) == [snippet.hook]
    assert snippet.text.startswith("# celery beat pid 4242 (celery beat, app proj, user app)")


def test_the_snippet_passes_validation():
    hook = make(beat(), set()).hook
    assert hook is not None
    assert validate([hook]) == []  # exactly as printed


def test_options_appear_only_when_known():
    hook = make(beat(unit=None, max_interval_s=5.0, max_interval_given=False, uid=0, user="root"), set()).hook
    assert hook is not None
    assert "beat_service" not in hook and "beat_max_interval_s" not in hook
    assert "environment_file" not in hook["django"] and "user" not in hook["django"]
    hook = make(beat(environment_file="/etc/default/celery", max_interval_s=2.5), set()).hook
    assert hook is not None
    assert hook["django"]["environment_file"] == "/etc/default/celery" and hook["beat_max_interval_s"] == 2.5


def test_the_variables_the_settings_read_go_to_an_environment_file_beside_the_configuration():
    b = beat(settings_environment=["DATABASE_URL", "SECRET_KEY"],
             settings_values={"DATABASE_URL": "postgres://app:pw@db/app", "SECRET_KEY": "s3cret"})
    snippet = make(b, set(), env_dir="/etc/timeguard/")
    assert snippet.hook is not None
    assert snippet.hook["django"]["environment_file"] == "/etc/timeguard/celery-beat.env"
    assert snippet.environment == ("/etc/timeguard/celery-beat.env",
                                   {"DATABASE_URL": "postgres://app:pw@db/app", "SECRET_KEY": "s3cret"})
    assert "its settings read $DATABASE_URL, $SECRET_KEY from the beat's environment" in snippet.text
    assert "pw" not in snippet.text and "s3cret" not in snippet.text and "s3cret" not in str(b.to_dict())
    # the unit's own EnvironmentFile= is used as it is
    snippet = make(dataclasses.replace(b, environment_file="/etc/default/celery"), set())
    assert snippet.hook is not None and snippet.environment is None
    assert snippet.hook["django"]["environment_file"] == "/etc/default/celery"


@pytest.mark.parametrize(("changes", "reason"), [
    ({"settings": None}, "the Django settings module could not be found"),
    ({"interpreter": None, "cwd": None}, "the interpreter and the working directory could not be found"),
    ({"inspectable": False, "problems": ["permission denied reading /proc/4242/environ"]},
     "not inspectable: permission denied reading /proc/4242/environ"),
    ({"other_root": True}, "another root directory (a container or a chroot): its paths are not this host's"),
    ({"scheduler": SHELVE, "scheduler_name": "celery.beat:PersistentScheduler", "schedule_file": "/srv/app/s",
      "unit": None}, "the hook is refused without a way to stop it"),
    ({"scheduler": SHELVE, "scheduler_name": "celery.beat:PersistentScheduler", "schedule_file": None},
     "the schedule file could not be found"),
    ({"scheduler": REDBEAT, "scheduler_name": "redbeat.RedBeatScheduler", "broker": "redis://:***@h:6379/1"},
     "the URL holds a password"),
    ({"scheduler": REDBEAT, "scheduler_name": "redbeat.RedBeatScheduler", "broker": None},
     "its Redis URL (redbeat_redis_url, else the broker's) could not be found"),
    ({"scheduler": OTHER, "scheduler_name": "proj.sched:Locked"}, "no repair for the scheduler proj.sched:Locked"),
    ({"scheduler": UNKNOWN, "scheduler_name": "?"}, "no repair for the scheduler ?"),
])
def test_what_cannot_be_a_valid_hook_today_is_only_a_comment(changes, reason):
    snippet = make(beat(**changes), set())
    assert snippet.hook is None and snippet.why_not is not None and reason in snippet.text
    assert all(line.startswith("#") for line in snippet.text.splitlines())
    assert yaml.safe_load(snippet.text) is None  # pasted, it adds nothing


def test_a_shelve_beat_in_a_unit_gets_a_valid_celery_shelve_hook():
    shelve = make(beat(scheduler=SHELVE, scheduler_name="celery.beat:PersistentScheduler",
                       schedule_file="/srv/app/celerybeat-schedule"), set())
    assert shelve.hook == {"type": "celery_shelve", "name": "celery-beat",
                           "schedule_file": "/srv/app/celerybeat-schedule", "python": "/srv/app/.venv/bin/python",
                           "path": ["/srv/app"], "user": "app", "beat_service": "celery-beat.service"}
    assert validate([shelve.hook]) == []
    assert yaml.safe_load(shelve.text) == [shelve.hook]


def test_the_planned_entries_show_the_store_to_repair():
    shelve = make(beat(scheduler=SHELVE, scheduler_name="celery.beat:PersistentScheduler",
                       schedule_file="/srv/app/celerybeat-schedule", unit=None, uid=0), set())
    planned = yaml.safe_load("\n".join(line.removeprefix("# ") for line in shelve.text.splitlines()[2:]))
    assert planned == [{"type": "celery_shelve", "name": "celery-beat-proj", "schedule_file":
                        "/srv/app/celerybeat-schedule", "python": "/srv/app/.venv/bin/python", "path": ["/srv/app"],
                        "stop_command": ["FILL-IN", "stop"], "start_command": ["FILL-IN", "start"]}]
    # as written, refused: a hook without a way to stop beat (so it stays a comment)
    assert any("beat_service" in p for p in validate([{k: v for k, v in planned[0].items() if "_command" not in k}]))
    redbeat = make(beat(scheduler=REDBEAT, scheduler_name="redbeat.RedBeatScheduler", broker="redis://:***@h/1"),
                   set())
    assert "#   redis_url_env: REDBEAT_REDIS_URL" in redbeat.text and "***" not in redbeat.text.split("\n", 2)[2]


def test_a_redbeat_beat_gets_a_valid_redbeat_hook_on_its_redis():
    snippet = make(beat(scheduler=REDBEAT, scheduler_name="redbeat.RedBeatScheduler", broker="redis://h:6379/1"),
                   set())
    assert snippet.hook == {"type": "redbeat", "name": "celery-beat", "redis_url": "redis://h:6379/1"}
    assert yaml.safe_load(snippet.text) == [snippet.hook]
    assert validate([snippet.hook]) == []
    # a configured redbeat hook on the same Redis database covers it; another database does not
    b = snippet.beat
    assert covered_by(b, [{"type": "redbeat", "name": "rb", "redis_url": "redis://:pw@h:6379/1"}]) == "rb"
    generic = {"type": "repair", "target": "redbeat", "name": "rb", "redis_url": "redis://h:6379/1"}
    assert covered_by(b, [generic]) == "rb"
    assert covered_by(b, [{"type": "redbeat", "name": "rb", "redis_url": "redis://h:6379/2"}]) is None


def test_names_never_clash_with_configured_hooks_or_each_other():
    taken = {"celery-beat"}
    names = [make(beat(), taken).hook["name"] for _ in range(3)]  # type: ignore[index]
    assert names == ["celery-beat-2", "celery-beat-3", "celery-beat-4"]
    assert make(beat(unit=None, app="proj.celery:app"), set()).hook["name"] == "celery-beat-proj.celery-app"  # type: ignore[index]
    assert make(beat(unit=None, app=None), set()).hook["name"] == "celery-beat-4242"  # type: ignore[index]


def test_beats_on_one_database_share_one_hook_that_waits_for_the_slowest():
    fast = beat(pid=1, max_interval_s=1.0)
    slow = beat(pid=2, max_interval_s=5.0, max_interval_given=False, command=["celery", "beat"])
    elsewhere = beat(pid=3, database="postgres://app:***@db.internal/other")
    other_unit = beat(pid=4, unit="beat-b.service")
    configured = [{"type": "celery_beat", "name": "celery-beat", "database_url": "sqlite:////x"}]
    rows = plan([fast, slow, elsewhere, other_unit], configured, env_dir="/etc/timeguard")
    (_, c1, s1), (_, c2, s2), (_, c3, s3), (_, c4, s4) = rows
    assert c1 is c2 is c3 is c4 is None
    assert s1.hook is not None and s1.hook["name"] == "celery-beat-2"  # "celery-beat" is configured already
    assert s1.hook["beat_max_interval_s"] == 5 and "# and pid 2 on the same settings and database" in s1.text
    assert s2.hook is None and s2.shares == "celery-beat-2" and "shares the hook celery-beat-2" in s2.text
    assert s3.hook is not None and s3.hook["beat_max_interval_s"] == 1 and s3.hook["name"] == "celery-beat-3"
    assert s4.hook is not None and s4.hook["beat_service"] == "beat-b.service"
    # a beat a configured hook covers gets no hook of its own
    covered = plan([fast], [{"type": "celery_beat", "name": "mine", "beat_service": "celery-beat.service"}], "/x")
    assert covered[0][1] == "mine"


def test_render_is_a_hooks_block_that_parses():
    snippets = [make(beat(), set()), make(beat(pid=7, scheduler=SHELVE, scheduler_name="x", unit=None), set()),
                make(beat(pid=8, unit="beat2.service"), set())]
    parsed = yaml.safe_load(render(snippets))
    assert [h["name"] for h in parsed["hooks"]] == ["celery-beat", "beat2"]


# --------------------------------------------------------------------------------------------- coverage


@pytest.mark.parametrize(("hook", "covered"), [
    ({"type": "celery_beat", "name": "h", "beat_service": "celery-beat.service", "database_url": "x"}, True),
    ({"type": "celery_beat", "name": "h", "django": {"settings": "proj.settings"}}, True),
    ({"type": "celery_beat", "name": "h", "django": {"settings": "proj.settings", "path": ["/srv/app"]}}, True),
    ({"type": "celery_beat", "name": "h", "django": {"settings": "proj.settings", "path": ["/srv/other"]}}, False),
    ({"type": "celery_beat", "name": "h", "django": {"settings": "other.settings"}}, False),
    ({"type": "celery_beat", "name": "h", "database_url": "postgresql+psycopg://app:pw@DB.internal/app"}, True),
    # PostgreSQL's default port written out is the same server; another port is not
    ({"type": "celery_beat", "name": "h", "database_url": "postgresql://app@db.internal:5432/app"}, True),
    ({"type": "celery_beat", "name": "h", "database_url": "postgresql://app@db.internal:5433/app"}, False),
    ({"type": "celery_beat", "name": "h", "database_url": "postgresql://app@db.internal/other"}, False),
    ({"type": "repair", "target": "celery_beat", "name": "h", "beat_service": "celery-beat.service"}, True),
    ({"type": "webhook", "name": "h", "beat_service": "celery-beat.service"}, False),
    ({"type": "celery_shelve", "name": "h", "schedule_file": "/srv/app/celerybeat-schedule"}, True),
    ({"type": "celery_shelve", "name": "h", "schedule_file": "/srv/other/celerybeat-schedule"}, False),
    ("not a mapping", False),
])
def test_a_configured_hook_covers_the_beat_it_repairs(hook, covered):
    assert covered_by(beat(schedule_file="/srv/app/celerybeat-schedule"), [hook]) == ("h" if covered else None)


def test_sqlite_paths_are_compared_whole():
    b = beat(unit=None, settings=None, database="sqlite:////srv/app/db.sqlite3")
    assert covered_by(b, [{"type": "celery_beat", "name": "h", "database_url": "sqlite:////srv/app/db.sqlite3"}])
    assert not covered_by(b, [{"type": "celery_beat", "name": "h", "database_url": "sqlite:////srv/db.sqlite3"}])


# ------------------------------------------------------------------------------------- the file edit

HOOK = {"type": "celery_beat", "name": "b", "database_url": "sqlite:////srv/app/db.sqlite3", "beat_max_interval_s": 1}

KEPT = "# top comment\nstate_dir: /var/lib/timeguard  # where\n"


@pytest.mark.parametrize("hooks_part", [
    "",  # no hooks key
    "hooks:\n",
    "hooks: null\n",
    "hooks: ~  # none\n",
    "hooks: []\n",
    "hooks: [ ]  # none yet\n",
    "hooks:\n  - type: command\n    name: c\n    command: [/bin/true]\n",
    "hooks:\n- type: command\n  name: c\n  command:\n  - /bin/true\n  # a comment in the item\n",
    "hooks:\n    -   type: command\n        name: c\n        note: |\n          two\n          lines\n\n",
    "hooks:\n  - {type: command, name: c, command: [/bin/true]}\n",
    "defaults: &d {type: command, command: [/bin/true]}\nhooks:\n  - <<: *d\n    name: c\n",  # merge key
])
@pytest.mark.parametrize("after", ["", "# trailing comment\nmetrics:\n  enabled: false\n", "logging:\n  level: info"])
def test_add_hooks_keeps_the_file_and_appends_to_the_list(hooks_part, after):
    text = KEPT + hooks_part + after
    new = add_hooks(text, [HOOK], comment="found by discover\npid 1")
    before = yaml.safe_load(text) or {}
    assert yaml.safe_load(new) == {**before, "hooks": [*(before.get("hooks") or []), HOOK]}
    assert new.startswith(KEPT)
    for line in text.splitlines():  # every line of the old file is still there (an empty value was removed)
        if not line.startswith("hooks:"):
            assert line in new.splitlines()
    assert "# found by discover\n" in new and "# pid 1\n" in new
    assert add_hooks(new, [{**HOOK, "name": "c2"}]).count("type: celery_beat") == 2


@pytest.mark.parametrize(("text", "why"), [
    ("hooks: [\n", "line 2: not valid YAML"),
    ("a: 1\na: 2\n", "line 2: a: duplicate key"),  # the loader's own parser: what it refuses is refused here
    ("x: &x [*x]\n", "recursive alias"),
    ("- a\n- b\n", "not a mapping of keys"),
    ("just text\n", "not a mapping of keys"),
    ("hooks: 5\n", "hooks (line 1) is not a list"),
    ("hooks: {a: 1}\n", "hooks (line 1) is not a list"),
    ("hooks: [{type: command, name: c, command: [/bin/true]}]\n", "hooks (line 1) is a flow list"),
    ("x: &a [1]\nhooks:\n  - *a\n", "would break the file"),  # an alias's marks are its anchor's
])
def test_add_hooks_refuses_what_it_cannot_edit_safely(text, why):
    with pytest.raises(EditError, match=None) as exc:
        add_hooks(text, [HOOK])
    assert why in str(exc.value)


# ------------------------------------------------------------------------------------------ --write


def _snippet(**changes: Any) -> Any:
    """A snippet exactly as printed (its hook validates)."""
    snippet = make(beat(**changes), set())
    assert snippet.hook is not None
    return snippet


def test_write_appends_keeps_a_backup_and_the_owner_and_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "timeguard.yaml"
    original = "# mine\nstate_dir: /var/lib/timeguard\n"
    path.write_text(original)
    path.chmod(0o640)
    assert cli.write(path, [_snippet()], yes=True) == cli.EXIT_FOUND
    assert (tmp_path / "timeguard.yaml.bak").read_text() == original
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert yaml.safe_load(path.read_text())["hooks"][0]["name"] == "celery-beat"
    config.load(path, resolve_secrets=False, hook_types=HOOK_TYPES)  # still valid
    # a second write keeps the first backup and adds another
    assert cli.write(path, [_snippet(unit="beat2.service")], yes=True) == cli.EXIT_FOUND
    assert (tmp_path / "timeguard.yaml.bak").read_text() == original
    assert (tmp_path / "timeguard.yaml.bak.2").exists()
    assert "added celery-beat" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["timeguard.yaml", "timeguard.yaml.bak", "timeguard.yaml.bak.2"]


def test_write_creates_a_missing_file(tmp_path: Path):
    path = tmp_path / "etc" / "timeguard.yaml"
    assert cli.write(path, [_snippet()], yes=True) == cli.EXIT_FOUND
    assert yaml.safe_load(path.read_text())["hooks"][0]["type"] == "celery_beat"
    assert not (tmp_path / "etc" / "timeguard.yaml.bak").exists()


@pytest.mark.parametrize(("text", "message"), [
    ("hooks: [\n", "not valid YAML"),
    ("hooks: [{type: command, name: c, command: [/bin/true]}]\n", "flow list"),
])
def test_write_refuses_a_file_it_cannot_edit_and_changes_nothing(tmp_path: Path, text: str, message: str,
                                                                capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "timeguard.yaml"
    path.write_text(text)
    assert cli.write(path, [_snippet()], yes=True) == cli.EXIT_TROUBLE
    assert message in capsys.readouterr().err
    assert path.read_text() == text and os.listdir(tmp_path) == ["timeguard.yaml"]


def test_write_refuses_a_hook_that_would_not_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "timeguard.yaml"
    path.write_text("state_dir: /var/lib/timeguard\n")
    bad = dataclasses.replace(_snippet(), hook={**_snippet().hook, "beat_max_interval_s": -1})
    assert cli.write(path, [bad], yes=True) == cli.EXIT_TROUBLE
    err = capsys.readouterr().err
    assert "would not validate, nothing written" in err and "beat_max_interval_s" in err
    assert path.read_text() == "state_dir: /var/lib/timeguard\n"


def test_write_asks_and_does_nothing_without_a_yes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "timeguard.yaml"
    path.write_text("state_dir: /x\n")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert cli.write(path, [_snippet()], yes=False) == cli.EXIT_TROUBLE
    assert "give --yes" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda: "n")
    assert cli.write(path, [_snippet()], yes=False) == cli.EXIT_TROUBLE
    assert path.read_text() == "state_dir: /x\n"
    monkeypatch.setattr("builtins.input", lambda: "y")
    assert cli.write(path, [_snippet()], yes=False) == cli.EXIT_FOUND
    assert "celery_beat" in path.read_text()
    assert "add 1 hook (celery-beat) to" in capsys.readouterr().err


def test_write_saves_the_settings_environment_readable_by_root_only(tmp_path: Path):
    path = tmp_path / "timeguard.yaml"
    b = beat(settings_environment=["DATABASE_URL"], settings_values={"DATABASE_URL": "postgres://app:p'w@db/app"})
    snippet = make(b, set(), env_dir=str(tmp_path))
    valid = snippet
    assert cli.write(path, [valid], yes=True) == cli.EXIT_FOUND
    env_file = tmp_path / "celery-beat.env"
    assert oct(env_file.stat().st_mode & 0o777) == oct(0o600)
    assert env_file.read_text().splitlines()[1:] == ['DATABASE_URL="postgres://app:p\'w@db/app"']
    # the same again: the file is kept; something else there: refused, nothing written
    assert cli.write(tmp_path / "other.yaml", [valid], yes=True) == cli.EXIT_FOUND
    env_file.write_text("DATABASE_URL=other\n")
    assert cli.write(tmp_path / "third.yaml", [valid], yes=True) == cli.EXIT_TROUBLE
    assert not (tmp_path / "third.yaml").exists() and env_file.read_text() == "DATABASE_URL=other\n"


def test_nothing_to_write_is_not_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.write(tmp_path / "timeguard.yaml", [], yes=True) == cli.EXIT_FOUND
    assert "nothing to write" in capsys.readouterr().out
    assert not (tmp_path / "timeguard.yaml").exists()


def test_guard_stop_is_suggested_only_where_the_owner_can_be_stopped():
    """A commented ``guard: stop`` line under a hook that can stop its beat (a unit, or the shelve's stop/start
    placeholders); none where it cannot (no unit; RedBeat, repaired live); never switched on."""
    assert "# guard: stop" in make(beat(), set()).text
    assert "# guard: stop" not in make(beat(unit=None), set()).text
    assert "# guard: stop" in make(beat(scheduler=SHELVE, schedule_file="/srv/app/s", unit=None), set()).text
    redbeat = make(beat(scheduler=REDBEAT, broker="redis://127.0.0.1:6379/0"), set())
    assert redbeat.hook is not None and "guard" not in redbeat.text
    assert all("guard" not in (s.hook or {}) for s in (make(beat(), set()), redbeat))

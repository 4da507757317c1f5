"""The ``type: apscheduler`` hooks discover proposes for an APScheduler application (timeguard.discover.aps.App):
a valid hook with ``service`` when it runs in a systemd unit (written by --write, backup kept), a commented entry
with stop/start placeholders without one, a password never copied (the ``_env`` option instead), renamed tables
and Redis keys carried over, the optional ``guard: stop`` line, and a configured hook on the same store marking it
covered."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_discover_snippet import validate
from timeguard import config
from timeguard.cli import discover as cli
from timeguard.discover.aps import REDIS, SQL, App, JobStore
from timeguard.discover.snippet import aps_covered_by, aps_plan, make_aps, render
from timeguard.hooks.registry import HOOK_TYPES

PG = "postgresql+psycopg://app@db.internal:5432/app"


def store(**changes: Any) -> JobStore:
    base = JobStore(SQL, PG, "connection to 10.0.0.5:5432, URL in environment $DATABASE_URL", 12,
                    tablename="apscheduler_jobs", url_env="DATABASE_URL", url=PG)
    return dataclasses.replace(base, **changes)


def app(**changes: Any) -> App:
    """An application run by the book: its venv's interpreter, a systemd unit, its own user."""
    base = App(pid=777, user="app", uid=998, uptime_s=60.0, command=["/srv/app/.venv/bin/python", "run.py"],
               interpreter="/srv/app/.venv/bin/python", interpreter_from="command line", cwd="/srv/app",
               path=["/srv/app"], apscheduler="3.11.3", stores=[store()], unit="jobs.service")
    return dataclasses.replace(base, **changes)


def test_an_application_in_a_unit_gets_a_valid_hook_with_its_service_and_a_guard_suggestion():
    snippet = make_aps(app(), store(), set())
    assert snippet.hook == {"type": "apscheduler", "name": "jobs", "jobstore_url": PG,
                            "python": "/srv/app/.venv/bin/python", "path": ["/srv/app"], "user": "app",
                            "service": "jobs.service"}
    assert validate([snippet.hook]) == []
    # guard: stop is suggested as a comment, never switched on
    assert "  # guard: stop  # optional:" in snippet.text and "guard" not in snippet.hook
    assert yaml.safe_load(render([snippet]))["hooks"] == [snippet.hook]


def test_without_a_unit_it_is_commented_with_stop_and_start_placeholders():
    snippet = make_aps(app(unit=None, user_unit="jobs.service"), store(), set())
    assert snippet.hook is None and all(line.startswith("#") for line in snippet.text.splitlines())
    assert "only a systemd --user unit" in (snippet.why_not or "")
    assert snippet.planned is not None and snippet.planned["stop_command"] == ["FILL-IN", "stop"]
    filled = {**snippet.planned, "stop_command": ["/bin/true"], "start_command": ["/bin/true"]}
    assert validate([filled]) == []


def test_a_password_is_never_copied_the_hook_names_the_variable():
    secret = "postgresql://app:pw@db.internal/app"
    snippet = make_aps(app(), store(url=secret, shown="postgresql://app:***@db.internal/app", has_password=True),
                       set())
    assert snippet.hook is None and "pw@" not in snippet.text
    assert snippet.planned is not None and snippet.planned["jobstore_url_env"] == "DATABASE_URL"
    assert "jobstore_url" not in snippet.planned and "$DATABASE_URL" in (snippet.why_not or "")


def test_renamed_tables_and_redis_keys_are_carried_over():
    table = make_aps(app(), store(tablename="jobs"), set()).hook
    assert table is not None and table["tablename"] == "jobs"
    red = JobStore(REDIS, "redis://127.0.0.1:6379/3", "connection to 127.0.0.1:6379", 2, jobs_key="my.jobs",
                   run_times_key="my.times", url="redis://127.0.0.1:6379/3")
    hook = make_aps(app(), red, set()).hook
    assert hook is not None and (hook["redis_url"], hook["jobs_key"], hook["run_times_key"]) == (
        "redis://127.0.0.1:6379/3", "my.jobs", "my.times")
    assert validate([hook]) == []


@pytest.mark.parametrize("changes, reason", [
    ({"apscheduler": "4.0.0a5", "problems": ["APScheduler 4.0.0a5: timeguard repairs … 3.x"]}, "APScheduler 4"),
    ({"other_root": True, "problems": ["it runs under another root directory"]}, "another root directory"),
    ({"interpreter": None}, "interpreter could not be found"),
])
def test_what_cannot_be_repaired_is_only_a_comment_saying_why(changes: dict[str, Any], reason: str):
    snippet = make_aps(app(**changes), store(), set())
    assert snippet.hook is None and reason in snippet.text


def test_one_hook_per_store_with_unique_names_and_configured_ones_covered():
    second = store(url="sqlite:////srv/app/jobs.sqlite", shown="sqlite:////srv/app/jobs.sqlite", url_env=None)
    two = app(stores=[store(), second])
    configured = [{"type": "apscheduler", "name": "mine", "jobstore_url": "postgres://app@db.internal/app",
                   "service": "other.service"}, {"type": "command", "name": "jobs", "command": ["/bin/true"]}]
    rows = aps_plan([two], configured)
    # the configured hook names the same server with its default port left out
    assert [covered for _, _, covered, _ in rows] == ["mine", None]
    assert rows[1][3].hook is not None and rows[1][3].hook["name"] == "jobs-2"  # "jobs" is a configured name
    assert aps_covered_by(two, second, [{"type": "apscheduler", "name": "x", "service": "jobs.service"}]) == "x"


def test_write_adds_the_hook_keeping_a_backup(tmp_path: Path):
    path = tmp_path / "timeguard.yaml"
    original = "# mine\nstate_dir: /var/lib/timeguard\n"
    path.write_text(original)
    assert cli.write(path, [make_aps(app(), store(), set())], yes=True) == cli.EXIT_FOUND
    assert (tmp_path / "timeguard.yaml.bak").read_text() == original
    text = path.read_text()
    assert "# found by timeguard discover: APScheduler application pid 777 (sql job store" in text
    assert yaml.safe_load(text)["hooks"][0]["service"] == "jobs.service"
    config.load(path, resolve_secrets=False, hook_types=HOOK_TYPES)

"""Secrets through the real command line (issue 9, items 7 and 8).

Item 7: a secret that only the service can read — a systemd credential in a 0700 directory, a variable only its
unit sets — must not make ``check --nagios``, ``status``, ``events``, ``config validate`` or ``hooks list`` fail
for a shell user or Icinga. The commands run as ``nobody`` (as Icinga runs as ``nagios``) against a root-owned
0700 credentials directory; each must answer exactly as it does for the same configuration without hooks.
``config validate`` names every secret it could not read, as a warning, exit 0. Where the secret is used it is
read: ``hooks test`` as the service would run it signs a real request, and ``run`` refuses to start without it.

Item 8: inline secrets never appear in what timeguard prints; each is warned about with the way out.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import scratch_dir
from tests.support.receiver import Receiver

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
AS_ROOT = os.geteuid() == 0
NO_SYS_TIME = ["setpriv", "--bounding-set", "-sys_time", "--inh-caps", "-sys_time"]
# A shell user / Icinga: root drops to nobody (no capabilities); anyone else is already unprivileged.
OUTSIDER = ([*NO_SYS_TIME, "--reuid=65534", "--regid=65534", "--clear-groups", "--"] if AS_ROOT
            else [*NO_SYS_TIME, "--"])


def timeguard(*args: str, outsider: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    prefix = OUTSIDER if outsider else [*NO_SYS_TIME, "--"]
    return subprocess.run([*prefix, sys.executable, "-m", "timeguard", *args], capture_output=True, text=True,
                          timeout=60, check=False, env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd="/")


@pytest.fixture(scope="module")
def ntp():
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run the commands as another user")
    servers = [FakeNTPServer() for _ in range(2)]
    yield [{"host": s.host, "port": s.port} for s in servers]
    for server in servers:
        server.close()


@pytest.fixture
def service_only(ntp):
    """A configuration whose hooks' secrets exist only for the service, and the same without hooks."""
    directory = scratch_dir("secrets-cli")
    creds = directory / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "webhook-secret").write_text(SECRET + "\n")
    (creds / "api-token").write_text("tok-0123456789\n")
    for path in creds.iterdir():
        path.chmod(0o400 if AS_ROOT else 0o000)
    if not AS_ROOT:
        creds.chmod(0o000)
    receiver = Receiver(SECRET).start()
    base = {"sources": {"ntp": ntp, "http": []}, "state_dir": str(directory / "state")}
    hooks = [
        {"type": "webhook", "name": "ops", "url": receiver.url, "allow_plain_http": True,
         "secret_file": "webhook-secret",  # relative: in $CREDENTIALS_DIRECTORY, set by systemd only
         "headers": {"X-Api-Token": {"file": str(creds / "api-token")}}},
        {"type": "slack", "name": "chat", "webhook_url_env": "TG_SLACK_URL"},
        {"type": "command", "name": "notify", "command": ["/bin/true"],
         "env": {"API_TOKEN": {"file": "$CREDENTIALS_DIRECTORY/api-token"}}},
        {"type": "webhook", "name": "abs", "url": receiver.url, "allow_plain_http": True,
         "secret_file": str(creds / "webhook-secret")},
    ]
    with_hooks, without = directory / "tg.yaml", directory / "plain.yaml"
    with_hooks.write_text(yaml.safe_dump({**base, "hooks": hooks}, sort_keys=False))
    without.write_text(yaml.safe_dump(base, sort_keys=False))
    for path in (with_hooks, without):
        path.chmod(0o644)
    yield with_hooks, without, creds, receiver
    receiver.stop()
    creds.chmod(0o700)


EXPECTED_WARNINGS = {  # key path → what the warning says about it
    "hooks[0].secret_file": "webhook-secret is relative, which means inside $CREDENTIALS_DIRECTORY",
    "hooks[0].headers.X-Api-Token": "cannot read",
    "hooks[1].webhook_url_env": "environment variable TG_SLACK_URL is not set",
    "hooks[2].env.API_TOKEN": "uses $CREDENTIALS_DIRECTORY, which is not set",
    "hooks[3].secret_file": "cannot read",
}


def test_config_validate_names_every_secret_it_cannot_read_as_a_warning(service_only):
    config, _, _, _ = service_only
    proc = timeguard("config", "validate", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{config}: valid (2 NTP and 0 HTTPS sources), {len(EXPECTED_WARNINGS)} warnings\n"
    warnings = proc.stderr.splitlines()
    assert len(warnings) == len(EXPECTED_WARNINGS), proc.stderr
    text = config.read_text().splitlines()
    for line in warnings:
        match = re.fullmatch(rf"warning: {re.escape(str(config))}:(\d+): (\S+): (.*)", line)
        assert match, line
        number, path, message = int(match[1]), match[2], match[3]
        assert EXPECTED_WARNINGS[path] in message and "not readable here" in message
        key = path.rsplit(".", 1)[-1]
        named = ("file: ", "env: ") if key in ("X-Api-Token", "API_TOKEN") else (f"{key}: ",)  # {file:} refs
        assert any(n in text[number - 1] for n in named), (path, text[number - 1])  # the line naming the secret
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", [["check", "--nagios"], ["check", "--json"], ["status"], ["status", "--json"],
                                     ["events"], ["events", "--json"], ["config", "show", "--json"]])
def test_shell_commands_answer_as_if_the_hooks_were_not_there(service_only, command):
    config, plain, _, _ = service_only
    got = timeguard(*command, "--config", str(config))
    baseline = timeguard(*command, "--config", str(plain))
    assert "invalid configuration" not in got.stdout + got.stderr and "Traceback" not in got.stderr
    assert got.returncode == baseline.returncode, got.stdout + got.stderr
    if command == ["check", "--nagios"]:  # measured twice: the same verdict, not the same microseconds
        assert got.stdout.split()[:2] == baseline.stdout.split()[:2] == ["TIMEGUARD", "OK"]
    elif command[0] == "check":
        assert json.loads(got.stdout)["status"] == json.loads(baseline.stdout)["status"] == "OK"
    elif command[0] == "config":
        assert json.loads(got.stdout)["sources"] == json.loads(baseline.stdout)["sources"]
    else:
        assert got.stdout == baseline.stdout


def test_a_repair_from_a_shell_is_not_stopped_by_the_hooks_secrets(service_only):
    """The repair reads sources, thresholds and state_dir, never a hook's credential: from a shell it gets as far
    as it would without the hooks (here: to the missing database it was pointed at)."""
    config, plain, _, _ = service_only
    args = ("repair", "celery-beat", "--dry-run", "--trust-local-clock",
            "--database-url", "sqlite:////nonexistent/beat.sqlite3")
    got = timeguard(*args, "--config", str(config))
    baseline = timeguard(*args, "--config", str(plain))
    assert "invalid configuration" not in got.stdout + got.stderr and "Traceback" not in got.stderr
    assert (got.returncode, got.stdout, got.stderr) == (baseline.returncode, baseline.stdout, baseline.stderr)
    assert "no such database: /nonexistent/beat.sqlite3 does not exist" in got.stderr


def test_hooks_list_shows_them_ready_with_the_warning(service_only):
    config, _, _, _ = service_only
    proc = timeguard("hooks", "list", "--json", "--config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hooks = json.loads(proc.stdout)["hooks"]
    assert [h["state"] for h in hooks] == ["ready"] * 4
    found = {w["path"] for h in hooks for w in h["warnings"]}
    assert found == set(EXPECTED_WARNINGS)


def test_the_daemon_refuses_to_start_without_them(service_only):
    config, _, _, _ = service_only
    proc = timeguard("run", "--config", str(config))
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "not starting" in proc.stderr
    for path in EXPECTED_WARNINGS:
        assert path in proc.stderr


def test_hooks_test_reads_the_secret_where_it_is_used(service_only):
    config, _, creds, receiver = service_only
    # Outside the service: the hook cannot be built, and says why.
    proc = timeguard("hooks", "test", "ops", "--config", str(config))
    assert proc.returncode == 1 and "FAILED" in proc.stdout and "secret_file" in proc.stdout
    assert not receiver.received
    if not AS_ROOT:
        return  # only root can stand in for the service's user here
    # As the service runs it: systemd's credentials directory set, the unit's variable set.
    service_env = {"CREDENTIALS_DIRECTORY": str(creds), "TG_SLACK_URL": "https://hooks.slack.com/services/T/B/X"}
    proc = timeguard("hooks", "test", "ops", "--config", str(config), outsider=False, env=service_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert receiver.wait_received(1, 5)
    got = receiver.accepted()[0]
    assert got.verified is True and got.headers.get("x-api-token") == "tok-0123456789"
    proc = timeguard("hooks", "test", "notify", "--config", str(config), outsider=False, env=service_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------- inline


INLINE_SECRETS = ["hunter2-userinfo", "hunter2-query", "XXXXSLACKSECRET", "Bearer-hunter2-header",
                  "hunter2-env", "hunter2-argv", "hunter2-token"]


@pytest.fixture
def inline(ntp):
    directory = scratch_dir("secrets-inline")
    hooks = [
        {"type": "celery_beat", "name": "beat-a", "database_url": "postgresql://beat:hunter2-userinfo@db/beat"},
        {"type": "celery_beat", "name": "beat-b",
         "database_url": "postgresql://beat@db/beat?sslmode=require&password=hunter2-query"},
        {"type": "slack", "name": "chat", "webhook_url": "https://hooks.slack.com/services/T0/B0/XXXXSLACKSECRET"},
        {"type": "webhook", "name": "ops", "url": "https://alerts.example.net/in?token=hunter2-token",
         "headers": {"Authorization": "Bearer-hunter2-header"}},
        {"type": "command", "name": "migrate", "env": {"DB_PASSWORD": "hunter2-env"},
         "command": ["/usr/bin/env", "psql", "postgresql://app:hunter2-argv@db/app"]},
    ]
    path = directory / "tg.yaml"
    path.write_text(yaml.safe_dump({"sources": {"ntp": ntp, "http": []}, "state_dir": str(directory / "state"),
                                    "hooks": hooks}, sort_keys=False))
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("command", [["config", "show"], ["config", "show", "--json"], ["config", "validate"],
                                     ["hooks", "list"], ["hooks", "list", "--json"],
                                     ["hooks", "test", "migrate", "--dry-run", "--json"]])
def test_inline_secrets_are_never_printed(inline, command):
    proc = timeguard(*command, "--config", str(inline))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for secret in INLINE_SECRETS:
        assert secret not in proc.stdout + proc.stderr, (secret, command)


def test_config_show_masks_and_keeps_the_rest(inline):
    proc = timeguard("config", "show", "--json", "--config", str(inline))
    options = [h["options"] for h in json.loads(proc.stdout)["hooks"]]
    assert options[0]["database_url"] == "postgresql://beat:***@db/beat"
    assert options[1]["database_url"] == "postgresql://beat@db/beat?sslmode=require&password=***"
    assert options[2]["webhook_url"] == "https://hooks.slack.com/***"
    assert options[3] == {"url": "https://alerts.example.net/in?token=***", "headers": {"Authorization": "***"}}
    assert options[4]["env"] == {"DB_PASSWORD": "***"}
    assert options[4]["command"] == ["/usr/bin/env", "psql", "postgresql://app:***@db/app"]


def test_config_validate_warns_about_each_inline_secret_with_the_way_out(inline):
    proc = timeguard("config", "validate", "--config", str(inline))
    assert proc.returncode == 0 and proc.stdout.endswith("7 warnings\n"), proc.stdout + proc.stderr
    ways = {re.search(r": (hooks\S+): ", line)[1]: line for line in proc.stderr.splitlines()}
    assert "database_url_file" in ways["hooks[0].database_url"] and "database_url_env" in ways["hooks[1].database_url"]
    assert "webhook_url_file" in ways["hooks[2].webhook_url"]
    assert "header" in ways["hooks[3].url"] and "{file: PATH}" in ways["hooks[3].headers.Authorization"]
    assert "{env: VAR}" in ways["hooks[4].env.DB_PASSWORD"] and "hooks[4].command[2]" in ways


def test_an_inline_webhook_signing_secret_is_still_refused(inline):
    text = yaml.safe_load(Path(inline).read_text())
    text["hooks"] = [{"type": "webhook", "name": "ops", "url": "https://a.example/", "secret": SECRET}]
    Path(inline).write_text(yaml.safe_dump(text))
    proc = timeguard("config", "validate", "--config", str(inline))
    assert proc.returncode == 1 and "inline secrets are refused" in proc.stderr and SECRET not in proc.stderr


def test_the_daemon_warns_about_inline_secrets_and_never_logs_or_journals_them(ntp):
    from tests.support.daemon import hook_runs, log_event, start, wait_for, write_config

    silent = FakeNTPServer()
    silent.blackhole = True  # no answer: the first round ends in sources_unavailable, which the hooks want
    try:
        directory = scratch_dir("secrets-daemon")
        config = write_config(directory, {"ntp": [silent]}, consensus={"min_sources": 1})
        cfg = yaml.safe_load(config.read_text())
        cfg["hooks"] = [
            {"type": "command", "name": "migrate", "on": ["sources_unavailable"], "env": {"DB_PASSWORD": "hunter2-env"},
             "command": ["/bin/true", "postgresql://app:hunter2-argv@db/app"]},
            {"type": "slack", "name": "chat", "on": ["sources_unavailable"], "allow_plain_http": True,
             "webhook_url": "http://127.0.0.1:9/services/T0/B0/XXXXSLACKSECRET"},  # refused: a delivery error
        ]
        config.write_text(yaml.safe_dump(cfg))
        log = directory / "daemon.log"
        with start(config, None, log) as proc:
            runs = wait_for("the command hook's run", lambda: hook_runs(config, "migrate"), 20, proc)
            wait_for("the Slack run", lambda: hook_runs(config, "chat"), 10, proc)
            wait_for("a warning logged", lambda: log_event(log, "config_warning"), 5, proc)
        assert runs[0].details["argv"] == ["/bin/true", "postgresql://app:***@db/app"]
        assert "hunter2" not in runs[0].summary
        stored = b"".join(p.read_bytes() for p in (directory / "state").iterdir() if p.is_file())
        logged = log.read_text()
        for secret in ("hunter2-env", "hunter2-argv", "XXXXSLACKSECRET"):
            assert secret.encode() not in stored and secret not in logged, secret
        warned = [json.loads(line[line.index("{"):]) for line in logged.splitlines() if "config_warning" in line]
        assert {re.search(r": (hooks\S+): ", w["warning"])[1] for w in warned} == {
            "hooks[0].env.DB_PASSWORD", "hooks[0].command[1]", "hooks[1].webhook_url"}
    finally:
        silent.close()

"""The real daemon's metrics textfile, as node_exporter and promtool see it.

The daemon runs with the unit's UMask=0077 and under libfaketime; a forward jump fires three hooks: a command that
fails, a webhook whose receiver answers 410 (dead at once) and one whose receiver is down (retried, pending).
"""

from __future__ import annotations

import base64
import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.daemon import events, hook_runs, wait_for, write_config
from tests.support.fake_http import running
from tests.support.fake_ntp import FakeNTPServer
from tests.support.realprogs import ManagedProcess, scratch_dir
from tests.support.receiver import Receiver
from tests.support.require import need_program
from tests.unit.test_metrics import samples_of
from timeguard.events import EventKind

SECRET = "whsec_" + base64.b64encode(b"metrics-test-secret-32-bytes-abc").decode()


def _after_a_check(textfile: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    values = samples_of(textfile.read_text()) if textfile.exists() else {}
    last_check = values.get(("timeguard_last_check_timestamp_seconds", ()), float("nan"))
    return None if math.isnan(last_check) else values


def _when_complete(textfile: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """The textfile's samples once it shows the rollback and the dead alert (the outbox settles on its own)."""
    values = samples_of(textfile.read_text())
    done = (values.get(("timeguard_clock_steps_total", (("direction", "backward"),))) == 1
            and values.get(("timeguard_alerts_dead", (("hook", "gone"),))) == 1)
    return values if done else None


def test_the_daemon_textfile_is_0644_under_umask_0077_and_counts_alerts_and_hook_failures(fake_clock):
    promtool = need_program("promtool", "prometheus")
    servers = [FakeNTPServer() for _ in range(3)]
    directory = scratch_dir("metrics")
    textfile = directory / "node-exporter" / "timeguard.prom"
    textfile.parent.mkdir()
    try:
        with running() as http, Receiver(SECRET) as gone, Receiver(SECRET) as down:
            gone.fail_next(100, status=410)
            down.go_down()
            config = write_config(directory, {"ntp": servers, "http": http}, metrics={"textfile": str(textfile)})
            cfg = yaml.safe_load(config.read_text())
            cfg["hooks"] = [
                {"type": "command", "name": "script", "on": ["forward_jump"], "command": ["/bin/false"]},
                {"type": "webhook", "name": "gone", "on": ["forward_jump"], "url": gone.url,
                 "allow_plain_http": True, "secret_env": "TG_WEBHOOK_SECRET"},
                {"type": "webhook", "name": "down", "on": ["forward_jump"], "url": down.url,
                 "allow_plain_http": True, "secret_env": "TG_WEBHOOK_SECRET"},
            ]
            config.write_text(yaml.safe_dump(cfg))
            cmd = [sys.executable, "-m", "timeguard", "run", "--config", str(config)]
            with ManagedProcess.start(cmd, clock=fake_clock, log_path=directory / "daemon.log", umask=0o077,
                                      env={**os.environ, "TG_WEBHOOK_SECRET": SECRET}) as proc:
                # The file written at start-up holds no verdict yet; the one after the first check has every series.
                first = wait_for("the textfile after the first check", lambda: _after_a_check(textfile), 15, proc)
                fake_clock.set(3600)
                wait_for("the forward jump", lambda: events(config, EventKind.FORWARD_JUMP), 5, proc)
                wait_for("the failed command", lambda: hook_runs(config, "script"), 10, proc)
                # Stepping back rewrites the textfile at once (and re-runs the checks): no need to wait 15 s for
                # the next scheduled check. Nothing is configured on rollback, so the hook counts stay.
                fake_clock.set(0)
                # The dead letter shows in the textfile written after it: at the next check (every 15 s here) when
                # the first delivery attempt (which imports the HTTP client) ends after the checks the step re-ran.
                after = wait_for("the textfile with the hooks' outcome", lambda: _when_complete(textfile), 35, proc)
        mode = stat.S_IMODE(textfile.stat().st_mode)
        leftovers = sorted(p.name for p in textfile.parent.iterdir())
    finally:
        for server in servers:
            server.close()

    assert mode == 0o644  # node_exporter (user prometheus) can read it although the daemon's umask is 0077
    assert leftovers == ["timeguard.prom"]  # no temp file left in node_exporter's directory
    for hook, kind in (("script", "command"), ("gone", "webhook"), ("down", "webhook")):  # there from the start
        assert first[("timeguard_hook_failures_total", (("hook", hook), ("type", kind)))] == 0
    assert after[("timeguard_hook_failures_total", (("hook", "script"), ("type", "command")))] == 1
    assert after[("timeguard_hook_failures_total", (("hook", "gone"), ("type", "webhook")))] == 0  # queued: ok
    assert after[("timeguard_alerts_dead", (("hook", "gone"),))] == 1
    assert after[("timeguard_alerts_pending", (("hook", "down"),))] == 1
    assert after[("timeguard_alerts_pending", (("hook", "gone"),))] == 0
    assert after[("timeguard_clock_steps_total", (("direction", "forward"),))] == 1
    lint = subprocess.run([promtool, "check", "metrics"], input=textfile.read_bytes(), capture_output=True,
                          timeout=60, check=False)
    assert lint.returncode == 0 and lint.stdout == b"", lint.stdout + lint.stderr


def test_the_documented_drop_in_for_the_textfile_is_valid_and_keeps_the_unit_tight(tmp_path):
    """The two lines the unit and the README give for node_exporter's directory: systemd accepts them, and they
    do not loosen the sandbox's score."""
    from tests.integration.test_systemd_unit import UNIT, exposure, runnable_copy, systemd_analyze, verify

    documented = re.findall(r"^#((?:ReadWritePaths|SupplementaryGroups)=.*)$", UNIT.read_text(), re.M)
    assert documented == ["ReadWritePaths=/var/lib/prometheus/node-exporter", "SupplementaryGroups=prometheus"]
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert all(f"\n{line}\n" in readme for line in documented)
    analyze = systemd_analyze()
    unit = runnable_copy(tmp_path)
    unit.write_text(unit.read_text().replace("\nUMask=0077\n", "\nUMask=0077\n" + "".join(f"{line}\n"
                                                                                        for line in documented)))
    proc = verify(analyze, unit)
    assert proc.returncode == 0 and (proc.stdout + proc.stderr).strip() == "", proc.stdout + proc.stderr
    score, _ = exposure(analyze, unit)
    assert score <= 2.0

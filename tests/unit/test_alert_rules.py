"""The Prometheus alert rules (monitoring/timeguard.rules.yml): valid for promtool, unit-tested with promtool's own
rule tests (monitoring/tests.yml), and written against the metrics timeguard really exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support.require import need_program
from timeguard.metrics import CATALOGUE

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "timeguard.rules.yml"
TESTS = MONITORING / "tests.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_program("promtool", "prometheus"), *args], cwd=MONITORING, capture_output=True,
                          text=True, timeout=120, check=False)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass():
    result = promtool("test", "rules", TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_annotated_and_fires_in_a_unit_test():
    fired = {case["alertname"] for test in yaml.safe_load(TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case.get("exp_alerts")}
    for rule in alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"] in fired, f"{rule['alert']} never fires in monitoring/tests.yml"


def test_the_rules_only_use_metrics_timeguard_exports():
    exported = {name + ("_total" if kind == "counter" else "") for name, kind in CATALOGUE.items()}
    used = {name for rule in alerts() for name in re.findall(r"\btimeguard_[a-z_]+", rule["expr"])}
    assert used and used <= exported, used - exported

"""docker/prometheus/alerts.yml: valid, and every rule has promtool unit
tests (alerts_test.yml) that see it fire and see it stay quiet."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.podman import ROOT

RULES = ROOT / "docker" / "prometheus"


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        run = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "SUCCESS" in run.stdout + run.stderr


def test_every_rule_is_tested_firing_and_quiet_and_has_a_runbook_line() -> None:
    rules = [r["alert"] for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
    firing, quiet = set(), set()
    for test in tests:
        for case in test["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert set(rules) == firing == quiet, (set(rules) - firing, set(rules) - quiet)
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in rules if f"`{name}`" not in readme]
    assert not missing, f"no runbook line in README for {missing}"

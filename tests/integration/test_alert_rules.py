"""The shipped alert rules (supervisor/alerts.yml, linked as config/alerts.yml) are valid
and every rule has `promtool test rules` unit tests that make it fire (series in, alerts
out: tests/data/alerts_test.yml)."""

from __future__ import annotations

import re
import subprocess

from tests.support.prometheus import REPO, RULE_TESTS, RULES, require_tool


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_rules_pass_promtool_check_rules() -> None:
    done = _promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_passes_its_promtool_unit_tests() -> None:
    done = _promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_has_a_unit_test_in_which_it_fires() -> None:
    rules = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    tests = RULE_TESTS.read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels", tests))
    assert len(rules) >= 10
    assert rules - firing == set(), "rules no unit test makes fire"


def test_the_repository_path_is_the_shipped_file() -> None:
    assert (REPO / "config" / "alerts.yml").resolve() == RULES.resolve()


def test_the_rules_ship_in_the_package() -> None:
    from importlib.resources import files

    assert "SupervisorNoLeader" in (files("supervisor") / "alerts.yml").read_text()

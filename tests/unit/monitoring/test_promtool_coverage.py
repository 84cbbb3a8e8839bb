"""Every alert rule has a promtool unit test in which it fires and one in which it stays quiet."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("promtool_tests", ROOT / "tools" / "promtool_tests.py")
promtool_tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(promtool_tests)

TEMPLATE = ROOT / "roles/monitoring/templates/etc/prometheus/rules/enclave.rules.yml.j2"
TESTS = sorted((ROOT / "tests/promtool").glob("*.test.yml"))


def test_every_alert_fires_and_stays_quiet_in_a_test():
    alerts = promtool_tests.alerts_in_template(TEMPLATE.read_text())
    assert len(alerts) == 18 and len(set(alerts)) == len(alerts)
    assert promtool_tests.coverage_problems(alerts, TESTS) == []


def test_alert_names_match_the_for_defaults():
    import yaml

    defaults = yaml.safe_load((ROOT / "roles/monitoring/vars/main.yml").read_text())["__monitoring_alert_for_defaults"]
    assert list(defaults) == promtool_tests.alerts_in_template(TEMPLATE.read_text())


def test_coverage_check_reports_missing_cases(tmp_path):
    test = tmp_path / "x.test.yml"
    test.write_text("tests:\n  - alert_rule_test:\n      - {alertname: A, exp_alerts: []}\n"
                    "      - alertname: C\n        exp_alerts: [{exp_labels: {}}]\n")
    assert promtool_tests.coverage_problems(["A", "B"], [test]) == [
        "A: no promtool test in which it fires",
        "B: no promtool test in which it fires",
        "B: no promtool test in which it stays quiet",
        "C: tested but not defined in the rules",
    ]

"""Prepare the promtool unit tests of the alert rules and check their coverage.

  promtool_tests.py RULES TESTS_DIR OUT_DIR   write OUT_DIR/<test>.yml beside a copy of RULES
  promtool_tests.py --coverage TEMPLATE TESTS_DIR   only check coverage (no promtool needed)

promtool compares annotations exactly. The tests in TESTS_DIR state the labels and
the templated ``summary`` of each expected alert; the static ``description`` and
``runbook`` of that alert are copied in from RULES, so the runbook text lives in one
place. Coverage: every alert in the rules has a test in which it fires and one in
which it stays quiet (an ``exp_alerts: []`` case).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import yaml

TEMPLATED = ("summary",)


def alerts_in_template(text: str) -> list[str]:
    """Alert names of a rules file or template, in order."""
    return re.findall(r"^\s*-\s*alert:\s*(\S+)\s*$", text, flags=re.MULTILINE)


def static_annotations(rules: dict) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                found[rule["alert"]] = {k: v for k, v in (rule.get("annotations") or {}).items()
                                        if k not in TEMPLATED}
    return found


def coverage_problems(alerts: list[str], test_files: list[Path]) -> list[str]:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in test_files:
        for group in (yaml.safe_load(path.read_text()) or {}).get("tests", []):
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = []
    for alert in alerts:
        if alert not in fires:
            problems.append(f"{alert}: no promtool test in which it fires")
        if alert not in quiet:
            problems.append(f"{alert}: no promtool test in which it stays quiet")
    for name in sorted((fires | quiet) - set(alerts)):
        problems.append(f"{name}: tested but not defined in the rules")
    return problems


def prepare(rules_path: Path, tests_dir: Path, out_dir: Path) -> list[Path]:
    rules = yaml.safe_load(rules_path.read_text())
    annotations = static_annotations(rules)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rules_path.resolve() != (out_dir / rules_path.name).resolve():
        shutil.copyfile(rules_path, out_dir / rules_path.name)
    written = []
    for path in sorted(tests_dir.glob("*.test.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc.get("tests", []):
            for case in group.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    merged = dict(annotations.get(case["alertname"], {}))
                    merged.update(alert.get("exp_annotations") or {})
                    alert["exp_annotations"] = merged
        target = out_dir / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coverage", action="store_true")
    parser.add_argument("rules", type=Path)
    parser.add_argument("tests", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    args = parser.parse_args(argv)
    tests = sorted(args.tests.glob("*.test.yml"))
    problems = coverage_problems(alerts_in_template(args.rules.read_text()), tests)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems or args.coverage:
        return 1 if problems else 0
    if args.out is None:
        parser.error("OUT_DIR is needed unless --coverage is given")
    for path in prepare(args.rules, args.tests, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

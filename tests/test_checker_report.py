"""Report renderers: terminal table, JSON, JUnit XML round trip, files on disk."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from fleet.checker import INVARIANTS, Budgets, check
from fleet.checker.report import junit_xml, terminal, to_json, write_reports
from tests.test_checker import drill


def test_junit_round_trips_with_one_testcase_per_invariant() -> None:
    verdict = check(drill(zombie=True), Budgets())
    root = ET.fromstring(junit_xml(verdict, "drill smoke"))
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == list(INVARIANTS)
    assert root.find("testsuite").get("failures") == "1"  # type: ignore[union-attr]
    failing = {c.get("name"): c.find("failure") for c in cases}
    assert [n for n, f in failing.items() if f is not None] == ["no-zombie"]
    failure = failing["no-zombie"]
    assert failure is not None
    assert "dev-0001" in (failure.get("message") or "")
    text = failure.text or ""
    assert "thing=dev-0001 job_id=rollout-1" in text
    assert "UpdateJobExecution" in text  # the offending event is quoted


def test_junit_of_a_passing_drill_has_no_failures() -> None:
    root = ET.fromstring(junit_xml(check(drill(), Budgets()), "good"))
    assert root.findall(".//failure") == []
    outs = [c.findtext("system-out") for c in root.iter("testcase")]
    assert all(o and o.startswith("checked=") for o in outs)


def test_terminal_table_names_each_invariant_and_the_first_evidence() -> None:
    text = terminal(check(drill(notice={"dev-0002": 7.0}), Budgets()))
    for name in INVARIANTS:
        assert name in text
    row = next(line for line in text.splitlines() if line.startswith("notice "))
    assert "FAIL" in row
    assert "dev-0002" in row
    assert "rollout-1" in row
    assert "detection latency" in text
    assert "p99=" in text
    assert text.rstrip().endswith("VERDICT: FAIL (notice)")


def test_json_report_is_serialisable_and_complete() -> None:
    data = to_json(check(drill(survivor=True), Budgets()))
    again = json.loads(json.dumps(data))
    assert again["passed"] is False
    assert again["failed"] == ["service"]
    assert [r["name"] for r in again["results"]] == list(INVARIANTS)
    v = next(r for r in again["results"] if r["name"] == "service")["violations"][0]
    assert v["thing_name"] == "dev-0003"
    assert v["job_id"] == "hotfix-1"
    assert v["evidence"]
    assert again["metrics"]["detection_latency"]["count"] == 3


def test_write_reports_writes_json_and_junit(tmp_path: Path) -> None:
    verdict = check(drill(), Budgets())
    paths = write_reports(verdict, tmp_path / "reports", Path("drills/smoke.jsonl"))
    assert [p.name for p in paths] == ["report.json", "junit.xml"]
    data = json.loads(paths[0].read_text(encoding="utf-8"))
    assert data["history"] == "drills/smoke.jsonl"
    assert data["passed"] is True
    assert ET.parse(paths[1]).getroot().find("testsuite") is not None


def test_every_execution_created_is_accounted_for() -> None:
    """The executions line: each execution a CreateJob created, by what became of it."""
    from pathlib import Path

    from devicesim.wire import history
    from fleet.checker import check
    from fleet.checker.report import figure_rows

    ops = history.read(Path(__file__).parent / "histories" / "force-delete-10.jsonl")
    verdict = check(ops)
    counts = verdict.metrics.executions
    created = sum(len(set(op.value["request"]["targets"])) for op in ops
                  if op.f == "CreateJob" and op.type.value == "ok")
    assert sum(counts.values()) == created == 20
    assert counts["unaccounted"] == 0
    assert counts["deleted"] == 7  # the 7 devices mid-step at the force-delete
    assert verdict.metrics.mid_step == 7
    assert counts["succeeded"] == verdict.metrics.terminal_updates
    rows = dict(figure_rows(verdict))
    assert rows["executions"] == "20 created: succeeded 13, deleted 7, unaccounted 0"

"""Verdicts you can trust: grading (INCONCLUSIVE, per-behaviour cases), the completeness of
the history (``complete``), device order by ``seq``, at-least-once replies, the reports and
``fleet check``'s exit status. Hand-written histories built on :func:`tests.test_checker.drill`
(three devices; rollout-1 force-deleted under dev-0001 and dev-0002, hotfix-1 force-canceled
under dev-0003)."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from devicesim.recording import Waiting
from devicesim.wire.history import Op, OpType
from fleet import cli
from fleet.checker import Budgets, Requirements, Status, check
from fleet.checker.report import junit_xml, to_json
from fleet.drill import spec
from fleet.drill.progress import Progress
from tests.test_checker import T0, THINGS, drill

BEHAVIOURS = {"dev-0001": "reference", "dev-0002": "reference", "dev-0003": "stuck"}


def with_start(ops: list[Op], **value: Any) -> list[Op]:
    """The history with its ``start`` marker's value extended."""
    return [dataclasses.replace(op, value={**op.value, **value})
            if op.process == "drill" and op.f == "start" else op for op in ops]


def numbered(ops: list[Op]) -> list[Op]:
    """Device events numbered per device (``seq`` 1, 2, ... in history order) and the counts
    in ``final-state.eventCounts``, as the drill runner records them."""
    counts: dict[str, int] = defaultdict(int)
    out = []
    for op in ops:
        if op.f.startswith("device:"):
            counts[op.process] += 1
            op = dataclasses.replace(op, value={**op.value, "seq": counts[op.process]})
        out.append(op)
    return [dataclasses.replace(op, value={**op.value, "eventCounts": dict(counts)})
            if op.f == "final-state" else op for op in out]


def marker(f: str, t: float, **value: Any) -> Op:
    return Op(time=T0 + t, process="drill", type=OpType.INFO, f=f, value=value)


def good() -> list[Op]:
    return numbered(with_start(drill(), behaviours=BEHAVIOURS))


def test_the_good_history_passes_with_cases_per_behaviour() -> None:
    verdict = check(good(), Budgets())
    assert verdict.status is Status.PASS, [(r.name, r.status, r.notes) for r in verdict.results]
    notice = verdict.result("notice")
    assert dict(notice.cases_by_behaviour) == {"reference": 2, "stuck": 1}
    assert verdict.result("complete").cases_by_behaviour == {"reference": 2, "stuck": 1}
    assert verdict.result("reuse").status is Status.PASS  # rollout-1 is reused


# --- grading --------------------------------------------------------------------------------


def test_a_behaviour_with_too_few_notice_cases_is_inconclusive_never_pass() -> None:
    ops = with_start(good(), requirements={"noticePerBehaviour": 2})
    verdict = check(ops, Budgets())
    assert verdict.status is Status.INCONCLUSIVE
    assert verdict.inconclusive == ["notice"]
    notes = verdict.result("notice").notes
    assert any("INCONCLUSIVE for stuck: 1 notice cases" in n for n in notes), notes
    assert not any("for reference" in n for n in notes)


def test_too_small_a_share_of_the_targeted_devices_is_inconclusive() -> None:
    # all three devices are targeted and all three were caught: 100% is enough, but a
    # requirement the history cannot reach is not
    assert check(with_start(good(), requirements={"noticeFraction": 1.0})).passed
    short = check(good(), Budgets(), Requirements(notice_fraction=1.0, notice_per_behaviour=5))
    assert short.status is Status.INCONCLUSIVE


def test_requirements_given_to_check_override_the_start_marker() -> None:
    ops = with_start(good(), requirements={"noticePerBehaviour": 2})
    assert check(ops, Budgets(), Requirements(notice_per_behaviour=1)).passed


def test_an_invariant_with_no_cases_is_no_cases_and_a_failure_still_fails() -> None:
    ops = [op for op in good() if not (op.process == "dev-0003" and op.f == "device:lost_access")]
    verdict = check(ops, Budgets())
    assert verdict.status is Status.FAIL
    assert "notice" in verdict.failed


def test_a_history_without_any_job_is_not_a_pass() -> None:
    ops = [marker("start", 0.0, behaviours=BEHAVIOURS), marker("final-state", 1.0),
           marker("end", 1.1)]
    verdict = check(ops, Budgets())
    assert verdict.status is Status.INCONCLUSIVE
    assert any("no job targeted" in n for n in verdict.result("notice").notes)


# --- complete -------------------------------------------------------------------------------


def complete_problem(ops: list[Op]) -> str:
    verdict = check(ops, Budgets())
    assert verdict.status is Status.FAIL
    assert "complete" in verdict.failed
    return " | ".join(v.message for v in verdict.result("complete").violations)


def test_a_history_cut_short_fails_complete() -> None:
    ops = [op for op in good() if op.f != "end"]
    assert "no end marker" in complete_problem(ops)
    assert "no drill start marker" in complete_problem([op for op in good() if op.f != "start"])


@pytest.mark.parametrize(("extra", "says"), [
    (marker("timeout", 29.0, seconds=30.0, waitingFor="the fleet to settle"),
     "did not settle before the drill's timeout (30.0 s); it was waiting for the fleet to "
     "settle"),
    (marker("stalled", 29.0, seconds=11.0, waitingFor="step 2", seen={"idleDevices": 1}),
     "stalled: nothing happened for 11.0 s; it was waiting for step 2"),
    (marker("failure", 2.0, where="device dev-0002", error="RuntimeError: boom"),
     "device dev-0002 failed: RuntimeError: boom"),
    (marker("drain", 29.0, complete=False, seconds=10.0, unanswered=2, devicesMissingEvents=1),
     "after waiting 10.0 s the recorder still missed 2 replies and the events of 1 devices"),
], ids=["timeout", "stalled", "failure", "drain"])
def test_markers_of_an_unhealthy_run_fail_complete(extra: Op, says: str) -> None:
    assert says in complete_problem([*good(), extra])


def test_an_event_lost_in_the_middle_of_a_sequence_fails_complete() -> None:
    ops = good()
    middle = next(i for i, op in enumerate(ops) if op.process == "dev-0002"
                  and op.value.get("seq") == 3)
    assert "1 device events were never recorded, from 1 devices: dev-0002 (1)" in \
        complete_problem(ops[:middle] + ops[middle + 1:])


def test_events_lost_at_the_end_of_a_sequence_are_seen_through_the_device_count() -> None:
    ops = good()
    last = max(i for i, op in enumerate(ops) if op.process == "dev-0003"
               and op.f.startswith("device:"))
    # without the device's own count nothing would show the loss: the seqs left are 1..n-1
    assert "dev-0003 (1)" in complete_problem(ops[:last] + ops[last + 1:])


def test_without_event_counts_the_end_of_a_sequence_is_a_note() -> None:
    ops = [dataclasses.replace(op, value={k: v for k, v in op.value.items()
                                          if k != "eventCounts"}) for op in good()]
    verdict = check(ops, Budgets())
    assert verdict.passed
    assert any("events lost at the end" in n for n in verdict.result("complete").notes)


# --- order, duplicates ----------------------------------------------------------------------


def test_a_redelivered_device_event_is_one_event() -> None:
    ops = good()
    lost = next(op for op in ops if op.process == "dev-0001" and op.f == "device:lost_access")
    again = dataclasses.replace(lost, time=lost.time + 5.0)  # redelivered (QoS 1), later
    verdict = check([*ops, again], Budgets())
    assert verdict.passed
    assert any("delivered more than once" in n for n in verdict.result("complete").notes)
    assert verdict.metrics.detection_latency == check(ops, Budgets()).metrics.detection_latency


def test_a_disconnected_event_arriving_after_the_reconnect_still_closes_the_spell() -> None:
    """dev-0001 is offline around the removal; its queued ``disconnected`` reaches the
    recorder after its ``connected``. The spell is read in ``seq`` order from the device's
    own timestamp: dev-0001 is judged from its reconnection, not dropped as never
    reachable again (it was, before the checker ordered by ``seq``)."""
    base = drill(notice={"dev-0001": 0.35})
    removal = next(op.time for op in base if op.f == "execution-event"
                   and op.value["operation"] == "deleted" and "dev-0001" in str(op.value))
    ops = [op for op in base]
    ops.append(Op(time=removal + 0.31, process="dev-0001", type=OpType.INFO,
                  f="device:connected", value={"kind": "connected", "thingName": "dev-0001",
                                               "timestamp": removal + 0.3}))
    ops.append(Op(time=removal + 0.32, process="dev-0001", type=OpType.INFO,
                  f="device:disconnected", value={"kind": "disconnected",
                                                  "thingName": "dev-0001",
                                                  "timestamp": removal - 0.2}))
    ops = numbered(with_start(sorted(ops, key=lambda op: op.time), behaviours=BEHAVIOURS))
    # give the late `disconnected` the seq before `connected`, as the device numbered them
    seqs = {op.f: op.value["seq"] for op in ops if op.process == "dev-0001"
            and op.f in ("device:connected", "device:disconnected")
            and op.time > removal}
    fixed = [dataclasses.replace(op, value={**op.value, "seq": seqs["device:connected"]
                                            if op.f == "device:disconnected"
                                            else seqs["device:disconnected"]})
             if op.process == "dev-0001" and op.time > removal
             and op.f in ("device:connected", "device:disconnected") else op for op in ops]
    verdict = check(fixed, Budgets())
    notice = verdict.result("notice")
    assert notice.cases_by_behaviour.get("reference") == 2, notice
    assert not any("never reachable" in n for n in notice.notes), notice.notes
    assert verdict.passed, [(r.name, [v.message for v in r.violations])
                            for r in verdict.results]
    # the clock started at the reconnection: detection latency 0.05 s, not 0.35 s
    assert verdict.metrics.detection_latency.max_ms is not None
    assert verdict.metrics.detection_latency.max_ms < 340


def test_an_identical_reply_delivered_twice_is_one_reply() -> None:
    ops = good()
    reply = next(op for op in ops if op.type is OpType.OK and op.process in THINGS)
    verdict = check([*ops, dataclasses.replace(reply, time=reply.time + 0.5)], Budgets())
    assert verdict.passed
    assert any("replies were delivered more than once" in n
               for n in verdict.result("complete").notes)


def test_every_request_is_judged_to_the_end_of_the_history() -> None:
    ops = good()
    end = max(op.time for op in ops)
    late = Op(time=end - 0.05, process="dev-0001", type=OpType.INVOKE,
              f="GetPendingJobExecutions",
              value={"topic": "$aws/things/dev-0001/jobs/get", "jobId": None,
                     "clientToken": "late-1", "payload": {"clientToken": "late-1"}})
    verdict = check([*ops, late], Budgets())
    assert verdict.failed == ["answered"]


# --- reports and fleet check ----------------------------------------------------------------


def test_reports_show_inconclusive_as_an_error_and_no_cases_as_skipped() -> None:
    verdict = check(with_start(good(), requirements={"noticePerBehaviour": 2}), Budgets())
    root = ET.fromstring(junit_xml(verdict, "drill"))
    notice = root.find(".//testcase[@name='notice']")
    assert notice is not None
    assert notice.find("error") is not None
    assert root.find(".//testsuite").get("errors") == "1"  # type: ignore[union-attr]
    data = to_json(verdict)
    assert data["status"] == "INCONCLUSIVE"
    assert data["inconclusive"] == ["notice"]
    assert data["results"][1]["cases_by_behaviour"] == {"reference": 2, "stuck": 1}


def write(path: Path, ops: list[Op]) -> Path:
    path.write_text("".join(op.to_line() + "\n" for op in ops), encoding="utf-8")
    return path


def test_fleet_check_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", str(write(tmp_path / "good.jsonl", good()))]) == 0
    inconclusive = with_start(good(), requirements={"noticePerBehaviour": 2})
    assert cli.main(["check", str(write(tmp_path / "few.jsonl", inconclusive))]) == 3
    assert "verdict: INCONCLUSIVE (notice)" in capsys.readouterr().out
    assert cli.main(["check", str(write(tmp_path / "empty.jsonl", []))]) == 1
    assert "verdict: FAIL (complete)" in capsys.readouterr().out


# --- the drill's side: requirements, progress -----------------------------------------------


def test_drill_files_take_checks_with_one_line_errors(tmp_path: Path) -> None:
    base = 'name = "x"\n[[steps]]\naction = "settle"\n'
    assert spec.parse(base, source="x.toml").checks == Requirements(notice_fraction=0.2)
    d = spec.parse(base + "[checks]\nnotice_fraction = 0.5\nnotice_per_behaviour = 3\n",
                   source="x.toml")
    assert d.checks == Requirements(notice_fraction=0.5, notice_per_behaviour=3)
    with pytest.raises(spec.DrillError, match="checks.notice_fraction: expected a fraction"):
        spec.parse(base + "[checks]\nnotice_fraction = 2\n", source="x.toml")
    with pytest.raises(spec.DrillError, match="checks.colour"):
        spec.parse(base + "[checks]\ncolour = 1\n", source="x.toml")
    with pytest.raises(spec.DrillError, match="stall_seconds"):
        spec.parse('stall_seconds = 0\n' + base, source="x.toml")


def test_progress_ignores_an_older_event_arriving_late_and_tracks_replies() -> None:
    p = Progress()

    def event(kind: str, seq: int) -> Op:
        return Op(time=T0, process="dev-0001", type=OpType.INFO, f=f"device:{kind}",
                  value={"kind": kind, "seq": seq})

    p.observe(event("idle", 2))
    p.observe(event("job_started", 1))  # queued while offline, arrives late
    assert p.idle(["dev-0001"])
    request = Op(time=T0, process="dev-0001", type=OpType.INVOKE, f="StartNextPendingJobExecution",
                 value={"clientToken": "t1"})
    p.observe(request)
    assert set(p.unanswered) == {("dev-0001", "StartNextPendingJobExecution", "t1")}
    p.observe(dataclasses.replace(request, type=OpType.OK))
    p.observe(request)  # redelivered after its reply: not waiting again
    assert not p.unanswered


def test_a_request_stops_waiting_when_retried_given_up_or_its_device_loses_power() -> None:
    """What the drain waits for: a request its device retried under another token (lost
    with a network cut), gave up with its job (lost_access) or lost with its power is no
    longer awaited; another job's request or another operation still is."""
    w = Waiting()

    def ask(thing: str, f: str, token: str, job: str | None = "j1") -> Op:
        return Op(time=T0, process=thing, type=OpType.INVOKE, f=f,
                  value={"clientToken": token, **({"jobId": job} if job else {})})

    update, describe = "UpdateJobExecution", "DescribeJobExecution"
    for op in (ask("a", update, "1"), ask("a", describe, "2"), ask("b", update, "3"),
               ask("b", update, "4", job="j2"), ask("c", "StartNextPendingJobExecution", "5",
                                                    job=None)):
        w.observe(op)
    assert len(w) == 5
    w.observe(ask("a", update, "6"))  # retried: "1" is not awaited, "6" is
    w.observe(ask("c", "StartNextPendingJobExecution", "7", job=None))
    assert set(w) == {("a", update, "6"), ("a", describe, "2"), ("b", update, "3"),
                      ("b", update, "4"), ("c", "StartNextPendingJobExecution", "7")}
    w.observe(Op(time=T0, process="b", type=OpType.INFO, f="device:lost_access",
                 value={"jobId": "j1"}))
    assert ("b", update, "3") not in set(w)
    assert ("b", update, "4") in set(w)
    w.forget(["a"])
    w.answer(("c", "StartNextPendingJobExecution", "7"))
    w.answer(("c", "StartNextPendingJobExecution", "7"))  # twice: counted once
    assert set(w) == {("b", update, "4")}
    assert len(w) == 1
    w.observe(dataclasses.replace(ask("b", update, "4", job="j2"), type=OpType.FAIL))
    assert len(w) == 0
    assert not list(w)


def test_reading_a_history_line_by_line_roundtrips_json() -> None:
    op = good()[0]
    assert json.loads(op.to_line())["f"] == "start"


def test_drill_files_take_group_steps_and_job_configurations_with_one_line_errors() -> None:
    head = 'name = "g"\n'
    good = head + '''
[[steps]]
action = "create-group"
group = "fleet"
fraction = 0.5
[[steps]]
action = "create-job"
job = "ota"
group = "fleet"
target_selection = "CONTINUOUS"
rollout = { maximumPerMinute = 100 }
abort = { criteriaList = [ { failureType = "ALL", action = "CANCEL", \
thresholdPercentage = 10, minNumberOfExecutedThings = 5 } ] }
retry = { criteriaList = [ { failureType = "FAILED", numberOfRetries = 2 } ] }
document = { operation = "sleep" }
'''
    steps = spec.parse(good, source="g.toml").steps
    assert (steps[0].group, steps[0].fraction) == ("fleet", 0.5)
    assert (steps[1].group, steps[1].target_selection, steps[1].rollout) == (
        "fleet", "CONTINUOUS", {"maximumPerMinute": 100})
    for bad, message in (
            ('[[steps]]\naction = "add-to-group"\n', r"steps\[0\].group: required by action"),
            ('[[steps]]\naction = "create-group"\ngroup = "no spaces"\n',
             r"steps\[0\].group: expected 1-128 characters"),
            ('[[steps]]\naction = "create-job"\njob = "j"\ngroup = "g"\ntargets = 0.5\n'
             'document = { operation = "sleep" }\n', r"steps\[0\].targets: a job on a group"),
            ('[[steps]]\naction = "create-job"\njob = "j"\nrollout = { maximumPerMinute = 0 }'
             '\ndocument = { operation = "sleep" }\n',
             r"steps\[0\].rollout: jobExecutionsRolloutConfig.maximumPerMinute: must be an "
             r"integer from 1 to 1000"),
            ('[[steps]]\naction = "create-job"\njob = "j"\ntarget_selection = "SOMETIMES"\n'
             'document = { operation = "sleep" }\n',
             r"steps\[0\].target_selection: expected SNAPSHOT or CONTINUOUS")):
        with pytest.raises(spec.DrillError, match=message):
            spec.parse(head + bad, source="g.toml")

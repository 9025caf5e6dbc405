"""Drills that stay meaningful at any size.

* A drill is paced for a fleet size (``paced_for``, by default the ``devices`` its file
  names): a bigger ``--devices`` stretches every duration of its schedule -- job documents'
  steps, ``at`` times, the timeout -- by ``devices / paced_for``, so the service sees the
  request rate the drill was written for and the same share of the fleet is mid-step at a
  removal. A smaller fleet runs as written.
* The one at size (slow): a 2,000-device force-delete drill over two worker processes passes
  with ``notice`` above its minimum (20 % of the targeted devices) and no event lost.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fleet.checker import Status
from fleet.cli import build_parser
from fleet.drill import spec
from fleet.drill.cli import _drill_from
from fleet.drill.runner import RunOptions, run

BASE = 'name = "x"\ndevices = 100\ntimeout = 30\n[[steps]]\naction = "settle"\n'


def test_a_drill_is_paced_for_its_own_fleet_unless_it_says_otherwise() -> None:
    drill = spec.parse(BASE, source="x.toml")
    assert drill.paced_for == 100
    assert drill.pace == 1.0
    assert dataclasses.replace(drill, devices=50).pace == 1.0  # smaller: as written
    assert dataclasses.replace(drill, devices=1000).pace == 10.0
    paced = spec.parse("paced_for = 1000\n" + BASE, source="x.toml")
    assert dataclasses.replace(paced, devices=1000).pace == 1.0
    assert dataclasses.replace(paced, devices=2500).pace == 2.5
    with pytest.raises(spec.DrillError, match="paced_for: expected at least 1"):
        spec.parse("paced_for = 0\n" + BASE, source="x.toml")


@pytest.mark.parametrize(("devices", "timeout"), [(None, 45.0), (100, 45.0), (1000, 45.0),
                                                  (10000, 450.0)])
def test_the_timeout_stretches_with_the_pace_not_with_the_fleet(devices: int | None,
                                                               timeout: float) -> None:
    # force-delete is paced for 1,000 devices: 10,000 take ten times as long, not a hundred
    argv = ["drill", "force-delete"] + ([] if devices is None else ["--devices", str(devices)])
    drill = _drill_from(build_parser().parse_args(argv))
    assert drill.timeout == timeout


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_2000_device_drill_over_two_workers_passes_with_enough_cases(
        tmp_path: Path) -> None:
    drill = dataclasses.replace(spec.load("force-delete"), devices=2000)
    drill = dataclasses.replace(drill, timeout=drill.timeout * drill.pace)  # as the CLI does
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} workers=2 "
          f"pace={drill.pace}")
    result = await run(drill, RunOptions(report_dir=tmp_path, workers=2))
    verdict = result.verdict
    assert not result.timed_out
    assert verdict.status is Status.PASS, [(r.name, r.status, r.notes[:2], r.violations[:2])
                                           for r in verdict.results if not r.passed]
    notice = verdict.result("notice")
    assert notice.checked >= 0.2 * drill.devices, notice.checked
    assert verdict.result("complete").passed  # no event, request or reply lost
    drain = next(op for op in result.ops if op.f == "drain")
    assert drain.value["complete"] is True, drain.value
    assert drain.value["devicesMissingEvents"] == 0
    # the schedule ran paced: twice as long as written for 1,000 devices
    start = next(op for op in result.ops if op.f == "start")
    assert start.value["pace"] == 2.0
    create = next(op.value["request"] for op in result.ops if op.f == "CreateJob"
                  and op.value["request"]["jobId"] == "rollout-1")
    steps = {s["name"]: s["seconds"] for s in json.loads(create["document"])["steps"]}
    assert steps == {"download": 2.0, "install": 4.0, "reboot": 1.0, "verify": 1.0}

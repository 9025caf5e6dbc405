"""Drills as tests: every built-in drill passes with correct devices, and each faulty
behaviour makes its drill fail on the invariant that catches it (that is how we know the
checker works). Each drill runs on its own embedded Mosquitto, as `fleet drill` does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fleet.checker import Status
from fleet.drill import spec
from fleet.drill.runner import DrillResult, RunOptions, run

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 24


async def drill_result(name: str, tmp_path: Path, **changes: object) -> DrillResult:
    drill = dataclasses.replace(spec.load(name), devices=DEVICES, **changes)
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} "
          f"mix={drill.mix or drill.behaviour}")
    return await run(drill, RunOptions(report_dir=tmp_path))


def failed(result: DrillResult) -> set[str]:
    return {r.name for r in result.verdict.results if not r.passed}


@pytest.mark.parametrize("name", spec.builtin_names())
async def test_builtin_drill_passes_with_reference_devices(name: str, tmp_path: Path) -> None:
    result = await drill_result(name, tmp_path)
    assert not result.timed_out
    assert failed(result) == set(), [v.message for r in result.verdict.results
                                     for v in r.violations[:3]]
    # enough cases, too: an INCONCLUSIVE built-in drill proves nothing
    assert result.verdict.status is Status.PASS, [
        n for r in result.verdict.results for n in r.notes if n.startswith("INCONCLUSIVE")]
    assert (tmp_path / "history.jsonl").stat().st_size > 0


async def test_force_delete_drill_with_sdk_devices(tmp_path: Path) -> None:
    result = await drill_result("force-delete", tmp_path, behaviour="sdk", mix={})
    assert failed(result) == set()
    assert result.verdict.result("notice").checked > 0


async def test_force_delete_drill_measures_detection(tmp_path: Path) -> None:
    result = await drill_result("force-delete", tmp_path)
    notice = result.verdict.result("notice")
    assert notice.passed
    assert notice.checked > 0
    assert result.verdict.metrics.detection_latency.count == notice.checked


@pytest.mark.parametrize(("behaviour", "drill", "catches"), [
    ("stuck", "force-delete", {"notice"}),
    ("no-rollback", "force-delete", {"valid-end"}),
    ("zombie", "force-delete", {"no-zombie"}),
    ("reuse-confused", "jobid-reuse", {"reuse"}),
])
async def test_faulty_behaviour_fails_its_drill(behaviour: str, drill: str,
                                                catches: set[str], tmp_path: Path) -> None:
    # a faulty fleet never settles: a short timeout keeps the test quick
    result = await drill_result(drill, tmp_path, behaviour=behaviour, mix={}, timeout=15.0)
    assert not result.verdict.passed
    assert catches <= failed(result), failed(result)


async def test_force_delete_drill_with_devices_in_worker_processes(tmp_path: Path) -> None:
    drill = dataclasses.replace(spec.load("force-delete"), devices=DEVICES)
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} workers=2")
    result = await run(drill, RunOptions(report_dir=tmp_path, workers=2))
    assert not result.timed_out
    assert failed(result) == set()
    assert result.verdict.result("notice").checked > 0
    things = {op.process for op in result.ops if op.f == "device:job_started"}
    assert len(things) == DEVICES  # every device, from both `devicesim run` children

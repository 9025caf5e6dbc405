"""The worked plugin example in ``examples/``: it resolves as a plugin, passes a real
force-delete drill (each on its own embedded Mosquitto, as ``fleet drill`` does), works from
the command line as ``examples/README.md`` says, and bad plugin specs give one-line errors."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from devicesim.agent import AgentConfig
from devicesim.behaviours import Behaviour, Via, resolve
from devicesim.wire.history import OpType
from fleet.drill import spec
from fleet.drill.runner import RunOptions, run

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PLUGIN = "my_firmware.behaviour:CautiousDevice"
DEVICES = 10


@pytest.fixture
def examples_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))


@pytest.mark.usefixtures("examples_on_path")
def test_plugin_resolves_to_a_documented_behaviour() -> None:
    device = resolve(PLUGIN)
    assert isinstance(device, Behaviour)
    assert type(device).__name__ == "CautiousDevice"
    assert device.poll_interval == 0.5
    assert device.subscribes_notify_next
    assert device.aborts_on_notify_next
    config = device.tune(AgentConfig())
    assert (config.reply_timeout, config.max_attempts) == (5.0, 3)
    # only documented hooks: the attributes and methods the plugin interface lists
    documented = {"name", "subscribes_notify_next", "aborts_on_notify_next",
                  "starts_from_notify_next", "asks_next_when_done", "poll_interval",
                  "identifies_work_by_job_id_only", "transport", "strict_updates",
                  "on_lost_access", "tune"}
    overridden = {k for k in vars(type(device)) if not k.startswith("__")}
    assert overridden <= documented, overridden - documented


@pytest.mark.usefixtures("examples_on_path")
async def test_force_delete_drill_with_the_plugin_passes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    drill = dataclasses.replace(spec.load("force-delete"), devices=DEVICES, behaviour=PLUGIN,
                                mix={})
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} behaviour={PLUGIN}")
    with caplog.at_level(logging.WARNING, logger="my_firmware.behaviour"):
        result = await run(drill, RunOptions(report_dir=tmp_path))

    verdict = result.verdict
    assert not result.timed_out
    assert verdict.passed, [v.message for r in verdict.results for v in r.violations[:3]]
    assert verdict.result("notice").checked > 0  # some devices really were mid-step
    assert (tmp_path / "history.jsonl").stat().st_size > 0

    lost = [op.value for op in result.ops if op.f == "device:lost_access"]
    # the plugin's own report: one log line per recovery, naming how the device noticed
    lines = [r.getMessage() for r in caplog.records if r.name == "my_firmware.behaviour"]
    print("\n".join(lines))
    assert len(lines) == len(lost) > 0
    reported = Counter(re.search(r" reason=(\S+) ", line).group(1)  # type: ignore[union-attr]
                       for line in lines)
    assert reported == Counter(e["reason"] for e in lost)
    vias = {re.search(r" via=(\S+) ", line).group(1) for line in lines}  # type: ignore[union-attr]
    assert vias <= {v.value for v in Via}
    # its periodic describe ran: the reference device sends none in this drill
    describes = [op for op in result.ops if op.f == "DescribeJobExecution"
                 and op.type is OpType.INVOKE and op.value.get("jobId") != "$next"]
    assert describes


@pytest.mark.parametrize(("name", "message"), [
    ("my_firmware.behaviour", "unknown (known: "),
    ("my_firmware.behaviour:", "expected 'package.module:Class'"),
    ("my_firmware.behaviour:Missing", "module 'my_firmware.behaviour' has no 'Missing'"),
    ("my_firmware.nowhere:CautiousDevice", "cannot import 'my_firmware.nowhere'"),
    ("my_firmware.behaviour:log", "not a subclass of devicesim.behaviours.Behaviour"),
    ("my_firmware.behaviour:Reaction", "not a subclass of devicesim.behaviours.Behaviour"),
])
@pytest.mark.usefixtures("examples_on_path")
def test_bad_plugin_spec_is_a_one_line_error(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        resolve(name)
    text = str(caught.value)
    assert text.startswith(f"behaviour {name!r}: ")
    assert "\n" not in text


def _fleet(*args: str, pythonpath: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "fleet.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90, check=False)


def test_readme_command_runs_the_plugin_drill(tmp_path: Path) -> None:
    done = _fleet("drill", "force-delete", "--devices", "4", "--behaviour", PLUGIN,
                  "--report-dir", str(tmp_path), pythonpath="examples")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "verdict: PASS" in done.stdout


def test_cli_without_the_plugin_on_the_path_is_a_one_line_error(tmp_path: Path) -> None:
    done = _fleet("drill", "force-delete", "--devices", "4", "--behaviour", PLUGIN,
                  "--report-dir", str(tmp_path), pythonpath=None)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"fleet drill: behaviour {PLUGIN!r}: cannot import 'my_firmware.behaviour': "
        "No module named 'my_firmware'"]


def test_the_examples_pytest_file_passes_through_the_plugin(tmp_path: Path) -> None:
    """examples/test_my_firmware.py, as a firmware team runs its tests: the plugin comes
    with the package; CautiousDevice passes a force-delete drill and a job, and its faulty
    variant fails the drill on the invariants it breaks (the test asserts which)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "pytest", "examples/", "-p",
                           "no:cacheprovider", "-v", "--devicesim-reports", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    print(done.stdout[-3000:], done.stderr[-2000:])
    assert done.returncode == 0
    assert re.search(r"^=+ 3 passed", done.stdout, re.MULTILINE), done.stdout[-500:]
    for test, drill in (("test_cautious_device_recovers_from_a_force_delete", "force-delete"),
                        ("test_the_checker_catches_a_device_that_boots_a_half_written_image",
                         "force-delete")):
        reports = list(tmp_path.glob(f"test_my_firmware_py__{test}-*/{drill}/report.json"))
        assert len(reports) == 1, sorted(p.name for p in tmp_path.iterdir())

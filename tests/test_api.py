"""The Python API (fleet/api.py): the jobs service, device fleets and drills from code, in
their synchronous form (each on a loop of its own in a background thread) and their async
form (on the caller's loop); the outcome object; one-line errors for bad arguments."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from devicesim.behaviours import Behaviour, LostAccessNotice, Reaction, behaviour_name
from devicesim.mqtt import SECRET_ENV
from devicesim.wire import history
from fleet import api
from fleet.broker import BrokerAddress, BrokerError, free_port
from fleet.checker import Status, check
from fleet.drill import spec

HISTORIES = Path(__file__).parent / "histories"
SLEEP = json.dumps({"operation": "sleep", "seconds": 0.1})


class Careful(Behaviour):
    """A plugin behaviour defined in a test module: named by ``module:Class``."""

    name = "careful"
    poll_interval = 0.5

    def on_lost_access(self, notice: LostAccessNotice) -> Reaction:
        return Reaction.RECOVER


#: a drill built in code: the structure of a drill file
DRILL = {
    "name": "in-code", "devices": 12, "timeout": 30, "seed": 3,
    "steps": [
        {"action": "create-job", "job": "update-1",
         "document": {"operation": "firmware-update", "version": "2.0.0"}},
        {"action": "force-delete-job", "job": "update-1", "when": {"started": 0.5}},
        {"action": "settle"},  # until every device is idle, nothing pending
    ],
}


def devicesim_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("devicesim-")]


# ---------------------------------------------------------------------------------------------
# the service and fleets
# ---------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_a_job_through_a_service_and_a_fleet() -> None:
    with api.jobs_service() as service:
        assert service.broker_url.startswith("mqtt://127.0.0.1:")
        with api.device_fleet(service, 3, behaviour=Careful, prefix="api-") as devices:
            assert devices.things == ["api-0000", "api-0001", "api-0002"]
            assert devices.arns == service.thing_arns(devices.things)
            assert set(devices.behaviours.values()) == {behaviour_name(Careful)}
            service.iot.create_job(jobId="j1", targets=devices.arns, document=SLEEP)
            finished = devices.wait_for("job_finished", job_id="j1", timeout=30)
            assert [(e.thing_name, e.status) for e in finished] == [
                (t, "SUCCEEDED") for t in devices.things]
            assert service.iot.describe_job(jobId="j1")["job"]["status"] == "COMPLETED"
            # the HTTPS data plane, through boto3's own client
            pending = service.jobs_data.get_pending_job_executions(thingName="api-0000")
            assert pending["inProgressJobs"] == pending["queuedJobs"] == []
            # what one device did, in order
            kinds = [str(e.kind) for e in devices.events(thing="api-0001")]
            assert kinds.index("job_started") < kinds.index("job_finished")
            assert {op.process for op in devices.ops} >= set(devices.things)
            assert devices.summary()["things"]["api-0002"]["behaviour"] == "tests.test_api:Careful"
            assert devices.failures == []
            assert service.failures == []
            with pytest.raises(TimeoutError, match=r"'lost_access': 3 of 3 devices had none "
                                                   r"after 0.2 s \(api-0000, api-0001, api-0002\)"):
                devices.wait_for("lost_access", timeout=0.2)  # nothing takes access away
            with pytest.raises(ValueError, match="dev-0000 is not a device of this fleet"):
                devices.wait_for("idle", things=["dev-0000"])
    assert devicesim_threads() == []


@pytest.mark.broker
async def test_the_async_forms_run_on_the_callers_loop() -> None:
    async with api.jobs_service_async() as service, \
            api.device_fleet_async(service, 2, mix={"reference": 1, Careful: 1}) as devices:
        assert sorted(devices.behaviours.values()) == ["reference", "tests.test_api:Careful"]
        await asyncio.to_thread(service.iot.create_job, jobId="j1", targets=devices.arns,
                                document=SLEEP)
        async with asyncio.timeout(30):
            finished = await devices.wait_for_async("job_finished", job_id="j1")
        assert {e.status for e in finished} == {"SUCCEEDED"}
        assert sum(devices.states().values()) == 2
    assert devicesim_threads() == []  # nothing ran in the background


@pytest.mark.broker
def test_service_settings_by_name() -> None:
    with api.jobs_service(settings={"region": "eu-west-1"}) as service:
        assert service.thing_arn("t") == "arn:aws:iot:eu-west-1:123456789012:thing/t"
        assert service.region == "eu-west-1"
    with pytest.raises(ValueError, match="no_such_setting"), \
            api.jobs_service(settings={"no_such_setting": 1}):
        pass


def test_a_behaviour_class_must_import_back_by_its_name() -> None:
    assert behaviour_name(Careful) == "tests.test_api:Careful"

    class Local(Behaviour):
        pass

    with pytest.raises(ValueError, match="define the class at the top level of a module"):
        behaviour_name(Local)
    from devicesim.behaviours import BEHAVIOURS

    assert behaviour_name(BEHAVIOURS["zombie"]) == "zombie"
    with pytest.raises(ValueError, match="not a name or a subclass"):
        behaviour_name(int)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# drills
# ---------------------------------------------------------------------------------------------


@pytest.mark.broker
def test_a_drill_built_in_code_passes_and_says_where_its_reports_are(tmp_path: Path) -> None:
    outcome = api.run_drill(DRILL, behaviour=Careful, report_dir=tmp_path / "r")
    print(outcome.explain())
    assert outcome.passed, outcome.explain()
    assert outcome.status is Status.PASS
    assert (outcome.name, outcome.drill.devices, outcome.drill.seed) == ("in-code", 12, 3)
    assert outcome.failed == outcome.inconclusive == []
    assert outcome.violations == []
    notice = outcome.invariants["notice"]
    assert notice.status is Status.PASS
    assert notice.checked > 0
    assert notice.cases_by_behaviour == {"tests.test_api:Careful": notice.checked}
    assert outcome.metrics.executions["deleted"] >= notice.checked  # and some were queued
    assert [p.name for p in outcome.report_paths] == ["report.json", "junit.xml",
                                                       "report.html"]
    assert all(p.parent == tmp_path / "r" and p.is_file() for p in outcome.report_paths)
    assert outcome.report_html == tmp_path / "r" / "report.html"
    assert outcome.history_path == tmp_path / "r" / "history.jsonl"
    assert outcome.history()[0].f == "start"
    assert outcome.check() is outcome
    assert repr(outcome) == f"<DrillOutcome in-code PASS report {tmp_path}/r/report.html>"
    assert devicesim_threads() == []


@pytest.mark.broker
async def test_run_drill_async_without_a_page(tmp_path: Path) -> None:
    outcome = await api.run_drill_async("force-delete", devices=8, seed=2, html=False,
                                        report_dir=tmp_path)
    assert outcome.drill.devices == 8
    assert outcome.report_html is None
    assert [p.name for p in outcome.report_paths] == ["report.json", "junit.xml"]
    assert json.loads((tmp_path / "report.json").read_text())["status"] == outcome.status


def test_a_failed_outcome_explains_itself(tmp_path: Path) -> None:
    path = HISTORIES / "reuse-confused.jsonl"
    verdict = check(history.read(path))
    outcome = api.DrillOutcome(drill=spec.load("jobid-reuse"), verdict=verdict,
                               report_dir=tmp_path, history_path=path,
                               report_paths=(tmp_path / "report.html",), seconds=4.2)
    assert not outcome.passed
    assert outcome.failed == ["notice", "progress", "reuse"]
    assert outcome.failing_devices[:2] == ["dev-0002", "dev-0003"]
    text = outcome.explain()
    lines = text.splitlines()
    assert lines[0] == f"drill jobid-reuse (100 devices, seed {outcome.drill.seed}): FAIL " \
                       "(notice, progress, reuse) in 4.2 s"
    assert any(line.startswith("  reuse: FAIL, ") and "devices dev-0002" in line
               for line in lines), text
    assert lines[-1].startswith(f"  report: {tmp_path}/report.html  (history: {path}")
    with pytest.raises(api.DrillFailed) as failed:
        outcome.check()
    assert isinstance(failed.value, AssertionError)
    assert str(failed.value) == text
    assert failed.value.outcome is outcome
    assert repr(outcome) == (f"<DrillOutcome jobid-reuse FAIL (notice, progress, reuse) devices "
                             f"dev-0002,dev-0003,dev-0004,... report {tmp_path}/report.html>")


@pytest.mark.parametrize(("drill", "changes", "message"), [
    ("no-such-drill", {}, "no-such-drill: no such drill file or built-in drill"),
    ("force-delete", {"devices": 0}, "devices: must be at least 1"),
    ("force-delete", {"behaviour": "nope"}, "behaviour 'nope': unknown"),
    ("force-delete", {"behaviour": "stuck", "mix": {"zombie": 1}}, "behaviour and mix: choose "
                                                                     "one"),
    ("force-delete", {"mix": {"zombie": -1, "reference": 2}}, "mix: zombie: a weight cannot "
                                                              "be negative"),
    ("force-delete", {"mix": {"my.module:Nope": 1}}, "cannot import 'my.module'"),
    ("force-delete", {"duration": "soon"}, "duration: 'soon' is not a duration"),
    ("force-delete", {"timeout": 0}, "timeout: must be positive"),
    ({"name": "x", "stepz": []}, {}, "x: stepz: unknown field"),
    ({"name": "x", "steps": [{"action": "explode"}]}, {}, "x: steps[0].action"),
])
def test_bad_arguments_are_one_line_errors(drill: object, changes: dict[str, object],
                                           message: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]*$") as error:
        api.drill_spec(drill, **changes)  # type: ignore[arg-type]
    assert message in str(error.value)
    with pytest.raises(ValueError, match="workers: between 1 and the fleet's 4 devices"):
        api.run_drill("force-delete", devices=4, workers=5)
    with pytest.raises(ValueError, match="count must be at least 1"), \
            api.device_fleet("mqtt://127.0.0.1:1", 0):
        pass


def test_drill_spec_changes_and_the_timeout_it_stretches() -> None:
    base = spec.load("force-delete")
    assert api.drill_spec("force-delete") == base
    size = (base.paced_for or base.devices) * 4
    bigger = api.drill_spec(base, devices=size, behaviour=Careful, seed=9)
    assert (bigger.devices, bigger.behaviour, bigger.mix, bigger.seed) == (
        size, "tests.test_api:Careful", {}, 9)
    assert bigger.timeout == base.timeout * bigger.pace > base.timeout
    assert api.drill_spec(base, devices=size, timeout=5).timeout == 5
    assert api.drill_spec(base, duration="1m30s").duration == 90
    assert api.drill_spec(DRILL).name == "in-code"
    assert "force-delete" in api.builtin_drills()


# ---------------------------------------------------------------------------------------------
# across threads and on the way out
# ---------------------------------------------------------------------------------------------


@pytest.mark.broker
async def test_waiting_on_this_loop_for_a_fleet_on_a_background_loop() -> None:
    """The sync forms (the fixtures) from an async test: ``wait_for_async`` wakes up on the
    test's loop as the fleet's own loop records the events."""
    with api.jobs_service() as service, api.device_fleet(service, 2) as devices:
        await asyncio.to_thread(service.iot.create_job, jobId="j1", targets=devices.arns,
                                document=SLEEP)
        async with asyncio.timeout(30):
            finished = await devices.wait_for_async("job_finished", job_id="j1")
        assert [e.thing_name for e in finished] == devices.things
        with pytest.raises(ValueError, match="'job_done' is not a device event"):
            await devices.wait_for_async("job_done")
    assert sum(devices.states().values()) == 2  # read after the fleet's loop closed


def child_mosquittos() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"mosquitto" in cmd:
                found.add(int(entry.name))
    return found


@pytest.mark.broker
async def test_cancelled_while_the_broker_starts_leaves_no_broker() -> None:
    before = child_mosquittos()

    async def enter() -> None:
        async with api.jobs_service_async():
            raise AssertionError("cancelled before it was up")

    task = asyncio.create_task(enter())
    await asyncio.sleep(0)  # one step: it is waiting for the broker to start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert child_mosquittos() == before


@pytest.mark.broker
def test_a_service_left_open_is_stopped_when_the_process_exits() -> None:
    script = ("from fleet import api\nfrom fleet.service import local\n"
              "service = api.jobs_service()\nservice.__enter__()\n"
              "print(*(b.pid for b in local._RUNNING), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    pid = int(done.stdout.split()[0])
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


@pytest.mark.broker
def test_a_plugin_broker_without_the_privileged_secret_is_a_clear_error(
        broker_address: BrokerAddress, monkeypatch: pytest.MonkeyPatch) -> None:
    if not broker_address.aws_semantics:
        pytest.skip("the devicesim_aws plugin is not built")
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(BrokerError, match=r"the jobs service cannot serve on it: .*"
                                          r"privileged identity: \$DEVICESIM_BROKER_SECRET"), \
            api.jobs_service(broker=broker_address.url):
        pass
    monkeypatch.setenv(SECRET_ENV, broker_address.secret or "")
    with api.jobs_service(broker=broker_address.url) as service:  # with it, it serves
        assert service.iot.list_jobs()["jobs"] == []


def test_behaviours_of_devices_that_run_elsewhere_need_not_import_here(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="cannot import 'not_here.firmware'"):
        api.drill_spec("force-delete", behaviour="not_here.firmware:Device")
    drill = api.drill_spec("force-delete", behaviour="not_here.firmware:Device",
                           import_behaviours=False)
    assert drill.behaviour == "not_here.firmware:Device"
    with pytest.raises(ValueError, match="behaviour 'nope': unknown"):  # a built-in name is
        api.drill_spec("force-delete", behaviour="nope", import_behaviours=False)  # checked
    # fleet drill --shards: the shards' hosts have the plugin, the drill's need not
    from fleet.cli import main

    port = free_port()
    assert main(["drill", "--shards", "2", "--broker", f"mqtt://127.0.0.1:{port}",
                 "--behaviour", "not_here.firmware:Device", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach broker" in err, err
    assert "not_here" not in err

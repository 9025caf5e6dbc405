"""External devices: firmware devicesim does not run, judged from its traffic alone.

Three layers: the inference (:mod:`fleet.checker.traffic`) on hand-written traffic; the
traffic-only checker against the device-event checker on recorded histories of simulated
behaviours (the same verdicts, except where docs/external-devices.md says the wire cannot show a
thing); and drills with real external devices -- the C agent of examples/external-device,
built by the project's set-up, correct and ``--naive`` -- through force-delete,
force-cancel and jobid-reuse, plain and over mutual TLS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devicesim.wire import history
from devicesim.wire.history import Op, OpType
from fleet.checker import Status, check, timeline, traffic
from fleet.checker.report import junit_xml, terminal, to_json
from fleet.drill import spec
from fleet.drill.runner import DrillResult, RunOptions, run

ROOT = Path(__file__).resolve().parent.parent
AGENT_SOURCE = ROOT / "examples" / "external-device" / "agent.c"
HISTORIES = Path(__file__).parent / "histories"

# --- the inference, on hand-written traffic ----------------------------------------------

THING = "ext-1"
DOC_A = {"operation": "sleep", "seconds": 1.0}
DOC_B = {"operation": "sleep", "seconds": 2.0}


class Traffic:
    """A device's traffic as the service records it: requests, replies, pushes."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.tokens = 0

    def _op(self, t: float, type_: OpType, f: str, **value: Any) -> None:
        self.ops.append(Op(time=t, process=THING, type=type_, f=f, value=value))

    def request(self, t: float, f: str, job: str | None = None, *, reply_at: float,
                ok: bool = True, code: str | None = None, status: str | None = None,
                execution: dict[str, Any] | None = None) -> None:
        self.tokens += 1
        token = f"t{self.tokens}"
        payload: dict[str, Any] = {"clientToken": token}
        if status is not None:
            payload["status"] = status
        self._op(t, OpType.INVOKE, f, jobId=job, clientToken=token, payload=payload)
        answer: dict[str, Any] = {"clientToken": token}
        if execution is not None:
            answer["execution"] = execution
        if code is not None:
            answer["code"] = code
        self._op(reply_at, OpType.OK if ok else OpType.FAIL, f, jobId=job, clientToken=token,
                 payload=answer, **({"code": code} if code else {}))

    def notify_next(self, t: float, job: str | None = None,
                    document: dict[str, Any] | None = None) -> None:
        payload: dict[str, Any] = {"timestamp": int(t)}
        if job is not None:
            payload["execution"] = {"jobId": job, "executionNumber": 1,
                                    "jobDocument": document or DOC_A}
        self._op(t, OpType.INFO, "notify-next", payload=payload)

    def presence(self, t: float, event: str) -> None:
        self._op(t, OpType.INFO, f"presence:{event}",
                 payload={"clientId": THING, "timestamp": int(t * 1000), "eventType": event})

    def inferred(self) -> list[Op]:
        things = frozenset({THING})
        return traffic.infer(timeline.build(self.ops, things), things)


def kinds(ops: list[Op]) -> list[tuple[float, str, str | None]]:
    return [(op.time, op.f.removeprefix("device:"), op.value.get("jobId")) for op in ops]


def start_next(t: Traffic, at: float, job: str | None, document: dict[str, Any] = DOC_A,
               reply: float = 0.01) -> None:
    execution = {"jobId": job, "executionNumber": 1, "jobDocument": document} if job else None
    t.request(at, "StartNextPendingJobExecution", reply_at=at + reply, execution=execution)


def update(t: Traffic, at: float, job: str, status: str = "IN_PROGRESS",
           code: str | None = None) -> None:
    t.request(at, "UpdateJobExecution", job, reply_at=at + 0.01, ok=code is None, code=code,
              status=status)


def test_a_notify_next_that_drops_the_job_is_when_a_silent_device_moved_on() -> None:
    t = Traffic()
    start_next(t, 1.0, "j1")
    update(t, 1.1, "j1")
    t.notify_next(3.0)  # the job was force-deleted: nothing pending any more
    out = t.inferred()
    assert kinds(out) == [(1.01, "job_started", "j1"), (1.1, "step", "j1"),
                          (3.0, "lost_access", "j1")]
    lost = out[-1].value
    assert lost["toldBy"] == "notify-next"
    assert lost["inferred"] == "notify-next"
    assert out[0].value["documentDigest"].startswith("sha256:")


def test_a_device_that_updates_after_being_told_moved_on_only_when_it_stopped() -> None:
    t = Traffic()
    start_next(t, 1.0, "j1")
    update(t, 1.1, "j1")
    t.notify_next(2.0)
    update(t, 2.5, "j1", code="ResourceNotFound")
    update(t, 3.0, "j1", "SUCCEEDED", code="ResourceNotFound")
    start_next(t, 3.5, None)
    out = t.inferred()
    lost = [op for op in out if op.f == "device:lost_access"]
    assert [(op.time, op.value["toldBy"]) for op in lost] == [(3.01, "ResourceNotFound")]
    # no job_finished: the service never accepted its terminal update
    assert not [op for op in out if op.f == "device:job_finished"]


def test_a_device_never_told_and_silent_never_moved_on() -> None:
    t = Traffic()
    start_next(t, 1.0, "j1")
    update(t, 1.1, "j1")
    assert [k for _, k, _ in kinds(t.inferred())] == ["job_started", "step"]


def test_an_accepted_terminal_update_finishes_and_an_empty_start_next_is_idle() -> None:
    t = Traffic()
    t.presence(0.5, "connected")
    start_next(t, 1.0, "j1")
    update(t, 1.1, "j1", "SUCCEEDED")
    start_next(t, 1.2, None)
    t.presence(2.0, "disconnected")
    out = t.inferred()
    assert [k for _, k, _ in kinds(out)] == ["connected", "job_started", "step",
                                            "job_finished", "idle", "disconnected"]
    assert out[0].value["timestamp"] == 0.5
    assert out[3].time == pytest.approx(1.11)


def test_the_same_job_id_with_another_document_is_another_execution() -> None:
    t = Traffic()
    start_next(t, 1.0, "j1", DOC_A)
    update(t, 1.1, "j1")
    start_next(t, 2.0, "j1", DOC_A)  # asked again (a reconnect): the same execution
    start_next(t, 3.0, "j1", DOC_B)  # the jobId was deleted and created again
    out = t.inferred()
    started = [op for op in out if op.f == "device:job_started"]
    assert [op.time for op in started] == [1.01, 3.01]
    assert started[0].value["documentDigest"] != started[1].value["documentDigest"]
    lost = [op for op in out if op.f == "device:lost_access"]
    assert [op.time for op in lost] == [2.0]  # its first sign after its last update


# --- the traffic-only checker against the device-event one -------------------------------

#: Where judging from the wire differs from judging from device events, by design
#: (docs/external-devices.md, "External devices"): the NVM checks cannot be made from the wire.
NVM_ONLY = {"valid-end", "recover"}
#: Histories where the wire names another invariant, and why (docs/external-devices.md).
OTHER_INVARIANT = {
    # zombie devices whose updates of the deleted execution reached the jobId's new
    # incarnation after the service had offered them its document: on the wire, an update
    # of a reused jobId cannot be told to be meant for the old execution or the new one;
    # the old document landing on the new execution is a reuse failure there
    "zombie-update-lands-on-reused-jobid": ({"no-zombie"}, {"reuse"}),
}


def as_external(ops: list[Op]) -> tuple[Any, Any]:
    start = next(op for op in ops if op.f == "start")
    things = list(start.value["behaviours"])
    return check(ops), check(ops, external=things)


def failing(verdict: Any) -> set[str]:
    return {r.name for r in verdict.results if r.status is Status.FAIL}


@pytest.mark.parametrize("name", sorted(p.stem for p in HISTORIES.glob("*.jsonl")
                                        if p.stem != "good-drill"))
def test_recorded_histories_get_the_same_verdict_from_the_wire(name: str) -> None:
    ops = history.read(HISTORIES / f"{name}.jsonl")
    events, wire = as_external(ops)
    print(name, events.status, failing(events), wire.status, failing(wire))
    expected = failing(events) - NVM_ONLY
    if name in OTHER_INVARIANT:
        by_events, on_wire = OTHER_INVARIANT[name]
        assert by_events <= expected
        expected = (expected - by_events) | on_wire
    assert failing(wire) - NVM_ONLY == expected
    if not failing(events) - NVM_ONLY:  # failed (if at all) only on what the wire cannot see
        assert wire.status is Status.PASS
    assert wire.result("valid-end").status is Status.NO_CASES
    assert any("cannot be seen from the wire" in n for n in wire.result("valid-end").notes)


def test_fleet_check_external_all_rejudges_a_history(tmp_path: Path) -> None:
    from fleet.cli import main

    path = HISTORIES / "reuse-confused.jsonl"
    assert main(["check", str(path), "--external", "all", "--report-dir", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metrics"]["external"]
    assert "dev-0000" in report["external"]
    # every device that applied the old document to the new execution fails reuse on its own row
    failed = {thing for thing, rows in report["external"].items()
              for r in rows if r["name"] == "reuse" and r["status"] == "FAIL"}
    assert failed
    assert failed == {v["thing_name"] for r in report["results"]
                                 if r["name"] == "reuse" for v in r["violations"]}
    assert main(["check", str(path), "--external", "nobody"]) == 2


# --- drills with real external devices ---------------------------------------------------


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example C agent: as the project's set-up built it, else built here."""
    built = AGENT_SOURCE.with_suffix("")
    if built.exists() and built.stat().st_mtime >= AGENT_SOURCE.stat().st_mtime:
        return built
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None or not Path("/usr/include/cjson/cJSON.h").exists():
        pytest.skip("no C compiler or cJSON headers: make setup installs them")
    out = tmp_path_factory.mktemp("agent") / "agent"
    subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-o", str(out),
                    str(AGENT_SOURCE), "-lmosquitto", "-lcjson"], check=True)
    return out


async def drill_with_agents(name: str, tmp_path: Path, agent: Path, *, secure: bool = False,
                            devices: int = 4, pace: float = 2.0) -> DrillResult:
    """Run a built-in drill with two external devices, ``ext-good`` (the example agent) and
    ``ext-naive`` (its ``--naive`` variant), started once the drill says how to connect."""
    drill = dataclasses.replace(spec.load(name), devices=devices, timeout=40.0,
                                external=spec.External(things=("ext-good", "ext-naive"),
                                                       connect_seconds=30.0))
    ready = tmp_path / "ready.json"
    waiting = asyncio.Event()

    def status(text: str) -> None:
        print(text)
        if text.startswith("waiting up to"):
            waiting.set()

    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} secure={secure}")
    task = asyncio.create_task(run(drill, RunOptions(report_dir=tmp_path / "report",
                                                     ready_file=ready, secure=secure,
                                                     status=status)))
    agents: list[asyncio.subprocess.Process] = []
    try:
        async with asyncio.timeout(30):
            await asyncio.wait({task, asyncio.ensure_future(waiting.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
        assert not task.done(), task.result()
        info = json.loads(ready.read_text())
        for thing, extra in (("ext-good", []), ("ext-naive", ["--naive"])):
            how = info["external"][thing]
            assert how["clientId"] == thing
            tls = ["--cafile", how["ca"], "--cert", how["cert"], "--key", how["key"]] \
                if secure else []
            # --pace 2: every step takes twice its time, so each is still mid-job at the fault
            with (tmp_path / f"{thing}.log").open("w") as log:  # the agent writes it
                agents.append(await asyncio.create_subprocess_exec(
                    str(agent), "--host", how["host"], "--port", str(how["port"]), "--thing",
                    thing, "--pace", str(pace), *tls, *extra, stdout=log,
                    stderr=subprocess.STDOUT))
        async with asyncio.timeout(90):
            result = await task
    finally:
        for proc in agents:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        if not task.done():
            task.cancel()
    for thing in ("ext-good", "ext-naive"):
        print(f"--- {thing}\n" + (tmp_path / f"{thing}.log").read_text())
    print(terminal(result.verdict))
    return result


def rows(result: DrillResult, thing: str) -> dict[str, Status]:
    return rows_of(result.verdict, thing)


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.parametrize(("name", "catches"), [
    ("force-delete", {"no-zombie"}),
    ("force-cancel", {"no-zombie"}),
    ("jobid-reuse", {"reuse"}),
])
async def test_the_correct_agent_passes_and_the_naive_one_fails(
        name: str, catches: set[str], tmp_path: Path, agent: Path) -> None:
    result = await drill_with_agents(name, tmp_path, agent)
    good, naive = rows(result, "ext-good"), rows(result, "ext-naive")
    assert Status.FAIL not in good.values(), good
    assert good["notice"] is Status.PASS  # it was caught mid-job, and moved on in time
    assert catches <= {n for n, s in naive.items() if s is Status.FAIL}, naive
    # the trail: the naive agent's own updates (after it was told, or of the old document)
    for invariant in catches:
        caught = next(v for v in result.verdict.result(invariant).violations
                      if v.thing_name == "ext-naive")
        assert any(e["process"] == "ext-naive" and e["f"] == "UpdateJobExecution"
                   for e in caught.evidence), caught
    # each external device is a test suite of its own in junit.xml, and rows in report.json
    xml = junit_xml(result.verdict, "drill")
    assert 'testsuite name="external device ext-naive"' in xml
    data = to_json(result.verdict)
    assert {r["name"] for r in data["external"]["ext-good"]} >= {"notice", "no-zombie"}
    # only the simulated devices have device events of their own
    assert not [op for op in result.ops if op.f.startswith("device:")
                and op.process.startswith("ext-")]
    assert {op.process for op in result.ops if op.f == "presence:connected"} == \
        {"ext-good", "ext-naive"}


@pytest.mark.broker
@pytest.mark.slow
async def test_external_devices_over_mutual_tls(tmp_path: Path, agent: Path) -> None:
    result = await drill_with_agents("force-delete", tmp_path, agent, secure=True)
    assert result.verdict.metrics.secure
    assert Status.FAIL not in rows(result, "ext-good").values()
    assert rows(result, "ext-naive")["no-zombie"] is Status.FAIL


@pytest.mark.broker
@pytest.mark.slow
async def test_external_devices_alone(tmp_path: Path, agent: Path) -> None:
    """No simulated device at all: device-under-test catches each board mid-job twice (a
    force-delete, then a force-cancel); the naive one takes its job to the end, seconds past
    the notice budget."""
    result = await drill_with_agents("device-under-test", tmp_path, agent, devices=0,
                                     pace=1.0)
    assert result.verdict.metrics.targeted == 2
    good, naive = rows(result, "ext-good"), rows(result, "ext-naive")
    assert Status.FAIL not in good.values(), good
    assert result.verdict.result("notice").cases_by_external == {"ext-good": 2, "ext-naive": 2}
    assert naive["notice"] is Status.FAIL
    assert naive["no-zombie"] is Status.FAIL


@pytest.mark.broker
async def test_an_external_device_that_never_connects_stops_the_drill(tmp_path: Path) -> None:
    drill = dataclasses.replace(spec.load("force-delete"), devices=2, external=spec.External(
        things=("board-7",), connect_seconds=1.0))
    result = await run(drill, RunOptions(report_dir=tmp_path))
    complete = result.verdict.result("complete")
    assert complete.status is Status.FAIL
    assert any("board-7 did not connect within 1 s" in v.message
               for v in complete.violations), [v.message for v in complete.violations]


@pytest.mark.parametrize(("args", "message"), [
    (["--ready-file", "r.json"], "--ready-file: goes with external devices"),
    (["--external", "dev-0001"], "has the name of a simulated device"),
    (["--external", "a/b"], "is not a thing name"),
    (["--external", "x", "--broker", "mqtt://127.0.0.1:1"], "the drill's embedded broker"),
    (["--devices", "0"], "--devices: must be at least 1 (0 only with external devices)"),
])
def test_fleet_drill_external_usage_errors(args: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from fleet.cli import main

    assert main(["drill", "--devices", "3", *args] if "--devices" not in args
                else ["drill", *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1


@pytest.mark.broker
@pytest.mark.slow
def test_the_example_drill_script(tmp_path: Path, agent: Path) -> None:
    """examples/external-device/drill.sh, as the README runs it."""
    import os
    import sys

    if agent != AGENT_SOURCE.with_suffix(""):
        pytest.skip("drill.sh runs the agent make setup built")
    env = {**os.environ, "FLEET": str(Path(sys.executable).with_name("fleet"))}
    done = subprocess.run([str(AGENT_SOURCE.with_name("drill.sh")), "force-cancel",
                           "--devices", "4"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    print(done.stdout, done.stderr)
    assert done.returncode == 1  # FAIL: the naive board
    report = json.loads((tmp_path / "reports" / "force-cancel-external" / "report.json")
                        .read_text())
    statuses = {thing: {r["name"]: r["status"] for r in rows}
                for thing, rows in report["external"].items()}
    assert "FAIL" not in statuses["board-1"].values()
    assert statuses["board-2"]["no-zombie"] == "FAIL"
    assert "aborting rollout-2" in (tmp_path / "reports" / "force-cancel-external" /
                                    "board-1.log").read_text()


def test_an_external_device_never_caught_mid_step_is_inconclusive() -> None:
    """A drill's external device (behaviour ``external``) that was never mid-step when its
    execution was removed has not been tested: its notice row, and the verdict, say so."""
    ops = history.read(HISTORIES / "force-delete-10.jsonl")
    mid_step = {c.execution.thing_name for c in _notice_cases(ops)}
    idle = sorted({f"dev-{i:04d}" for i in range(10)} - mid_step)
    assert mid_step
    assert idle
    external = [sorted(mid_step)[0], idle[0]]
    start = next(op for op in ops if op.f == "start")
    behaviours = {**start.value["behaviours"], **{t: "external" for t in external}}
    marked = [dataclasses.replace(op, value={**op.value, "behaviours": behaviours,
                                             "external": external}) if op is start else op
              for op in ops]
    verdict = check(marked)
    assert verdict.status is Status.INCONCLUSIVE
    assert rows_of(verdict, external[0])["notice"] is Status.PASS
    assert rows_of(verdict, external[1])["notice"] is Status.INCONCLUSIVE
    assert any(n.startswith(f"INCONCLUSIVE for external device {external[1]}:")
               for n in verdict.result("notice").notes)


def _notice_cases(ops: list[Op]) -> list[Any]:
    from fleet.checker.cases import notice_cases
    from fleet.checker.model import Budgets

    return notice_cases(timeline.build(ops), Budgets())


def rows_of(verdict: Any, thing: str) -> dict[str, Status]:
    return {row.name: row.status for row in verdict.rows_for(thing)}

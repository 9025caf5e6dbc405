"""Drills as tests: every built-in drill passes with correct devices, and each faulty
behaviour makes its drill fail on the invariant that catches it (that is how we know the
checker works). Each drill runs on its own embedded Mosquitto, as `fleet drill` does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fleet.checker import Status, check
from fleet.drill import spec
from fleet.drill.runner import DrillResult, Interrupt, RunOptions, run

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 24
#: how long the built-in soak runs here (long enough for steady to judge its samples)
SOAK_SECONDS = 15.0


async def drill_result(name: str, tmp_path: Path, **changes: object) -> DrillResult:
    drill = dataclasses.replace(spec.load(name), devices=DEVICES, **changes)
    if drill.duration is not None and "duration" not in changes:  # a soak, kept short
        drill = dataclasses.replace(drill, duration=SOAK_SECONDS)
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} "
          f"mix={drill.mix or drill.behaviour}")
    return await run(drill, RunOptions(report_dir=tmp_path))


def failed(result: DrillResult) -> set[str]:
    return {r.name for r in result.verdict.results if not r.passed}


def failed_on_the_wire(result: DrillResult) -> dict[str, set[str]]:
    """The same history judged as if every device were external (from its traffic alone,
    its own events set aside): the invariants each behaviour fails there."""
    start = next(op for op in result.ops if op.f == "start")
    behaviours = start.value["behaviours"]
    verdict = check(result.ops, external=list(behaviours))
    out: dict[str, set[str]] = {}
    for r in verdict.results:
        for v in r.violations:
            out.setdefault(behaviours.get(v.thing_name, "-"), set()).add(r.name)
    return out


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
    # from the wire alone, the same -- except that the AWS IoT Device Client's progress
    # updates after a rejection are zombies there (docs/external-devices.md)
    wire = failed_on_the_wire(result)
    assert set(wire) <= {"device-client"}, wire
    assert wire.get("device-client", {"no-zombie"}) == {"no-zombie"}, wire


async def test_force_delete_drill_with_sdk_devices(tmp_path: Path) -> None:
    result = await drill_result("force-delete", tmp_path, behaviour="sdk", mix={})
    assert failed(result) == set()
    assert result.verdict.result("notice").checked > 0


async def test_force_delete_drill_with_http_devices_among_mqtt_ones(tmp_path: Path) -> None:
    """Devices asking over HTTPS (iot-jobs-data) and over MQTT, through one force-delete:
    the service records the HTTP replies as MQTT ones, so both are judged alike."""
    result = await drill_result("force-delete", tmp_path, behaviour="reference",
                                mix={"reference": 0.5, "http": 0.5})
    assert failed(result) == set(), [v.message for r in result.verdict.results
                                     for v in r.violations[:3]]
    notice = result.verdict.result("notice").cases_by_behaviour
    assert notice.get("http", 0) > 0
    assert notice.get("reference", 0) > 0
    answered = result.verdict.result("answered").cases_by_behaviour
    assert answered.get("http", 0) > 0


async def test_force_delete_drill_measures_detection(tmp_path: Path) -> None:
    result = await drill_result("force-delete", tmp_path)
    notice = result.verdict.result("notice")
    assert notice.passed
    assert notice.checked > 0
    assert result.verdict.metrics.detection_latency.count == notice.checked


@pytest.mark.parametrize(("behaviour", "drill", "catches", "on_the_wire"), [
    ("stuck", "force-delete", {"notice"}, {"recover", "progress"}),
    ("no-rollback", "force-delete", {"valid-end"}, set()),
    ("zombie", "force-delete", {"no-zombie"}, {"no-zombie"}),
    ("reuse-confused", "jobid-reuse", {"reuse"}, {"reuse"}),
])
async def test_faulty_behaviour_fails_its_drill(behaviour: str, drill: str, catches: set[str],
                                                on_the_wire: set[str], tmp_path: Path) -> None:
    # a faulty fleet never settles: a short timeout keeps the test quick
    result = await drill_result(drill, tmp_path, behaviour=behaviour, mix={}, timeout=15.0)
    assert not result.verdict.passed
    assert catches <= failed(result), failed(result)
    # from the wire alone (docs/external-devices.md): a frozen device looks idle, but never takes up
    # the follow-up job; a half-written image cannot be seen at all
    assert on_the_wire <= failed_on_the_wire(result).get(behaviour, set())


async def test_force_delete_drill_with_devices_in_worker_processes(tmp_path: Path) -> None:
    drill = dataclasses.replace(spec.load("force-delete"), devices=DEVICES)
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} workers=2")
    result = await run(drill, RunOptions(report_dir=tmp_path, workers=2))
    assert not result.timed_out
    assert failed(result) == set()
    assert result.verdict.result("notice").checked > 0
    things = {op.process for op in result.ops if op.f == "device:job_started"}
    assert len(things) == DEVICES  # every device, from both `devicesim run` children


async def test_lossy_notify_drops_the_pushes_and_devices_notice_otherwise(
        tmp_path: Path) -> None:
    """The fault takes effect (the history shows each dropped push, and no push reached the
    chosen devices until the heal), and reference devices notice by another way."""
    result = await drill_result("lossy-notify", tmp_path)
    ops = result.ops
    drop = next(op for op in ops if op.f == "notify-drop")
    heal = next(op for op in ops if op.f == "message-heal")
    chosen = set(drop.value["things"])
    assert len(chosen) == DEVICES // 2
    dropped = {op.process for op in ops if op.f == "dropped:notify-next"}
    assert dropped
    assert dropped <= chosen
    assert not [op for op in ops if op.f in ("notify", "notify-next") and op.process in chosen
                and drop.time <= op.time < heal.time]
    noticed = {op.value.get("reason") for op in ops if op.f == "device:lost_access"
               and op.process in chosen and op.time < heal.time}
    assert noticed
    assert "notify-next" not in noticed
    assert result.verdict.status is Status.PASS, failed(result)


async def test_lossy_notify_duplicates_and_reorders_messages(tmp_path: Path) -> None:
    """The other message faults take effect: the duplicated devices get messages twice, the
    reordered ones get some late (recorded with heldSeconds), and the history says so."""
    result = await drill_result("lossy-notify", tmp_path)
    ops = result.ops
    faults = {op.value["kind"]: op for op in ops if op.f == "message-fault"}
    assert set(faults) == {"duplicate", "reorder"}
    doubled = set(faults["duplicate"].value["things"])
    late = set(faults["reorder"].value["things"])
    drop = next(op for op in ops if op.f == "notify-drop")
    assert doubled
    assert late
    assert not (doubled & late)
    assert not (late & set(drop.value["things"]))
    seen: dict[tuple[str, str, bytes], int] = {}
    for op in ops:
        if op.process in doubled and op.f in ("notify-next", "UpdateJobExecution") and \
                op.type.value != "invoke":
            key = (op.process, op.f, repr(op.value).encode())
            seen[key] = seen.get(key, 0) + 1
    assert max(seen.values()) >= 2  # the same message twice
    held = [op for op in ops if "heldSeconds" in op.value]
    assert held
    assert {op.process for op in held} <= late
    assert all(0 < op.value["heldSeconds"] <= 0.4 for op in held)
    assert result.verdict.status is Status.PASS, failed(result)


async def test_network_partition_cuts_holds_and_heals(tmp_path: Path) -> None:
    """The cut devices lose their connection at the fault and get it back only after the
    heal; the black-holed ones keep theirs (what was held flows on the heal); every device
    passes."""
    result = await drill_result("network-partition", tmp_path)
    ops = result.ops
    faults = {op.value["kind"]: op for op in ops if op.f == "network-fault"}
    assert set(faults) == {"delay", "cut", "blackhole"}
    cut, hole = set(faults["cut"].value["things"]), set(faults["blackhole"].value["things"])
    assert cut
    assert hole
    assert not (cut & hole)
    assert faults["cut"].value["connections"] >= len(cut)  # each had its connection
    heal = next(op for op in ops if op.f == "network-heal")
    assert heal.value["released"] > 0
    for thing in cut:
        mine = [op for op in ops if op.process == thing and
                op.f in ("device:disconnected", "device:connected")]
        dropped = next(op for op in mine if op.f == "device:disconnected")
        # (the proxy cuts before it answers the drill, which then writes the marker)
        assert faults["cut"].value["start"] <= dropped.time < heal.time
        back = next(op for op in mine if op.f == "device:connected" and op.time > dropped.time)
        assert back.time > heal.time  # not before: its reconnects were refused
    assert not [op for op in ops if op.process in hole and op.f == "device:disconnected"]
    stats = next(op for op in ops if op.f == "proxy-stats").value
    assert stats["refused"] > 0
    assert result.verdict.status is Status.PASS, failed(result)


async def test_offline_delete_devices_find_out_with_and_without_their_session(
        tmp_path: Path) -> None:
    """Removed while offline: the reference devices hear the queued notify-next on
    reconnect (their session kept it), the clean-session ones learn it another way."""
    result = await drill_result("offline-delete", tmp_path)
    ops = result.ops
    behaviours = next(op for op in ops if op.f == "start").value["behaviours"]
    cut = next(op for op in ops if op.f == "network-fault")
    heal = next(op for op in ops if op.f == "network-heal")
    offline = set(cut.value["things"])
    reasons: dict[str, set[str]] = {}
    for op in ops:
        if op.f == "device:lost_access" and op.process in offline and op.time > heal.time:
            reasons.setdefault(behaviours[op.process], set()).add(op.value["reason"])
    assert set(reasons) == {"reference", "clean-session"}, reasons
    assert "notify-next" in reasons["reference"]
    assert "notify-next" not in reasons["clean-session"]
    assert result.verdict.status is Status.PASS, failed(result)


async def test_service_restart_answers_what_was_sent_while_it_was_down(tmp_path: Path) -> None:
    """Two kills: requests sent during an outage are answered after it (by the service
    started from the state file), and the deletion under way at the second kill completes
    after it."""
    result = await drill_result("service-restart", tmp_path)
    ops = result.ops
    outages = [(op.value["start"], op.value["end"]) for op in ops if op.f == "service-outage"]
    assert len(outages) == 2
    asked = {(op.process, op.value.get("clientToken")): op.time for op in ops
             if op.type.value == "invoke" and op.process.startswith(spec.load(
                 "service-restart").prefix)}
    late = [op for op in ops if op.type.value in ("ok", "fail")
            and any(s <= asked.get((op.process, op.value.get("clientToken")), 0) < e <= op.time
                    for s, e in outages)]
    assert late  # asked while it was down, answered once it was back
    deleted = next(op for op in ops if op.f == "job-event" and
                   op.value.get("operation") == "deleted")
    assert deleted.time > outages[1][1]  # the sweep it had committed to, finished after
    assert result.verdict.status is Status.PASS, failed(result)


async def test_soak_runs_waves_samples_every_process_and_stops_after_a_wave_on_signal(
        tmp_path: Path) -> None:
    """A soak runs its steps in waves (each with its own jobs) and samples the memory and
    open files of the drill, the broker and the proxy; an interrupt ends it after the wave
    under way, with a complete history, not an interrupted one."""
    drill = dataclasses.replace(spec.load("soak"), devices=DEVICES, duration=600.0)
    interrupt = Interrupt()
    waves: list[str] = []

    def status(text: str) -> None:
        if text.startswith("step 1/") and len(waves) == 1:
            interrupt.set("SIGINT")  # during the second wave
        if text.startswith("step 1/"):
            waves.append(text)

    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices}")
    result = await run(drill, RunOptions(report_dir=tmp_path, interrupt=interrupt,
                                         status=status))
    ops = result.ops
    assert result.interrupted is None
    assert not result.timed_out
    end = next(op for op in ops if op.f == "soak-end")
    assert end.value == {"waves": 2, "reason": "SIGINT", "seconds": end.value["seconds"]}
    jobs = {op.value["request"]["jobId"] for op in ops
            if op.f == "CreateJob" and op.type.value == "ok"}
    assert jobs == {"soak-w0", "followup-w0", "soak-w1", "followup-w1"}
    samples = [op.value["processes"] for op in ops if op.f == "resources"]
    assert len(samples) >= 3
    assert {"drill", "broker", "proxy"} <= set(samples[-1])
    assert all(p["rssKiB"] > 0 and p["fds"] > 0 for p in samples[-1].values())
    statuses = {r.name: r.status for r in result.verdict.results}
    assert statuses["complete"] is Status.PASS
    assert statuses["steady"] in (Status.PASS, Status.INCONCLUSIVE)  # two waves: few samples


async def test_device_reboot_with_devices_in_worker_processes(tmp_path: Path) -> None:
    """Power cuts reach devices in worker processes: each worker cuts and restores the power
    of its own devices among those named, and they boot from their flash."""
    drill = dataclasses.replace(spec.load("device-reboot"), devices=DEVICES)
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices} workers=2")
    result = await run(drill, RunOptions(report_dir=tmp_path, workers=2))
    ops = result.ops
    cuts = [op for op in ops if op.f == "power-off"]
    assert len(cuts) == 2
    off = {t for op in cuts for t in op.value["things"]}
    assert off
    booted = {op.process for op in ops if op.f == "device:rebooted"}
    assert booted == off  # every device whose power was cut booted again, and only those
    assert len({op.value["shard"] for op in ops if op.f == "shard-joined"}) == 2
    assert result.verdict.status is Status.PASS, failed(result)

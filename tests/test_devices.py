"""Simulated devices against the real jobs service on the session Mosquitto.

Each test runs its own :class:`JobsService` (its own SQLite file) and a :class:`Recorder`
whose listener wakes the test when a device (or the service) emitted what it waits for; the
devices of a test share a unique thing-name prefix, so tests never see each other. Waits are
``asyncio.timeout`` around those events, never sleeps. Faults are real: force-delete through
the store, power cycles of the device shell.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from devicesim import nvm as nvm_store
from devicesim.agent import State
from devicesim.behaviours import BEHAVIOURS, FAULTY
from devicesim.documents import document_digest
from devicesim.engine import DeviceShell, Fleet, FleetConfig
from devicesim.nvm import Nvm, Phase
from devicesim.wire.history import Op, OpType
from fleet.broker import BrokerAddress
from fleet.drill.recorder import Recorder
from fleet.service.shell import JobsService, ServiceConfig

pytestmark = pytest.mark.broker

SEED = 20240611
CORRECT = sorted(set(BEHAVIOURS) - FAULTY)  # reference, sdk, http, poll, device-client...
WAIT = 15.0  # seconds any single awaited event may take
LONG = 3.0  # a step long enough to force-delete or power-cycle a device in the middle of it
_serial = itertools.count(1)


def arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"


def firmware(version: str = "2.0.0", *, install: float = 0.05, step: float = 0.05
             ) -> dict[str, Any]:
    """A firmware-update document: ``install`` seconds for install, ``step`` for the rest."""
    return {"operation": "firmware-update", "version": version, "steps": [
        {"name": "download", "seconds": step}, {"name": "install", "seconds": install},
        {"name": "reboot", "seconds": step}, {"name": "verify", "seconds": step}]}


# --- waiting for recorded ops -----------------------------------------------------------------


Match = Callable[[Op], bool]


class Watch:
    """The recorder's listener: keeps every op (in arrival order) and resolves the futures
    of waiters whose (process, f, predicate) matches."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._waiters: dict[tuple[str, str], list[tuple[Match, asyncio.Future[int]]]] = \
            defaultdict(list)

    def __call__(self, op: Op) -> None:
        self.ops.append(op)
        key = (op.process, op.f)
        waiters = self._waiters.get(key)
        if not waiters:
            return
        for match, future in waiters:
            if not future.done() and match(op):
                future.set_result(len(self.ops) - 1)
        self._waiters[key] = [(m, f) for m, f in waiters if not f.done()]

    async def index(self, process: str, f: str, match: Match = lambda op: True, *,
                    since: int = 0, within: float = WAIT) -> int:
        """Position of the first op at or after ``since`` that matches (waiting for it)."""
        for i in range(since, len(self.ops)):
            op = self.ops[i]
            if op.process == process and op.f == f and match(op):
                return i
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[(process, f)].append((match, future))
        try:
            async with asyncio.timeout(within):
                return await future
        except TimeoutError:
            raise AssertionError(f"no {f} from {process} within {within} s; its ops: "
                                 f"{[o.f for o in self.ops if o.process == process]}"
                                 ) from None

    async def event(self, thing: str, kind: str, *, since: int = 0, within: float = WAIT,
                    **fields: Any) -> int:
        """Position of the device event ``kind`` of ``thing`` whose value has ``fields``
        (camelCase keys, e.g. ``jobId``)."""
        return await self.index(thing, f"device:{kind}", _has(fields), since=since,
                                within=within)

    async def job_event(self, job_id: str, operation: str, *, since: int = 0) -> int:
        return await self.index("service", "job-event",
                                _has({"jobId": job_id, "operation": operation}), since=since)

    def events(self, thing: str, *, since: int = 0, job: str | None = None
               ) -> list[dict[str, Any]]:
        """Device events of ``thing`` recorded from position ``since``, in ``seq`` order."""
        found = [op.value for op in self.ops[since:]
                 if op.process == thing and op.f.startswith("device:")
                 and (job is None or op.value.get("jobId") == job)]
        return sorted(found, key=lambda v: v["seq"])

    def requests(self, thing: str, f: str, *, job: str, since: int = 0) -> list[Op]:
        return [op for op in self.ops[since:] if op.process == thing and op.f == f
                and op.type is OpType.INVOKE and op.value.get("jobId") == job]


def _has(fields: dict[str, Any]) -> Match:
    return lambda op: all(op.value.get(k) == v for k, v in fields.items())


def steps(events: list[dict[str, Any]]) -> list[str]:
    return [e["step"] for e in events if e["kind"] == "step"]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in events]


# --- one service, one recorder and the fleets of a test ----------------------------------------


@dataclasses.dataclass
class Rig:
    address: BrokerAddress
    service: JobsService
    watch: Watch
    prefix: str
    fleets: list[Fleet] = dataclasses.field(default_factory=list)

    async def fleet(self, mix: dict[str, float], *, count: int = 1, wait_idle: bool = True,
                    **config: Any) -> Fleet:
        """Start devices ``{prefix}0000``...; wait until each asked for work and went idle."""
        config.setdefault("jobs_data", self.service.jobs_data_endpoint)  # http devices
        fleet = Fleet(FleetConfig(host=self.address.host, port=self.address.port,
                                  prefix=self.prefix, count=count, mix=mix, seed=SEED,
                                  **config))
        self.fleets.append(fleet)
        await fleet.start()
        if wait_idle:
            for thing in fleet.devices:
                await self.watch.event(thing, "idle")
        return fleet

    def create_job(self, job_id: str, things: list[str], document: dict[str, Any]) -> None:
        self.service.store.create_job(job_id, targets=[arn(t) for t in things],
                                      document=json.dumps(document))
        self.service.flush()

    def force_delete(self, job_id: str) -> None:
        self.service.store.delete_job(job_id, force=True)
        self.service.flush()

    def status(self, job_id: str, thing: str) -> str:
        return self.service.store.describe_job_execution(job_id, thing).status.value


@pytest.fixture
async def rig(broker_address: BrokerAddress, tmp_path: Path) -> AsyncIterator[Rig]:
    tag = f"{next(_serial):02d}{uuid.uuid4().hex[:4]}"
    prefix = f"td{tag}-"
    print(f"seed={SEED} prefix={prefix}")
    watch = Watch()
    recorder = Recorder(broker_address, listener=watch, client_id=f"recorder-{tag}")
    await recorder.start()
    # what the service publishes it records itself (replies reach their requester alone)
    service = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db",
                                        seed=SEED), record=recorder.observe)
    await service.start()
    rig = Rig(broker_address, service, watch, prefix)
    try:
        yield rig
    finally:
        for fleet in rig.fleets:
            await fleet.stop()
        await recorder.stop()
        await service.stop()
        assert recorder.stats()["missingDeviceEvents"] == 0, recorder.stats()


def valid(nvm: Nvm, gone: set[tuple[str, int]]) -> bool:
    return nvm_store.is_valid(nvm, gone)


# --- 1. every correct behaviour completes a firmware update -----------------------------------


@pytest.mark.parametrize("behaviour", CORRECT)
async def test_firmware_update_succeeds(rig: Rig, behaviour: str) -> None:
    fleet = await rig.fleet({behaviour: 1.0})
    (thing,) = fleet.devices
    doc = firmware("2.0.0")
    rig.create_job("fw-1", [thing], doc)

    await rig.watch.event(thing, "job_finished", jobId="fw-1")

    events = rig.watch.events(thing, job="fw-1")
    assert kinds(events) == ["job_started", "step", "step", "step", "step", "image_committed",
                             "job_finished"]
    assert steps(events) == ["download", "install", "reboot", "verify"]
    assert events[-1]["status"] == "SUCCEEDED"
    assert {e["documentDigest"] for e in events} == {document_digest(doc)}
    assert rig.status("fw-1", thing) == "SUCCEEDED"
    nvm = fleet.devices[thing].saved_nvm
    assert nvm.active_image.version == "2.0.0"
    assert nvm.active_image.complete
    assert nvm.active_image.verified
    assert nvm.journal is None


# --- 2. force-delete mid-step: correct behaviours notice, each by its own path ----------------

#: behaviour -> (lost_access reason, rolls back the half-written image)
NOTICED = {
    "reference": ("notify-next", True),  # the notify-next no longer names the execution
    "sdk": ("notify-next", True),  # the same, through the SDK's notify-next stream
    "http": ("notify-next", True),  # the same: its pushes still come over MQTT
    "poll": ("ResourceNotFound", True),  # its periodic describe is rejected
    # runs the job to completion locally (progress rejections ignored), commits the image,
    # and gives up when its final update is rejected
    "device-client": ("ResourceNotFound", False),
    "clean-session": ("notify-next", True),  # as reference (connected: the push reaches it)
}


@pytest.mark.parametrize("behaviour", CORRECT)
async def test_force_delete_mid_step_is_noticed(rig: Rig, behaviour: str) -> None:
    fleet = await rig.fleet({behaviour: 1.0})
    (thing,) = fleet.devices
    rig.create_job("fw-1", [thing], firmware("2.0.0", install=LONG))
    await rig.watch.event(thing, "step", jobId="fw-1", step="install")

    deleted_at = len(rig.watch.ops)
    rig.force_delete("fw-1")
    lost = await rig.watch.event(thing, "lost_access", jobId="fw-1")
    await rig.watch.event(thing, "recovered", jobId="fw-1", since=lost)
    await rig.watch.event(thing, "idle", since=lost)

    reason, rolls_back = NOTICED[behaviour]
    lost_event = rig.watch.ops[lost].value
    print(f"{behaviour}: lost_access reason={lost_event['reason']} step={lost_event['step']}")
    assert lost_event["reason"] == reason
    after = rig.watch.events(thing, since=deleted_at, job="fw-1")
    nvm = fleet.devices[thing].saved_nvm
    assert valid(nvm, {("fw-1", 1)})
    assert nvm.journal is None
    assert nvm.active_image.complete
    assert nvm.active_image.verified
    if rolls_back:
        assert lost_event["step"] == "install"
        assert kinds(after) == ["lost_access", "rolled_back", "recovered"]
        assert nvm.active_image.version == "1.0.0"
    else:  # device-client: the deleted job ran to its end and its image is now active
        assert steps(after) == ["reboot", "verify"]
        assert kinds(after)[-3:] == ["image_committed", "lost_access", "recovered"]
        assert lost_event["step"] == "verify"
        assert nvm.active_image.version == "2.0.0"
    if behaviour == "poll":
        # the rejected request was its describe, not an update
        rejected = [op for op in rig.watch.ops[deleted_at:lost] if op.process == thing
                    and op.type is OpType.FAIL]
        assert [op.f for op in rejected][-1:] == ["DescribeJobExecution"]


# --- 3. faulty behaviours show their fault ---------------------------------------------------


def _roles(fleet: Fleet) -> dict[str, str]:
    """behaviour name -> thing (each behaviour of the mix on exactly one device)."""
    return {name: thing for thing, name in fleet.assignment.items()}


async def test_stuck_device_never_notices(rig: Rig) -> None:
    fleet = await rig.fleet({"stuck": 1.0, "reference": 1.0}, count=2)
    roles = _roles(fleet)
    stuck, ref = roles["stuck"], roles["reference"]
    rig.create_job("fw-1", [stuck, ref], firmware("2.0.0", install=LONG))
    installing = await rig.watch.event(stuck, "step", jobId="fw-1", step="install")
    await rig.watch.event(ref, "step", jobId="fw-1", step="install")

    rig.force_delete("fw-1")
    await rig.watch.event(ref, "lost_access", jobId="fw-1")
    # The bound: the reference device (told the same things at the same moments) notices,
    # recovers and completes a follow-up job lasting longer than the stuck device's install.
    rig.create_job("next-1", [stuck, ref], {"operation": "sleep", "seconds": LONG + 0.5})
    await rig.watch.event(ref, "job_finished", jobId="next-1", within=WAIT + LONG)

    after = rig.watch.events(stuck, since=installing + 1)
    assert after == [], kinds(after)  # no lost_access, no step, never idle again
    assert fleet.devices[stuck].agent.state is State.STUCK
    assert rig.status("next-1", stuck) == "QUEUED"
    nvm = fleet.devices[stuck].saved_nvm
    assert nvm.journal is not None
    assert nvm.journal.job_id == "fw-1"
    assert not valid(nvm, {("fw-1", 1)})


async def test_no_rollback_device_boots_a_half_written_image(rig: Rig) -> None:
    fleet = await rig.fleet({"no-rollback": 1.0})
    (thing,) = fleet.devices
    rig.create_job("fw-1", [thing], firmware("2.0.0", install=LONG))
    await rig.watch.event(thing, "step", jobId="fw-1", step="install")

    rig.force_delete("fw-1")
    lost = await rig.watch.event(thing, "lost_access", jobId="fw-1", reason="notify-next")
    recovered = await rig.watch.event(thing, "recovered", jobId="fw-1", since=lost)

    assert kinds(rig.watch.events(thing, since=lost))[:2] == ["lost_access", "recovered"]
    summary = rig.watch.ops[recovered].value["nvm"]
    assert summary["activeVersion"] == "2.0.0"
    assert summary["activeComplete"] is False
    assert summary["activeVerified"] is False
    nvm = fleet.devices[thing].saved_nvm
    assert nvm.journal is None
    assert not valid(nvm, {("fw-1", 1)})


async def test_zombie_device_keeps_updating_the_lost_execution(rig: Rig) -> None:
    fleet = await rig.fleet({"zombie": 1.0})
    (thing,) = fleet.devices
    rig.create_job("fw-1", [thing], firmware("2.0.0", install=LONG))
    await rig.watch.event(thing, "step", jobId="fw-1", step="install")

    rig.force_delete("fw-1")
    deleted_at = len(rig.watch.ops)
    await rig.watch.event(thing, "lost_access", jobId="fw-1", reason="notify-next")
    # three updates for the lost execution, each rejected. The device's requests reach the
    # watch through the broker, the service's replies from the service itself: the two
    # streams are counted apart, not ordered against each other
    def zombie(op: Op) -> bool:
        return op.type is OpType.INVOKE and op.value["jobId"] == "fw-1" and \
            op.value["payload"].get("statusDetails", {}).get("progress") == "zombie"

    def rejected(op: Op) -> bool:
        return op.type is OpType.FAIL and op.value["jobId"] == "fw-1"

    sent = refused = deleted_at
    for _ in range(3):
        sent = await rig.watch.index(thing, "UpdateJobExecution", zombie, since=sent) + 1
        refused = await rig.watch.index(thing, "UpdateJobExecution", rejected,
                                        since=refused) + 1

    updates = rig.watch.requests(thing, "UpdateJobExecution", job="fw-1", since=deleted_at)
    assert sum(zombie(op) for op in updates) == 3  # (besides one in flight at the removal)
    # apart from that it recovered correctly
    assert valid(fleet.devices[thing].saved_nvm, {("fw-1", 1)})


async def test_reuse_confused_device_continues_the_old_document(rig: Rig) -> None:
    fleet = await rig.fleet({"reuse-confused": 1.0, "reference": 1.0}, count=2)
    roles = _roles(fleet)
    confused, ref = roles["reuse-confused"], roles["reference"]
    old, new = firmware("2.0.0", install=LONG), firmware("3.0.0")
    rig.create_job("fw-1", [confused, ref], old)
    for thing in (confused, ref):
        await rig.watch.event(thing, "step", jobId="fw-1", step="install")

    await asyncio.gather(*(fleet.devices[t].power_off() for t in (confused, ref)))
    rig.force_delete("fw-1")
    await rig.watch.job_event("fw-1", "deleted")
    rig.create_job("fw-1", [confused, ref], new)
    booted = len(rig.watch.ops)
    await asyncio.gather(*(fleet.devices[t].power_on(clean_session=True)
                           for t in (confused, ref)))

    done = await rig.watch.event(confused, "job_finished", jobId="fw-1", since=booted,
                                 within=WAIT + LONG)
    await rig.watch.event(ref, "job_finished", jobId="fw-1", since=booted)

    confused_events = rig.watch.events(confused, since=booted, job="fw-1")
    assert steps(confused_events) == ["install", "reboot", "verify"]  # resumed, old plan
    assert {e["documentDigest"] for e in confused_events} == {document_digest(old)}
    assert rig.watch.ops[done].value["status"] == "SUCCEEDED"
    assert fleet.devices[confused].saved_nvm.active_image.version == "2.0.0"  # not 3.0.0
    # the reference device saw the new document, dropped the old work and ran the new one
    ref_events = rig.watch.events(ref, since=booted, job="fw-1")
    assert kinds(ref_events)[:3] == ["lost_access", "rolled_back", "recovered"]
    assert ref_events[0]["reason"] == "describe"
    assert steps(ref_events) == ["download", "install", "reboot", "verify"]
    assert ref_events[-1]["documentDigest"] == document_digest(new)
    assert fleet.devices[ref].saved_nvm.active_image.version == "3.0.0"


# --- 4. reboots resume from the NVM ----------------------------------------------------------


@pytest.mark.parametrize("behaviour", [
    "reference",
    "sdk",
])
async def test_reboot_mid_step_resumes_the_journaled_step(rig: Rig, behaviour: str) -> None:
    fleet = await rig.fleet({behaviour: 1.0})
    (thing,) = fleet.devices
    shell = fleet.devices[thing]
    rig.create_job("fw-1", [thing], firmware("2.0.0", install=1.0))
    await rig.watch.event(thing, "step", jobId="fw-1", step="install")
    assert shell.saved_nvm.journal is not None
    assert shell.saved_nvm.journal.step_name == "install"

    await shell.reboot()
    rebooted = await rig.watch.event(thing, "rebooted")
    done = await rig.watch.event(thing, "job_finished", jobId="fw-1", since=rebooted)

    after = rig.watch.events(thing, since=rebooted, job="fw-1")
    assert steps(after) == ["install", "reboot", "verify"]  # from install, not download
    assert kinds(after)[-2:] == ["image_committed", "job_finished"]
    assert rig.watch.ops[done].value["status"] == "SUCCEEDED"
    assert rig.status("fw-1", thing) == "SUCCEEDED"
    assert shell.saved_nvm.active_image.version == "2.0.0"
    assert shell.saved_nvm.journal is None


async def test_power_on_after_the_job_was_deleted_rolls_back(rig: Rig) -> None:
    fleet = await rig.fleet({"reference": 1.0})
    (thing,) = fleet.devices
    shell = fleet.devices[thing]
    rig.create_job("fw-1", [thing], firmware("2.0.0", install=LONG))
    await rig.watch.event(thing, "step", jobId="fw-1", step="install")

    await shell.power_off()
    rig.force_delete("fw-1")
    await rig.watch.job_event("fw-1", "deleted")
    journal = shell.saved_nvm.journal
    assert journal is not None
    assert journal.job_id == "fw-1"
    booted = len(rig.watch.ops)
    await shell.power_on()

    recovered = await rig.watch.event(thing, "recovered", jobId="fw-1", since=booted)
    await rig.watch.event(thing, "idle", since=recovered)
    after = rig.watch.events(thing, since=booted)
    assert kinds(after)[:2] == ["rebooted", "connected"]
    job_events = [e for e in after if e.get("jobId") == "fw-1"]
    assert kinds(job_events) == ["lost_access", "rolled_back", "recovered"]
    assert job_events[0]["reason"] == "ResourceNotFound"  # the describe of the journal
    assert job_events[0]["step"] == "install"
    nvm = shell.saved_nvm
    assert valid(nvm, {("fw-1", 1)})
    assert nvm.journal is None
    assert nvm.active_image.version == "1.0.0"


async def test_state_dir_lets_a_new_fleet_resume(rig: Rig, tmp_path: Path) -> None:
    state_dir = tmp_path / "nvm"
    first = await rig.fleet({"reference": 1.0}, state_dir=state_dir)
    (thing,) = first.devices
    rig.create_job("fw-1", [thing], firmware("2.0.0", install=1.0))
    await rig.watch.event(thing, "step", jobId="fw-1", step="install")
    await first.stop()
    rig.fleets.remove(first)

    path = state_dir / f"{thing}.json"
    saved = nvm_store.load(path)
    assert saved.journal is not None
    assert (saved.journal.job_id, saved.journal.step_name) == ("fw-1", "install")
    assert saved.journal.phase is Phase.RUNNING

    restarted = len(rig.watch.ops)
    second = await rig.fleet({"reference": 1.0}, state_dir=state_dir, wait_idle=False)
    shell: DeviceShell = second.devices[thing]
    assert shell.saved_nvm == saved  # built from the file, not from the factory
    done = await rig.watch.event(thing, "job_finished", jobId="fw-1", since=restarted)

    assert steps(rig.watch.events(thing, since=restarted, job="fw-1")) == [
        "install", "reboot", "verify"]
    assert rig.watch.ops[done].value["status"] == "SUCCEEDED"
    assert rig.status("fw-1", thing) == "SUCCEEDED"
    on_disk = nvm_store.load(path)
    assert on_disk == shell.saved_nvm
    assert on_disk.active_image.version == "2.0.0"
    assert on_disk.journal is None


# --- 5. scale: 200 devices in one process ----------------------------------------------------


def _rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


async def test_two_hundred_devices_complete_a_job(rig: Rig) -> None:
    count = 200
    rss_before = _rss_kib()
    began = time.monotonic()
    fleet = await rig.fleet({"reference": 1.0}, count=count, wait_idle=False)
    connect_seconds = time.monotonic() - began
    rss_after = _rss_kib()
    things = list(fleet.devices)
    assert len(things) == count
    for thing in things:
        await rig.watch.event(thing, "idle")

    rig.create_job("fw-all", things, firmware("2.0.0"))
    async with asyncio.timeout(60):
        for thing in things:
            await rig.watch.event(thing, "job_finished", jobId="fw-all", within=60)

    finished = [rig.watch.events(t, job="fw-all")[-1]["status"] for t in things]
    assert finished == ["SUCCEEDED"] * count
    assert {rig.status("fw-all", t) for t in things} == {"SUCCEEDED"}
    assert rig.service.store.describe_job("fw-all").status.value == "COMPLETED"
    print(f"{count} devices: connect {connect_seconds:.2f} s, "
          f"RSS +{(rss_after - rss_before) / count:.1f} KiB/device (pid {os.getpid()})")

"""The MQTT data plane against a real Mosquitto: each device operation, each error code,
the notify / notify-next sequences, and bad input that must never hurt the service."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devicesim.wire import topics
from fleet.broker import BrokerAddress
from fleet.service.settings import ServiceSettings, TerminalDescribe, TerminalUpdateCode
from fleet.service.shell import JobsService, ServiceConfig
from tests.jobs_client import JobsClient, jobs_client

pytestmark = pytest.mark.broker

DOC = json.dumps({"operation": "sleep", "seconds": 1})


def arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"


async def start_service(broker_address: BrokerAddress, tmp_path: Path,
                        settings: ServiceSettings | None = None) -> JobsService:
    service = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db",
                                        settings=settings or ServiceSettings(), http=False))
    await service.start()
    return service


@pytest.fixture
async def service(broker_address: BrokerAddress, tmp_path: Path) -> AsyncIterator[JobsService]:
    svc = await start_service(broker_address, tmp_path)
    yield svc
    await svc.stop()


@pytest.fixture
async def device(broker_address: BrokerAddress) -> AsyncIterator[JobsClient]:
    thing = f"dev-{uuid.uuid4().hex[:8]}"
    async with jobs_client(broker_address.host, broker_address.port, thing) as client:
        yield client


def create(service: JobsService, job_id: str, *things: str, doc: str = DOC) -> None:
    service.store.create_job(job_id, targets=[arn(t) for t in things], document=doc)
    service.flush()


async def test_get_pending_and_start_next(service: JobsService, device: JobsClient) -> None:
    reply = await device.get_pending()
    assert reply.kind == "accepted"
    assert reply.body["inProgressJobs"] == []
    assert reply.body["queuedJobs"] == []
    assert reply.body["clientToken"].startswith(device.thing)
    assert isinstance(reply.body["timestamp"], int)

    create(service, "job-a", device.thing)
    pushed = await device.next_notify_next()
    assert pushed["execution"]["jobId"] == "job-a"
    assert pushed["execution"]["jobDocument"] == {"operation": "sleep", "seconds": 1}
    notify = await device.next_notify()
    assert [s["jobId"] for s in notify["jobs"]["QUEUED"]] == ["job-a"]

    reply = await device.start_next(statusDetails={"step": "download"})
    execution = reply.body["execution"]
    assert (execution["status"], execution["versionNumber"]) == ("IN_PROGRESS", 2)
    assert execution["statusDetails"] == {"step": "download"}
    # start-next twice returns the same execution, unchanged
    again = await device.start_next(statusDetails={"step": "other"})
    assert again.body["execution"]["versionNumber"] == 2
    assert again.body["execution"]["statusDetails"] == {"step": "download"}
    pending = await device.get_pending()
    assert [s["jobId"] for s in pending.body["inProgressJobs"]] == ["job-a"]
    # QUEUED -> IN_PROGRESS through start-next pushes nothing
    assert device.notify_next.empty()
    assert device.notify.empty()


async def test_start_next_with_nothing_pending_has_no_execution(
        service: JobsService, device: JobsClient) -> None:
    reply = await device.start_next()
    assert reply.kind == "accepted"
    assert "execution" not in reply.body


async def test_describe_and_update_to_success(service: JobsService, device: JobsClient) -> None:
    create(service, "job-b", device.thing)
    await device.next_notify_next()
    await device.next_notify()
    nxt = await device.describe("$next")
    assert nxt.body["execution"]["jobId"] == "job-b"
    await device.start_next()
    reply = await device.update("job-b", status="IN_PROGRESS", expectedVersion="2",
                                includeJobExecutionState=True,
                                statusDetails={"progress": "50"})
    assert reply.kind == "accepted"
    assert reply.body["executionState"] == {"status": "IN_PROGRESS", "versionNumber": 3,
                                            "statusDetails": {"progress": "50"}}
    assert "jobDocument" not in reply.body
    described = await device.describe("job-b", includeJobDocument=False)
    assert "jobDocument" not in described.body["execution"]
    reply = await device.update("job-b", status="SUCCEEDED", expectedVersion=3,
                                includeJobDocument=True)
    assert reply.body["jobDocument"]["operation"] == "sleep"
    assert await device.next_notify_next() == {"timestamp": reply.body["timestamp"]}
    assert (await device.next_notify())["jobs"] == {}
    # terminal is terminal
    again = await device.update("job-b", status="IN_PROGRESS")
    assert (again.kind, again.code) == ("rejected", "InvalidStateTransition")
    assert again.body["executionState"]["status"] == "SUCCEEDED"
    assert (await device.describe("job-b")).body["execution"]["status"] == "SUCCEEDED"
    assert "execution" not in (await device.describe("$next")).body
    assert service.store.describe_job("job-b").status == "COMPLETED"


@pytest.mark.parametrize(("body", "code"), [
    ({"status": "IN_PROGRESS", "expectedVersion": 7}, "VersionMismatch"),
    ({"status": "CANCELED"}, "InvalidRequest"),
    ({"status": "QUEUED"}, "InvalidStateTransition"),
    ({"status": "BOGUS"}, "InvalidRequest"),
    ({}, "InvalidRequest"),
    ({"status": "IN_PROGRESS", "statusDetails": {"k": "line\nbreak"}}, "InvalidRequest"),
    ({"status": "IN_PROGRESS", "statusDetails": "not a map"}, "InvalidRequest"),
    ({"status": "IN_PROGRESS", "expectedVersion": True}, "InvalidRequest"),
    ({"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0}, "InvalidRequest"),
    ({"status": "IN_PROGRESS", "executionNumber": 99}, "ResourceNotFound"),
])
async def test_update_errors_leave_state_unchanged(
        service: JobsService, device: JobsClient, body: dict[str, Any], code: str) -> None:
    create(service, "job-c", device.thing)
    await device.start_next()
    reply = await device.update("job-c", **body)
    assert (reply.kind, reply.code) == ("rejected", code)
    assert ("executionState" in reply.body) == (code in ("VersionMismatch",
                                                         "InvalidStateTransition"))
    after = service.store.describe_job_execution("job-c", device.thing)
    assert (after.status, after.version_number) == ("IN_PROGRESS", 2)


async def test_unknown_execution_and_next_update(service: JobsService,
                                                 device: JobsClient) -> None:
    assert (await device.describe("nope")).code == "ResourceNotFound"
    assert (await device.update("nope", status="IN_PROGRESS")).code == "ResourceNotFound"
    assert (await device.update("$next", status="IN_PROGRESS")).code == "InvalidRequest"


async def test_force_delete_in_progress_job(service: JobsService, device: JobsClient) -> None:
    create(service, "job-d", device.thing)
    await device.next_notify_next()
    await device.next_notify()
    await device.start_next()
    service.store.delete_job("job-d", force=True)
    service.flush()
    assert service.store.describe_job("job-d").status == "DELETION_IN_PROGRESS"
    pushed = await device.next_notify_next()
    assert "execution" not in pushed
    assert (await device.next_notify())["jobs"] == {}
    update = await device.update("job-d", status="SUCCEEDED", expectedVersion=2)
    assert (update.kind, update.code) == ("rejected", "ResourceNotFound")
    assert "executionState" not in update.body
    assert (await device.describe("job-d")).code == "ResourceNotFound"


async def test_force_delete_names_the_next_job(service: JobsService, device: JobsClient) -> None:
    create(service, "job-e1", device.thing)
    create(service, "job-e2", device.thing)
    await device.start_next()
    assert (await device.next_notify_next())["execution"]["jobId"] == "job-e1"
    service.store.delete_job("job-e1", force=True)
    service.flush()
    pushed = await device.next_notify_next()
    assert pushed["execution"]["jobId"] == "job-e2"
    assert pushed["execution"]["status"] == "QUEUED"


async def test_force_cancel_in_progress(service: JobsService, device: JobsClient) -> None:
    create(service, "job-f", device.thing)
    await device.next_notify_next()
    await device.start_next()
    service.store.cancel_job("job-f", force=True)
    service.flush()
    assert "execution" not in await device.next_notify_next()
    reply = await device.update("job-f", status="SUCCEEDED")
    assert (reply.code, reply.body["executionState"]["status"]) == (
        "InvalidStateTransition", "CANCELED")


async def test_terminal_codes_are_configurable(broker_address: BrokerAddress, tmp_path: Path,
                                               device: JobsClient) -> None:
    settings = ServiceSettings(terminal_update_code=TerminalUpdateCode.TERMINAL_STATE_REACHED,
                               terminal_describe=TerminalDescribe.TERMINAL_STATE_REACHED)
    service = await start_service(broker_address, tmp_path, settings)
    try:
        create(service, "job-g", device.thing)
        await device.start_next()
        service.store.cancel_job_execution("job-g", device.thing, force=True)
        service.flush()
        reply = await device.update("job-g", status="SUCCEEDED")
        assert reply.code == "TerminalStateReached"
        assert "executionState" not in reply.body
        assert (await device.describe("job-g")).code == "TerminalStateReached"
    finally:
        await service.stop()


@pytest.mark.parametrize(("suffix", "raw", "code"), [
    ("start-next", b"\xff\xfe", "InvalidJson"),
    ("start-next", b"{not json", "InvalidJson"),
    ("start-next", b"[1, 2]", "InvalidJson"),
    ("start-next", b"x" * (128 * 1024 + 1), "InvalidRequest"),
    ("bogus", b"{}", "InvalidTopic"),
    ("a/b/c", b"{}", "InvalidTopic"),
])
async def test_bad_input_is_rejected_and_service_survives(
        service: JobsService, device: JobsClient, suffix: str, raw: bytes, code: str) -> None:
    topic = f"{topics.jobs_prefix(device.thing)}/{suffix}"
    reply = await device.request(topic, raw=raw)
    assert (reply.kind, reply.code, reply.topic) == ("rejected", code, f"{topic}/rejected")
    assert (await device.get_pending()).kind == "accepted"


async def test_empty_payload_is_an_empty_request(service: JobsService,
                                                 device: JobsClient) -> None:
    reply = await device.request(topics.get_pending(device.thing), raw=b"")
    assert reply.kind == "accepted"
    assert "clientToken" not in reply.body


async def test_service_ignores_its_own_replies(service: JobsService,
                                               device: JobsClient) -> None:
    before = service.dataplane.handled
    await device.client.publish(topics.accepted(topics.start_next(device.thing)), b"{}", qos=1)
    await device.client.publish(topics.notify_next(device.thing), b"{}", qos=1)
    await device.get_pending()
    assert service.dataplane.handled == before + 1

"""The HTTPS data plane through boto3's ``iot-jobs-data`` client (a client we did not
write), against a running service on its own port: a device's whole job over HTTP, the
errors the model names (TerminalStateException 410 among them), DescribeEndpoint
``iot:Jobs``, and the MQTT notifications an HTTP update causes for MQTT devices."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from fleet.broker import BrokerAddress
from fleet.drill.controller import iot_client
from fleet.service.settings import ServiceSettings, TerminalDescribe
from fleet.service.shell import JobsService, ServiceConfig
from tests.jobs_client import jobs_client
from tests.test_awscli import aws_batch_sync
from tests.test_controlplane import DOC, arn

pytestmark = pytest.mark.broker


def jobs_data_client(endpoint: str) -> Any:
    return boto3.client("iot-jobs-data", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x",
                        config=Config(retries={"total_max_attempts": 1}))


@pytest.fixture
async def service(broker_address: BrokerAddress, tmp_path: Path) -> AsyncIterator[JobsService]:
    service = JobsService(ServiceConfig(
        broker=broker_address, state=tmp_path / "jobs.db",
        settings=ServiceSettings(terminal_describe=TerminalDescribe.TERMINAL_STATE_REACHED)))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def call(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(getattr(client, operation), **params)
    result.pop("ResponseMetadata", None)
    return result


async def error(client: Any, operation: str, **params: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        await call(client, operation, **params)
    response = info.value.response
    return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
            response["Error"]["Message"])


async def test_a_device_runs_its_job_over_https(service: JobsService) -> None:
    assert service.jobs_data_endpoint is not None
    iot = iot_client(service.endpoint)
    data = jobs_data_client(service.jobs_data_endpoint)
    address = (await asyncio.to_thread(iot.describe_endpoint, endpointType="iot:Jobs"))[
        "endpointAddress"]
    assert f"http://{address}" == service.jobs_data_endpoint
    await asyncio.to_thread(iot.create_job, jobId="ota", targets=[arn("h1")], document=DOC)
    pending = await call(data, "get_pending_job_executions", thingName="h1")
    assert [j["jobId"] for j in pending["queuedJobs"]] == ["ota"]
    assert isinstance(pending["queuedJobs"][0]["queuedAt"], int)
    started = (await call(data, "start_next_pending_job_execution", thingName="h1",
                          statusDetails={"step": "download"}, stepTimeoutInMinutes=5))[
        "execution"]
    assert (started["jobId"], started["status"], started["versionNumber"]) == (
        "ota", "IN_PROGRESS", 2)
    assert json.loads(started["jobDocument"]) == json.loads(DOC)
    assert started["approximateSecondsBeforeTimedOut"] <= 300
    described = (await call(data, "describe_job_execution", thingName="h1", jobId="$next",
                            includeJobDocument=False))["execution"]
    assert (described["statusDetails"], "jobDocument" in described) == (
        {"step": "download"}, False)
    code, status, _ = await error(data, "update_job_execution", thingName="h1", jobId="ota",
                                  status="SUCCEEDED", expectedVersion=1)
    assert (code, status) == ("VersionConflictException", 409)
    done = await call(data, "update_job_execution", thingName="h1", jobId="ota",
                      status="SUCCEEDED", expectedVersion=2, includeJobExecutionState=True,
                      includeJobDocument=True)
    assert done["executionState"]["status"] == "SUCCEEDED"
    assert json.loads(done["jobDocument"]) == json.loads(DOC)
    assert (await error(data, "describe_job_execution", thingName="h1", jobId="ota"))[:2] == (
        "TerminalStateException", 410)
    assert (await error(data, "update_job_execution", thingName="h1", jobId="ota",
                        status="IN_PROGRESS"))[:2] == ("InvalidStateTransitionException", 409)
    assert (await error(data, "describe_job_execution", thingName="h1", jobId="gone"))[:2] == (
        "ResourceNotFoundException", 404)
    assert (await error(data, "update_job_execution", thingName="h1", jobId="ota",
                        status="CANCELED"))[:2] == ("InvalidRequestException", 400)
    assert await call(data, "start_next_pending_job_execution", thingName="h1") == {}
    assert (await call(iot, "describe_job", jobId="ota"))["job"]["status"] == "COMPLETED"


async def test_an_http_device_and_an_mqtt_device_share_the_service(
        service: JobsService, broker_address: BrokerAddress) -> None:
    """A force-cancel seen over HTTP, and an HTTP update's notifications sent over MQTT."""
    assert service.jobs_data_endpoint is not None
    iot = iot_client(service.endpoint)
    data = jobs_data_client(service.jobs_data_endpoint)
    async with jobs_client(broker_address.host, broker_address.port, "m1") as mqtt:
        await asyncio.to_thread(iot.create_job, jobId="first", targets=[arn("m1")],
                                document=DOC)
        await asyncio.to_thread(iot.create_job, jobId="second", targets=[arn("m1")],
                                document=DOC)
        assert (await mqtt.next_notify_next())["execution"]["jobId"] == "first"
        # the thing's execution is run over HTTP (say, by its bootloader)
        await call(data, "start_next_pending_job_execution", thingName="m1")
        await call(data, "update_job_execution", thingName="m1", jobId="first",
                   status="FAILED")
        assert (await mqtt.next_notify_next())["execution"]["jobId"] == "second"
        await call(data, "start_next_pending_job_execution", thingName="m1")
        await asyncio.to_thread(iot.cancel_job, jobId="second", force=True)
        assert "execution" not in await mqtt.next_notify_next()
        assert (await error(data, "update_job_execution", thingName="m1", jobId="second",
                            status="SUCCEEDED"))[:2] == ("InvalidStateTransitionException",
                                                          409)


async def test_what_the_http_data_plane_refuses(service: JobsService) -> None:
    assert service.jobs_data_endpoint is not None
    data = jobs_data_client(service.jobs_data_endpoint)
    code, status, message = await error(
        data, "start_command_execution",
        targetArn=arn("t"), commandArn="arn:aws:iot:us-east-1:123456789012:command/c")
    assert (code, status) == ("InvalidRequestException", 400)
    assert "commands" in message
    assert (await error(data, "get_pending_job_executions", thingName="bad thing"))[:2] == (
        "InvalidRequestException", 400)


async def test_the_real_aws_cli_speaks_iot_jobs_data(service: JobsService, tmp_path: Path
                                                     ) -> None:
    assert service.jobs_data_endpoint is not None
    iot = iot_client(service.endpoint)
    await asyncio.to_thread(iot.create_job, jobId="cli", targets=[arn("c1")], document=DOC)
    home = tmp_path / "home"
    home.mkdir()
    common = ["--endpoint-url", service.jobs_data_endpoint, "--output", "json"]
    cases = [{"run": ["iot-jobs-data", *command, *common]} for command in (
        ["get-pending-job-executions", "--thing-name", "c1"],
        ["start-next-pending-job-execution", "--thing-name", "c1"],
        ["update-job-execution", "--thing-name", "c1", "--job-id", "cli", "--status",
         "SUCCEEDED", "--include-job-execution-state"],
        ["describe-job-execution", "--thing-name", "c1", "--job-id", "cli"])]
    results = await asyncio.to_thread(aws_batch_sync, home, cases)
    for result in results[:3]:
        assert result["rc"] == 0, result["err"]
    assert json.loads(results[0]["out"])["queuedJobs"][0]["jobId"] == "cli"
    assert json.loads(results[1]["out"])["execution"]["status"] == "IN_PROGRESS"
    assert json.loads(results[2]["out"])["executionState"]["status"] == "SUCCEEDED"
    assert results[3]["rc"] != 0
    assert "TerminalStateException" in results[3]["err"]

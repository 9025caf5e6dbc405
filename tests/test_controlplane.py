"""The control plane through clients nobody here wrote: a real boto3 ``iot`` client and the
real AWS CLI, against a ControlPlane on a JobsStore with an injected clock.

Device-side steps (start-next) and the deletion sweep go straight to the store: the MQTT
data plane and the service shell that ticks are tested elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from devicesim.wire import topics
from fleet.service.controlplane import ControlPlane
from fleet.service.errors import BY_NAME
from fleet.service.settings import ServiceSettings
from fleet.service.store import JobsStore, Publish

T0 = 1_700_000_000.25
ACCOUNT = "123456789012"
DOC = json.dumps({"operation": "update", "version": "1.2.3"})
AWS_CLI = Path(sys.executable).with_name("aws")


def arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:{ACCOUNT}:thing/{thing}"


def job_arn(job_id: str) -> str:
    return f"arn:aws:iot:us-east-1:{ACCOUNT}:job/{job_id}"


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Env:
    store: JobsStore
    clock: Clock
    client: Any
    url: str
    #: What on_change drained, one entry per call.
    changes: list[list[Publish]] = field(default_factory=list)

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(getattr(self.client, operation),
                                                         **params)
        return result

    async def error(self, operation: str, **params: Any) -> tuple[str, int, str]:
        """(code, HTTP status, message) of the ClientError the call must raise."""
        with pytest.raises(ClientError) as info:
            await self.call(operation, **params)
        response = info.value.response
        return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
                response["Error"]["Message"])

    async def create(self, job_id: str, *things: str, **params: Any) -> dict[str, Any]:
        return await self.call("create_job", jobId=job_id, targets=[arn(t) for t in things],
                               document=DOC, **params)

    async def status(self, job_id: str) -> str:
        status: str = (await self.call("describe_job", jobId=job_id))["job"]["status"]
        return status

    def sweep(self, seconds: float) -> None:
        """What the service's timer does: let time pass, then tick."""
        self.clock.advance(seconds)
        self.store.tick()


def boto_client(url: str) -> Any:
    return boto3.client("iot", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x",
                        config=Config(retries={"total_max_attempts": 1}))


@asynccontextmanager
async def running(tmp_path: Path, **settings: Any) -> AsyncIterator[Env]:
    clock = Clock()
    store = JobsStore(tmp_path / "jobs.sqlite",
                      ServiceSettings(**{"deletion_seconds_per_execution": 1.0, **settings}),
                      now=clock)
    changes: list[list[Publish]] = []

    async def on_change() -> None:
        changes.append(store.drain())

    control = ControlPlane(store, on_change)
    url = await control.start()
    try:
        yield Env(store, clock, boto_client(url), url, changes)
    finally:
        await control.stop()
        store.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with running(tmp_path) as e:
        yield e


# -- jobs: create / describe / list / document ----------------------------------------------

async def test_create_and_describe_job(env: Env) -> None:
    created = await env.create("job-1", "thing-a", "thing-b", description="firmware 1.2.3",
                               timeoutConfig={"inProgressTimeoutInMinutes": 30},
                               namespaceId="ns1")
    assert {k: v for k, v in created.items() if k != "ResponseMetadata"} == {
        "jobArn": job_arn("job-1"), "jobId": "job-1", "description": "firmware 1.2.3"}

    job = (await env.call("describe_job", jobId="job-1"))["job"]
    assert job["jobArn"] == job_arn("job-1")
    assert job["status"] == "IN_PROGRESS"
    assert job["targetSelection"] == "SNAPSHOT"
    assert job["targets"] == [arn("thing-a"), arn("thing-b")]
    assert job["forceCanceled"] is False
    assert job["isConcurrent"] is False
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    assert job["namespaceId"] == "ns1"
    assert job["createdAt"].timestamp() == T0  # fractional epoch seconds survive the wire
    assert job["lastUpdatedAt"].timestamp() == T0
    assert "completedAt" not in job
    assert job["jobProcessDetails"] == {
        "numberOfCanceledThings": 0, "numberOfSucceededThings": 0, "numberOfFailedThings": 0,
        "numberOfRejectedThings": 0, "numberOfQueuedThings": 2, "numberOfInProgressThings": 0,
        "numberOfRemovedThings": 0, "numberOfTimedOutThings": 0}
    # beforeSubstitution is accepted: nothing is ever substituted by this emulator.
    again = await env.call("describe_job", jobId="job-1", beforeSubstitution=True)
    assert again["job"] == job


async def test_create_job_errors(env: Env) -> None:
    await env.create("job-1", "thing-a")
    with pytest.raises(ClientError) as info:
        await env.call("create_job", jobId="job-1", targets=[arn("thing-a")], document=DOC)
    response = info.value.response
    assert (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]) == (
        "ResourceAlreadyExistsException", 409)
    assert (response["resourceId"], response["resourceArn"]) == ("job-1", job_arn("job-1"))
    assert await env.error("create_job", jobId="job-2", targets=["not-an-arn"],
                           document=DOC) == (
        "InvalidRequestException", 400,
        "targets: 'not-an-arn' is not a thing or thing group ARN")
    assert await env.error(
        "create_job", jobId="job-2", document=DOC,
        targets=[f"arn:aws:iot:us-east-1:{ACCOUNT}:thinggroup/g1"]) == (
        "ResourceNotFoundException", 404, "Thing Group g1 does not exist")
    code, status, message = await env.error("create_job", jobId="job-2",
                                            targets=[arn("t")], document="not json")
    assert (code, status) == ("InvalidRequestException", 400)
    assert message.startswith("document: not valid JSON")
    code, _, message = await env.error("create_job", jobId="job-2", targets=[arn("t")])
    assert code == "InvalidRequestException"
    assert message.startswith("document: required")
    code, _, message = await env.error("create_job", jobId="bad.id", targets=[arn("t")],
                                       document=DOC)
    assert (code, message) == ("InvalidRequestException",
                               "jobId: must be 1-64 characters of [a-zA-Z0-9_-]")
    code, _, _ = await env.error("create_job", jobId="job-2", targets=[arn("t")],
                                 document=DOC, timeoutConfig={"inProgressTimeoutInMinutes": 0})
    assert code == "InvalidRequestException"
    assert env.changes == [env.changes[0]]  # only the one successful create


@pytest.mark.parametrize("text", ["line1\nline2", "nul\x00", ""])
async def test_description_and_comment_follow_the_models_pattern(env: Env, text: str) -> None:
    code, _, _ = await env.error("create_job", jobId="job-1", targets=[arn("thing-a")],
                                 document=DOC, description=text)
    assert code == "InvalidRequestException"
    await env.create("job-2", "thing-a")
    code, _, _ = await env.error("cancel_job", jobId="job-2", comment=text)
    assert code == "InvalidRequestException"


async def test_targets_of_another_account_or_region_are_refused(env: Env) -> None:
    foreign = "arn:aws:iot:eu-west-1:999999999999:thing/thing-a"
    code, _, _ = await env.error("create_job", jobId="job-1", document=DOC,
                                 targets=[foreign, arn("thing-a")])
    assert code in ("InvalidRequestException", "ResourceNotFoundException")


UNSUPPORTED_CREATE_PARAMS: dict[str, Any] = {
    "documentSource": "https://s3.amazonaws.com/bucket/job.json",
    "presignedUrlConfig": {"roleArn": "arn:aws:iam::123456789012:role/r", "expiresInSec": 60},
    "tags": [{"Key": "k", "Value": "v"}],
    "destinationPackageVersions": [
        "arn:aws:iot:us-east-1:123456789012:package/p/version/1"],
}


@pytest.mark.parametrize("param", sorted(UNSUPPORTED_CREATE_PARAMS))
async def test_create_job_unsupported_parameter(env: Env, param: str) -> None:
    params: dict[str, Any] = {"jobId": "job-1", "targets": [arn("t")],
                              param: UNSUPPORTED_CREATE_PARAMS[param]}
    if param != "documentSource":
        params["document"] = DOC
    assert await env.error("create_job", **params) == (
        "InvalidRequestException", 400, f"{param} is not supported by this emulator")
    assert await env.error("describe_job", jobId="job-1") == (
        "ResourceNotFoundException", 404, "Job job-1 not found")


@pytest.mark.parametrize(("operation", "params"), [
    ("list_jobs", {"namespaceId": "ns1"}),
    ("list_job_executions_for_thing", {"thingName": "t", "namespaceId": "ns1"}),
])
async def test_list_unsupported_filter(env: Env, operation: str, params: dict[str, Any]
                                       ) -> None:
    member = next(k for k in params if k != "thingName")
    assert await env.error(operation, **params) == (
        "InvalidRequestException", 400, f"{member} is not supported by this emulator")


async def test_list_jobs_paginates_and_filters(env: Env) -> None:
    for n in range(3):
        await env.create(f"job-{n}", "thing-a")
    await env.call("cancel_job", jobId="job-1")

    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"maxResults": 1}
        if token:
            params["nextToken"] = token
        page = await env.call("list_jobs", **params)
        pages += 1
        assert len(page["jobs"]) == 1
        seen += [j["jobId"] for j in page["jobs"]]
        token = page.get("nextToken")
        if token is None:
            break
    assert (seen, pages) == (["job-0", "job-1", "job-2"], 3)

    summary = (await env.call("list_jobs", maxResults=1))["jobs"][0]
    assert set(summary) == {"jobArn", "jobId", "targetSelection", "status", "createdAt",
                            "lastUpdatedAt", "isConcurrent"}
    assert summary["createdAt"].timestamp() == T0
    canceled = (await env.call("list_jobs", status="CANCELED"))["jobs"]
    assert [j["jobId"] for j in canceled] == ["job-1"]
    assert "nextToken" not in await env.call("list_jobs", status="CANCELED")
    assert (await env.call("list_jobs", targetSelection="CONTINUOUS"))["jobs"] == []

    paginator = env.client.get_paginator("list_jobs")
    all_pages = await asyncio.to_thread(
        lambda: list(paginator.paginate(PaginationConfig={"PageSize": 2})))
    assert [[j["jobId"] for j in p["jobs"]] for p in all_pages] == [["job-0", "job-1"],
                                                                      ["job-2"]]

    for params, member in (({"maxResults": 251}, "maxResults"),
                           ({"nextToken": "garbage!"}, "nextToken"),
                           ({"status": "RUNNING"}, "status"),
                           ({"targetSelection": "SOMETIMES"}, "targetSelection")):
        code, status, message = await env.error("list_jobs", **params)
        assert (code, status) == ("InvalidRequestException", 400)
        assert message.startswith(member)


async def test_get_job_document(env: Env) -> None:
    await env.create("job-1", "thing-a")
    document = await env.call("get_job_document", jobId="job-1")
    assert document["document"] == DOC
    assert (await env.call("get_job_document", jobId="job-1",
                           beforeSubstitution=False))["document"] == DOC
    assert await env.error("get_job_document", jobId="nope") == (
        "ResourceNotFoundException", 404, "Job nope not found")


# -- CancelJob ---------------------------------------------------------------------------------

async def test_cancel_job_without_force_leaves_in_progress_executions(env: Env) -> None:
    await env.create("job-1", "thing-a", "thing-b", description="d")
    env.store.start_next("thing-a")
    env.clock.advance(5)
    canceled = await env.call("cancel_job", jobId="job-1", reasonCode="OPERATOR_ABORT",
                              comment="bad build")
    assert {k: v for k, v in canceled.items() if k != "ResponseMetadata"} == {
        "jobArn": job_arn("job-1"), "jobId": "job-1", "description": "d"}
    job = (await env.call("describe_job", jobId="job-1"))["job"]
    assert (job["status"], job["forceCanceled"]) == ("CANCELED", False)
    assert (job["reasonCode"], job["comment"]) == ("OPERATOR_ABORT", "bad build")
    assert job["lastUpdatedAt"].timestamp() == T0 + 5
    assert job["jobProcessDetails"]["numberOfInProgressThings"] == 1
    assert job["jobProcessDetails"]["numberOfCanceledThings"] == 1
    a = (await env.call("describe_job_execution", jobId="job-1", thingName="thing-a"))
    b = (await env.call("describe_job_execution", jobId="job-1", thingName="thing-b"))
    assert a["execution"]["status"] == "IN_PROGRESS"
    assert (b["execution"]["status"], b["execution"]["forceCanceled"]) == ("CANCELED", False)

    # Canceling a terminal job: the configured error (default InvalidRequestException 400).
    code, status, _ = await env.error("cancel_job", jobId="job-1")
    assert (code, status) == ("InvalidRequestException", 400)
    code, status, message = await env.error("cancel_job", jobId="job-2")
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, _, message = await env.error("cancel_job", jobId="job-1", reasonCode="lower case")
    assert (code, message) == ("InvalidRequestException",
                               "reasonCode: must match [A-Z0-9_]{1,128}")


async def test_cancel_job_with_force_cancels_in_progress_executions(env: Env) -> None:
    await env.create("job-1", "thing-a", "thing-b")
    env.store.start_next("thing-a")
    await env.call("cancel_job", jobId="job-1", force=True)
    job = (await env.call("describe_job", jobId="job-1"))["job"]
    assert (job["status"], job["forceCanceled"]) == ("CANCELED", True)
    assert job["jobProcessDetails"]["numberOfCanceledThings"] == 2
    a = (await env.call("describe_job_execution", jobId="job-1",
                        thingName="thing-a"))["execution"]
    assert (a["status"], a["forceCanceled"]) == ("CANCELED", True)


async def test_cancel_job_errors_are_configurable(tmp_path: Path) -> None:
    async with running(tmp_path, cancel_in_progress_error="InvalidStateTransitionException",
                       delete_in_progress_error="LimitExceededException") as env:
        await env.create("job-1", "thing-a")
        await env.call("delete_job", jobId="job-1", force=True)
        code, status, _ = await env.error("cancel_job", jobId="job-1")
        assert (code, status) == ("InvalidStateTransitionException", 409)
        code, status, _ = await env.error("delete_job", jobId="job-1", force=True)
        assert (code, status) == ("LimitExceededException", 410)


# -- DeleteJob -------------------------------------------------------------------------------

async def test_delete_job_force_sweeps_then_frees_the_job_id(env: Env) -> None:
    assert await env.error("delete_job", jobId="nope") == (
        "ResourceNotFoundException", 404, "Job nope not found")
    await env.create("job-1", "thing-a", "thing-b")
    env.store.start_next("thing-a")

    for force in ({}, {"force": False}):
        code, status, message = await env.error("delete_job", jobId="job-1", **force)
        assert (code, status) == ("InvalidStateTransitionException", 409)
        assert "without force" in message
    assert await env.status("job-1") == "IN_PROGRESS"

    deleted = await env.call("delete_job", jobId="job-1", force=True)
    assert set(deleted) == {"ResponseMetadata"}
    assert deleted["ResponseMetadata"]["HTTPHeaders"]["content-length"] == "0"
    assert await env.status("job-1") == "DELETION_IN_PROGRESS"
    # While deleting: a second delete, a cancel and a reused jobId are refused.
    code, status, _ = await env.error("delete_job", jobId="job-1", force=True)
    assert (code, status) == ("InvalidStateTransitionException", 409)
    code, status, _ = await env.error("cancel_job", jobId="job-1", force=True)
    assert (code, status) == ("InvalidRequestException", 400)
    code, status, _ = await env.error("create_job", jobId="job-1", targets=[arn("thing-c")],
                                      document=DOC)
    assert (code, status) == ("ResourceAlreadyExistsException", 409)

    env.sweep(1.0)  # one of the two executions is swept
    job = (await env.call("describe_job", jobId="job-1"))["job"]
    assert job["status"] == "DELETION_IN_PROGRESS"
    details = job["jobProcessDetails"]
    assert details["numberOfInProgressThings"] + details["numberOfQueuedThings"] == 1
    listed = await env.call("list_job_executions_for_job", jobId="job-1")
    assert len(listed["executionSummaries"]) == 1

    env.sweep(1.0)  # the last one: the job is gone
    for operation in ("describe_job", "get_job_document", "delete_job",
                      "list_job_executions_for_job"):
        code, status, _ = await env.error(operation, jobId="job-1")
        assert (code, status) == ("ResourceNotFoundException", 404)
    code, status, _ = await env.error("describe_job_execution", jobId="job-1",
                                      thingName="thing-a")
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert (await env.call("list_jobs"))["jobs"] == []

    await env.create("job-1", "thing-c")  # reuse is allowed once deletion has completed
    job = (await env.call("describe_job", jobId="job-1"))["job"]
    assert (job["status"], job["targets"]) == ("IN_PROGRESS", [arn("thing-c")])
    assert (await env.call("list_job_executions_for_thing",
                           thingName="thing-a"))["executionSummaries"] == []


async def test_delete_terminal_job_needs_no_force(env: Env) -> None:
    await env.create("job-1", "thing-a")
    await env.call("cancel_job", jobId="job-1")
    await env.call("delete_job", jobId="job-1")
    assert await env.status("job-1") == "DELETION_IN_PROGRESS"
    env.sweep(1.0)
    code, _, _ = await env.error("describe_job", jobId="job-1")
    assert code == "ResourceNotFoundException"


async def test_eleventh_concurrent_deletion_is_refused(env: Env) -> None:
    for n in range(11):
        await env.create(f"job-{n}", f"thing-{n}")
    for n in range(10):
        await env.call("delete_job", jobId=f"job-{n}", force=True)
    code, status, message = await env.error("delete_job", jobId="job-10", force=True)
    assert (code, status) == ("LimitExceededException", 410)
    assert "limit 10" in message
    assert await env.status("job-10") == "IN_PROGRESS"
    # Deleting one of the ten again is the state error, not the limit.
    code, status, _ = await env.error("delete_job", jobId="job-3", force=True)
    assert (code, status) == ("InvalidStateTransitionException", 409)

    env.sweep(1.0)  # all ten finish
    await env.call("delete_job", jobId="job-10", force=True)
    assert await env.status("job-10") == "DELETION_IN_PROGRESS"


# -- job executions --------------------------------------------------------------------------

async def test_describe_job_execution(env: Env) -> None:
    await env.create("job-1", "dev:1", timeoutConfig={"inProgressTimeoutInMinutes": 60})
    execution = (await env.call("describe_job_execution", jobId="job-1",
                                thingName="dev:1"))["execution"]
    assert execution["queuedAt"].timestamp() == T0
    assert {k: v for k, v in execution.items() if k not in ("queuedAt", "lastUpdatedAt")} == {
        "jobId": "job-1", "status": "QUEUED", "forceCanceled": False,
        "statusDetails": {"detailsMap": {}}, "thingArn": arn("dev:1"),
        "executionNumber": 1, "versionNumber": 1}

    env.store.start_next("dev:1", status_details={"step": "download"}, step_timeout=10)
    env.clock.advance(100)
    execution = (await env.call("describe_job_execution", jobId="job-1", thingName="dev:1",
                                executionNumber=1))["execution"]
    assert execution["status"] == "IN_PROGRESS"
    assert execution["statusDetails"] == {"detailsMap": {"step": "download"}}
    assert execution["startedAt"].timestamp() == T0
    assert execution["versionNumber"] == 2
    assert execution["approximateSecondsBeforeTimedOut"] == 500

    for params in ({"thingName": "dev:1", "executionNumber": 2},
                   {"thingName": "dev:2"}):
        code, status, _ = await env.error("describe_job_execution", jobId="job-1", **params)
        assert (code, status) == ("ResourceNotFoundException", 404)
    code, status, _ = await env.error("describe_job_execution", jobId="job-1",
                                      thingName="bad/thing")
    assert (code, status) == ("InvalidRequestException", 400)


async def test_list_job_executions(env: Env) -> None:
    await env.create("job-1", "thing-a", "thing-b", "thing-c")
    await env.create("job-2", "thing-a")
    env.store.start_next("thing-b")

    thing_arns: list[str] = []
    token: str | None = None
    while True:
        params: dict[str, Any] = {"jobId": "job-1", "maxResults": 1}
        if token:
            params["nextToken"] = token
        page = await env.call("list_job_executions_for_job", **params)
        assert len(page["executionSummaries"]) == 1
        thing_arns += [s["thingArn"] for s in page["executionSummaries"]]
        token = page.get("nextToken")
        if token is None:
            break
    assert thing_arns == [arn("thing-a"), arn("thing-b"), arn("thing-c")]

    summary = (await env.call("list_job_executions_for_job", jobId="job-1",
                              status="IN_PROGRESS"))["executionSummaries"]
    assert len(summary) == 1
    assert summary[0]["thingArn"] == arn("thing-b")
    inner = summary[0]["jobExecutionSummary"]
    assert (inner["status"], inner["executionNumber"], inner["retryAttempt"]) == (
        "IN_PROGRESS", 1, 0)
    assert inner["startedAt"].timestamp() == T0

    for_thing = await env.call("list_job_executions_for_thing", thingName="thing-a",
                               maxResults=1)
    assert [s["jobId"] for s in for_thing["executionSummaries"]] == ["job-1"]
    rest = await env.call("list_job_executions_for_thing", thingName="thing-a",
                          nextToken=for_thing["nextToken"])
    assert [s["jobId"] for s in rest["executionSummaries"]] == ["job-2"]
    assert "nextToken" not in rest
    only = await env.call("list_job_executions_for_thing", thingName="thing-a", jobId="job-2")
    assert [s["jobId"] for s in only["executionSummaries"]] == ["job-2"]
    assert (only["executionSummaries"][0]["jobExecutionSummary"]["status"]) == "QUEUED"
    assert (await env.call("list_job_executions_for_thing", thingName="thing-a",
                           status="SUCCEEDED"))["executionSummaries"] == []

    assert (await env.error("list_job_executions_for_job", jobId="job-9"))[:2] == (
        "ResourceNotFoundException", 404)
    code, status, message = await env.error("list_job_executions_for_job", jobId="job-1",
                                            status="DONE")
    assert (code, status) == ("InvalidRequestException", 400)
    assert message.startswith("status")


async def test_cancel_job_execution(env: Env) -> None:
    await env.create("job-1", "thing-a", "thing-b", "thing-c")
    code, status, message = await env.error("cancel_job_execution", jobId="job-1",
                                            thingName="thing-a", expectedVersion=7)
    assert (code, status) == ("VersionConflictException", 409)
    assert "7" in message

    changes = len(env.changes)
    done = await env.call("cancel_job_execution", jobId="job-1", thingName="thing-a",
                          expectedVersion=1, statusDetails={"reason": "operator"})
    assert set(done) == {"ResponseMetadata"}
    assert len(env.changes) == changes + 1
    assert topics.notify("thing-a") in {p.topic for p in env.changes[-1]}
    execution = (await env.call("describe_job_execution", jobId="job-1",
                                thingName="thing-a"))["execution"]
    assert (execution["status"], execution["versionNumber"]) == ("CANCELED", 2)
    assert execution["statusDetails"] == {"detailsMap": {"reason": "operator"}}
    code, status, _ = await env.error("cancel_job_execution", jobId="job-1",
                                      thingName="thing-a")
    assert (code, status) == ("InvalidStateTransitionException", 409)

    env.store.start_next("thing-b")
    code, status, message = await env.error("cancel_job_execution", jobId="job-1",
                                            thingName="thing-b")
    assert (code, status) == ("InvalidStateTransitionException", 409)
    assert "without force" in message
    await env.call("cancel_job_execution", jobId="job-1", thingName="thing-b", force=True)
    execution = (await env.call("describe_job_execution", jobId="job-1",
                                thingName="thing-b"))["execution"]
    assert (execution["status"], execution["forceCanceled"]) == ("CANCELED", True)

    too_many = {f"k{n}": "v" for n in range(11)}
    code, status, message = await env.error("cancel_job_execution", jobId="job-1",
                                            thingName="thing-c", statusDetails=too_many)
    assert (code, status) == ("InvalidRequestException", 400)
    assert "at most 10" in message
    code, status, _ = await env.error("cancel_job_execution", jobId="job-1",
                                      thingName="thing-z")
    assert (code, status) == ("ResourceNotFoundException", 404)


async def test_delete_job_execution(env: Env) -> None:
    await env.create("job-1", "thing-a", "thing-b")
    code, status, message = await env.error("delete_job_execution", jobId="job-1",
                                            thingName="thing-a", executionNumber=1)
    assert (code, status) == ("InvalidStateTransitionException", 409)
    assert "without force" in message
    code, status, _ = await env.error("delete_job_execution", jobId="job-1",
                                      thingName="thing-a", executionNumber=2, force=True)
    assert (code, status) == ("ResourceNotFoundException", 404)

    await env.call("cancel_job_execution", jobId="job-1", thingName="thing-a")
    deleted = await env.call("delete_job_execution", jobId="job-1", thingName="thing-a",
                             executionNumber=1)
    assert deleted["ResponseMetadata"]["HTTPHeaders"]["content-length"] == "0"
    code, status, _ = await env.error("describe_job_execution", jobId="job-1",
                                      thingName="thing-a")
    assert (code, status) == ("ResourceNotFoundException", 404)

    env.store.start_next("thing-b")
    await env.call("delete_job_execution", jobId="job-1", thingName="thing-b",
                   executionNumber=1, force=True)
    assert (await env.call("list_job_executions_for_job",
                           jobId="job-1"))["executionSummaries"] == []


# -- event configurations --------------------------------------------------------------------

async def test_event_configurations(env: Env) -> None:
    described = await env.call("describe_event_configurations")
    configurations = described["eventConfigurations"]
    assert configurations["JOB"] == {"Enabled": True}
    assert configurations["JOB_EXECUTION"] == {"Enabled": True}
    assert configurations["THING"] == {"Enabled": False}

    await env.create("job-1", "thing-a")
    assert topics.job_event("job-1", "canceled") not in {p.topic for p in env.changes[-1]}
    await env.call("update_event_configurations",
                   eventConfigurations={"JOB": {"Enabled": False}, "THING": {"Enabled": False}})
    configurations = (await env.call("describe_event_configurations"))["eventConfigurations"]
    assert (configurations["JOB"], configurations["JOB_EXECUTION"]) == (
        {"Enabled": False}, {"Enabled": True})
    await env.call("cancel_job", jobId="job-1")
    published = {p.topic for p in env.changes[-1]}
    assert not any(t.startswith("$aws/events/job/") for t in published)
    assert topics.execution_event("job-1", "canceled") in published

    assert await env.error("update_event_configurations",
                           eventConfigurations={"THING": {"Enabled": True}}) == (
        "InvalidRequestException", 400,
        "eventConfigurations.THING is not supported by this emulator")


# -- the server: on_change, unknown operations, internal failures -----------------------------

async def test_on_change_follows_each_successful_mutation_only(env: Env) -> None:
    await env.create("job-1", "thing-a")
    assert len(env.changes) == 1
    assert {topics.notify("thing-a"), topics.notify_next("thing-a")} <= {
        p.topic for p in env.changes[0]}
    await env.call("describe_job", jobId="job-1")
    await env.call("list_jobs")
    await env.call("describe_job_execution", jobId="job-1", thingName="thing-a")
    await env.error("delete_job", jobId="job-1")
    await env.error("create_job", jobId="job-1", targets=[arn("thing-a")], document=DOC)
    assert len(env.changes) == 1
    await env.call("cancel_job", jobId="job-1")
    await env.call("delete_job", jobId="job-1")
    assert len(env.changes) == 3
    assert topics.job_event("job-1", "deletion_in_progress") in {
        p.topic for p in env.changes[2]}


async def test_on_change_may_be_sync_and_may_fail(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = JobsStore(tmp_path / "jobs.sqlite", now=Clock())
    calls: list[int] = []

    def on_change() -> None:
        calls.append(len(store.drain()))
        raise RuntimeError("broker down")

    control = ControlPlane(store, on_change)
    client = boto_client(await control.start())
    try:
        created = await asyncio.to_thread(client.create_job, jobId="job-1",
                                          targets=[arn("thing-a")], document=DOC)
        assert created["jobId"] == "job-1"  # the committed call is still a success
        assert calls == [2]
        assert "on_change failed operation=CreateJob" in caplog.text
    finally:
        await control.stop()
        store.close()


async def test_unknown_operation(env: Env) -> None:
    code, status, message = await env.error("list_thing_types")
    assert (code, status) == ("UnknownOperationException", 404)
    assert message.startswith("no operation of this emulator is routed at GET /thing-types")


async def test_internal_failure_is_500_and_the_server_survives(
        env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    await env.create("job-1", "thing-a")

    def broken(job_id: str) -> None:
        raise RuntimeError(f"disk on fire reading {job_id}")

    monkeypatch.setattr(env.store, "describe_job", broken)
    assert await env.error("describe_job", jobId="job-1") == (
        "InternalFailureException", 500, "RuntimeError: disk on fire reading job-1")
    assert "request failed operation=DescribeJob" in caplog.text
    monkeypatch.undo()
    assert await env.status("job-1") == "IN_PROGRESS"


@pytest.mark.parametrize("name", sorted(BY_NAME))
async def test_every_jobs_error_reaches_boto3_with_its_code_and_status(
        env: Env, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The one translation seam, for errors the store cannot be driven into (Throttling...)."""
    error = BY_NAME[name]

    def failing(*_args: Any, **_kwargs: Any) -> None:
        raise error(f"{name} from the store")

    monkeypatch.setattr(env.store, "update_event_configurations", failing)
    assert await env.error("update_event_configurations",
                           eventConfigurations={"JOB": {"Enabled": True}}) == (
        name, error.http_status, f"{name} from the store")
    assert env.changes == []


# -- the real AWS CLI ------------------------------------------------------------------------

async def aws(url: str, home: Path, *args: str) -> tuple[int, str, str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"), "AWS_PAGER": "",
        "AWS_MAX_ATTEMPTS": "1",
    }
    process = await asyncio.create_subprocess_exec(
        str(AWS_CLI), "iot", *args, "--endpoint-url", url, "--output", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_aws_cli(env: Env, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    rc, out, err = await aws(env.url, home, "create-job", "--job-id", "cli-job",
                             "--targets", arn("thing-a"), "--document", DOC,
                             "--description", "from the CLI")
    assert rc == 0, err
    assert json.loads(out) == {"jobArn": job_arn("cli-job"), "jobId": "cli-job",
                               "description": "from the CLI"}

    rc, out, err = await aws(env.url, home, "describe-job", "--job-id", "cli-job")
    assert rc == 0, err
    job = json.loads(out)["job"]
    assert (job["status"], job["targets"]) == ("IN_PROGRESS", [arn("thing-a")])
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 1

    rc, out, err = await aws(env.url, home, "delete-job", "--job-id", "cli-job", "--force")
    assert (rc, out) == (0, ""), err
    assert await env.status("cli-job") == "DELETION_IN_PROGRESS"

    rc, out, err = await aws(env.url, home, "list-jobs")
    assert rc == 0, err
    assert [(j["jobId"], j["status"]) for j in json.loads(out)["jobs"]] == [
        ("cli-job", "DELETION_IN_PROGRESS")]

    env.sweep(1.0)
    rc, out, err = await aws(env.url, home, "describe-job", "--job-id", "cli-job")
    assert rc != 0
    assert "An error occurred (ResourceNotFoundException)" in err
    assert "Job cli-job not found" in err

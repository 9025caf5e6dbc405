"""Things and static thing groups through boto3 (a client we did not write), and jobs that
target groups: a SNAPSHOT job takes the members at creation, a CONTINUOUS job queues an
execution for a thing that joins later (and notifies it), removes a QUEUED one whose thing
left, and takes more targets with AssociateTargetsWithJob. The store has an injected clock;
what it would publish is read from the outbox the control plane drains."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from devicesim.wire import topics
from fleet.service.controlplane import ControlPlane
from fleet.service.registry import Registry
from fleet.service.settings import ServiceSettings
from fleet.service.store import JobsStore, Publish
from tests.test_awscli import aws_batch
from tests.test_controlplane import DOC, Clock, arn, boto_client

GROUP = "arn:aws:iot:us-east-1:123456789012:thinggroup/{}"


@dataclass
class Env:
    store: JobsStore
    registry: Registry
    client: Any
    changes: list[list[Publish]] = field(default_factory=list)

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(getattr(self.client, operation),
                                                         **params)
        return result

    async def error(self, operation: str, **params: Any) -> tuple[str, str]:
        with pytest.raises(ClientError) as info:
            await self.call(operation, **params)
        return info.value.response["Error"]["Code"], info.value.response["Error"]["Message"]

    async def things(self, *names: str) -> None:
        for name in names:
            await self.call("create_thing", thingName=name)

    def pushed(self) -> list[str]:
        """Topics published since the last call."""
        topics_ = [p.topic for batch in self.changes for p in batch]
        self.changes.clear()
        return topics_

    def statuses(self, job_id: str) -> dict[str, str]:
        return {e.thing_name: e.status.value for e in self.store.all_executions()
                if e.job_id == job_id}


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, **settings: Any) -> AsyncIterator[Env]:
    """A control plane on a store and a registry sharing one file, ``settings`` applied."""
    clock = Clock()
    store = JobsStore(tmp_path / "jobs.sqlite", ServiceSettings(**settings), now=clock)
    registry = Registry(tmp_path / "jobs.sqlite", region="us-east-1",
                        account_id="123456789012", now=clock)
    changes: list[list[Publish]] = []

    async def on_change() -> None:
        changes.append(store.drain())

    control = ControlPlane(store, on_change, registry=registry)
    url = await control.start()
    try:
        yield Env(store, registry, boto_client(url), changes)
    finally:
        await control.stop()
        registry.close()
        store.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with serving(tmp_path) as e:
        yield e


async def test_things_have_attributes_versions_and_a_listing(env: Env) -> None:
    made = await env.call("create_thing", thingName="t1",
                          attributePayload={"attributes": {"model": "x1", "fw": "1.0"}})
    assert made["thingArn"] == arn("t1")
    # the same thing again is returned; other attributes are a conflict, as on AWS
    again = await env.call("create_thing", thingName="t1",
                           attributePayload={"attributes": {"model": "x1", "fw": "1.0"}})
    assert again["thingId"] == made["thingId"]
    assert (await env.error("create_thing", thingName="t1",
                            attributePayload={"attributes": {"model": "x2"}}))[0] == \
        "ResourceAlreadyExistsException"
    await env.call("create_thing", thingName="t2",
                   attributePayload={"attributes": {"model": "x2"}})
    await env.call("update_thing", thingName="t1", expectedVersion=1,
                   attributePayload={"attributes": {"fw": "2.0", "model": ""}, "merge": True})
    described = await env.call("describe_thing", thingName="t1")
    assert (described["attributes"], described["version"]) == ({"fw": "2.0"}, 2)
    assert (await env.error("update_thing", thingName="t1", expectedVersion=1,
                            attributePayload={"attributes": {}}))[0] == \
        "VersionConflictException"
    listed = await env.call("list_things", attributeName="model", attributeValue="x")
    assert listed["things"] == []
    listed = await env.call("list_things", attributeName="model", attributeValue="x",
                            usePrefixAttributeValue=True)
    assert [t["thingName"] for t in listed["things"]] == ["t2"]
    page = await env.call("list_things", maxResults=1)
    assert [t["thingName"] for t in page["things"]] == ["t1"]
    rest = await env.call("list_things", maxResults=1, nextToken=page["nextToken"])
    assert [t["thingName"] for t in rest["things"]] == ["t2"]
    assert "nextToken" not in rest
    assert (await env.error("create_thing", thingName="t3", thingTypeName="sensor"))[1] == \
        "thingTypeName is not supported by this emulator"
    await env.call("delete_thing", thingName="t2")
    assert (await env.error("describe_thing", thingName="t2"))[0] == \
        "ResourceNotFoundException"


async def test_a_group_hierarchy_its_members_and_aws_errors(env: Env) -> None:
    await env.things("a", "b", "c")
    root = await env.call("create_thing_group", thingGroupName="fleet",
                          thingGroupProperties={"thingGroupDescription": "all"})
    assert root["thingGroupArn"] == GROUP.format("fleet")
    await env.call("create_thing_group", thingGroupName="eu", parentGroupName="fleet")
    await env.call("create_thing_group", thingGroupName="eu-canary", parentGroupName="eu")
    described = await env.call("describe_thing_group", thingGroupName="eu-canary")
    assert described["thingGroupMetadata"]["parentGroupName"] == "eu"
    assert [g["groupName"] for g in described["thingGroupMetadata"][
        "rootToParentThingGroups"]] == ["fleet", "eu"]
    await env.call("add_thing_to_thing_group", thingGroupName="fleet", thingName="a")
    await env.call("add_thing_to_thing_group", thingGroupArn=GROUP.format("eu"),
                   thingArn=arn("b"))
    await env.call("add_thing_to_thing_group", thingGroupName="eu-canary", thingName="c")
    await env.call("add_thing_to_thing_group", thingGroupName="eu-canary", thingName="c")
    flat = await env.call("list_things_in_thing_group", thingGroupName="fleet")
    assert flat["things"] == ["a"]
    deep = await env.call("list_things_in_thing_group", thingGroupName="fleet", recursive=True)
    assert deep["things"] == ["a", "b", "c"]
    of_c = await env.call("list_thing_groups_for_thing", thingName="c")
    assert of_c["thingGroups"] == [{"groupName": "eu-canary",
                                    "groupArn": GROUP.format("eu-canary")}]
    children = await env.call("list_thing_groups", parentGroup="fleet", recursive=False)
    assert [g["groupName"] for g in children["thingGroups"]] == ["eu"]
    everything = await env.call("list_thing_groups", namePrefixFilter="eu")
    assert [g["groupName"] for g in everything["thingGroups"]] == ["eu", "eu-canary"]
    assert (await env.call("update_thing_group", thingGroupName="eu", expectedVersion=1,
                           thingGroupProperties={"thingGroupDescription": "Europe"}))[
        "version"] == 2
    # what AWS refuses
    assert (await env.error("add_thing_to_thing_group", thingGroupName="eu",
                            thingName="ghost"))[0] == "ResourceNotFoundException"
    assert (await env.error("add_thing_to_thing_group", thingGroupName="nowhere",
                            thingName="a"))[0] == "ResourceNotFoundException"
    assert (await env.error("create_thing_group", thingGroupName="x",
                            parentGroupName="nowhere"))[0] == "ResourceNotFoundException"
    assert (await env.error("delete_thing_group", thingGroupName="eu"))[0] == \
        "InvalidRequestException"  # it has a child group
    assert (await env.error("create_thing_group", thingGroupName="fleet",
                            thingGroupProperties={"thingGroupDescription": "other"}))[0] == \
        "ResourceAlreadyExistsException"
    code, message = await env.error("create_dynamic_thing_group", thingGroupName="dyn",
                                    queryString="attributes.model:x1")
    assert (code, "dynamic thing groups" in message) == ("InvalidRequestException", True)
    await env.call("remove_thing_from_thing_group", thingGroupName="eu-canary", thingName="c")
    await env.call("delete_thing_group", thingGroupName="eu-canary")
    await env.call("delete_thing_group", thingGroupName="eu-canary")  # gone: a no-op
    assert (await env.call("list_thing_groups_for_thing", thingName="c"))["thingGroups"] == []


async def test_a_hierarchy_is_at_most_seven_deep_and_a_thing_in_ten_groups(env: Env) -> None:
    await env.things("t")
    await env.call("create_thing_group", thingGroupName="g0")
    for depth in range(1, 7):
        await env.call("create_thing_group", thingGroupName=f"g{depth}",
                       parentGroupName=f"g{depth - 1}")
    assert (await env.error("create_thing_group", thingGroupName="g7",
                            parentGroupName="g6"))[0] == "InvalidRequestException"
    for i in range(10):
        await env.call("create_thing_group", thingGroupName=f"flat-{i}")
        await env.call("add_thing_to_thing_group", thingGroupName=f"flat-{i}", thingName="t")
    assert (await env.error("add_thing_to_thing_group", thingGroupName="g0",
                            thingName="t"))[0] == "LimitExceededException"


async def test_a_snapshot_job_on_a_group_takes_its_members_at_creation(env: Env) -> None:
    await env.things("a", "b", "c")
    await env.call("create_thing_group", thingGroupName="fleet")
    await env.call("create_thing_group", thingGroupName="canary", parentGroupName="fleet")
    await env.call("add_thing_to_thing_group", thingGroupName="fleet", thingName="a")
    await env.call("add_thing_to_thing_group", thingGroupName="canary", thingName="b")
    await env.call("create_job", jobId="snap", targets=[GROUP.format("fleet"), arn("a")],
                   document=DOC)
    assert env.statuses("snap") == {"a": "QUEUED", "b": "QUEUED"}
    await env.call("add_thing_to_thing_group", thingGroupName="fleet", thingName="c")
    assert env.statuses("snap") == {"a": "QUEUED", "b": "QUEUED"}  # a snapshot: not c
    listed = await env.call("list_jobs", thingGroupName="fleet")
    assert [j["jobId"] for j in listed["jobs"]] == ["snap"]
    assert (await env.call("list_jobs", thingGroupName="canary"))["jobs"] == []
    group_id = (await env.call("describe_thing_group", thingGroupName="fleet"))["thingGroupId"]
    assert [j["jobId"] for j in (await env.call("list_jobs", thingGroupId=group_id))[
        "jobs"]] == ["snap"]
    await env.call("create_thing_group", thingGroupName="empty")
    await env.call("create_job", jobId="none", targets=[GROUP.format("empty")], document=DOC)
    assert (await env.call("describe_job", jobId="none"))["job"]["status"] == "COMPLETED"
    assert (await env.error("create_job", jobId="ghost", targets=[GROUP.format("nowhere")],
                            document=DOC))[0] == "ResourceNotFoundException"


async def test_a_continuous_job_follows_its_group(env: Env) -> None:
    await env.things("a", "b", "c")
    await env.call("create_thing_group", thingGroupName="fleet")
    await env.call("create_thing_group", thingGroupName="late", parentGroupName="fleet")
    await env.call("add_thing_to_thing_group", thingGroupName="fleet", thingName="a")
    await env.call("create_job", jobId="ota", targets=[GROUP.format("fleet")], document=DOC,
                   targetSelection="CONTINUOUS")
    assert env.statuses("ota") == {"a": "QUEUED"}
    env.pushed()
    # b joins a group below the target: it gets the job, and is told so
    await env.call("add_thing_to_thing_group", thingGroupName="late", thingName="b")
    assert env.statuses("ota") == {"a": "QUEUED", "b": "QUEUED"}
    pushed = env.pushed()
    assert topics.notify_next("b") in pushed
    assert topics.notify("b") in pushed
    # b leaves while QUEUED: REMOVED, and told its next job is none
    await env.call("remove_thing_from_thing_group", thingGroupName="late", thingName="b")
    assert env.statuses("ota")["b"] == "REMOVED"
    assert topics.notify_next("b") in env.pushed()
    # it comes back: queued again, with the next execution number
    await env.call("update_thing_groups_for_thing", thingName="b", thingGroupsToAdd=["late"])
    again = env.store.describe_job_execution("ota", "b")
    assert (again.status.value, again.execution_number) == ("QUEUED", 2)
    # a thing running the job keeps it when it leaves
    env.store.start_next("a")
    await env.call("remove_thing_from_thing_group", thingGroupName="fleet", thingName="a")
    assert env.statuses("ota")["a"] == "IN_PROGRESS"
    # more targets for the continuous job
    reference = await env.call("associate_targets_with_job", jobId="ota",
                               targets=[arn("c")], comment="one more")
    assert reference["jobId"] == "ota"
    assert env.statuses("ota")["c"] == "QUEUED"
    job = (await env.call("describe_job", jobId="ota"))["job"]
    assert job["targets"] == [GROUP.format("fleet"), arn("c")]
    assert job["status"] == "IN_PROGRESS"  # a continuous job never completes by itself
    # deleting the thing takes it out of its groups: its queued execution is removed
    await env.call("delete_thing", thingName="b")
    assert env.statuses("ota")["b"] == "REMOVED"
    # a snapshot job takes no new targets
    await env.call("create_job", jobId="snap", targets=[arn("c")], document=DOC)
    assert (await env.error("associate_targets_with_job", jobId="snap",
                            targets=[arn("a")]))[0] == "InvalidRequestException"


async def test_deleting_a_group_removes_the_queued_executions_it_gave(env: Env) -> None:
    await env.things("a", "b")
    await env.call("create_thing_group", thingGroupName="wave")
    for thing in ("a", "b"):
        await env.call("add_thing_to_thing_group", thingGroupName="wave", thingName=thing)
    await env.call("create_job", jobId="ota", document=DOC, targetSelection="CONTINUOUS",
                   targets=[GROUP.format("wave"), arn("b")])
    await env.call("delete_thing_group", thingGroupName="wave")
    # a is no longer targeted; b still is, by its own ARN
    assert env.statuses("ota") == {"a": "REMOVED", "b": "QUEUED"}
    job = (await env.call("describe_job", jobId="ota"))["job"]
    assert job["jobProcessDetails"]["numberOfRemovedThings"] == 1


def test_groups_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = JobsStore(tmp_path / "jobs.sqlite", now=clock)
    store.groups.create("fleet")
    store.add_thing_to_group("fleet", "a")
    store.close()
    again = JobsStore(tmp_path / "jobs.sqlite", now=clock)
    try:
        assert again.groups.members("fleet", recursive=True) == ["a"]
    finally:
        again.close()



async def test_the_real_aws_cli_rolls_out_to_a_group(env: Env, tmp_path: Path) -> None:
    """An operator's script, command by command, through the AWS CLI (one process)."""
    url = env.client.meta.endpoint_url
    home = tmp_path / "home"
    home.mkdir()
    commands = [
        ("create-thing", "--thing-name", "cli-a", "--attribute-payload",
         '{"attributes": {"model": "x1"}}'),
        ("create-thing", "--thing-name", "cli-b"),
        ("update-thing", "--thing-name", "cli-b", "--attribute-payload",
         "attributes={model=x2},merge=true"),
        ("list-things", "--attribute-name", "model", "--attribute-value", "x2"),
        ("create-thing-group", "--thing-group-name", "prod"),
        ("create-thing-group", "--thing-group-name", "prod-eu", "--parent-group-name", "prod"),
        ("add-thing-to-thing-group", "--thing-group-name", "prod-eu", "--thing-name", "cli-a"),
        ("create-job", "--job-id", "ota-prod", "--targets", GROUP.format("prod"),
         "--document", DOC, "--target-selection", "CONTINUOUS"),
        ("add-thing-to-thing-group", "--thing-group-name", "prod", "--thing-name", "cli-b"),
        ("list-things-in-thing-group", "--thing-group-name", "prod", "--recursive"),
        ("list-thing-groups-for-thing", "--thing-name", "cli-a"),
        ("describe-thing-group", "--thing-group-name", "prod-eu"),
        ("list-job-executions-for-job", "--job-id", "ota-prod"),
        ("list-jobs", "--thing-group-name", "prod"),
        ("remove-thing-from-thing-group", "--thing-group-name", "prod", "--thing-name",
         "cli-b"),
        ("associate-targets-with-job", "--job-id", "ota-prod", "--targets", arn("cli-b")),
        ("delete-thing-group", "--thing-group-name", "prod"),
        ("create-dynamic-thing-group", "--thing-group-name", "dyn", "--query-string",
         "attributes.model:x1"),
    ]
    results = await aws_batch(home, *((*c, "--endpoint-url", url, "--output", "json")
                                      for c in commands))
    by = dict(zip((c[0] for c in commands), results, strict=False))
    for command, result in zip(commands, results, strict=True):
        if command[0] not in ("delete-thing-group", "create-dynamic-thing-group"):
            assert result.rc == 0, (command, result.err)
    assert [t["thingName"] for t in json.loads(by["list-things"].out)["things"]] == ["cli-b"]
    assert json.loads(results[9].out)["things"] == ["cli-a", "cli-b"]
    assert json.loads(by["list-thing-groups-for-thing"].out)["thingGroups"][0][
        "groupName"] == "prod-eu"
    assert json.loads(by["describe-thing-group"].out)["thingGroupMetadata"][
        "parentGroupName"] == "prod"
    executions = json.loads(by["list-job-executions-for-job"].out)["executionSummaries"]
    assert sorted(e["thingArn"] for e in executions) == [arn("cli-a"), arn("cli-b")]
    assert [j["jobId"] for j in json.loads(by["list-jobs"].out)["jobs"]] == ["ota-prod"]
    # b left while QUEUED (REMOVED); the associate call targets it by ARN: queued again
    assert env.statuses("ota-prod") == {"cli-a": "QUEUED", "cli-b": "QUEUED"}
    assert env.store.describe_job_execution("ota-prod", "cli-b").execution_number == 2
    refused = by["delete-thing-group"]
    assert refused.rc in (254, 255)
    assert "InvalidRequestException" in refused.err
    assert "child groups" in refused.err
    dynamic = by["create-dynamic-thing-group"]
    assert dynamic.rc != 0
    assert "dynamic thing groups" in dynamic.err


async def test_jobs_may_be_held_to_registered_things(tmp_path: Path) -> None:
    async with serving(tmp_path, registered_targets_only=True) as env:
        assert await env.error("create_job", jobId="j", targets=[arn("ghost")],
                               document=DOC) == ("ResourceNotFoundException",
                                                 "Thing ghost cannot be found.")
        await env.things("real")
        await env.call("create_job", jobId="j", targets=[arn("real")], document=DOC)
        assert env.statuses("j") == {"real": "QUEUED"}


async def test_update_thing_groups_for_thing_is_all_or_nothing(env: Env) -> None:
    await env.things("t")
    for i in range(11):
        await env.call("create_thing_group", thingGroupName=f"g{i}")
    for i in range(9):
        await env.call("add_thing_to_thing_group", thingGroupName=f"g{i}", thingName="t")
    code, _ = await env.error("update_thing_groups_for_thing", thingName="t",
                              thingGroupsToAdd=["g9", "g10"])  # the 11th is one too many
    assert code == "LimitExceededException"
    groups = (await env.call("list_thing_groups_for_thing", thingName="t"))["thingGroups"]
    assert len(groups) == 9  # g9 was not added either
    assert (await env.error("update_thing_groups_for_thing", thingName="t",
                            thingGroupsToAdd=["g9"], thingGroupsToRemove=["nowhere"]))[0] == \
        "ResourceNotFoundException"
    assert len((await env.call("list_thing_groups_for_thing", thingName="t"))[
        "thingGroups"]) == 9


async def test_registered_targets_only_sees_thing_names_with_colons(tmp_path: Path) -> None:
    async with serving(tmp_path, registered_targets_only=True) as env:
        assert (await env.error("create_job", jobId="j", targets=[arn("site:a")],
                                document=DOC))[0] == "ResourceNotFoundException"

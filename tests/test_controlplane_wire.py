"""The control plane's wire form over raw HTTP: what boto3 cannot send (malformed bodies,
wrong types, unknown members and routes) and the exact bytes of replies."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import botocore.session
import pytest

from fleet.service.controlplane import ControlPlane, routes
from fleet.service.store import JobsStore

T0 = 1_700_000_000.25
THING_ARN = "arn:aws:iot:us-east-1:123456789012:thing/thing-a"
DOC = json.dumps({"operation": "update"})


def body(**members: Any) -> str:
    return json.dumps(members)


@dataclass
class Wire:
    session: aiohttp.ClientSession
    url: str

    async def send(self, method: str, path: str, body: io.BytesIO | str | None = None
                   ) -> tuple[int, dict[str, str], bytes]:
        data = body.encode() if isinstance(body, str) else body
        async with self.session.request(method, self.url + path, data=data) as response:
            return response.status, dict(response.headers), await response.read()

    async def error(self, method: str, path: str, body: io.BytesIO | str | None = None
                    ) -> tuple[int, str, str]:
        status, headers, raw = await self.send(method, path, body)
        assert headers["Content-Type"] == "application/json"
        payload = json.loads(raw)
        assert set(payload) == {"message"}
        return status, headers["x-amzn-ErrorType"], payload["message"]


@pytest.fixture
async def wire(tmp_path: Path) -> AsyncIterator[Wire]:
    store = JobsStore(tmp_path / "jobs.sqlite", now=lambda: T0)
    control = ControlPlane(store, lambda: None)
    url = await control.start()
    try:
        async with aiohttp.ClientSession() as session:
            w = Wire(session, url)
            status, _, _ = await w.send("PUT", "/jobs/job-1", json.dumps(
                {"targets": [THING_ARN], "document": DOC}))
            assert status == 200
            yield w
    finally:
        await control.stop()
        store.close()


async def test_success_replies(wire: Wire) -> None:
    status, headers, raw = await wire.send("GET", "/jobs/job-1")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert headers["x-amzn-RequestId"]
    job = json.loads(raw)["job"]
    assert job["createdAt"] == T0  # a JSON number of epoch seconds, fraction kept
    status, _, raw = await wire.send("GET", "/things/thing-a/jobs/job-1")
    execution = json.loads(raw)["execution"]
    assert execution["statusDetails"] == {"detailsMap": {}}
    assert execution["queuedAt"] == T0
    assert "startedAt" not in execution
    status, headers, raw = await wire.send("PUT", "/things/thing-a/jobs/job-1/cancel", "{}")
    assert (status, headers["Content-Length"], raw) == (200, "0", b"")
    status, headers, raw = await wire.send(
        "DELETE", "/things/thing-a/jobs/job-1/executionNumber/1")
    assert (status, headers["Content-Length"], raw) == (200, "0", b"")


async def test_error_wire_form(wire: Wire) -> None:
    assert await wire.error("GET", "/jobs/nope") == (
        404, "ResourceNotFoundException", "Job nope not found")
    assert await wire.error("DELETE", "/jobs/job-1") == (
        409, "InvalidStateTransitionException",
        "cannot delete job job-1 in status IN_PROGRESS without force")


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("PUT", "/jobs/job-2", "{not json", "request body is not valid JSON"),
    ("PUT", "/jobs/job-2", "[1, 2]", "request body must be a JSON object"),
    ("PUT", "/jobs/job-2", body(targets=THING_ARN, document="{}"),
     "targets: must be a list of strings"),
    ("PUT", "/jobs/job-2", '{"targets": [1], "document": "{}"}',
     "targets: must be a list of strings"),
    ("PUT", "/jobs/job-2", body(targets=[THING_ARN], document={}),
     "document: must be a string"),
    ("PUT", "/jobs/job-2", body(targets=[THING_ARN], document="{}", color="red"),
     "'color' is not a body parameter of CreateJob"),
    ("PUT", "/jobs/job-2", body(targets=[THING_ARN], document="{}",
                                timeoutConfig={"inProgressTimeoutInMinutes": "5"}),
     "timeoutConfig.inProgressTimeoutInMinutes: must be an integer"),
    ("PUT", "/jobs/job-2", body(targets=[THING_ARN], document="{}",
                                timeoutConfig={"stepTimeoutInMinutes": 5}),
     "timeoutConfig.stepTimeoutInMinutes is not a member of TimeoutConfig"),
    ("PUT", "/jobs/job-1/cancel", '{"force": true}', "'force' is not a body parameter of "
     "CancelJob"),
    ("PUT", "/things/thing-a/jobs/job-1/cancel", '{"expectedVersion": "1"}',
     "expectedVersion: must be an integer"),
    ("PUT", "/things/thing-a/jobs/job-1/cancel", '{"expectedVersion": true}',
     "expectedVersion: must be an integer"),
    ("PUT", "/things/thing-a/jobs/job-1/cancel", '{"statusDetails": {"a": 1}}',
     "statusDetails: values must be strings"),
    ("GET", "/jobs?maxResults=abc", None, "maxResults: 'abc' is not an integer"),
    ("GET", "/jobs?maxResults=1.5", None, "maxResults: '1.5' is not an integer"),
    ("GET", "/jobs?maxResults=0", None, "maxResults: must be between 1 and 250"),
    ("GET", "/jobs?status=QUEUED&status=CANCELED", None, "status: given 2 times"),
    ("GET", "/jobs?colour=red", None, "'colour' is not a query parameter of ListJobs"),
    ("DELETE", "/jobs/job-1?force=yes", None, "force: 'yes' is not a boolean (true or false)"),
    ("DELETE", "/jobs/job-1?force=true&namespaceId=a.b", None,
     "namespaceId: must match [a-zA-Z0-9_-]+"),
    ("DELETE", "/things/thing-a/jobs/job-1/executionNumber/one", None,
     "executionNumber: 'one' is not an integer"),
    ("GET", "/things/thing-a/jobs/job-1?executionNumber=", None,
     "executionNumber: '' is not an integer"),
    ("GET", "/jobs/job%2F1", None, "jobId: must be 1-64 characters of [a-zA-Z0-9_-]"),
    ("GET", "/things/thing-a/jobs?jobId=a.b", None,
     "jobId: must be 1-64 characters of [a-zA-Z0-9_-]"),
    ("PATCH", "/event-configurations", '{"eventConfigurations": {"JOB": {"Enabled": "no"}}}',
     "eventConfigurations.JOB.Enabled: must be a boolean"),
    ("PATCH", "/event-configurations", '{"eventConfigurations": {"JOBS": {"Enabled": true}}}',
     "eventConfigurations.JOBS: not one of"),
])
async def test_invalid_request(wire: Wire, method: str, path: str, body: str | None,
                               message: str) -> None:
    status, code, text = await wire.error(method, path, body)
    assert (status, code) == (400, "InvalidRequestException")
    assert text.startswith(message)


async def test_body_over_the_size_limit(wire: Wire) -> None:
    status, code, _ = await wire.error("PUT", "/jobs/job-2",
                                        io.BytesIO(b"{" + b" " * 2_000_000 + b"}"))
    assert (status, code) == (400, "InvalidRequestException")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/thing-types"), ("POST", "/jobs/job-1"), ("GET", "/jobs/job-1/executions"),
])
async def test_unknown_route(wire: Wire, method: str, path: str) -> None:
    status, code, message = await wire.error(method, path)
    assert (status, code) == (404, "UnknownOperationException")
    assert message == f"no operation of this emulator is routed at {method} {path}"


def _sample(shape: Any) -> tuple[str, Any]:
    """A value of the member's type: (query text, JSON value)."""
    kind = shape.type_name
    if kind == "boolean":
        return "true", True
    if kind in ("integer", "long"):
        return "1", 1
    if kind == "structure":
        return "x", {}
    if kind == "list":
        return "x", []
    if kind == "map":
        return "x", {}
    return "x", "x"


async def test_every_model_member_is_read_or_refused(wire: Wire) -> None:
    """No member the model has gets "is not a ... parameter": handlers cover the model."""
    model = botocore.session.get_session().get_service_model("iot")
    for route in routes.ROUTES:
        operation = model.operation_model(route.operation)
        path = route.template.format(jobId="job-1", thingName="thing-a", executionNumber="1",
                                     certificateId="0" * 64, policyName="policy-a",
                                     thingGroupName="group-a", jobTemplateId="template-a",
                                     templateName="template-a")
        for name, member in operation.input_shape.members.items():
            location = member.serialization.get("location")
            text, value = _sample(member)
            if location == "querystring":
                status, _, raw = await wire.send(
                    route.method, f"{path}?{member.serialization['name']}={text}")
            elif location is None:
                status, _, raw = await wire.send(route.method, path, json.dumps({name: value}))
            else:
                continue
            if status != 200:
                message = json.loads(raw)["message"]
                assert "parameter of" not in message, (route.operation, name, message)

"""The HTTPS data plane (``iot-jobs-data``, 2017-09-29): what a device asks over MQTT, asked
over HTTP instead, as boto3's ``iot-jobs-data`` client does. Each request is answered by the
MQTT data plane's own logic (:meth:`~fleet.service.dataplane.DataPlane.answer`: same store,
same rules, same notifications published over MQTT after each change) and its reply turned
into the model's shape (``jobDocument`` a JSON string, no ``clientToken`` or ``timestamp``).
AWS serves it on its own endpoint (its paths collide with the control plane's), and so does
the emulator: its own port.

The reply is recorded (``Context.record_reply``) as the MQTT reply it stands for, so a
drill's history judges an HTTP device as it judges an MQTT one. A request may carry the
device's clientToken in the ``x-devicesim-client-token`` header (the HTTP API has none)
for that record to name the request; boto3 sends none and loses nothing by it.

Same contract as :mod:`fleet.service.controlplane.handlers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from devicesim.wire import topics
from devicesim.wire.codec import WireError, dumps
from fleet.service import validation
from fleet.service.controlplane.inputs import Input, unsupported
from fleet.service.controlplane.shapes import Json
from fleet.service.errors import (
    InvalidRequestException,
    JobsError,
    ThrottlingException,
)
from fleet.service.store import Publish

if TYPE_CHECKING:
    from fleet.service.controlplane.handlers import Context

#: HTTP statuses where the jobs data model differs from the control plane's
HTTP_STATUS = {ThrottlingException.__name__: 429}
#: the device's clientToken, for the record of the reply
CLIENT_TOKEN_HEADER = "x-devicesim-client-token"
_OPERATIONS = {
    "GetPendingJobExecutions": topics.Operation.GET_PENDING,
    "StartNextPendingJobExecution": topics.Operation.START_NEXT,
    "DescribeJobExecution": topics.Operation.DESCRIBE,
    "UpdateJobExecution": topics.Operation.UPDATE,
}


def request_topic(operation: topics.Operation, thing: str, job_id: str | None) -> str:
    """The MQTT topic of the same request."""
    if operation is topics.Operation.GET_PENDING:
        return topics.get_pending(thing)
    if operation is topics.Operation.START_NEXT:
        return topics.start_next(thing)
    assert job_id is not None
    if operation is topics.Operation.DESCRIBE:
        return topics.describe(thing, job_id)
    return topics.update(thing, job_id)


def _ask(ctx: Context, inp: Input, request: dict[str, Any]) -> Json:
    """Answer through the MQTT data plane; record the reply; the HTTP shape of it."""
    assert ctx.dataplane is not None
    operation = _OPERATIONS[inp.operation]
    thing = inp.thing_name()
    job_id = None
    if "jobId" in inp.labels:
        job_id = inp.labels["jobId"]
        if job_id != topics.NEXT:
            validation.check_job_id(job_id)
    token = inp.headers.get(CLIENT_TOKEN_HEADER)
    if token is not None:
        request["clientToken"] = token
    topic = request_topic(operation, thing, job_id)
    try:
        reply = ctx.dataplane.answer(operation, thing, job_id, request, token)
    except (JobsError, WireError) as e:
        if ctx.record_reply is not None:
            ctx.record_reply(ctx.dataplane.rejection(topic, e, token))
        if isinstance(e, WireError):
            raise InvalidRequestException(e.message) from None
        raise
    payload = dumps(reply)
    if ctx.record_reply is not None:
        ctx.record_reply(Publish(topics.accepted(topic), payload))
    return _http_shape(orjson.loads(payload))


def _http_shape(reply: dict[str, Any]) -> Json:
    """The MQTT reply as the model's output: no clientToken or timestamp, every
    ``jobDocument`` a JSON string."""
    reply.pop("clientToken", None)
    reply.pop("timestamp", None)
    for holder in (reply, reply.get("execution")):
        if isinstance(holder, dict) and isinstance(holder.get("jobDocument"), dict):
            holder["jobDocument"] = orjson.dumps(holder["jobDocument"]).decode()
    return reply


def get_pending_job_executions(ctx: Context, inp: Input) -> Json:
    inp.allow()
    return _ask(ctx, inp, {})


def start_next_pending_job_execution(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("statusDetails", "stepTimeoutInMinutes"))
    return _ask(ctx, inp, dict(inp.body))


def describe_job_execution(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("includeJobDocument", "executionNumber"))
    request: dict[str, Any] = {}
    include = inp.query_boolean("includeJobDocument")
    if include is not None:
        request["includeJobDocument"] = include
    number = inp.query_integer("executionNumber")
    if number is not None:
        request["executionNumber"] = number
    return _ask(ctx, inp, request)


def update_job_execution(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("status", "statusDetails", "stepTimeoutInMinutes", "expectedVersion",
                    "includeJobExecutionState", "includeJobDocument", "executionNumber"))
    if inp.body_string("status") is None:
        raise InvalidRequestException("status: required")
    return _ask(ctx, inp, dict(inp.body))


def start_command_execution(ctx: Context, inp: Input) -> Json:
    raise unsupported("AWS IoT commands (StartCommandExecution)")


JOBS_DATA_HANDLERS: dict[str, Callable[[Context, Input], Json | None]] = {
    "GetPendingJobExecutions": get_pending_job_executions,
    "StartNextPendingJobExecution": start_next_pending_job_execution,
    "DescribeJobExecution": describe_job_execution,
    "UpdateJobExecution": update_job_execution,
    "StartCommandExecution": start_command_execution,
}

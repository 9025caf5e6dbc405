"""The HTTPS data plane (``iot-jobs-data``, 2017-09-29): what a device asks over MQTT, asked
over HTTP instead, as boto3's ``iot-jobs-data`` client does. Same store, same rules, same
notifications (published over MQTT after each change) as the MQTT data plane; the shapes
are the model's (``jobDocument`` a JSON string, times epoch seconds as integers,
``statusDetails`` a flat map). AWS serves it on its own endpoint (its paths collide with
the control plane's), and so does the emulator: its own port.

Same contract as :mod:`fleet.service.controlplane.handlers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from devicesim.wire import topics
from devicesim.wire.enums import JobExecutionStatus
from fleet.service import validation
from fleet.service.controlplane.inputs import Input, unsupported
from fleet.service.controlplane.shapes import Json
from fleet.service.errors import InvalidRequestException, ThrottlingException
from fleet.service.records import Execution

if TYPE_CHECKING:
    from fleet.service.controlplane.handlers import Context

#: HTTP statuses where the jobs data model differs from the control plane's
HTTP_STATUS = {ThrottlingException.__name__: 429}


def _summary(e: Execution) -> Json:
    return _present(jobId=e.job_id, queuedAt=int(e.queued_at),
                    startedAt=None if e.started_at is None else int(e.started_at),
                    lastUpdatedAt=int(e.last_updated_at), versionNumber=e.version_number,
                    executionNumber=e.execution_number)


def _execution(ctx: Context, e: Execution, *, document: bool) -> Json:
    doc = ctx.store.document(e.job_id) if document else None
    return _present(
        jobId=e.job_id, thingName=e.thing_name, status=e.status.value,
        statusDetails=dict(e.status_details) or None, queuedAt=int(e.queued_at),
        startedAt=None if e.started_at is None else int(e.started_at),
        lastUpdatedAt=int(e.last_updated_at),
        approximateSecondsBeforeTimedOut=e.seconds_before_timed_out(ctx.now()),
        versionNumber=e.version_number, executionNumber=e.execution_number,
        jobDocument=None if doc is None else _json_text(doc))


def _json_text(document: dict[str, Any]) -> str:
    return orjson.dumps(document).decode()


def _present(**members: Any) -> Json:
    return {k: v for k, v in members.items() if v is not None}


def _job_id(inp: Input) -> str:
    job_id = inp.labels["jobId"]
    if job_id != topics.NEXT:
        validation.check_job_id(job_id)
    return job_id


def _status_details(inp: Input) -> dict[str, str] | None:
    return inp.body_string_map("statusDetails")


def get_pending_job_executions(ctx: Context, inp: Input) -> Json:
    inp.allow()
    in_progress, queued = ctx.store.get_pending(inp.thing_name())
    return {"inProgressJobs": [_summary(e) for e in in_progress],
            "queuedJobs": [_summary(e) for e in queued]}


def start_next_pending_job_execution(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("statusDetails", "stepTimeoutInMinutes"))
    e = ctx.store.start_next(inp.thing_name(), status_details=_status_details(inp),
                             step_timeout=inp.body_integer("stepTimeoutInMinutes"))
    return {} if e is None else {"execution": _execution(ctx, e, document=True)}


def describe_job_execution(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("includeJobDocument", "executionNumber"))
    include = inp.query_boolean("includeJobDocument")
    e = ctx.store.describe(inp.thing_name(), _job_id(inp), inp.query_integer("executionNumber"))
    if e is None:  # $next with nothing pending
        return {}
    return {"execution": _execution(ctx, e, document=include is not False)}


def update_job_execution(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("status", "statusDetails", "stepTimeoutInMinutes", "expectedVersion",
                    "includeJobExecutionState", "includeJobDocument", "executionNumber"))
    status = inp.body_string("status")
    if status is None:
        raise InvalidRequestException("status: required")
    e = ctx.store.update(
        inp.thing_name(), _job_id(inp),
        status=validation.parse_enum(JobExecutionStatus, status, "status"),
        status_details=_status_details(inp), expected_version=inp.body_integer(
            "expectedVersion"), execution_number=inp.body_integer("executionNumber"),
        step_timeout=inp.body_integer("stepTimeoutInMinutes"))
    out: Json = {}
    if inp.body.get("includeJobExecutionState") is True:
        out["executionState"] = _present(status=e.status.value,
                                         statusDetails=dict(e.status_details) or None,
                                         versionNumber=e.version_number)
    if inp.body.get("includeJobDocument") is True:
        document = ctx.store.document(e.job_id)
        if document is not None:
            out["jobDocument"] = _json_text(document)
    return out


def start_command_execution(ctx: Context, inp: Input) -> Json:
    raise unsupported("AWS IoT commands (StartCommandExecution)")


JOBS_DATA_HANDLERS: dict[str, Callable[[Context, Input], Json | None]] = {
    "GetPendingJobExecutions": get_pending_job_executions,
    "StartNextPendingJobExecution": start_next_pending_job_execution,
    "DescribeJobExecution": describe_job_execution,
    "UpdateJobExecution": update_job_execution,
    "StartCommandExecution": start_command_execution,
}

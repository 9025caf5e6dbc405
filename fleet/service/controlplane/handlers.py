"""One function per control-plane operation: read the input, call the store, shape output.

Handlers are synchronous and free of HTTP: they take a :class:`Context` and an
:class:`~fleet.service.controlplane.inputs.Input` and return the response members (``None`` for an
operation without output). Errors are raised as :class:`~fleet.service.errors.JobsError` and
become wire responses in the server, in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from devicesim.wire.enums import JobExecutionStatus, JobStatus
from fleet.service import validation
from fleet.service.controlplane import shapes, templates
from fleet.service.controlplane.inputs import Input, unsupported
from fleet.service.controlplane.shapes import Json
from fleet.service.dataplane import DataPlane
from fleet.service.errors import InvalidRequestException
from fleet.service.groups import check_group_name
from fleet.service.registry import Registry
from fleet.service.store import JobsStore, Publish
from fleet.service.templates import fill

MAX_RESULTS = (1, 250)
TARGET_SELECTIONS = ("SNAPSHOT", "CONTINUOUS")
JOB_STATUSES = tuple(s.value for s in JobStatus)
EXECUTION_STATUSES = tuple(s.value for s in JobExecutionStatus)


@dataclass(frozen=True, slots=True)
class Context:
    store: JobsStore
    #: The store's clock (approximateSecondsBeforeTimedOut is computed against it).
    now: Callable[[], float]
    #: things, certificates, policies (None: the registry's operations are refused)
    registry: Registry | None = None
    #: what DescribeEndpoint answers: the broker's host
    endpoint_address: str | None = None
    #: what DescribeEndpoint answers for ``iot:Jobs``: the HTTPS data plane's host:port
    jobs_endpoint: str | None = None
    #: the HTTPS data plane answers through the MQTT one's logic (one place per rule)
    dataplane: DataPlane | None = None
    #: the HTTPS data plane records each reply as the MQTT one would have published it
    record_reply: Callable[[Publish], None] | None = None


Handler = Callable[[Context, Input], Json | None]


# -- jobs ------------------------------------------------------------------------------------

def create_job(ctx: Context, inp: Input) -> Json:
    inp.allow(
        body=("targets", "document", "description", "targetSelection", "timeoutConfig",
              "namespaceId", "jobTemplateArn", "documentParameters", "schedulingConfig",
              *templates.CONFIGS),
        unsupported_body=("documentSource", "presignedUrlConfig", "tags",
                          "destinationPackageVersions"))
    job_id = inp.job_id()
    targets = inp.body_string_list("targets")
    if targets is None:
        raise InvalidRequestException("targets: required")
    document, description = inp.body_string("document"), inp.body_string("description")
    configs, timeout = templates.configs_of(inp), templates.timeout_of(inp)
    parameters = inp.body_string_map("documentParameters")
    template_arn = inp.body_string("jobTemplateArn")
    if template_arn is not None:  # the template's, unless the request gives its own
        template = templates.template_of(ctx, template_arn)
        document = template.document if document is None else document
        description = template.description if description is None else description
        configs = {**template.configs, **configs}
        timeout = template.timeout_minutes if timeout is None else timeout
        document = fill(document, parameters)
    elif parameters is not None:
        raise InvalidRequestException("documentParameters: only with a jobTemplateArn")
    if document is None:
        raise InvalidRequestException(
            "document: required (documentSource is not supported by this emulator)")
    _check_registered(ctx, targets)
    job = ctx.store.create_job(
        job_id, targets=targets, document=document, description=description,
        target_selection=_target_selection(inp.body_string("targetSelection")),
        in_progress_timeout_minutes=timeout, namespace_id=inp.body_namespace_id(),
        rollout_config=configs.get("jobExecutionsRolloutConfig"),
        abort_config=configs.get("abortConfig"),
        retry_config=configs.get("jobExecutionsRetryConfig"),
        template_arn=template_arn, document_parameters=parameters,
        scheduling_config=inp.body_object("schedulingConfig"))
    return shapes.job_reference(job)


def update_job(ctx: Context, inp: Input) -> None:
    inp.allow(query=("namespaceId",), body=("description", "timeoutConfig", *templates.CONFIGS),
              unsupported_body=("presignedUrlConfig",))
    inp.query_namespace_id()
    ctx.store.update_job(inp.job_id(), description=inp.body_string("description"),
                         timeout_minutes=templates.timeout_of(inp),
                         configs=templates.configs_of(inp))


def describe_job(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("beforeSubstitution",))
    # Nothing is ever substituted here (no presigned URLs), so both answers are the same.
    inp.query_boolean("beforeSubstitution")
    return {"job": shapes.job_object(ctx.store.describe_job(inp.job_id()))}


def list_jobs(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("status", "targetSelection", "maxResults", "nextToken", "thingGroupName",
                     "thingGroupId"),
              unsupported_query=("namespaceId",))
    group = inp.query_string("thingGroupName")
    group_id = inp.query_string("thingGroupId")
    if group_id is not None:
        by_id = ctx.store.groups.named_by_id(group_id)
        if group is not None and group != by_id:
            raise InvalidRequestException("thingGroupName and thingGroupId name different "
                                          "groups")
        group = by_id
    jobs, next_token = ctx.store.list_jobs(
        status=inp.query_enum("status", JOB_STATUSES),
        target_selection=inp.query_enum("targetSelection", TARGET_SELECTIONS),
        thing_group=None if group is None else check_group_name(group, "thingGroupName"),
        max_results=inp.query_integer("maxResults", *MAX_RESULTS),
        next_token=inp.query_string("nextToken"))
    return shapes.page("jobs", [shapes.job_summary(j) for j in jobs], next_token)


def get_job_document(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("beforeSubstitution",))
    inp.query_boolean("beforeSubstitution")
    return {"document": ctx.store.get_job_document(inp.job_id())}


def cancel_job(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("force",), body=("reasonCode", "comment"))
    job = ctx.store.cancel_job(
        inp.job_id(), force=bool(inp.query_boolean("force")),
        reason_code=inp.body_string("reasonCode"), comment=inp.body_string("comment"))
    return shapes.job_reference(job)


def associate_targets_with_job(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("namespaceId",), body=("targets", "comment"))
    inp.query_namespace_id()
    targets = inp.body_string_list("targets")
    if not targets:
        raise InvalidRequestException("targets: required (at least one)")
    _check_registered(ctx, targets)
    job = ctx.store.associate_targets(inp.job_id(), targets, inp.body_string("comment"))
    return shapes.job_reference(job)


def delete_job(ctx: Context, inp: Input) -> None:
    inp.allow(query=("force", "namespaceId"))
    ctx.store.delete_job(inp.job_id(), force=bool(inp.query_boolean("force")),
                         namespace_id=inp.query_namespace_id())


# -- job executions --------------------------------------------------------------------------

def describe_job_execution(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("executionNumber",))
    thing_name = inp.thing_name()
    execution = ctx.store.describe_job_execution(
        inp.job_id(), thing_name, inp.query_integer("executionNumber"))
    return {"execution": shapes.job_execution(
        execution, thing_arn=ctx.store.thing_arn(thing_name), now=ctx.now())}


def list_job_executions_for_job(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("status", "maxResults", "nextToken"))
    executions, next_token = ctx.store.list_job_executions_for_job(
        inp.job_id(), status=inp.query_enum("status", EXECUTION_STATUSES),
        max_results=inp.query_integer("maxResults", *MAX_RESULTS),
        next_token=inp.query_string("nextToken"))
    summaries = [shapes.summary_for_job(e, thing_arn=ctx.store.thing_arn(e.thing_name))
                 for e in executions]
    return shapes.page("executionSummaries", summaries, next_token)


def list_job_executions_for_thing(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("status", "maxResults", "nextToken", "jobId"),
              unsupported_query=("namespaceId",))
    executions, next_token = ctx.store.list_job_executions_for_thing(
        inp.thing_name(), status=inp.query_enum("status", EXECUTION_STATUSES),
        job_id=inp.query_job_id(),
        max_results=inp.query_integer("maxResults", *MAX_RESULTS),
        next_token=inp.query_string("nextToken"))
    return shapes.page("executionSummaries", [shapes.summary_for_thing(e) for e in executions],
                       next_token)


def cancel_job_execution(ctx: Context, inp: Input) -> None:
    inp.allow(query=("force",), body=("expectedVersion", "statusDetails"))
    ctx.store.cancel_job_execution(
        inp.job_id(), inp.thing_name(), force=bool(inp.query_boolean("force")),
        expected_version=inp.body_integer("expectedVersion"),
        status_details=inp.body_string_map("statusDetails"))


def delete_job_execution(ctx: Context, inp: Input) -> None:
    inp.allow(query=("force", "namespaceId"))
    ctx.store.delete_job_execution(
        inp.job_id(), inp.thing_name(), inp.label_integer("executionNumber"),
        force=bool(inp.query_boolean("force")), namespace_id=inp.query_namespace_id())


# -- event configurations --------------------------------------------------------------------

def update_event_configurations(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("eventConfigurations",))
    configurations = inp.body_object("eventConfigurations") or {}
    enabled: dict[str, bool] = {}
    for kind, configuration in configurations.items():
        name = f"eventConfigurations.{kind}"
        if kind not in shapes.EVENT_TYPES:
            raise InvalidRequestException(
                f"{name:.100}: not one of {', '.join(shapes.EVENT_TYPES)}")
        if not isinstance(configuration, dict) or set(configuration) - {"Enabled"}:
            raise InvalidRequestException(f"{name}: must be {{\"Enabled\": true|false}}")
        flag = configuration.get("Enabled")
        if flag is None:
            continue
        if not isinstance(flag, bool):
            raise InvalidRequestException(f"{name}.Enabled: must be a boolean")
        if kind not in shapes.JOBS_EVENT_TYPES:
            if flag:
                raise unsupported(f"{name}")
            continue
        enabled[kind] = flag
    ctx.store.update_event_configurations(enabled)
    return {}


def describe_event_configurations(ctx: Context, inp: Input) -> Json:
    inp.allow()
    return shapes.event_configurations(ctx.store.event_configurations())


from fleet.service.controlplane.groups import GROUP_HANDLERS  # noqa: E402 (cycle)
from fleet.service.controlplane.identity import IDENTITY_HANDLERS  # noqa: E402 (cycle)
from fleet.service.controlplane.templates import TEMPLATE_HANDLERS  # noqa: E402 (cycle)

HANDLERS: dict[str, Handler] = {
    "CreateJob": create_job,
    "DescribeJob": describe_job,
    "ListJobs": list_jobs,
    "GetJobDocument": get_job_document,
    "CancelJob": cancel_job,
    "DeleteJob": delete_job,
    "UpdateJob": update_job,
    "AssociateTargetsWithJob": associate_targets_with_job,
    "DescribeJobExecution": describe_job_execution,
    "ListJobExecutionsForJob": list_job_executions_for_job,
    "ListJobExecutionsForThing": list_job_executions_for_thing,
    "CancelJobExecution": cancel_job_execution,
    "DeleteJobExecution": delete_job_execution,
    "UpdateEventConfigurations": update_event_configurations,
    "DescribeEventConfigurations": describe_event_configurations,
    **IDENTITY_HANDLERS,
    **GROUP_HANDLERS,
    **TEMPLATE_HANDLERS,
}


def _check_registered(ctx: Context, targets: list[str]) -> None:
    """With ``registered_targets_only``, a thing target must be in the registry."""
    if not ctx.store.settings.registered_targets_only or ctx.registry is None:
        return
    for target in targets:
        name = validation.name_in_arn(target, "thing")
        if name is not None:
            ctx.registry.describe_thing(name)


def _target_selection(value: str | None) -> str:
    if value is None:
        return "SNAPSHOT"
    if value not in TARGET_SELECTIONS:
        raise InvalidRequestException("targetSelection: must be SNAPSHOT or CONTINUOUS")
    return value

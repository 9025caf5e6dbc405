"""Control-plane handlers of job templates (CreateJobTemplate, DescribeJobTemplate,
ListJobTemplates, DeleteJobTemplate), shaped as the botocore ``iot`` model says.

Same contract as :mod:`fleet.service.controlplane.handlers`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fleet.service import rollout, validation
from fleet.service.controlplane.inputs import Input, unsupported
from fleet.service.controlplane.shapes import Json
from fleet.service.errors import InvalidRequestException
from fleet.service.templates import JobTemplate, check_template_id

if TYPE_CHECKING:
    from fleet.service.controlplane.handlers import Context

#: the job configurations a template (and UpdateJob) carries, by body member
CONFIGS = ("jobExecutionsRolloutConfig", "abortConfig", "jobExecutionsRetryConfig")


def template_arn(ctx: Context, template_id: str) -> str:
    return ctx.store.arn("jobtemplate", template_id)


def template_of(ctx: Context, arn: str) -> JobTemplate:
    """The template a ``jobTemplateArn`` names."""
    template_id = validation.name_in_arn(arn, "jobtemplate")
    if template_id is None:
        raise InvalidRequestException(f"jobTemplateArn: {arn!r:.200} is not a job template "
                                      "ARN")
    return ctx.store.templates.describe(check_template_id(template_id, "jobTemplateArn"))


def configs_of(inp: Input) -> dict[str, dict[str, Any]]:
    """The job configurations the request gives, validated."""
    configs = {name: value for name in CONFIGS
               if (value := inp.body_object(name)) is not None}
    rollout.parse_rollout(configs.get("jobExecutionsRolloutConfig"))
    rollout.parse_abort(configs.get("abortConfig"))
    rollout.parse_retry(configs.get("jobExecutionsRetryConfig"))
    return configs


def timeout_of(inp: Input) -> int | None:
    config = inp.body_object("timeoutConfig")
    if config is None:
        return None
    for member in config:
        if member != "inProgressTimeoutInMinutes":
            raise InvalidRequestException(
                f"timeoutConfig.{member:.100} is not a member of TimeoutConfig")
    minutes = config.get("inProgressTimeoutInMinutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int)):
        raise InvalidRequestException("timeoutConfig.inProgressTimeoutInMinutes: must be an "
                                      "integer")
    return minutes


def create_job_template(ctx: Context, inp: Input) -> Json:
    inp.allow(body=("jobArn", "document", "description", "timeoutConfig", *CONFIGS),
              unsupported_body=("documentSource", "presignedUrlConfig", "tags",
                                "maintenanceWindows", "destinationPackageVersions"))
    template_id = check_template_id(inp.labels["jobTemplateId"])
    job_arn, document = inp.body_string("jobArn"), inp.body_string("document")
    configs, timeout = configs_of(inp), timeout_of(inp)
    description = inp.body_string("description")
    if (job_arn is None) == (document is None):
        raise InvalidRequestException("give either document or jobArn (a job to copy)")
    if job_arn is not None:
        source = validation.name_in_arn(job_arn, "job")
        if source is None:
            raise InvalidRequestException(f"jobArn: {job_arn!r:.200} is not a job ARN")
        job = ctx.store.describe_job(source)
        document = job.document
        configs = {**{k: v for k, v in job.configs.items() if k in CONFIGS}, **configs}
        timeout = job.in_progress_timeout_minutes if timeout is None else timeout
    assert document is not None
    made = ctx.store.templates.create(JobTemplate(template_id, document, description,
                                                  configs, timeout))
    return {"jobTemplateArn": template_arn(ctx, made.id), "jobTemplateId": made.id}


def describe_job_template(ctx: Context, inp: Input) -> Json:
    inp.allow()
    t = ctx.store.templates.describe(check_template_id(inp.labels["jobTemplateId"]))
    out: Json = {"jobTemplateArn": template_arn(ctx, t.id), "jobTemplateId": t.id,
                 "document": t.document, "createdAt": t.created, **t.configs}
    if t.description is not None:
        out["description"] = t.description
    if t.timeout_minutes is not None:
        out["timeoutConfig"] = {"inProgressTimeoutInMinutes": t.timeout_minutes}
    return out


def list_job_templates(ctx: Context, inp: Input) -> Json:
    inp.allow(query=("maxResults", "nextToken"))
    templates, token = ctx.store.templates.page(
        max_results=inp.query_integer("maxResults", 1, 250),
        next_token=inp.query_string("nextToken"))
    out: Json = {"jobTemplates": [
        {"jobTemplateArn": template_arn(ctx, t.id), "jobTemplateId": t.id,
         "createdAt": t.created, **({"description": t.description} if t.description else {})}
        for t in templates]}
    if token is not None:
        out["nextToken"] = token
    return out


def delete_job_template(ctx: Context, inp: Input) -> None:
    inp.allow()
    ctx.store.templates.delete(check_template_id(inp.labels["jobTemplateId"]))


def managed_job_template(ctx: Context, inp: Input) -> Json:
    raise unsupported("AWS-managed job templates (DescribeManagedJobTemplate, "
                      "ListManagedJobTemplates); make your own with CreateJobTemplate")


TEMPLATE_HANDLERS: dict[str, Callable[[Context, Input], Json | None]] = {
    "CreateJobTemplate": create_job_template,
    "DescribeJobTemplate": describe_job_template,
    "ListJobTemplates": list_job_templates,
    "DeleteJobTemplate": delete_job_template,
    "DescribeManagedJobTemplate": managed_job_template,
    "ListManagedJobTemplates": managed_job_template,
}

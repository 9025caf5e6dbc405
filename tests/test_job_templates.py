"""Job templates and UpdateJob through boto3 and the real AWS CLI: a template from a
document or copied from a job, CreateJob from a template (its document with
``documentParameters`` filled, its configurations unless the request gives its own), and
UpdateJob changing a running job's description and configurations."""

from __future__ import annotations

import json
from pathlib import Path

from devicesim.wire.enums import JobExecutionStatus as X
from tests.test_awscli import aws_batch
from tests.test_controlplane import DOC, Env, arn, env

__all__ = ["env"]  # the fixture

TEMPLATE_DOC = json.dumps({"operation": "firmware-update",
                           "url": "${aws:iot:parameter:url}",
                           "version": "${aws:iot:parameter:version}"})
TEMPLATE_ARN = "arn:aws:iot:us-east-1:123456789012:jobtemplate/{}"
RETRY = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}
ROLLOUT = {"maximumPerMinute": 120}


async def test_a_job_from_a_template_fills_its_document_and_takes_its_configs(env: Env
                                                                              ) -> None:
    made = await env.call("create_job_template", jobTemplateId="ota", document=TEMPLATE_DOC,
                          description="firmware OTA", jobExecutionsRetryConfig=RETRY,
                          jobExecutionsRolloutConfig=ROLLOUT,
                          timeoutConfig={"inProgressTimeoutInMinutes": 30})
    assert (made["jobTemplateArn"], made["jobTemplateId"]) == (TEMPLATE_ARN.format("ota"),
                                                               "ota")
    await env.call("create_job", jobId="ota-1", targets=[arn("a")],
                   jobTemplateArn=TEMPLATE_ARN.format("ota"),
                   documentParameters={"url": "https://x/fw \"2\".bin", "version": "2.0"},
                   abortConfig={"criteriaList": [{"failureType": "ALL", "action": "CANCEL",
                                                  "thresholdPercentage": 50,
                                                  "minNumberOfExecutedThings": 1}]})
    job = (await env.call("describe_job", jobId="ota-1"))["job"]
    assert job["jobTemplateArn"] == TEMPLATE_ARN.format("ota")
    assert job["documentParameters"]["version"] == "2.0"
    assert (job["description"], job["jobExecutionsRetryConfig"],
            job["jobExecutionsRolloutConfig"], job["timeoutConfig"]) == (
        "firmware OTA", RETRY, ROLLOUT, {"inProgressTimeoutInMinutes": 30})
    assert "abortConfig" in job  # the request's own, on top of the template's
    document = json.loads((await env.call("get_job_document", jobId="ota-1"))["document"])
    assert document == {"operation": "firmware-update", "url": 'https://x/fw "2".bin',
                        "version": "2.0"}
    # every placeholder needs a value, and every value a placeholder
    assert (await env.error("create_job", jobId="ota-2", targets=[arn("a")],
                            jobTemplateArn=TEMPLATE_ARN.format("ota"),
                            documentParameters={"url": "u"}))[2] == (
        "documentParameters: no value for the template's placeholder(s) version")
    assert (await env.error("create_job", jobId="ota-2", targets=[arn("a")],
                            jobTemplateArn=TEMPLATE_ARN.format("ota"),
                            documentParameters={"url": "u", "version": "1", "extra": "x"}))[
        2] == "documentParameters: the template has no placeholder extra"
    assert (await env.error("create_job", jobId="ota-2", targets=[arn("a")], document=DOC,
                            documentParameters={"url": "u"}))[2] == (
        "documentParameters: only with a jobTemplateArn")
    assert (await env.error("create_job", jobId="ota-2", targets=[arn("a")],
                            jobTemplateArn=TEMPLATE_ARN.format("nope")))[:2] == (
        "ResourceNotFoundException", 404)


async def test_templates_are_listed_copied_from_jobs_and_deleted(env: Env) -> None:
    await env.call("create_job", jobId="golden", targets=[arn("a")], document=DOC,
                   jobExecutionsRetryConfig=RETRY)
    await env.call("create_job_template", jobTemplateId="from-job", description="copy",
                   jobArn="arn:aws:iot:us-east-1:123456789012:job/golden")
    copied = await env.call("describe_job_template", jobTemplateId="from-job")
    assert (copied["document"], copied["jobExecutionsRetryConfig"]) == (DOC, RETRY)
    await env.call("create_job_template", jobTemplateId="second", document=DOC,
                   description="two")
    page = await env.call("list_job_templates", maxResults=1)
    assert [(t["jobTemplateId"], t["description"]) for t in page["jobTemplates"]] == [
        ("from-job", "copy")]
    rest = await env.call("list_job_templates", nextToken=page["nextToken"])
    assert [(t["jobTemplateId"], t["description"]) for t in rest["jobTemplates"]] == [
        ("second", "two")]
    code, status, _ = await env.error("create_job_template", jobTemplateId="second",
                                      document=DOC, description="again")
    assert (code, status) == ("ConflictException", 409)
    assert (await env.error("create_job_template", jobTemplateId="x", document=DOC,
                            description="both",
                            jobArn="arn:aws:iot:us-east-1:123456789012:job/golden"))[2] == (
        "give either document or jobArn (a job to copy)")
    assert (await env.error("create_job_template", jobTemplateId="x", document=DOC,
                            description="mw", maintenanceWindows=[{"startTime": "cron(0 0 * * ? *)",
                                                 "durationInMinutes": 60}]))[2] == (
        "maintenanceWindows is not supported by this emulator")
    await env.call("delete_job_template", jobTemplateId="second")
    assert (await env.error("describe_job_template", jobTemplateId="second"))[:2] == (
        "ResourceNotFoundException", 404)


async def test_update_job_changes_a_running_job(env: Env) -> None:
    await env.create("live", "a", "b")
    await env.call("update_job", jobId="live", description="now with retries",
                   jobExecutionsRetryConfig=RETRY,
                   timeoutConfig={"inProgressTimeoutInMinutes": 5})
    job = (await env.call("describe_job", jobId="live"))["job"]
    assert (job["description"], job["jobExecutionsRetryConfig"], job["timeoutConfig"]) == (
        "now with retries", RETRY, {"inProgressTimeoutInMinutes": 5})
    env.store.start_next("a")
    env.store.update("a", "live", status=X.FAILED)  # the new retry configuration applies
    assert env.store.describe_job_execution("live", "a").retry_attempt == 1
    # a new abort configuration is checked at once
    await env.call("update_job", jobId="live", abortConfig={"criteriaList": [
        {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 10,
         "minNumberOfExecutedThings": 1}]})
    env.store.start_next("a")
    env.store.update("a", "live", status=X.FAILED)  # a's retry is spent: FAILED stays
    env.store.tick()
    assert await env.status("live") == "CANCELED"
    assert (await env.error("update_job", jobId="live",
                            presignedUrlConfig={"expiresInSec": 60}))[2] == (
        "presignedUrlConfig is not supported by this emulator")
    assert (await env.error("update_job", jobId="nope", description="x"))[:2] == (
        "ResourceNotFoundException", 404)


async def test_the_aws_cli_makes_and_uses_a_template(env: Env, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    common = ("--endpoint-url", env.url, "--output", "json")
    results = await aws_batch(
        home,
        ("create-job-template", "--job-template-id", "cli", "--document", TEMPLATE_DOC,
         "--description", "from the CLI",
         "--job-executions-retry-config", "criteriaList=[{failureType=FAILED,"
         "numberOfRetries=2}]", *common),
        ("create-job", "--job-id", "cli-1", "--targets", arn("a"), "--job-template-arn",
         TEMPLATE_ARN.format("cli"), "--document-parameters", "url=u,version=3", *common),
        ("update-job", "--job-id", "cli-1", "--description", "updated", *common),
        ("describe-job", "--job-id", "cli-1", *common),
        ("list-job-templates", *common),
        ("delete-job-template", "--job-template-id", "cli", *common))
    for result in results:
        assert result.rc == 0, result.err
    job = json.loads(results[3].out)["job"]
    assert (job["description"], job["jobExecutionsRetryConfig"]["criteriaList"][0][
        "numberOfRetries"]) == ("updated", 2)
    assert [t["jobTemplateId"] for t in json.loads(results[4].out)["jobTemplates"]] == ["cli"]


async def test_aws_managed_templates_are_refused_by_name(env: Env) -> None:
    for operation, params in (("describe_managed_job_template",
                               {"templateName": "AWS-Download-File"}),
                              ("list_managed_job_templates", {})):
        code, status, message = await env.error(operation, **params)
        assert (code, status) == ("InvalidRequestException", 400)
        assert message.startswith("AWS-managed job templates")

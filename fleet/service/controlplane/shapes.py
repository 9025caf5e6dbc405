"""Store records -> the output shapes of the botocore ``iot`` model (rest-json).

camelCase exists only here. Timestamps are epoch seconds as JSON numbers (fractions kept,
spec §1); absent optional members are left out rather than sent as ``null``.
"""

from __future__ import annotations

from typing import Any

from devicesim.wire.enums import JobExecutionStatus as X
from devicesim.wire.enums import JobStatus
from fleet.service.records import Execution, Job

Json = dict[str, Any]

#: JobProcessDetails member for each execution status.
PROCESS_DETAILS: dict[X, str] = {
    X.CANCELED: "numberOfCanceledThings",
    X.SUCCEEDED: "numberOfSucceededThings",
    X.FAILED: "numberOfFailedThings",
    X.REJECTED: "numberOfRejectedThings",
    X.QUEUED: "numberOfQueuedThings",
    X.IN_PROGRESS: "numberOfInProgressThings",
    X.REMOVED: "numberOfRemovedThings",
    X.TIMED_OUT: "numberOfTimedOutThings",
}

#: Event types of the model's EventConfigurations map, and the ones this emulator publishes.
EVENT_TYPES = ("THING", "THING_GROUP", "THING_TYPE", "THING_GROUP_MEMBERSHIP",
               "THING_GROUP_HIERARCHY", "THING_TYPE_ASSOCIATION", "JOB", "JOB_EXECUTION",
               "POLICY", "CERTIFICATE", "CA_CERTIFICATE")
JOBS_EVENT_TYPES = ("JOB", "JOB_EXECUTION")


def _present(**members: Any) -> Json:
    return {name: value for name, value in members.items() if value is not None}


def job_reference(job: Job) -> Json:
    """CreateJobResponse / CancelJobResponse."""
    return _present(jobArn=job.job_arn, jobId=job.job_id, description=job.description)


def job_object(job: Job) -> Json:
    """Job (DescribeJobResponse.job). ``isConcurrent`` is true while a rollout
    configuration still has targets to release (cancellation is instantaneous here)."""
    timeout = (None if job.in_progress_timeout_minutes is None
               else {"inProgressTimeoutInMinutes": job.in_progress_timeout_minutes})
    return _present(
        jobArn=job.job_arn, jobId=job.job_id, targetSelection=job.target_selection,
        status=job.status.value, forceCanceled=job.force_canceled,
        reasonCode=job.reason_code, comment=job.comment, targets=list(job.targets),
        description=job.description, createdAt=job.created_at,
        lastUpdatedAt=job.last_updated_at, completedAt=job.completed_at,
        jobProcessDetails={name: job.process_details.get(status.value, 0)
                           for status, name in PROCESS_DETAILS.items()},
        timeoutConfig=timeout, namespaceId=job.namespace_id, isConcurrent=_rolling_out(job),
        jobExecutionsRolloutConfig=job.configs.get("jobExecutionsRolloutConfig"),
        abortConfig=job.configs.get("abortConfig"),
        jobExecutionsRetryConfig=job.configs.get("jobExecutionsRetryConfig"),
        jobTemplateArn=job.configs.get("jobTemplateArn"),
        documentParameters=job.configs.get("documentParameters"),
        schedulingConfig=job.configs.get("schedulingConfig"))


def job_summary(job: Job) -> Json:
    return _present(
        jobArn=job.job_arn, jobId=job.job_id, targetSelection=job.target_selection,
        status=job.status.value, createdAt=job.created_at, lastUpdatedAt=job.last_updated_at,
        completedAt=job.completed_at, isConcurrent=_rolling_out(job))


def _rolling_out(job: Job) -> bool:
    """``isConcurrent``: an IN_PROGRESS job with targets still to release."""
    return job.planned > 0 and job.status is JobStatus.IN_PROGRESS


def job_execution(e: Execution, *, thing_arn: str, now: float) -> Json:
    """JobExecution (control plane): statusDetails nested in ``detailsMap``."""
    return _present(
        jobId=e.job_id, status=e.status.value, forceCanceled=e.force_canceled,
        statusDetails={"detailsMap": dict(e.status_details)}, thingArn=thing_arn,
        queuedAt=e.queued_at, startedAt=e.started_at, lastUpdatedAt=e.last_updated_at,
        executionNumber=e.execution_number, versionNumber=e.version_number,
        approximateSecondsBeforeTimedOut=e.seconds_before_timed_out(now))


def job_execution_summary(e: Execution) -> Json:
    """JobExecutionSummary."""
    return _present(status=e.status.value, queuedAt=e.queued_at, startedAt=e.started_at,
                    lastUpdatedAt=e.last_updated_at, executionNumber=e.execution_number,
                    retryAttempt=e.retry_attempt)


def summary_for_job(e: Execution, *, thing_arn: str) -> Json:
    return {"thingArn": thing_arn, "jobExecutionSummary": job_execution_summary(e)}


def summary_for_thing(e: Execution) -> Json:
    return {"jobId": e.job_id, "jobExecutionSummary": job_execution_summary(e)}


def page(key: str, items: list[Json], next_token: str | None) -> Json:
    return _present(**{key: items, "nextToken": next_token})


def event_configurations(enabled: dict[str, bool]) -> Json:
    """All the model's event types; those this emulator never publishes are disabled."""
    return {"eventConfigurations": {kind: {"Enabled": bool(enabled.get(kind, False))}
                                    for kind in EVENT_TYPES}}

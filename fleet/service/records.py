"""What the store holds: a job and a job execution, as immutable records.

Times are float epoch seconds inside; the MQTT wire rounds them down to integers here, in
one place (spec §1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from devicesim.wire.enums import JobExecutionStatus, JobStatus
from devicesim.wire.messages import JobExecutionData, JobExecutionState, JobExecutionSummary


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    job_id: str
    job_arn: str
    status: JobStatus
    document: str
    description: str | None = None
    target_selection: str = "SNAPSHOT"
    targets: tuple[str, ...] = ()
    created_at: float
    last_updated_at: float
    completed_at: float | None = None
    force_canceled: bool = False
    reason_code: str | None = None
    comment: str | None = None
    in_progress_timeout_minutes: int | None = None
    namespace_id: str | None = None
    #: jobExecutionsRolloutConfig, abortConfig, jobExecutionsRetryConfig, jobTemplateArn,
    #: documentParameters: as given
    configs: dict[str, Any] = field(default_factory=dict)
    #: counts by execution status, filled by DescribeJob
    process_details: dict[str, int] = field(default_factory=dict)
    #: targets the rollout has not released yet, filled by DescribeJob
    planned: int = 0

    @property
    def document_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.document)
        return obj


@dataclass(frozen=True, slots=True, kw_only=True)
class Execution:
    job_id: str
    thing_name: str
    execution_number: int
    status: JobExecutionStatus
    status_details: dict[str, str] = field(default_factory=dict)
    queued_at: float
    started_at: float | None = None
    last_updated_at: float
    version_number: int
    force_canceled: bool = False
    step_deadline: float | None = None
    in_progress_deadline: float | None = None
    sweep_at: float | None = None
    seq: int = 0
    #: how many times the job's retry configuration queued this thing's execution again
    retry_attempt: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.job_id, self.execution_number)

    @property
    def deadline(self) -> float | None:
        """When the running timers time this execution out (the earlier of the two)."""
        deadlines = [d for d in (self.step_deadline, self.in_progress_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def seconds_before_timed_out(self, now: float) -> int | None:
        deadline = self.deadline
        if deadline is None or self.status.is_terminal:
            return None
        return max(0, int(deadline - now))

    # -- MQTT wire views ---------------------------------------------------------------

    def state(self) -> JobExecutionState:
        return JobExecutionState(status=self.status, status_details=self.status_details or None,
                                 version_number=self.version_number)

    def summary(self) -> JobExecutionSummary:
        return JobExecutionSummary(
            job_id=self.job_id, queued_at=int(self.queued_at),
            started_at=None if self.started_at is None else int(self.started_at),
            last_updated_at=int(self.last_updated_at), version_number=self.version_number,
            execution_number=self.execution_number)

    def data(self, now: float, document: dict[str, Any] | None) -> JobExecutionData:
        return JobExecutionData(
            job_id=self.job_id, thing_name=self.thing_name, job_document=document,
            status=self.status, status_details=self.status_details or None,
            queued_at=int(self.queued_at),
            started_at=None if self.started_at is None else int(self.started_at),
            last_updated_at=int(self.last_updated_at), version_number=self.version_number,
            execution_number=self.execution_number,
            approximate_seconds_before_timed_out=self.seconds_before_timed_out(now))

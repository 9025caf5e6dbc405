"""Status and error-code enums, named as AWS names them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"
    DELETION_IN_PROGRESS = "DELETION_IN_PROGRESS"
    SCHEDULED = "SCHEDULED"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.CANCELED, JobStatus.COMPLETED)


class JobExecutionStatus(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"
    REMOVED = "REMOVED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobExecutionStatus.QUEUED, JobExecutionStatus.IN_PROGRESS)

    @property
    def is_pending(self) -> bool:
        return not self.is_terminal


class RejectedErrorCode(StrEnum):
    """Codes of a ``/rejected`` reply on the MQTT data plane (spec §5.3)."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    INTERNAL_ERROR = "InternalError"
    REQUEST_THROTTLED = "RequestThrottled"
    TERMINAL_STATE_REACHED = "TerminalStateReached"

    @property
    def is_retryable(self) -> bool:
        return self in (RejectedErrorCode.INTERNAL_ERROR, RejectedErrorCode.REQUEST_THROTTLED)

    @property
    def carries_execution_state(self) -> bool:
        return self in (
            RejectedErrorCode.INVALID_STATE_TRANSITION,
            RejectedErrorCode.VERSION_MISMATCH,
        )

"""One frozen dataclass per AWS IoT Jobs MQTT message (spec §5.1–§5.3).

Names follow the AWS IoT Device SDK (``awsiot.iotjobs``). Timestamps are integer epoch
seconds. ``to_json`` leaves absent fields out; ``from_json`` validates and raises
:class:`~devicesim.wire.codec.WireError` with the AWS code and a message naming the field.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Self

from devicesim.wire import codec
from devicesim.wire.enums import JobExecutionStatus, RejectedErrorCode

MAX_PAYLOAD_BYTES = 128 * 1024
MAX_STATUS_DETAILS_VALUE = 1024
MAX_STEP_TIMEOUT_MINUTES = 10080
_DETAILS_KEY = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_other_characters(text: str) -> bool:
    """True if ``text`` has a character of Unicode category C (the model's ``\\p{C}``:
    control, format, surrogate, private use, unassigned)."""
    if text.isascii():
        return _CONTROL.search(text) is not None
    return any(unicodedata.category(ch)[0] == "C" for ch in text)

StatusDetails = dict[str, str]
JobDocument = dict[str, Any]


def validate_status_details(details: StatusDetails | None, *, max_pairs: int | None = None) -> None:
    """Raise ValueError naming the offending key (the model's patterns, spec §1)."""
    if details is None:
        return
    if max_pairs is not None and len(details) > max_pairs:
        raise ValueError(f"statusDetails: at most {max_pairs} entries allowed")
    for key, value in details.items():
        if not _DETAILS_KEY.fullmatch(key):
            raise ValueError(f"statusDetails: key {key!r:.140} must match [a-zA-Z0-9:_-]{{1,128}}")
        if not value or len(value) > MAX_STATUS_DETAILS_VALUE or has_other_characters(value):
            raise ValueError(
                f"statusDetails.{key}: value must be 1-1024 characters without control characters"
            )


def validate_step_timeout(minutes: int | None) -> None:
    if minutes is not None and minutes != -1 and not 1 <= minutes <= MAX_STEP_TIMEOUT_MINUTES:
        raise ValueError("stepTimeoutInMinutes must be -1 or between 1 and 10080")


class Message:
    """Mixin: JSON round trip through the shared codec."""

    __slots__ = ()

    def to_json(self) -> bytes:
        return codec.dumps(self)

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = codec.encode(self)
        return result

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        return codec.decode(cls, obj)

    @classmethod
    def from_json(cls, payload: bytes | str) -> Self:
        return codec.decode(cls, codec.loads_object(payload))




# --- shapes carried inside messages ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JobExecutionSummary(Message):
    job_id: str | None = None
    queued_at: int | None = None
    started_at: int | None = None
    last_updated_at: int | None = None
    version_number: int | None = None
    execution_number: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobExecutionData(Message):
    job_id: str
    thing_name: str | None = None
    job_document: JobDocument | None = None
    status: JobExecutionStatus
    status_details: StatusDetails | None = None
    queued_at: int | None = None
    started_at: int | None = None
    last_updated_at: int | None = None
    version_number: int
    execution_number: int
    approximate_seconds_before_timed_out: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobExecutionState(Message):
    status: JobExecutionStatus
    status_details: StatusDetails | None = None
    version_number: int


# --- requests (device -> service) -----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPendingJobExecutionsRequest(Message):
    client_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartNextPendingJobExecutionRequest(Message):
    client_token: str | None = None
    status_details: StatusDetails | None = None
    step_timeout_in_minutes: int | None = None

    def __post_init__(self) -> None:
        validate_status_details(self.status_details)
        validate_step_timeout(self.step_timeout_in_minutes)


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeJobExecutionRequest(Message):
    client_token: str | None = None
    execution_number: int | None = None
    include_job_document: bool | None = None  # absent means true


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateJobExecutionRequest(Message):
    status: JobExecutionStatus
    client_token: str | None = None
    status_details: StatusDetails | None = None
    expected_version: int | None = None
    execution_number: int | None = None
    include_job_execution_state: bool | None = None
    include_job_document: bool | None = None
    step_timeout_in_minutes: int | None = None

    def __post_init__(self) -> None:
        validate_status_details(self.status_details)
        validate_step_timeout(self.step_timeout_in_minutes)


# --- replies (service -> device) ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPendingJobExecutionsResponse(Message):
    in_progress_jobs: list[JobExecutionSummary] = field(default_factory=list)
    queued_jobs: list[JobExecutionSummary] = field(default_factory=list)
    timestamp: int
    client_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartNextJobExecutionResponse(Message):
    execution: JobExecutionData | None = None
    timestamp: int
    client_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeJobExecutionResponse(Message):
    execution: JobExecutionData | None = None
    timestamp: int
    client_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateJobExecutionResponse(Message):
    execution_state: JobExecutionState | None = None
    job_document: JobDocument | None = None
    timestamp: int
    client_token: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedError(Message):
    code: RejectedErrorCode
    message: str | None = None
    client_token: str | None = None
    timestamp: int
    execution_state: JobExecutionState | None = None


# --- pushes (service -> device) -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JobExecutionsChangedEvent(Message):
    """``notify``: the pending set; keys are statuses, empty ones left out."""

    jobs: dict[str, list[JobExecutionSummary]] = field(default_factory=dict)
    timestamp: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NextJobExecutionChangedEvent(Message):
    """``notify-next``: the new head of the pending list, or no ``execution`` when empty."""

    execution: JobExecutionData | None = None
    timestamp: int


__all__ = [
    "MAX_PAYLOAD_BYTES", "DescribeJobExecutionRequest", "DescribeJobExecutionResponse",
    "GetPendingJobExecutionsRequest", "GetPendingJobExecutionsResponse",
    "JobExecutionData", "JobExecutionState", "JobExecutionSummary", "JobExecutionsChangedEvent",
    "NextJobExecutionChangedEvent", "RejectedError", "RejectedErrorCode",
    "StartNextJobExecutionResponse", "StartNextPendingJobExecutionRequest",
    "UpdateJobExecutionRequest", "UpdateJobExecutionResponse", "validate_status_details",
]

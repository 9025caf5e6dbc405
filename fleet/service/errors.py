"""AWS IoT Jobs errors: one class per AWS exception, each knowing its wire forms.

::

    JobsError                              (root; never raised itself)
    ├── InvalidRequestException            400  InvalidRequest
    ├── InvalidStateTransitionException    409  InvalidStateTransition (+executionState)
    ├── ResourceNotFoundException          404  ResourceNotFound
    ├── ResourceAlreadyExistsException     409  InvalidRequest
    ├── LimitExceededException             410  InvalidRequest
    ├── VersionConflictException           409  VersionMismatch (+executionState)
    ├── TerminalStateException             410  TerminalStateReached
    ├── ThrottlingException                400  RequestThrottled
    ├── ServiceUnavailableException        503  InternalError
    ├── InternalFailureException           500  InternalError
    ├── CertificateStateException          406  (control plane only: the registry)
    ├── DeleteConflictException            409  (control plane only: the registry)
    └── ConflictException                  409  (control plane only: +resourceId)

The control plane turns an error into ``x-amzn-ErrorType`` + ``{"message"}`` with
``http_status``; the data plane into a ``/rejected`` message with ``mqtt_code``. Those two
translations happen in exactly one place each.
"""

from __future__ import annotations

from typing import ClassVar

from devicesim.wire.enums import RejectedErrorCode
from devicesim.wire.messages import JobExecutionState


class JobsError(Exception):
    http_status: ClassVar[int] = 500
    mqtt_code: ClassVar[RejectedErrorCode] = RejectedErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, execution_state: JobExecutionState | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.execution_state = execution_state

    @property
    def code(self) -> str:
        return type(self).__name__


class InvalidRequestException(JobsError):
    http_status = 400
    mqtt_code = RejectedErrorCode.INVALID_REQUEST


class InvalidStateTransitionException(JobsError):
    http_status = 409
    mqtt_code = RejectedErrorCode.INVALID_STATE_TRANSITION


class ResourceNotFoundException(JobsError):
    http_status = 404
    mqtt_code = RejectedErrorCode.RESOURCE_NOT_FOUND


class ResourceAlreadyExistsException(JobsError):
    http_status = 409
    mqtt_code = RejectedErrorCode.INVALID_REQUEST


class LimitExceededException(JobsError):
    http_status = 410
    mqtt_code = RejectedErrorCode.INVALID_REQUEST


class VersionConflictException(JobsError):
    http_status = 409
    mqtt_code = RejectedErrorCode.VERSION_MISMATCH


class TerminalStateException(JobsError):
    http_status = 410
    mqtt_code = RejectedErrorCode.TERMINAL_STATE_REACHED


class ThrottlingException(JobsError):
    http_status = 400
    mqtt_code = RejectedErrorCode.REQUEST_THROTTLED


class ServiceUnavailableException(JobsError):
    http_status = 503
    mqtt_code = RejectedErrorCode.INTERNAL_ERROR


class InternalFailureException(JobsError):
    http_status = 500
    mqtt_code = RejectedErrorCode.INTERNAL_ERROR


class CertificateStateException(JobsError):
    """A certificate in the wrong state for the call (e.g. deleting an ACTIVE one)."""

    http_status = 406


class DeleteConflictException(JobsError):
    """Deleting what is still attached (a certificate to a thing or a policy)."""

    http_status = 409


class ConflictException(JobsError):
    """A resource with that id already exists (a job template)."""

    http_status = 409

    def __init__(self, message: str, *, resource_id: str) -> None:
        super().__init__(message)
        self.resource_id = resource_id


#: Settings name these by their AWS names.
BY_NAME: dict[str, type[JobsError]] = {
    cls.__name__: cls
    for cls in (InvalidRequestException, InvalidStateTransitionException,
                ResourceNotFoundException, ResourceAlreadyExistsException,
                LimitExceededException, VersionConflictException, TerminalStateException,
                ThrottlingException, ServiceUnavailableException, InternalFailureException)
}

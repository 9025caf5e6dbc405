"""Job and job-execution lifecycles as lookup tables (spec §2, §3, §13).

Each check validates *before* the store mutates anything and raises the AWS error the
spec names, with a message that names the event, the actor and the state.
"""

from __future__ import annotations

from devicesim.wire.enums import JobExecutionStatus as X
from devicesim.wire.enums import JobStatus as J
from devicesim.wire.messages import JobExecutionState
from fleet.service.errors import (
    BY_NAME,
    InvalidRequestException,
    InvalidStateTransitionException,
    JobsError,
    TerminalStateException,
)
from fleet.service.settings import ServiceSettings, TerminalUpdateCode

#: What a device may ask UpdateJobExecution to do, from each state.
DEVICE_TRANSITIONS: dict[X, frozenset[X]] = {
    X.QUEUED: frozenset({X.IN_PROGRESS, X.SUCCEEDED, X.FAILED, X.REJECTED}),
    X.IN_PROGRESS: frozenset({X.IN_PROGRESS, X.SUCCEEDED, X.FAILED, X.REJECTED}),
    **{s: frozenset() for s in X if s.is_terminal},
}
#: Statuses only the service sets; a device asking for one gets InvalidRequest (spec §13),
#: except QUEUED which is InvalidStateTransition.
SERVICE_ONLY = frozenset({X.CANCELED, X.REMOVED, X.TIMED_OUT})

#: Service-side execution events: (status, event, force) -> new status.
SERVICE_TRANSITIONS: dict[tuple[X, str, bool], X] = {
    (X.QUEUED, "cancel", False): X.CANCELED,
    (X.QUEUED, "cancel", True): X.CANCELED,
    (X.IN_PROGRESS, "cancel", True): X.CANCELED,
    (X.IN_PROGRESS, "timeout", False): X.TIMED_OUT,
    (X.QUEUED, "remove", False): X.REMOVED,
    (X.IN_PROGRESS, "remove", False): X.REMOVED,
}

#: Job events: (status, event) -> new status. Deleting a non-terminal job needs force.
JOB_TRANSITIONS: dict[tuple[J, str], J] = {
    (J.SCHEDULED, "start"): J.IN_PROGRESS,
    (J.SCHEDULED, "cancel"): J.CANCELED,
    (J.SCHEDULED, "delete"): J.DELETION_IN_PROGRESS,
    (J.IN_PROGRESS, "complete"): J.COMPLETED,
    (J.IN_PROGRESS, "cancel"): J.CANCELED,
    (J.IN_PROGRESS, "delete"): J.DELETION_IN_PROGRESS,
    (J.COMPLETED, "delete"): J.DELETION_IN_PROGRESS,
    (J.CANCELED, "delete"): J.DELETION_IN_PROGRESS,
}


def device_update(current: X, requested: X, state: JobExecutionState,
                  settings: ServiceSettings, *, job_id: str) -> X:
    """The status after a device's UpdateJobExecution, or the AWS error."""
    if requested in SERVICE_ONLY:
        raise InvalidRequestException(
            f"status {requested} can only be set by the service, not by a device")
    if current.is_terminal:
        if settings.terminal_update_code is TerminalUpdateCode.TERMINAL_STATE_REACHED:
            raise TerminalStateException(f"job execution {job_id} is in terminal state {current}")
        raise InvalidStateTransitionException(
            f"cannot update job execution {job_id} from {current} to {requested}",
            execution_state=state)
    if requested not in DEVICE_TRANSITIONS[current]:
        raise InvalidStateTransitionException(
            f"cannot update job execution {job_id} from {current} to {requested}",
            execution_state=state)
    return requested


def service_event(current: X, event: str, *, force: bool, job_id: str, thing_name: str) -> X:
    """The status after a service-side event (cancel, timeout, remove), or the AWS error."""
    new = SERVICE_TRANSITIONS.get((current, event, force))
    if new is None:
        hint = " without force" if current is X.IN_PROGRESS and not force else ""
        raise InvalidStateTransitionException(
            f"cannot {event} job execution {job_id} on {thing_name} in status {current}{hint}")
    return new


def job_event(current: J, event: str, *, job_id: str, force: bool,
              settings: ServiceSettings) -> J:
    """The job status after CancelJob / DeleteJob / completion, or the AWS error."""
    if current is J.DELETION_IN_PROGRESS:
        name = (settings.delete_in_progress_error if event == "delete"
                else settings.cancel_in_progress_error)
        raise _named(name, f"job {job_id} is already being deleted")
    if event == "delete" and not current.is_terminal and not force:
        raise InvalidStateTransitionException(
            f"cannot delete job {job_id} in status {current} without force")
    new = JOB_TRANSITIONS.get((current, event))
    if new is None:
        if event == "cancel":
            raise _named(settings.cancel_in_progress_error,
                         f"cannot cancel job {job_id} in status {current}")
        raise InvalidStateTransitionException(f"cannot {event} job {job_id} in status {current}")
    return new


def _named(name: str, message: str) -> JobsError:
    return BY_NAME[name](message)

"""Settings of the emulated jobs service: the spec's §13 defaults for undocumented corners.

Built once at the edge (CLI flags, drill file) and passed down frozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from fleet.service.errors import BY_NAME


class TerminalDescribe(StrEnum):
    ACCEPTED = "accepted"
    TERMINAL_STATE_REACHED = "TerminalStateReached"


class TerminalUpdateCode(StrEnum):
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    TERMINAL_STATE_REACHED = "TerminalStateReached"


class EmptyPayload(StrEnum):
    AS_EMPTY_OBJECT = "empty-object"
    INVALID_JSON = "InvalidJson"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSettings:
    """Each field is a ``fleet up`` flag (``--delete-in-progress-error`` ...)."""

    #: DeleteJob on a job already DELETION_IN_PROGRESS.
    delete_in_progress_error: str = "InvalidStateTransitionException"
    #: CancelJob on a job already DELETION_IN_PROGRESS or terminal.
    cancel_in_progress_error: str = "InvalidRequestException"
    #: How long the deletion sweep takes, per execution (random order).
    deletion_seconds_per_execution: float = 0.01
    #: At most this many jobs in DELETION_IN_PROGRESS at once (AWS: 10).
    max_concurrent_deletions: int = 10
    #: Update of a terminal (e.g. force-canceled) execution.
    terminal_update_code: TerminalUpdateCode = TerminalUpdateCode.INVALID_STATE_TRANSITION
    #: MQTT describe of a terminal execution.
    terminal_describe: TerminalDescribe = TerminalDescribe.ACCEPTED
    #: Publish $aws/events/jobExecution/{jobId}/deleted for executions swept by DeleteJob.
    execution_deleted_events: bool = True
    #: Jobs events on $aws/events/... (also switchable by UpdateEventConfigurations).
    job_events: bool = True
    #: An empty payload on a request topic.
    empty_payload: EmptyPayload = EmptyPayload.AS_EMPTY_OBJECT
    #: Pending executions listed in GetPendingJobExecutions and notify (AWS: 10).
    max_pending_listed: int = 10
    #: CreateJob / AssociateTargetsWithJob refuse a thing ARN whose thing is not in the
    #: registry (ResourceNotFoundException), as AWS does; off: any thing ARN is a thing.
    registered_targets_only: bool = False
    #: The reason code of a job canceled by its abortConfig (AWS does not document it).
    abort_reason_code: str = "ABORT_CRITERIA_MET"
    #: Whether an abort cancels IN_PROGRESS executions too (as CancelJob --force); AWS
    #: documents only that the job is canceled, so by default as CancelJob: QUEUED only.
    abort_force: bool = False
    #: schedulingConfig: the start at least this many minutes ahead, the end this many
    #: after the start (AWS: 30; a drill lowers it to schedule within seconds).
    schedule_minimum_minutes: float = 30.0
    region: str = "us-east-1"
    account_id: str = "123456789012"

    def __post_init__(self) -> None:
        for name in ("delete_in_progress_error", "cancel_in_progress_error"):
            if getattr(self, name) not in BY_NAME:
                raise ValueError(f"{name}: unknown AWS exception {getattr(self, name)!r}; "
                                 f"one of {', '.join(sorted(BY_NAME))}")
        if self.deletion_seconds_per_execution < 0:
            raise ValueError("deletion_seconds_per_execution: must be >= 0")
        if self.max_concurrent_deletions < 1:
            raise ValueError("max_concurrent_deletions: must be >= 1")
        if not re.fullmatch(r"[A-Z0-9_]{1,128}", self.abort_reason_code):
            raise ValueError("abort_reason_code: must match [A-Z0-9_]{1,128}, as a CancelJob "
                             "reasonCode")

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> ServiceSettings:
        """Build from strings or values (CLI / TOML); a ValueError names the field."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"{key}: unknown service setting")
            default = getattr(cls(), name)
            kwargs[name] = _coerce(name, type(default), raw)
        return cls(**kwargs)


def _coerce(name: str, kind: type, raw: Any) -> Any:
    if isinstance(raw, kind):
        return raw
    try:
        if kind is bool:
            text = str(raw).lower()
            if text not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                raise ValueError
            return text in ("true", "on", "1", "yes")
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}: invalid value {raw!r}") from None

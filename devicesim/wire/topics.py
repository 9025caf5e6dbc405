"""Every AWS IoT Jobs topic, built and parsed in exactly one place (spec §5, §8).

Builders return topic strings; :func:`parse_jobs_topic` turns a topic received under
``$aws/things/+/jobs/#`` into a :class:`JobsTopic`, telling requests (which the service
answers) from replies and pushes (which the service itself published and must ignore).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

NEXT = "$next"
JOB_ID_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
THING_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
#: Topic levels that would make a jobId ambiguous on the wire.
RESERVED_JOB_IDS = frozenset({"get", "start-next", "notify", "notify-next", "update", NEXT})

#: The service subscribes here; ``#`` alone never matches ``$aws/...`` topics.
SERVICE_FILTER = "$aws/things/+/jobs/#"
JOB_EVENTS_FILTER = "$aws/events/#"
DEVICE_EVENTS_FILTER = "devicesim/+/events"
#: AWS IoT lifecycle events (the devicesim_aws plugin publishes them with ``presence``)
PRESENCE_EVENTS = ("connected", "disconnected")


class Operation(StrEnum):
    GET_PENDING = "GetPendingJobExecutions"
    START_NEXT = "StartNextPendingJobExecution"
    DESCRIBE = "DescribeJobExecution"
    UPDATE = "UpdateJobExecution"


class Kind(StrEnum):
    REQUEST = "request"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NOTIFY = "notify"
    NOTIFY_NEXT = "notify-next"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class JobsTopic:
    """A parsed ``$aws/things/{thing}/jobs/...`` topic."""

    thing_name: str
    kind: Kind
    operation: Operation | None = None
    job_id: str | None = None

    @property
    def request_topic(self) -> str:
        """The request topic this reply answers (or this request itself)."""
        assert self.operation is not None
        return request_topic(self.thing_name, self.operation, self.job_id)


def jobs_prefix(thing_name: str) -> str:
    return f"$aws/things/{thing_name}/jobs"


def get_pending(thing_name: str) -> str:
    return f"{jobs_prefix(thing_name)}/get"


def start_next(thing_name: str) -> str:
    return f"{jobs_prefix(thing_name)}/start-next"


def describe(thing_name: str, job_id: str) -> str:
    return f"{jobs_prefix(thing_name)}/{job_id}/get"


def update(thing_name: str, job_id: str) -> str:
    return f"{jobs_prefix(thing_name)}/{job_id}/update"


def notify(thing_name: str) -> str:
    return f"{jobs_prefix(thing_name)}/notify"


def notify_next(thing_name: str) -> str:
    return f"{jobs_prefix(thing_name)}/notify-next"


def accepted(request: str) -> str:
    return f"{request}/accepted"


def rejected(request: str) -> str:
    return f"{request}/rejected"


def request_topic(thing_name: str, operation: Operation, job_id: str | None = None) -> str:
    if operation is Operation.GET_PENDING:
        return get_pending(thing_name)
    if operation is Operation.START_NEXT:
        return start_next(thing_name)
    assert job_id is not None
    if operation is Operation.DESCRIBE:
        return describe(thing_name, job_id)
    return update(thing_name, job_id)


def device_subscriptions(thing_name: str) -> list[str]:
    """What a device subscribes to (Mosquitto routes replies only to subscribers).

    Not ``notify``: the reference agent acts on ``notify-next`` alone (as the AWS IoT Device
    Client does), and every pending-set change would otherwise cost each device a message.
    """
    p = jobs_prefix(thing_name)
    return [f"{p}/notify-next", f"{p}/get/+", f"{p}/start-next/+", f"{p}/+/get/+",
            f"{p}/+/update/+"]


def job_event(job_id: str, operation: str) -> str:
    """``$aws/events/job/{jobId}/{operation}`` (completed, canceled, deleted, ...)."""
    return f"$aws/events/job/{job_id}/{operation}"


def execution_event(job_id: str, operation: str) -> str:
    """``$aws/events/jobExecution/{jobId}/{operation}`` (succeeded, failed, deleted, ...)."""
    return f"$aws/events/jobExecution/{job_id}/{operation}"


def presence(client_id: str, event: str = "+") -> str:
    """``$aws/events/presence/{connected|disconnected}/{clientId}``: AWS IoT's lifecycle
    events (a filter for both with the default ``event``)."""
    return f"$aws/events/presence/{event}/{client_id}"


def device_events(thing_name: str) -> str:
    """Where a simulated device publishes its own state changes (devicesim, not AWS)."""
    return f"devicesim/{thing_name}/events"


_REPLY = {"accepted": Kind.ACCEPTED, "rejected": Kind.REJECTED}


def is_reply(topic: str) -> bool:
    """A Jobs reply (``.../accepted`` or ``.../rejected`` under ``$aws/things/``): on AWS it
    goes to the requester alone."""
    return topic.startswith("$aws/things/") and topic.endswith(("/accepted", "/rejected"))


def parse_jobs_topic(topic: str) -> JobsTopic | None:
    """Parse a topic under ``$aws/things/{thing}/jobs/``; None if it is not under it.

    Levels after ``jobs``: ``get`` / ``start-next`` / ``{jobId}/get`` / ``{jobId}/update``
    are requests, the same followed by ``accepted`` / ``rejected`` are replies, ``notify`` and
    ``notify-next`` are pushes; any topic ending in ``accepted`` / ``rejected`` is a reply
    (``operation`` None when it answers an invalid topic); anything else is
    :attr:`Kind.INVALID` (answered InvalidTopic).
    """
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "$aws" or parts[1] != "things" or parts[3] != "jobs":
        return None
    thing, rest = parts[2], parts[4:]
    kind = Kind.REQUEST
    if rest and rest[-1] in _REPLY and len(rest) >= 2:
        kind, rest = _REPLY[rest[-1]], rest[:-1]
    match rest:
        case ["get"]:
            return JobsTopic(thing, kind, Operation.GET_PENDING)
        case ["start-next"]:
            return JobsTopic(thing, kind, Operation.START_NEXT)
        case [job_id, "get"] if job_id:
            return JobsTopic(thing, kind, Operation.DESCRIBE, job_id)
        case [job_id, "update"] if job_id:
            return JobsTopic(thing, kind, Operation.UPDATE, job_id)
        case ["notify"] if kind is Kind.REQUEST:
            return JobsTopic(thing, Kind.NOTIFY)
        case ["notify-next"] if kind is Kind.REQUEST:
            return JobsTopic(thing, Kind.NOTIFY_NEXT)
    # A reply to a request on an invalid topic is still a reply: never answer it.
    return JobsTopic(thing, Kind.INVALID if kind is Kind.REQUEST else kind)

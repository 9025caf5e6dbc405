"""Device events: what a simulated device publishes on ``devicesim/{thing}/events``.

Every local state change of a device is published (QoS 1) as one JSON object, so that a
recorder on any host can build the history and the checker can judge it. Schema
(camelCase on the wire, absent fields left out)::

    {"kind": "lost_access", "thingName": "dev-0001", "timestamp": 1764382512.123,
     "jobId": "rollout-1", "executionNumber": 1, "versionNumber": 3,
     "documentDigest": "sha256:…", "step": "install", "reason": "notify-next",
     "nvm": {"activeSlot": "A", "activeVersion": "1.0.0", "activeComplete": true,
             "activeVerified": true, "journalJobId": null, ...}}

``timestamp`` is float epoch seconds (the device's clock). ``reason`` says *how* a device
noticed (``notify-next``, ``ResourceNotFound``, ``InvalidStateTransition``,
``TerminalStateReached``, ``describe``) or why it rolled back. ``seq`` counts a device's
events from 1 without gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from devicesim.wire.messages import Message


class DeviceEventKind(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    JOB_STARTED = "job_started"
    STEP = "step"
    LOST_ACCESS = "lost_access"
    ROLLED_BACK = "rolled_back"
    RECOVERED = "recovered"
    IMAGE_COMMITTED = "image_committed"
    JOB_FINISHED = "job_finished"
    REBOOTED = "rebooted"
    IDLE = "idle"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class NvmSummary(Message):
    active_slot: str
    active_version: str
    active_complete: bool
    active_verified: bool
    journal_job_id: str | None = None
    journal_execution_number: int | None = None
    journal_document_digest: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEvent(Message):
    kind: DeviceEventKind
    thing_name: str
    timestamp: float
    job_id: str | None = None
    execution_number: int | None = None
    version_number: int | None = None
    document_digest: str | None = None
    step: str | None = None
    status: str | None = None
    reason: str | None = None
    nvm: NvmSummary | None = None
    #: per-device sequence number set by the device's network shell (1, 2, ...), so a
    #: recorder can prove it lost no event
    seq: int | None = None

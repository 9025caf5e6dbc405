"""Facts from a history, built once and shared by every invariant.

:func:`build` sorts the operations by recorder time (stable, so ties keep history order)
and extracts:

- controller calls, each invoke paired with its ok/fail (per process and API name);
- job *incarnations*: a jobId may be reused after its deletion completed, so every fact
  about a job carries an incarnation number, the count of successful ``CreateJob`` calls
  for that jobId invoked at or before the fact's time (0 for a job created before the
  history began). Two exceptions, because the old incarnation's messages may reach the
  recorder after the controller saw the job gone and created it again: a ``deleted``
  job or execution event belongs to the incarnation its DeleteJob was called in, and a
  device event other than ``job_started`` belongs to the device's latest execution of the
  jobId;
- what each device did (``device:*`` events) and, per device, each execution it started
  (:class:`DeviceExecution`: started, stepped, finished, lost access);
- when the service removed or canceled an execution (:class:`Removal`), from
  ``$aws/events/jobExecution/{jobId}/deleted|canceled|removed`` events, or, when those are
  missing, from the ``notify-next`` push that followed a force DeleteJob / CancelJob /
  CancelJobExecution / DeleteJobExecution;
- device requests paired with their replies (:class:`Request`, by process, operation and
  clientToken), version numbers and execution numbers the service published, the drill's
  ``final-state`` and outage markers;
- when the drill cut the power of a device (:attr:`Timeline.powered_off`): from the
  ``power-off`` marker naming it to the next ``power-on`` marker naming it, or to the end of
  the history if there is none. A powered-off device has lost its RAM and its connection and
  says nothing (the drill runner writes the ``power-off`` marker once the power is cut and the
  ``power-on`` marker before the devices boot, each then saying ``rebooted`` and
  ``connected``).

Times are the recorder's (``Op.time``), repaired for each device's own events by the
device's sequence (:func:`device_order`): MQTT delivers one publisher's messages in order, so
arrival order is the device's order except across a reconnect, when messages it queued
while offline may arrive after newer ones. A device's events are therefore de-duplicated by
``seq`` (a QoS 1 redelivery is one event), put in ``seq`` order, and an event that arrived
after a later one of the same device is timed no later than it. Offline spells begin at the
device's own ``timestamp`` of its ``disconnected``/``rebooted`` (the only clock that knows
when the connection dropped; every process of a drill shares the host's clock) and end when
it said ``connected``. A reply identical to one already matched to its request (same
operation, outcome and payload: a QoS 1 redelivery) is one reply.

The drill's ``start`` marker names each device's behaviour (:attr:`Timeline.behaviours`)
and the case requirements (:class:`~fleet.checker.model.Requirements`).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devicesim.wire.enums import JobExecutionStatus
from devicesim.wire.history import FORCE_APIS, Op, OpType
from devicesim.wire.topics import NEXT, Operation
from fleet.checker.model import Requirements, document_digest

#: Execution-event operations by which the service takes an execution away from a device.
REMOVING_OPERATIONS = ("deleted", "canceled", "removed")
#: Device events that say whether the device is connected (``connected`` ends an offline
#: spell that ``disconnected`` or ``rebooted`` began).
_OFFLINE_KINDS = ("disconnected", "rebooted")
_OUTAGE_MARKERS = ("broker-outage", "service-outage")
_POWER_MARKERS = ("power-off", "power-on")
_NETWORK_MARKERS = ("network-fault", "network-heal")
#: Network faults after which a device cannot hear from the service until the heal.
PARTITIONING = ("cut", "blackhole")
_NEVER = float("inf")

ExecKey = tuple[str, str, int]  # thing_name, job_id, incarnation


#: The behaviour a drill's ``start`` marker gives its external devices.
EXTERNAL = "external"

#: Terminal statuses only a device sets (the others are set by the service).
DEVICE_TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED")


def evidence(op: Op) -> dict[str, Any]:
    """An operation as it appears in the history file (for a violation's evidence)."""
    return {"time": op.time, "process": op.process, "type": op.type.value, "f": op.f,
            "value": op.value}


def decided_at(op: Op) -> float:
    """When the service decided what a message it published says: its recorded time, less
    the ``heldSeconds`` a drill's message fault held it back for."""
    held = op.value.get("heldSeconds")
    if isinstance(held, int | float) and not isinstance(held, bool) and \
            0 < held < math.inf:
        return op.time - float(held)
    return op.time


def is_terminal(status: object) -> bool:
    try:
        return JobExecutionStatus(str(status)).is_terminal
    except ValueError:
        return False


def compatible(a: int | None, b: int | None) -> bool:
    """Two execution numbers may name the same execution (an unknown one matches any)."""
    return a is None or b is None or a == b


def thing_from_arn(arn: object) -> str | None:
    """``arn:aws:iot:<region>:<acct>:thing/<name>`` -> name; a bare thing name is kept."""
    if not isinstance(arn, str) or not arn:
        return None
    if arn.startswith("arn:"):
        _, sep, name = arn.partition(":thing/")
        return name or None if sep else None
    return arn


def as_int(value: object) -> int | None:
    """A JSON integer (or a string of digits, as some devices send numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class ControllerCall:
    """One control-plane call; ``completion`` is None if the history ends first."""

    f: str
    request: Mapping[str, Any]
    invoke: Op | None
    completion: Op | None

    @property
    def ok(self) -> bool:
        return self.completion is not None and self.completion.type is OpType.OK

    @property
    def time(self) -> float:
        op = self.invoke or self.completion
        assert op is not None
        return op.time

    @property
    def job_id(self) -> str | None:
        return _str(self.request.get("jobId"))

    @property
    def force(self) -> bool:
        return self.request.get("force") is True or self.request.get("force") == "true"


@dataclass(frozen=True, slots=True)
class CreatedJob:
    job_id: str
    incarnation: int
    #: when its targets had an execution: the CreateJob, or (a thing group, a paced,
    #: scheduled or continuous job: one record per thing) when the service first offered
    #: the job to that thing
    time: float
    targets: tuple[str, ...]
    digest: str | None
    call: ControllerCall
    reused: bool


@dataclass(frozen=True, slots=True)
class DeviceEventRecord:
    op: Op
    kind: str
    thing_name: str
    job_id: str | None
    execution_number: int | None
    version_number: int | None
    document_digest: str | None
    nvm: Mapping[str, Any] | None
    incarnation: int

    @property
    def time(self) -> float:
        return self.op.time


@dataclass(slots=True)
class DeviceExecution:
    """One execution as a device lived it: from its first ``job_started`` on."""

    thing_name: str
    job_id: str
    incarnation: int
    execution_number: int | None
    started: DeviceEventRecord
    events: list[DeviceEventRecord] = field(default_factory=list)
    finished: DeviceEventRecord | None = None
    lost_access: DeviceEventRecord | None = None


@dataclass(frozen=True, slots=True)
class Removal:
    """The service took an execution away (deleted, canceled or removed it)."""

    thing_name: str
    job_id: str
    incarnation: int
    execution_number: int | None
    time: float
    operation: str
    source: str  # "execution-event" or "notify-next"
    op: Op


@dataclass(slots=True)
class Request:
    """A device request (invoke) and the replies that carried its clientToken."""

    op: Op
    thing_name: str
    f: str
    job_id: str | None
    client_token: str | None
    payload: Mapping[str, Any]
    incarnation: int
    replies: list[Op] = field(default_factory=list)

    @property
    def time(self) -> float:
        return self.op.time


@dataclass(frozen=True, slots=True)
class ExecutionEvent:
    thing_name: str
    job_id: str
    incarnation: int
    execution_number: int | None
    operation: str
    op: Op


@dataclass(frozen=True, slots=True)
class TerminalFact:
    """An execution reached a terminal status: an accepted device update (``op`` is the ok
    reply) or a terminal execution event. ``by_device``: SUCCEEDED/FAILED/REJECTED."""

    time: float
    execution_number: int | None
    status: str
    by_device: bool
    op: Op


@dataclass(frozen=True, slots=True)
class VersionObservation:
    thing_name: str
    job_id: str
    incarnation: int
    execution_number: int | None
    version_number: int
    op: Op


@dataclass(frozen=True, slots=True)
class FinalState:
    """The drill's ``final-state`` marker: each device's NVM summary and the executions
    that still exist on the service (``{thingName, jobId, executionNumber, status}``)."""

    op: Op
    devices: Mapping[str, Mapping[str, Any]]
    executions: tuple[Mapping[str, Any], ...]

    def executions_of(self, thing_name: str, job_id: str) -> list[Mapping[str, Any]]:
        return [e for e in self.executions
                if e.get("thingName") == thing_name and e.get("jobId") == job_id]


@dataclass(slots=True)
class Timeline:
    ops: list[Op]
    start: float
    end: float
    calls: list[ControllerCall] = field(default_factory=list)
    calls_by_job: dict[str, list[ControllerCall]] = field(default_factory=dict)
    creates: list[CreatedJob] = field(default_factory=list)
    creates_by_thing: dict[str, list[CreatedJob]] = field(default_factory=dict)
    device_events: dict[str, list[DeviceEventRecord]] = field(default_factory=dict)
    #: Device events naming a jobId, per jobId (every thing, every incarnation).
    events_by_job: dict[str, list[DeviceEventRecord]] = field(default_factory=dict)
    executions: list[DeviceExecution] = field(default_factory=list)
    executions_by_job: dict[tuple[str, str], list[DeviceExecution]] = field(
        default_factory=dict)
    removals: list[Removal] = field(default_factory=list)
    removals_by_key: dict[ExecKey, list[Removal]] = field(default_factory=dict)
    execution_events: list[ExecutionEvent] = field(default_factory=list)
    job_events: list[tuple[str, str, Op]] = field(default_factory=list)  # jobId, operation
    #: jobId -> (operation, incarnation, op); a ``deleted`` event is attributed to the
    #: incarnation its DeleteJob was called in.
    job_events_by_job: dict[str, list[tuple[str, int, Op]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    requests_by_thing: dict[str, list[Request]] = field(default_factory=dict)
    orphan_replies: list[Op] = field(default_factory=list)
    notify_next: dict[str, list[Op]] = field(default_factory=dict)
    versions: list[VersionObservation] = field(default_factory=list)
    #: Execution numbers seen per thing, job and incarnation (service payloads and device
    #: events); ``service_announced`` holds those the service itself published.
    announced: dict[ExecKey, list[tuple[float, int]]] = field(default_factory=dict)
    service_announced: dict[ExecKey, list[tuple[float, int]]] = field(default_factory=dict)
    #: The first service message that offered a thing an execution of a job (notify,
    #: notify-next, or a reply carrying it), per thing, job and incarnation.
    first_offer: dict[ExecKey, Op] = field(default_factory=dict)
    final_state: FinalState | None = None
    outages: list[tuple[float, float, Op]] = field(default_factory=list)
    markers: dict[str, Op] = field(default_factory=dict)
    #: Successful CreateJob invoke times per jobId (incarnation boundaries), sorted.
    boundaries: dict[str, list[float]] = field(default_factory=dict)
    terminal: dict[ExecKey, list[TerminalFact]] = field(default_factory=dict)
    #: Per device, spells (start, end) during which it said it was not connected.
    offline: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: Per device, spells (power-off, power-on) during which the drill had cut its power,
    #: oldest first; ``power-on`` is ``inf`` if it was never powered on again.
    powered_off: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: Per device, spells (fault, heal) during which the drill's network proxy cut or
    #: black-holed its connections; the heal is ``inf`` if none came.
    partitioned: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    #: Each device's behaviour, from the ``start`` marker (empty if it names none).
    behaviours: dict[str, str] = field(default_factory=dict)
    requirements: Requirements = field(default_factory=Requirements)
    #: Per device, the event sequence numbers recorded (after de-duplication).
    seqs: dict[str, set[int]] = field(default_factory=dict)
    duplicate_device_events: int = 0
    duplicate_replies: int = 0
    #: A soak's ``resources`` markers (each process's memory and open files), in order.
    resources: list[Op] = field(default_factory=list)
    #: ``failure`` markers: a component of the run failed (``{where, error}``).
    failures: list[Op] = field(default_factory=list)
    #: Devices judged from their traffic alone (the ``start`` marker's ``external``, and
    #: any named to the checker): their device events are inferred
    #: (:mod:`fleet.checker.traffic`).
    external: frozenset[str] = frozenset()
    #: AWS IoT lifecycle events (``presence:connected`` / ``presence:disconnected``) per
    #: client id.
    presence: dict[str, list[Op]] = field(default_factory=dict)

    # --- lookups shared by the invariants ---------------------------------------------

    def behaviour_of(self, thing_name: str) -> str:
        return self.behaviours.get(thing_name, "unknown")

    @property
    def targeted(self) -> set[str]:
        """Every thing a successful CreateJob targeted."""
        return {t for c in self.creates for t in c.targets}

    def jobs_created(self) -> list[CreatedJob]:
        """One record per job incarnation, with all its targets (offered targets come one
        record per thing in :attr:`creates`)."""
        merged: dict[tuple[str, int], CreatedJob] = {}
        for c in self.creates:
            key = (c.job_id, c.incarnation)
            seen = merged.get(key)
            merged[key] = c if seen is None else dataclasses.replace(
                seen, targets=seen.targets + c.targets, time=min(seen.time, c.time))
        return list(merged.values())

    def incarnation(self, job_id: str, time: float) -> int:
        return bisect.bisect_right(self.boundaries.get(job_id, []), time)

    def current_incarnation(self, job_id: str) -> int:
        return len(self.boundaries.get(job_id, []))

    def known_execution_number(self, thing_name: str, job_id: str, time: float,
                               incarnation: int | None = None) -> int | None:
        """The execution number last seen for this thing and job at ``time``, within the
        incarnation current then (or the one given; None if none was seen)."""
        if incarnation is None:
            incarnation = self.incarnation(job_id, time)
        best = None
        for t, number in self.announced.get((thing_name, job_id, incarnation), []):
            if t > time:
                break
            best = number
        return best

    def service_execution_numbers(self, key: ExecKey) -> set[int]:
        return {n for _, n in self.service_announced.get(key, [])}

    def removals_of(self, key: ExecKey, number: int | None) -> list[Removal]:
        """Removals of this thing's execution of the job (oldest first)."""
        return [r for r in self.removals_by_key.get(key, [])
                if compatible(r.execution_number, number)]

    def removal_for(self, e: DeviceExecution, grace: float) -> Removal | None:
        """The first removal of the device's execution ``e``: same thing, job, incarnation
        and (if both known) execution number, no earlier than ``grace`` seconds before the
        device started it (a device may start an execution removed a moment earlier)."""
        for r in self.removals_of((e.thing_name, e.job_id, e.incarnation), e.execution_number):
            if r.time >= e.started.time - grace:
                return r
        return None

    def terminal_of(self, key: ExecKey, number: int | None = None) -> list[TerminalFact]:
        return [f for f in self.terminal.get(key, [])
                if compatible(f.execution_number, number)]

    def reachable_from(self, thing_name: str, time: float) -> float | None:
        """The first moment at or after ``time`` when the device could hear from the
        service: after any broker/service outage covering ``time``, after the drill powered
        it on again if its power was cut then, and, if the device said it was disconnected
        (or rebooting) then, once it said ``connected`` again, and after the heal if the
        drill's network proxy cut or black-holed it then. None if it never did within
        the history."""
        moved = True
        while moved:
            moved = False
            for start, end, _ in self.outages:
                if start <= time < end:
                    time, moved = end, True
            for spells in (self.offline.get(thing_name, []),
                           self.powered_off.get(thing_name, []),
                           self.partitioned.get(thing_name, [])):
                for start, end in spells:
                    if start <= time < end:
                        time, moved = end, True
        return None if time == _NEVER else time

    def outage_between(self, thing_name: str, start: float, end: float) -> bool:
        """Whether a broker or service outage, or a network fault that cut or black-holed
        the device, meets ``[start, end]``."""
        spells = [(s, e) for s, e, _ in self.outages] + self.partitioned.get(thing_name, [])
        return any(s <= end and start <= e for s, e in spells)

    def power_cut(self, thing_name: str, start: float, end: float) -> tuple[float, float] | None:
        """The first spell (power-off, power-on) of the device whose power-off falls in
        ``[start, end]`` and whose power-on comes after ``start`` (``inf`` if it never came);
        None if there is none."""
        for off, on in self.powered_off.get(thing_name, []):
            if start <= off <= end and on > start:
                return off, on
        return None

    def off_for_good(self, thing_name: str) -> float | None:
        """When the drill cut the device's power for the rest of the history (None if it
        was powered on after its every power-off)."""
        spells = self.powered_off.get(thing_name, [])
        return spells[-1][0] if spells and spells[-1][1] == _NEVER else None

    def executions_of(self, thing_name: str, job_id: str) -> list[DeviceExecution]:
        """The device's executions of a job, in every incarnation, oldest first."""
        return self.executions_by_job.get((thing_name, job_id), [])

    def events_of(self, thing_name: str) -> list[DeviceEventRecord]:
        return self.device_events.get(thing_name, [])

    def job_withdrawn(self, job_id: str, incarnation: int, thing_name: str) -> bool:
        """Did the controller delete or cancel this job, or this thing's execution of it,
        successfully in this incarnation?"""
        for c in self.calls_by_job.get(job_id, []):
            if not c.ok or c.f not in FORCE_APIS:
                continue
            if self.incarnation(job_id, c.time) != incarnation:
                continue
            if c.f in ("DeleteJob", "CancelJob") or c.request.get("thingName") == thing_name:
                return True
        return False

    def deletion_completed(self, job_id: str) -> Op | None:
        """Proof that the deletion of the jobId's current incarnation completed: its
        ``$aws/events/job/{jobId}/deleted`` event, else (jobs events off) the controller's
        ``DescribeJob`` answered ResourceNotFound after its successful ``DeleteJob``."""
        current = self.current_incarnation(job_id)
        found = None
        for operation, incarnation, op in self.job_events_by_job.get(job_id, []):
            if operation == "deleted" and incarnation == current:
                found = op
        if found is not None:
            return found
        deleted_at = None
        for c in self.calls_by_job.get(job_id, []):
            if self.incarnation(job_id, c.time) != current:
                continue
            if c.f == "DeleteJob" and c.ok:
                deleted_at = c.time
            elif c.f == "DescribeJob" and deleted_at is not None and c.time > deleted_at and \
                    c.completion is not None and c.completion.type is OpType.FAIL and \
                    _dict(c.completion.value.get("error")).get("code") == \
                    "ResourceNotFoundException":
                found = c.completion
        return found


# --- building ---------------------------------------------------------------------------


def external_things(ops: Sequence[Op]) -> frozenset[str]:
    """The devices the history's ``start`` marker names as external."""
    for op in ops:
        if op.process == "drill" and op.f == "start":
            named = op.value.get("external")
            return frozenset(str(t) for t in named) if isinstance(named, list) else frozenset()
    return frozenset()


def build(ops: Sequence[Op], external: frozenset[str] = frozenset()) -> Timeline:
    """The timeline of a history; ``external``: devices judged from their traffic (their
    device events, if any, are inferred ones)."""
    ordered, duplicates = device_order(ops)
    start = min((op.time for op in ordered), default=0.0)
    end = max((op.time for op in ordered), default=0.0)
    tl = Timeline(ops=ordered, start=start, end=end, duplicate_device_events=duplicates,
                  external=external)
    for op in ordered:
        if op.process == "drill" and op.f == "start":
            behaviours = op.value.get("behaviours")
            if isinstance(behaviours, dict):
                tl.behaviours = {str(k): str(v) for k, v in behaviours.items()}
            tl.requirements = Requirements.from_json(op.value.get("requirements"))
            break
    tl.calls = _pair_controller_calls(ordered)
    for c in tl.calls:
        if c.job_id:
            tl.calls_by_job.setdefault(c.job_id, []).append(c)
    _collect_creates(tl)
    pending: dict[tuple[str, str, str], list[Request]] = defaultdict(list)
    deletions = {id(c.invoke): c for c in tl.calls
                 if c.f == "DeleteJob" and c.ok and c.job_id and c.invoke is not None}
    deleting: dict[str, int] = {}  # jobId -> incarnation being deleted
    for op in ordered:
        if op.f.startswith("device:"):
            _device_event(tl, op)
        elif op.f == "execution-event":
            _execution_event(tl, op, deleting)
        elif op.f == "job-event":
            _job_event(tl, op, deleting)
        elif id(op) in deletions:
            job_id = deletions[id(op)].job_id
            assert job_id is not None
            deleting[job_id] = tl.incarnation(job_id, op.time)
        elif op.f in ("notify", "notify-next"):
            _push(tl, op)
        elif op.f.startswith("presence:"):
            tl.presence.setdefault(op.process, []).append(op)
        elif op.process == "drill" or op.f in _OUTAGE_MARKERS:
            _marker(tl, op)
        elif op.process.startswith("controller") or op.process == "service":
            continue
        elif op.type is OpType.INVOKE:
            _request(tl, op, pending)
        elif op.type in (OpType.OK, OpType.FAIL):
            _reply(tl, op, pending)
    _removals_from_force_calls(tl)
    _terminal_facts(tl)
    _offline_spells(tl)
    return tl


def _seq(op: Op) -> int | None:
    seq = op.value.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def device_order(ops: Sequence[Op]) -> tuple[list[Op], int]:
    """The history sorted by time, with each device's events de-duplicated by ``seq`` and
    timed in ``seq`` order: an event recorded after a later one of its device is timed no
    later than it, and sorted just before it. Other operations, and events without ``seq``,
    keep their time; ties keep the history's order. Returns the sorted operations and how
    many duplicates were dropped."""
    streams: dict[str, list[tuple[int, int]]] = defaultdict(list)  # thing -> (seq, index)
    keep = [True] * len(ops)
    seen: set[tuple[str, int]] = set()
    duplicates = 0
    for i, op in enumerate(ops):
        if not op.f.startswith("device:"):
            continue
        seq = _seq(op)
        if seq is None:
            continue
        if (op.process, seq) in seen:
            keep[i] = False
            duplicates += 1
            continue
        seen.add((op.process, seq))
        streams[op.process].append((seq, i))
    out = list(ops)
    # sort key: (time, anchor, rank); an event moved before a later one takes its anchor
    keys = [(op.time, i, 0) for i, op in enumerate(ops)]
    for stream in streams.values():
        stream.sort()
        later: tuple[float, int, int] | None = None
        for _, i in reversed(stream):
            if later is not None and keys[i] > later:
                out[i] = dataclasses.replace(out[i], time=later[0])
                keys[i] = (later[0], later[1], later[2] - 1)
            later = keys[i]
    order = sorted((i for i in range(len(ops)) if keep[i]), key=keys.__getitem__)
    return [out[i] for i in order], duplicates


def _pair_controller_calls(ops: list[Op]) -> list[ControllerCall]:
    calls: list[ControllerCall] = []
    waiting: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        if not op.process.startswith("controller"):
            continue
        key = (op.process, op.f)
        if op.type is OpType.INVOKE:
            waiting[key].append(op)
        elif op.type in (OpType.OK, OpType.FAIL):
            invoke = waiting[key].pop(0) if waiting[key] else None
            calls.append(ControllerCall(op.f, _request_of(invoke, op), invoke, op))
    for left in waiting.values():
        calls.extend(ControllerCall(op.f, _request_of(op, None), op, None) for op in left)
    calls.sort(key=lambda c: c.time)
    return calls


def _request_of(invoke: Op | None, completion: Op | None) -> Mapping[str, Any]:
    for op in (completion, invoke):
        if op is not None and isinstance(op.value.get("request"), dict):
            request: Mapping[str, Any] = op.value["request"]
            return request
    first = invoke or completion
    return first.value if first is not None else {}


#: CreateJob members that make a job's targets a matter of time: who gets an execution,
#: and when, is then read from what the service offered each thing (see _offers)
_DEFERRED = ("jobExecutionsRolloutConfig", "schedulingConfig", "jobTemplateArn")


def _collect_creates(tl: Timeline) -> None:
    for c in tl.calls:  # sorted by time already
        if c.f == "CreateJob" and c.ok and c.job_id:
            tl.boundaries.setdefault(c.job_id, []).append(c.time)
    deleted_before: dict[str, list[float]] = defaultdict(list)
    for c in tl.calls:
        if c.f == "DeleteJob" and c.ok and c.job_id:
            deleted_before[c.job_id].append(c.time)
    for op in tl.ops:
        if op.f == "job-event" and op.value.get("operation") == "deleted":
            jid = _str(op.value.get("jobId"))
            if jid:
                deleted_before[jid].append(op.time)
    offers: dict[tuple[str, int], dict[str, float]] | None = None
    for c in tl.calls:
        if c.f != "CreateJob" or not c.ok or not c.job_id:
            continue
        requested = [x for x in c.request.get("targets") or [] if isinstance(x, str)]
        document = c.request.get("document")
        digest = document_digest(document) if isinstance(document, str | dict) else None
        incarnation = tl.incarnation(c.job_id, c.time)
        reused = incarnation > 1 or any(t < c.time for t in deleted_before[c.job_id])
        deferred = any(":thinggroup/" in x for x in requested) or any(
            c.request.get(member) is not None for member in _DEFERRED) or \
            c.request.get("targetSelection") == "CONTINUOUS"
        if not deferred:
            targets = tuple(t for t in map(thing_from_arn, requested) if t)
            _add_create(tl, CreatedJob(c.job_id, incarnation, c.time, targets, digest, c,
                                       reused))
            continue
        # a thing group, a paced or scheduled rollout, a continuous job: a thing is a
        # target from when the service first offered it the job (it then had an execution)
        offers = _offers(tl) if offers is None else offers
        for thing, first in sorted(offers.get((c.job_id, incarnation), {}).items(),
                                   key=lambda item: item[1]):
            _add_create(tl, CreatedJob(c.job_id, incarnation, max(first, c.time), (thing,),
                                       digest, c, reused))


def _add_create(tl: Timeline, created: CreatedJob) -> None:
    tl.creates.append(created)
    for thing in dict.fromkeys(created.targets):
        tl.creates_by_thing.setdefault(thing, []).append(created)


#: what tells a thing of an execution: the pushes a new execution causes (published, or
#: dropped by a message fault: the thing had the execution all the same) and the replies
#: that carry one
_OFFERS = ("notify", "notify-next", "dropped:notify", "dropped:notify-next",
           "StartNextPendingJobExecution", "DescribeJobExecution",
           "GetPendingJobExecutions")


def _offers(tl: Timeline) -> dict[tuple[str, int], dict[str, float]]:
    """(jobId, incarnation) -> thing -> when the service first told the thing of it."""
    first: dict[tuple[str, int], dict[str, float]] = {}
    for op in tl.ops:
        if op.f not in _OFFERS or op.type is OpType.INVOKE or op.type is OpType.FAIL:
            continue
        payload = _dict(op.value.get("payload"))
        named = [_dict(payload.get("execution"))] + [
            _dict(s) for group in (*_dict(payload.get("jobs")).values(),
                                   payload.get("inProgressJobs"), payload.get("queuedJobs"))
            if isinstance(group, list) for s in group]
        for execution in named:
            job_id = _str(execution.get("jobId"))
            if job_id:
                key = (job_id, tl.incarnation(job_id, op.time))
                first.setdefault(key, {}).setdefault(op.process, op.time)
    return first


def _announce(tl: Timeline, thing: str, job_id: str | None, number: object, op: Op,
              *, service: bool) -> None:
    if not job_id or job_id == NEXT:
        return
    key = (thing, job_id, tl.incarnation(job_id, op.time))
    if service:
        tl.first_offer.setdefault(key, op)
    n = as_int(number)
    if n is None:
        return
    tl.announced.setdefault(key, []).append((op.time, n))
    if service:
        tl.service_announced.setdefault(key, []).append((op.time, n))


def _device_event(tl: Timeline, op: Op) -> None:
    v = op.value
    thing = _str(v.get("thingName")) or op.process
    job_id = _str(v.get("jobId"))
    digest = _str(v.get("documentDigest"))
    nvm = v.get("nvm") if isinstance(v.get("nvm"), dict) else None
    kind = op.f.removeprefix("device:")
    number = as_int(v.get("executionNumber"))
    # A job_started belongs to the incarnation current when it is recorded (a device cannot
    # start an execution before its job exists). Any other event about a job belongs to the
    # device's latest execution of it: a lost_access for the old incarnation may reach the
    # recorder after the jobId was created again.
    current = None
    if job_id is not None:
        current = _device_execution(tl, thing, job_id, number,
                                    tl.incarnation(job_id, op.time) if kind == "job_started"
                                    else None)
    incarnation = current.incarnation if current is not None else \
        tl.incarnation(job_id, op.time) if job_id else 0
    rec = DeviceEventRecord(
        op=op, kind=kind, thing_name=thing, job_id=job_id, execution_number=number,
        version_number=as_int(v.get("versionNumber")), document_digest=digest, nvm=nvm,
        incarnation=incarnation)
    tl.device_events.setdefault(thing, []).append(rec)
    seq = _seq(op)
    if seq is not None:
        tl.seqs.setdefault(op.process, set()).add(seq)
    if job_id is None:
        return
    tl.events_by_job.setdefault(job_id, []).append(rec)
    _announce(tl, thing, job_id, rec.execution_number, op, service=False)
    if rec.kind == "job_started" and current is None:
        e = DeviceExecution(thing, job_id, rec.incarnation, rec.execution_number, rec, [rec])
        tl.executions.append(e)
        tl.executions_by_job.setdefault((thing, job_id), []).append(e)
        return
    if current is None:
        return
    current.events.append(rec)
    if rec.kind == "job_finished" and current.finished is None:
        current.finished = rec
    elif rec.kind == "lost_access" and current.lost_access is None:
        current.lost_access = rec


def _device_execution(tl: Timeline, thing: str, job_id: str, number: int | None,
                      incarnation: int | None) -> DeviceExecution | None:
    """The device's latest execution of the job (in ``incarnation``, if given) that the
    execution number is compatible with."""
    for e in reversed(tl.executions_of(thing, job_id)):
        if (incarnation is None or e.incarnation == incarnation) and \
                compatible(e.execution_number, number):
            return e
    return None


def _execution_event(tl: Timeline, op: Op, deleting: Mapping[str, int]) -> None:
    v = op.value
    payload = _dict(v.get("payload"))
    job_id = _str(v.get("jobId")) or _str(payload.get("jobId"))
    thing = thing_from_arn(payload.get("thingArn")) or _str(payload.get("thingName"))
    operation = _str(v.get("operation")) or _str(payload.get("operation")) or \
        str(v.get("topic", "")).rsplit("/", 1)[-1]
    if not job_id or not thing:
        return
    incarnation = tl.incarnation(job_id, op.time)
    if operation == "deleted" and job_id in deleting:
        # Swept by a DeleteJob not yet completed: its events may reach the recorder after
        # the jobId was created again.
        incarnation = deleting[job_id]
    number = as_int(payload.get("executionNumber"))
    if number is None:
        number = tl.known_execution_number(thing, job_id, op.time, incarnation)
    tl.execution_events.append(ExecutionEvent(thing, job_id, incarnation, number, operation, op))
    if operation in REMOVING_OPERATIONS:
        _add_removal(tl, Removal(thing, job_id, incarnation, number, op.time, operation,
                                 "execution-event", op))


def _job_event(tl: Timeline, op: Op, deleting: dict[str, int]) -> None:
    payload = _dict(op.value.get("payload"))
    job_id = _str(op.value.get("jobId")) or _str(payload.get("jobId"))
    operation = _str(op.value.get("operation")) or _str(payload.get("operation")) or \
        str(op.value.get("topic", "")).rsplit("/", 1)[-1]
    if not job_id:
        return
    incarnation = tl.incarnation(job_id, op.time)
    if operation == "deleted":
        incarnation = deleting.pop(job_id, incarnation)
    tl.job_events.append((job_id, operation, op))
    tl.job_events_by_job.setdefault(job_id, []).append((operation, incarnation, op))


def _push(tl: Timeline, op: Op) -> None:
    thing = op.process
    payload = _dict(op.value.get("payload"))
    if op.f == "notify-next":
        tl.notify_next.setdefault(thing, []).append(op)
        _observe_execution(tl, thing, _dict(payload.get("execution")), op)
    else:
        for summaries in _dict(payload.get("jobs")).values():
            for s in summaries if isinstance(summaries, list) else []:
                _observe_execution(tl, thing, _dict(s), op)


def _observe_execution(tl: Timeline, thing: str, execution: Mapping[str, Any], op: Op,
                       job_id: str | None = None) -> None:
    """Record the execution number and version a service payload shows."""
    job_id = _str(execution.get("jobId")) or job_id
    if not job_id or job_id == NEXT:
        return
    _announce(tl, thing, job_id, execution.get("executionNumber"), op, service=True)
    version = as_int(execution.get("versionNumber"))
    if version is None:
        return
    number = as_int(execution.get("executionNumber"))
    if number is None:
        number = tl.known_execution_number(thing, job_id, op.time)
    tl.versions.append(VersionObservation(thing, job_id, tl.incarnation(job_id, op.time), number,
                                          version, op))


def _marker(tl: Timeline, op: Op) -> None:
    if op.f in _POWER_MARKERS:
        _power(tl, op)
    if op.f in _NETWORK_MARKERS:
        _network(tl, op)
    if op.f in _OUTAGE_MARKERS:
        start = op.value.get("start", op.time)
        end = op.value.get("end")
        tl.outages.append((float(start), float(end) if end is not None else float("inf"), op))
        return
    if op.f == "failure":
        tl.failures.append(op)
    if op.f == "resources":
        tl.resources.append(op)
    tl.markers.setdefault(op.f, op)
    if op.f == "final-state":
        devices = {str(k): v for k, v in _dict(op.value.get("devices")).items()
                   if isinstance(v, dict)}
        executions = tuple(e for e in op.value.get("executions") or [] if isinstance(e, dict))
        tl.final_state = FinalState(op, devices, executions)


def _power(tl: Timeline, op: Op) -> None:
    """A ``power-off`` opens a spell for each device it names (unless one is open already);
    a ``power-on`` closes the open spell of each device it names (ops come sorted)."""
    things = op.value.get("things")
    named = [t for t in things if isinstance(t, str) and t] if isinstance(things, list) else []
    for thing in dict.fromkeys(named):
        spells = tl.powered_off.get(thing, [])
        is_off = bool(spells) and spells[-1][1] == _NEVER
        if op.f == "power-off" and not is_off:
            tl.powered_off.setdefault(thing, []).append((op.time, _NEVER))
        elif op.f == "power-on" and is_off:
            spells[-1] = (spells[-1][0], op.time)


def _network(tl: Timeline, op: Op) -> None:
    """A ``network-fault`` that cuts or black-holes opens a spell for each device it names
    (unless one is open); a ``network-heal`` closes every open spell (it heals all)."""
    if op.f == "network-heal":
        for spells in tl.partitioned.values():
            if spells[-1][1] == _NEVER:
                spells[-1] = (spells[-1][0], op.time)
        return
    if op.value.get("kind") not in PARTITIONING:
        return
    things = op.value.get("things")
    start = op.value.get("start")  # when the proxy was asked: it acts before the marker
    begin = min(float(start), op.time) if isinstance(start, int | float) else op.time
    for thing in dict.fromkeys(t for t in things if isinstance(t, str) and t) \
            if isinstance(things, list) else ():
        spells = tl.partitioned.setdefault(thing, [])
        if not spells or spells[-1][1] != _NEVER:
            spells.append((begin, _NEVER))


def _request(tl: Timeline, op: Op, pending: dict[tuple[str, str, str], list[Request]]) -> None:
    payload = _dict(op.value.get("payload"))
    token = _str(op.value.get("clientToken")) or _str(payload.get("clientToken"))
    job_id = _str(op.value.get("jobId"))
    incarnation = tl.incarnation(job_id, op.time) if job_id else 0
    r = Request(op, op.process, op.f, job_id, token, payload, incarnation)
    tl.requests.append(r)
    tl.requests_by_thing.setdefault(op.process, []).append(r)
    if token is not None:
        pending[(op.process, op.f, token)].append(r)


def _reply(tl: Timeline, op: Op, pending: dict[tuple[str, str, str], list[Request]]) -> None:
    payload = _dict(op.value.get("payload"))
    token = _str(op.value.get("clientToken")) or _str(payload.get("clientToken"))
    candidates = pending.get((op.process, op.f, token), []) if token else []
    matched = None
    if candidates:
        if any(_same_reply(op, r) for q in candidates for r in q.replies):
            tl.duplicate_replies += 1  # delivered again (QoS 1): one reply
            return
        unanswered = [r for r in candidates if not r.replies]
        matched = unanswered[0] if unanswered else candidates[-1]
        matched.replies.append(op)
    else:
        tl.orphan_replies.append(op)
    # Version and execution numbers the service published in this reply.
    thing = op.process
    job_id = _str(op.value.get("jobId"))
    execution = _dict(payload.get("execution"))
    if execution:
        _observe_execution(tl, thing, execution, op, job_id)
    for key in ("inProgressJobs", "queuedJobs"):
        for s in payload.get(key) or []:
            _observe_execution(tl, thing, _dict(s), op)
    state = _dict(payload.get("executionState"))
    if state and job_id and job_id != NEXT:
        number = as_int(matched.payload.get("executionNumber")) if matched else None
        _observe_execution(tl, thing, {"jobId": job_id, "executionNumber": number,
                                       "versionNumber": state.get("versionNumber")}, op)


def _same_reply(a: Op, b: Op) -> bool:
    return a.type is b.type and a.value.get("topic") == b.value.get("topic") and \
        a.value.get("payload") == b.value.get("payload")


def _removals_from_force_calls(tl: Timeline) -> None:
    """Fallback when execution events are off: a force delete/cancel removed the execution
    a device was running at the first later ``notify-next`` to that thing that no longer
    names the job (spec §7.1-7.2)."""
    by_job: dict[tuple[str, int], list[DeviceExecution]] = defaultdict(list)
    for e in tl.executions:
        by_job[(e.job_id, e.incarnation)].append(e)
    for c in tl.calls:
        if c.f not in FORCE_APIS or not c.ok or not c.force or not c.job_id:
            continue
        job_id, incarnation = c.job_id, tl.incarnation(c.job_id, c.time)
        for e in by_job.get((job_id, incarnation), []):
            if e.started.time > c.time or (e.finished and e.finished.time < c.time):
                continue
            only = _str(c.request.get("thingName"))
            if only is not None and only != e.thing_name:
                continue
            key = (e.thing_name, job_id, incarnation)
            if any(r.time >= c.time for r in tl.removals_of(key, e.execution_number)):
                continue  # the service said so itself
            for push in tl.notify_next.get(e.thing_name, []):
                if push.time < c.time:
                    continue
                head = _dict(_dict(push.value.get("payload")).get("execution"))
                if head.get("jobId") != job_id:
                    operation = "deleted" if c.f.startswith("Delete") else "canceled"
                    _add_removal(tl, Removal(e.thing_name, job_id, incarnation,
                                             e.execution_number, push.time, operation,
                                             "notify-next", push))
                    break
    tl.removals.sort(key=lambda r: r.time)
    for removals in tl.removals_by_key.values():
        removals.sort(key=lambda r: r.time)


def _add_removal(tl: Timeline, r: Removal) -> None:
    tl.removals.append(r)
    tl.removals_by_key.setdefault((r.thing_name, r.job_id, r.incarnation), []).append(r)


def _terminal_facts(tl: Timeline) -> None:
    for q in tl.requests:
        status = q.payload.get("status")
        if q.f != Operation.UPDATE or q.job_id is None or not is_terminal(status):
            continue
        number = as_int(q.payload.get("executionNumber"))
        if number is None:
            number = tl.known_execution_number(q.thing_name, q.job_id, q.time)
        for reply in q.replies:
            if reply.type is OpType.OK:
                tl.terminal.setdefault((q.thing_name, q.job_id, q.incarnation), []).append(
                    TerminalFact(reply.time, number, str(status), True, reply))
    for x in tl.execution_events:
        status = x.operation.upper()
        if is_terminal(status):
            tl.terminal.setdefault((x.thing_name, x.job_id, x.incarnation), []).append(
                TerminalFact(x.op.time, x.execution_number, status,
                             status in DEVICE_TERMINAL, x.op))
    for facts in tl.terminal.values():
        facts.sort(key=lambda f: f.time)


def _offline_spells(tl: Timeline) -> None:
    for thing, events in tl.device_events.items():
        spells, since = [], None
        for ev in events:
            if ev.kind in _OFFLINE_KINDS and since is None:
                stamp = ev.op.value.get("timestamp")
                since = min(ev.time, float(stamp)) if isinstance(stamp, int | float) and \
                    not isinstance(stamp, bool) and math.isfinite(stamp) else ev.time
            elif ev.kind == "connected" and since is not None:
                spells.append((since, ev.time))
                since = None
        if since is not None:
            spells.append((since, float("inf")))
        if spells:
            tl.offline[thing] = spells

"""What an external device did, inferred from its protocol traffic alone.

An *external* device is firmware devicesim does not run (a board in a rack, a Linux port of
an agent, any MQTT client): it publishes no ``devicesim/<thing>/events``. What it does is
taken from our side only -- its requests (heard on the broker), the service's replies and
pushes to it (recorded by the service as it sends them) and its connects and disconnects
(AWS IoT lifecycle events, published by the broker plugin) -- and turned here into the
device events the invariants read, each marked ``"inferred"`` with what it was inferred
from. Nothing is asked of the device.

The rules (docs/external-devices.md has them side by side with the simulated devices'):

- ``connected`` / ``disconnected``: its lifecycle events (``presence:*`` ops).
- ``job_started``: it began an execution: a ``StartNextPendingJobExecution`` whose accepted
  reply carries an execution other than the one it is on (at the reply; the same jobId is
  another execution if its document differs -- a reused jobId -- or the service had told
  the device its execution was gone), or an ``UpdateJobExecution`` of a job other than the
  one it is on (at the request). The
  document it works on is the last one the service delivered to it for that jobId (a
  ``notify-next``, a start-next or describe reply), so ``documentDigest`` is known as far
  as the wire shows it.
- ``step``: each later ``UpdateJobExecution`` of the execution it is on (accepted or not:
  the device still believes in it), at the request.
- ``job_finished``: the service accepted a terminal update (SUCCEEDED / FAILED / REJECTED),
  at the accepted reply.
- ``idle``: a start-next or get-pending reply that offers nothing.
- ``lost_access``: it moved on from an execution it had not finished. Its *signs* of moving
  on are a request about something else (start-next, get-pending, describe of another job or
  of ``$next``, an update of another job, starting another execution) and what told it the
  execution was gone (a rejection of a request about that job with ResourceNotFound,
  InvalidStateTransition or TerminalStateReached; a ``notify-next`` that no longer names
  it). It moved on at the
  first sign after its last update of the execution (so a device that keeps updating after
  a sign had not moved on; one that falls silent after being told did, and idles); with no
  sign after its last update, it never did. ``toldBy`` says what had told it by then
  (``notify-next``, the rejection code, or ``nothing``: it moved on by itself, e.g. on its
  own timeout).

What cannot be seen from the wire: the device's flash (image integrity, journal), so
``recover`` and ``valid-end`` take protocol forms for external devices (the invariants say
which), and an update of a reused jobId that the device meant for the old execution cannot
be told from one meant for the new execution once the device was offered the new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devicesim.wire.history import Op, OpType
from devicesim.wire.topics import Operation
from fleet.checker.model import document_digest
from fleet.checker.timeline import Request, Timeline, as_int, is_terminal

#: Rejection codes that tell a device its execution is gone (or over).
INFORMING_CODES = frozenset({"ResourceNotFound", "InvalidStateTransition",
                             "TerminalStateReached"})
#: The marker on every inferred event (and the value it takes: what it was inferred from).
INFERRED = "inferred"


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _code(reply: Op) -> str | None:
    code = reply.value.get("code") or _dict(reply.value.get("payload")).get("code")
    return str(code) if code else None


def told_by(reply: Op) -> str | None:
    """The rejection code if this reply tells the device its execution is gone."""
    if reply.type is not OpType.FAIL:
        return None
    code = _code(reply)
    return code if code in INFORMING_CODES else None


def next_job(push: Op) -> tuple[str | None, int | None]:
    """The jobId and execution number a ``notify-next`` names (None: nothing pending)."""
    execution = _dict(_dict(push.value.get("payload")).get("execution"))
    job_id = execution.get("jobId")
    return (job_id if isinstance(job_id, str) and job_id else None,
            as_int(execution.get("executionNumber")))


@dataclass(frozen=True, slots=True)
class Sign:
    """A moment the device showed (or was told) it is not on an execution any more."""

    time: float
    how: str  # what the device did ("StartNextPendingJobExecution", ...) or "notify-next"
    told: str | None  # what told it (notify-next, a rejection code), if this is a message


@dataclass(slots=True)
class _Execution:
    job_id: str
    number: int | None
    last_update: float
    digest: str | None  # the document it works on (the last one offered for the jobId)
    signs: list[Sign] = field(default_factory=list)
    done: bool = False

    def told_since_update(self) -> bool:
        return any(s.told is not None and s.time >= self.last_update for s in self.signs)


@dataclass(slots=True)
class _Device:
    thing: str
    out: list[Op] = field(default_factory=list)
    current: _Execution | None = None
    documents: dict[str, str] = field(default_factory=dict)  # jobId -> last digest offered

    def emit(self, time: float, kind: str, how: str, **value: Any) -> None:
        self.out.append(Op(time=time, process=self.thing, type=OpType.INFO,
                           f=f"device:{kind}", value={"thingName": self.thing, "kind": kind,
                                                      INFERRED: how, **value}))

    def sign(self, sign: Sign) -> None:
        e = self.current
        if e is not None and not e.done:
            e.signs.append(sign)

    def close(self) -> None:
        """The current execution ends (another begins, or the history does): it was lost
        at the first sign after its last update, if any."""
        e, self.current = self.current, None
        if e is None or e.done:
            return
        later = [s for s in e.signs if s.time >= e.last_update]
        if not later:
            return
        first = later[0]
        told = first.told or next((s.told for s in reversed(e.signs)
                                   if s.told is not None and s.time <= first.time), None)
        self.emit(first.time, "lost_access", first.how, jobId=e.job_id,
                  executionNumber=e.number, toldBy=told or "nothing")

    def start(self, time: float, job_id: str, number: int | None, how: str) -> None:
        self.sign(Sign(time, f"started {job_id}", None))  # it moved on to another one
        self.close()
        digest = self.documents.get(job_id)
        self.current = _Execution(job_id, number, time, digest)
        self.emit(time, "job_started", how, jobId=job_id, executionNumber=number,
                  documentDigest=digest)

    def offered(self, execution: Mapping[str, Any]) -> None:
        job_id = execution.get("jobId")
        document = execution.get("jobDocument")
        if isinstance(job_id, str) and isinstance(document, dict | str):
            self.documents[job_id] = document_digest(document)


def infer(tl: Timeline, things: Iterable[str]) -> list[Op]:
    """The device events of ``things``, inferred from their traffic in ``tl`` (a timeline
    built without any device events of theirs), sorted by time."""
    out: list[Op] = []
    for thing in sorted(set(things)):
        out.extend(_infer_one(tl, thing))
    out.sort(key=lambda op: op.time)
    return out


def _infer_one(tl: Timeline, thing: str) -> list[Op]:
    d = _Device(thing)
    # (time, order, what): at equal times a push or lifecycle event first, then requests,
    # then replies (a reply never precedes its request)
    moments: list[tuple[float, int, int, Any]] = []
    for q in tl.requests_by_thing.get(thing, []):
        moments.append((q.time, 1, len(moments), q))
        for reply in q.replies[:1]:
            moments.append((max(reply.time, q.time), 2, len(moments), (q, reply)))
    for op in (*tl.notify_next.get(thing, []), *tl.presence.get(thing, [])):
        moments.append((op.time, 0, len(moments), op))
    moments.sort(key=lambda m: m[:3])
    attributed: dict[int, _Execution | None] = {}
    for _, order, _, item in moments:
        if order == 1:
            attributed[id(item)] = _request(d, item)
        elif order == 2:
            q, reply = item
            _reply(d, q, reply, attributed.get(id(q)))
        elif item.f.startswith("presence:"):
            stamp = as_int(_dict(item.value.get("payload")).get("timestamp"))
            d.emit(item.time, item.f.removeprefix("presence:"), "lifecycle event",
                   **({"timestamp": stamp / 1000.0} if stamp is not None else {}))
        else:
            _notify_next(d, item)
    d.close()
    return d.out


def _open(e: _Execution | None, job_id: str | None, number: int | None) -> bool:
    """Is ``e`` an unfinished execution of this job (and execution number, if both say)?"""
    return e is not None and not e.done and e.job_id == job_id and (
        number is None or e.number is None or number == e.number)


def _notify_next(d: _Device, push: Op) -> None:
    d.offered(_dict(_dict(push.value.get("payload")).get("execution")))
    e = d.current
    if e is not None and not _open(e, *next_job(push)):
        d.sign(Sign(push.time, "notify-next", "notify-next"))


def _request(d: _Device, q: Request) -> _Execution | None:
    """A request at its time; returns the execution an update is attributed to."""
    e = d.current
    if q.f == Operation.UPDATE and q.job_id:
        number = as_int(q.payload.get("executionNumber"))
        if not _open(e, q.job_id, number):
            if e is not None and not e.done:
                d.sign(Sign(q.time, f"{q.f} of {q.job_id}", None))
            d.start(q.time, q.job_id, number, "update")
            return d.current
        assert e is not None
        e.last_update = q.time
        d.emit(q.time, "step", "update", jobId=q.job_id, executionNumber=e.number,
               status=q.payload.get("status"),
               step=_dict(q.payload.get("statusDetails")).get("step"))
        return e
    if not (e is not None and q.f == Operation.DESCRIBE and q.job_id == e.job_id):
        d.sign(Sign(q.time, q.f, None))  # about something else: a sign of moving on
    return e if q.f == Operation.DESCRIBE and e is not None and q.job_id == e.job_id else None


def _reply(d: _Device, q: Request, reply: Op, about: _Execution | None) -> None:
    payload = _dict(reply.value.get("payload"))
    code = told_by(reply)
    if about is not None and code is not None and about is d.current:
        d.sign(Sign(reply.time, f"{q.f} rejected", code))
    if reply.type is not OpType.OK:
        return
    if q.f == Operation.UPDATE:
        if about is not None and is_terminal(q.payload.get("status")) and not about.done:
            about.done = True
            d.emit(reply.time, "job_finished", "terminal update accepted", jobId=about.job_id,
                   executionNumber=about.number, status=q.payload.get("status"))
        return
    execution = _dict(payload.get("execution"))
    d.offered(execution)
    e = d.current
    offered = False
    if q.f == Operation.START_NEXT:
        job_id = execution.get("jobId")
        number = as_int(execution.get("executionNumber"))
        if isinstance(job_id, str) and job_id:
            offered = True
            # the same jobId again is another execution if its document differs (a reused
            # jobId) or the service had told the device its execution was gone
            if not _open(e, job_id, number) or e is not None and (
                    e.digest != d.documents.get(job_id) or e.told_since_update()):
                d.start(reply.time, job_id, number, "start-next accepted")
            elif e is not None and e.number is None:
                e.number = number
    elif q.f == Operation.GET_PENDING:
        offered = bool(payload.get("inProgressJobs") or payload.get("queuedJobs"))
    else:
        return
    if offered:
        return
    if e is not None and not e.done:
        d.sign(Sign(reply.time, f"{q.f}: nothing pending", "nothing pending"))
    else:
        d.emit(reply.time, "idle", f"{q.f}: nothing pending")


def strip(ops: Sequence[Op], things: Iterable[str]) -> list[Op]:
    """The history without the device events of ``things`` (to judge simulated devices as
    if they were external: from their traffic alone)."""
    names = frozenset(things)
    return [op for op in ops if not (op.f.startswith("device:") and op.process in names)]


def moved_on_at(tl: Timeline, thing: str, job_id: str, since: float) -> Request | None:
    """The device's first request at or after ``since`` by which it went on to other work:
    a start-next, or an update of another job. (MQTT keeps one client's messages in order,
    so whatever it sent after this, it sent after moving on.)"""
    for q in tl.requests_by_thing.get(thing, []):
        if q.time >= since and (q.f == Operation.START_NEXT or (
                q.f == Operation.UPDATE and q.job_id is not None and q.job_id != job_id)):
            return q
    return None


def told_at(tl: Timeline, thing: str, job_id: str, since: float) -> Op | None:
    """The first rejection at or after ``since``, with an informing code, of one of the
    device's requests about ``job_id``: the service told it its execution was gone. (A
    ``notify-next`` does not count: nothing on the wire shows the device listens to it.)"""
    first: Op | None = None
    for q in tl.requests_by_thing.get(thing, []):
        if q.job_id != job_id or (first is not None and q.time > first.time):
            continue
        for reply in q.replies:
            if reply.time >= since and told_by(reply) is not None and \
                    (first is None or reply.time < first.time):
                first = reply
    return first

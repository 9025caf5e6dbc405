"""The history: every observable operation of a drill, one JSON object per line.

Jepsen-style: ``{"time": 1764382512.123456, "process": "dev-0001", "type": "invoke",
"f": "UpdateJobExecution", "value": {...}}``. ``time`` is float epoch seconds when the
recorder (or controller) saw the operation. ``type`` is one of invoke / ok / fail / info.

The vocabulary (``f`` and ``value``) is the contract between whoever records (device
workers, the recorder, the service, the controller, the drill runner) and the checker, so it
is part of the wire contract; it is documented in docs/history.md.
:func:`classify` turns one MQTT message into its op, wherever it was seen:

======================  ==========  ========  ==============================================
who                     process     type      f / value
======================  ==========  ========  ==============================================
device request (MQTT)   thing name  invoke    operation name, {topic, jobId, clientToken,
                                              payload}
service reply           thing name  ok/fail   operation name, same keys (+ code on fail)
notify / notify-next    thing name  info      "notify" / "notify-next", {topic, payload}
lifecycle events        client id   info      "presence:connected" / "presence:disconnected",
                                              {topic, payload} (AWS's JSON, ms timestamp)
jobs events             "service"   info      "job-event" / "execution-event",
                                              {topic, jobId, operation, payload}
device events           thing name  info      "device:<kind>", the DeviceEvent as JSON
controller call         controller  invoke/   API name (CreateJob, DeleteJob, ...),
                                    ok/fail   {request..., response or error}
drill markers           "drill"     info      "start", "fleet-ready", "power-off" /
                                              "power-on" {things}, "broker-outage"
                                              {start, end}, "timeout", "final-state"
                                              {executions, jobs, devices}, "end",
                                              "recorder-stats"
======================  ==========  ========  ==============================================
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import orjson

from devicesim.wire import topics


class OpType(StrEnum):
    INVOKE = "invoke"
    OK = "ok"
    FAIL = "fail"
    INFO = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    time: float
    process: str
    type: OpType
    f: str
    value: dict[str, Any] = field(default_factory=dict)

    def to_line(self) -> str:
        return orjson.dumps({"time": self.time, "process": self.process,
                             "type": self.type.value, "f": self.f, "value": self.value},
                            option=orjson.OPT_NON_STR_KEYS).decode()

    @classmethod
    def from_line(cls, line: str | bytes) -> Op:
        obj = orjson.loads(line)
        return cls(time=float(obj["time"]), process=str(obj["process"]),
                   type=OpType(obj["type"]), f=str(obj["f"]), value=dict(obj.get("value") or {}))


_REPLY_TYPES = {topics.Kind.ACCEPTED: OpType.OK, topics.Kind.REJECTED: OpType.FAIL}


def _decode(payload: bytes) -> Any:
    try:
        return orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        return {"raw": payload[:200].decode("utf-8", "replace")}


def classify(topic: str, payload: bytes, time: float) -> Op:
    """One received message as a history op (see the module docstring for the table)."""
    body = _decode(payload)
    parsed = topics.parse_jobs_topic(topic)
    if parsed is not None:
        value: dict[str, Any] = {"topic": topic, "payload": body}
        if parsed.kind in (topics.Kind.NOTIFY, topics.Kind.NOTIFY_NEXT):
            return Op(time=time, process=parsed.thing_name, type=OpType.INFO,
                      f=parsed.kind.value, value=value)
        if parsed.operation is None:
            return Op(time=time, process=parsed.thing_name, type=OpType.INFO,
                      f="invalid-topic", value=value)
        token = body.get("clientToken") if isinstance(body, dict) else None
        value.update(jobId=parsed.job_id, clientToken=token)
        if parsed.kind is topics.Kind.REJECTED and isinstance(body, dict):
            value["code"] = body.get("code")
        return Op(time=time, process=parsed.thing_name,
                  type=_REPLY_TYPES.get(parsed.kind, OpType.INVOKE),
                  f=parsed.operation.value, value=value)
    parts = topic.split("/")
    if len(parts) == 5 and parts[:3] == ["$aws", "events", "presence"] and \
            parts[3] in topics.PRESENCE_EVENTS:
        return Op(time=time, process=parts[4], type=OpType.INFO, f=f"presence:{parts[3]}",
                  value={"topic": topic, "payload": body})
    if len(parts) == 5 and parts[:2] == ["$aws", "events"]:
        f = {"job": "job-event", "jobExecution": "execution-event"}.get(parts[2], "event")
        return Op(time=time, process="service", type=OpType.INFO, f=f,
                  value={"topic": topic, "jobId": parts[3], "operation": parts[4],
                         "payload": body})
    if len(parts) == 3 and parts[0] == "devicesim" and parts[2] == "events":
        kind = body.get("kind", "unknown") if isinstance(body, dict) else "unknown"
        return Op(time=time, process=parts[1], type=OpType.INFO, f=f"device:{kind}",
                  value=body if isinstance(body, dict) else {"payload": body})
    return Op(time=time, process="unknown", type=OpType.INFO, f="message",
              value={"topic": topic, "payload": body})


#: Control-plane calls that take executions away from devices when forced.
FORCE_APIS = ("DeleteJob", "CancelJob", "CancelJobExecution", "DeleteJobExecution")
#: Drill markers that are faults the drill injected.
FAULT_MARKERS = ("power-off", "power-on", "broker-outage", "service-outage", "notify-drop",
                 "network-fault", "message-fault")


def fault(op: Op) -> str | None:
    """The fault an op records, if it records one (its kind, for counting): a drill fault
    marker, a forced control-plane call that succeeded (``DeleteJob --force``, ...), or a
    push a drill's fault dropped (``dropped:notify-next``)."""
    if op.process == "drill":
        return op.f if op.f in FAULT_MARKERS else None
    if op.process.startswith("controller"):
        request = op.value.get("request")
        if op.type is OpType.OK and op.f in FORCE_APIS and isinstance(request, dict) and \
                request.get("force") in (True, "true"):
            return f"{op.f} --force"
        return None
    return op.f if op.f.startswith("dropped:") else None


class HistoryError(ValueError):
    """A history file that cannot be read; the message names the line."""


def write(ops: Iterable[Op], out: IO[str]) -> None:
    for op in ops:
        out.write(op.to_line())
        out.write("\n")


@contextmanager
def bulk() -> Iterator[None]:
    """No cyclic garbage collection while a whole history is built or judged: hundreds of
    thousands of long-lived ops and no cycles among them, which the collector's full passes
    would walk again and again (a third of the time of reading and checking a 10,000-device
    history)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read(path: Path) -> list[Op]:
    with bulk():
        return list(iter_ops(path))


def iter_ops(path: Path) -> Iterator[Op]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Op.from_line(line)
            except (ValueError, KeyError, TypeError) as e:
                raise HistoryError(f"{path}:{number}: not a history operation: {e}") from None

"""The history: every observable operation of a drill, one JSON object per line.

Jepsen-style: ``{"time": 1764382512.123456, "process": "dev-0001", "type": "invoke",
"f": "UpdateJobExecution", "value": {...}}``. ``time`` is float epoch seconds when the
recorder (or controller) saw the operation. ``type`` is one of invoke / ok / fail / info.

The vocabulary (``f`` and ``value``) is the contract between recorder, controller and
checker; it is documented in docs/history.md:

======================  ==========  ========  ==============================================
who                     process     type      f / value
======================  ==========  ========  ==============================================
device request (MQTT)   thing name  invoke    operation name, {topic, jobId, clientToken,
                                              payload}
service reply           thing name  ok/fail   operation name, same keys (+ code on fail)
notify / notify-next    thing name  info      "notify" / "notify-next", {topic, payload}
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

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any


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
        return json.dumps({"time": self.time, "process": self.process, "type": self.type.value,
                           "f": self.f, "value": self.value}, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> Op:
        obj = json.loads(line)
        return cls(time=float(obj["time"]), process=str(obj["process"]),
                   type=OpType(obj["type"]), f=str(obj["f"]), value=dict(obj.get("value") or {}))


class HistoryError(ValueError):
    """A history file that cannot be read; the message names the line."""


def write(ops: Iterable[Op], out: IO[str]) -> None:
    for op in ops:
        out.write(op.to_line())
        out.write("\n")


def read(path: Path) -> list[Op]:
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

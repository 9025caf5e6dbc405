"""The recorder: its own MQTT identity turning everything observable into history ops.

Subscribes (QoS 1) to ``$aws/things/+/jobs/#``, ``$aws/events/#`` and
``devicesim/+/events``. :func:`classify` is the pure part: one received message -> one
:class:`~fleet.history.Op` in the vocabulary of :mod:`fleet.history`. Device events carry a
per-device ``seq``; gaps are counted, so a drill can prove the recorder lost nothing.

Supervision: a message :func:`classify` fails on is still recorded (as the generic
``message`` op, with the error) and a listener that raises does not undo the op it was
given; both are logged and reported through ``on_failure``, which also supervises the MQTT
client.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from devicesim.mqtt import Client, ClientOptions, OnFailure, Pump
from devicesim.wire import topics
from fleet.broker import BrokerAddress
from fleet.history import Op, OpType

log = logging.getLogger(__name__)

RECORDER_CLIENT_ID = "devicesim-recorder"
_REPLY_TYPES = {topics.Kind.ACCEPTED: OpType.OK, topics.Kind.REJECTED: OpType.FAIL}


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload) if payload else {}
    except ValueError:
        return {"raw": payload[:200].decode("utf-8", "replace")}


def classify(topic: str, payload: bytes, time: float) -> Op:
    """One received message as a history op (see :mod:`fleet.history` for the table)."""
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


class Recorder:
    """Collects ops in memory (appended in arrival order); :meth:`stats` proves no loss."""

    def __init__(self, broker: BrokerAddress, *, now: Callable[[], float] = time.time,
                 client_id: str = RECORDER_CLIENT_ID,
                 listener: Callable[[Op], None] | None = None,
                 on_failure: OnFailure | None = None) -> None:
        self.ops: list[Op] = []
        self._listener = listener
        self._broker, self._now, self._client_id = broker, now, client_id
        self._pump = Pump(on_failure=on_failure)
        self._client: Client | None = None
        self._seqs: dict[str, set[int]] = {}  # device event numbers seen, per device
        self.received = 0
        self.unclassified = 0

    async def start(self) -> None:
        b = self._broker
        self._client = Client(ClientOptions(client_id=self._client_id, host=b.host,
                                            port=b.port, clean_session=False,
                                            max_inflight=0),
                              self._pump, on_message=self._on_message)
        await self._client.connect()
        await self._client.subscribe([topics.SERVICE_FILTER, topics.JOB_EVENTS_FILTER,
                                      topics.DEVICE_EVENTS_FILTER])

    def record(self, op: Op) -> None:
        """Add an op observed elsewhere (controller calls, drill markers)."""
        self.ops.append(op)

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.received += 1
        time_ = self._now()
        try:
            op = classify(topic, payload, time_)
        except Exception as e:  # kept as the generic op rather than lost
            log.exception("classify failed topic=%s bytes=%d", topic, len(payload))
            self._pump.report(f"recorder {self._client_id} classify {topic}", e)
            self.unclassified += 1
            op = Op(time=time_, process="unknown", type=OpType.INFO, f="message",
                    value={"topic": topic, "payload": payload[:200].decode("utf-8", "replace"),
                           "error": repr(e)})
        seq = op.value.get("seq") if op.f.startswith("device:") else None
        if isinstance(seq, int):
            self._seqs.setdefault(op.process, set()).add(seq)
        self.ops.append(op)
        if self._listener is not None:
            try:
                self._listener(op)
            except Exception as e:  # the op stays recorded; the run hears of it
                log.exception("recorder listener failed process=%s f=%s", op.process, op.f)
                self._pump.report(f"recorder {self._client_id} listener {op.f}", e)

    def has_events(self, counts: dict[str, int]) -> bool:
        """True once the recorder saw every device's events 1..n (for the given n)."""
        return all(len(self._seqs.get(thing, ())) >= n for thing, n in counts.items())

    def gaps(self) -> dict[str, int]:
        """Per device, how many of its events (1..highest seen) never arrived. Events may
        arrive out of order (one queued while offline goes out after the reconnect's
        ``connected``), so this is only final once the devices are done."""
        return {thing: max(seqs) - len(seqs) for thing, seqs in self._seqs.items()
                if max(seqs) != len(seqs)}

    def stats(self) -> dict[str, Any]:
        gaps = self.gaps()
        return {"received": self.received, "unclassified": self.unclassified,
                "devices": len(self._seqs), "missingDeviceEvents": sum(gaps.values()),
                "gaps": gaps}

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        await self._pump.close()

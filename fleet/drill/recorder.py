"""The drill's history log, and its ear on the broker for what no process of ours records.

Every process records what it already sees (one writer per process): in-process devices and
the in-process jobs service hand their ops to :meth:`Recorder.record` directly; device worker
processes write their own parts, merged at the end op by op (:meth:`Recorder.record`).
The recorder subscribes on the broker (its own MQTT identity, QoS 1) only to what is given
in ``filters``: for devices no process of ours runs,
what they publish (:data:`BROKER_FILTERS`: their requests and events), classified by
:func:`devicesim.wire.history.classify` and handed to the ``listener`` (the live view) too.
What the jobs service publishes (replies, pushes, jobs events) is never taken from the
broker -- on AWS, and on a broker running the devicesim_aws plugin, a reply reaches its
requester alone -- but from the service itself: give its ``record``
:meth:`Recorder.observe`. Device events carry a per-device ``seq``; the
numbers seen are kept, so a drill can prove nothing was lost.

Supervision: a message :func:`classify` fails on is still recorded (as the generic
``message`` op, with the error) and a listener that raises does not undo the op it was
given; both are logged and reported through ``on_failure``, which also supervises the MQTT
client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from devicesim.mqtt import Client, OnFailure, Pump
from devicesim.wire import history, topics
from devicesim.wire.history import Op, OpType, classify
from fleet.broker import BrokerAddress

log = logging.getLogger(__name__)

RECORDER_CLIENT_ID = "devicesim-recorder"
#: with a spill file: ops kept in memory before they are written out
SPILL_BATCH = 10_000
#: what devices publish on the broker (devices no process of ours runs): their requests
#: (the service's own publications under the same filter are skipped) and their events
BROKER_FILTERS = (topics.SERVICE_FILTER, topics.DEVICE_EVENTS_FILTER)
#: what the jobs service publishes under SERVICE_FILTER (recorded by the service itself)
_SERVICE_KINDS = frozenset({topics.Kind.ACCEPTED, topics.Kind.REJECTED, topics.Kind.NOTIFY,
                            topics.Kind.NOTIFY_NEXT})


class Recorder:
    """Collects ops in memory (appended in arrival order), or in a spill file;
    :meth:`stats` proves no loss."""

    def __init__(self, broker: BrokerAddress, *, now: Callable[[], float] = time.time,
                 client_id: str = RECORDER_CLIENT_ID,
                 listener: Callable[[Op], None] | None = None,
                 on_failure: OnFailure | None = None,
                 filters: Sequence[str] = BROKER_FILTERS, spill: Path | None = None) -> None:
        """``spill``: write the ops to this file as they come (in batches), keeping only the
        latest in memory (a soak's history must not grow the drill's memory)."""
        #: the ops recorded (with ``spill``: those not written out yet; see :meth:`all_ops`)
        self.ops: list[Op] = []
        self._spill_path = spill
        self._spill: IO[str] | None = None
        self._filters = list(filters)
        self._listener = listener
        self._broker, self._now, self._client_id = broker, now, client_id
        self._pump = Pump(on_failure=on_failure)
        self._client: Client | None = None
        self._seqs: dict[str, set[int]] = {}  # device event numbers seen, per device
        self.received = 0
        self.unclassified = 0

    async def start(self) -> None:
        """Subscribe to the ``filters`` (without any, no MQTT connection is made)."""
        if not self._filters:
            return
        self._client = Client(self._broker.client_options(self._client_id, clean_session=False,
                                                          max_inflight=0),
                              self._pump, on_message=self._on_message)
        await self._client.connect()
        await self._client.subscribe(self._filters)

    def record(self, op: Op) -> None:
        """Add an op recorded elsewhere (in-process devices and service, controller calls,
        drill markers)."""
        if op.f.startswith("device:"):
            seq = op.value.get("seq")
            if isinstance(seq, int):
                self._seqs.setdefault(op.process, set()).add(seq)
        self.ops.append(op)
        if self._spill_path is not None and len(self.ops) >= SPILL_BATCH:
            self._write_out()

    def _write_out(self) -> None:
        assert self._spill_path is not None
        if self._spill is None:
            self._spill = self._spill_path.open("a", encoding="utf-8")
        history.write(self.ops, self._spill)
        self.ops = []

    def all_ops(self) -> list[Op]:
        """Every op recorded, in the order recorded (with ``spill``: read back from it)."""
        if self._spill_path is None:
            return list(self.ops)
        self._write_out()
        self._close_spill()
        ops = history.read(self._spill_path)
        self._spill_path.unlink()
        self._spill_path = None
        return ops

    def observe(self, op: Op) -> None:
        """Record an op an in-process component saw (the jobs service's publications: give
        this as its ``record``) and tell the listener, like what is heard on the broker."""
        self.record(op)
        self._tell([op])

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.received += 1
        parsed = topics.parse_jobs_topic(topic)
        if parsed is not None and parsed.kind in _SERVICE_KINDS:
            return  # the service's, recorded by the service (observe)
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
        self.record(op)
        self._tell([op])

    def _tell(self, ops: Iterable[Op]) -> None:
        if self._listener is None:
            return
        for op in ops:
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

    def _close_spill(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    async def stop(self) -> None:
        """Stop listening (what was recorded stays: :meth:`all_ops`)."""
        if self._client is not None:
            await self._client.close()
        await self._pump.close()
        if self._spill is not None:
            self._spill.flush()

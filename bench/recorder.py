"""Force-delete detection: a recorder client pairing each thing's removal with its notice.

Subscribes to ``$aws/events/jobExecution/{jobId}/deleted`` and ``devicesim/+/events``.
Per thing it keeps the arrival time of the first ``deleted`` event naming it and of the
first ``lost_access`` device event about the job; the detection latency is the difference
of the two arrival times (both on this recorder's clock, as ``fleet.checker`` measures it),
and, as a cross-check, the device's own ``timestamp`` of the notice minus the arrival of
the ``deleted`` event.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from devicesim.mqtt import Client, Pump
from devicesim.wire import topics
from fleet.broker import BrokerAddress
from fleet.checker.metrics import percentile
from fleet.checker.timeline import thing_from_arn

CLIENT_ID = "devicesim-bench-recorder"


@dataclass(slots=True)
class Detection:
    job_id: str
    expected: int
    deleted: dict[str, float] = field(default_factory=dict)
    lost: dict[str, float] = field(default_factory=dict)
    noticed: dict[str, float] = field(default_factory=dict)  # the device's own timestamp
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def latencies(self) -> tuple[list[float], list[float]]:
        """(arrival-to-arrival, device-timestamp-to-arrival) in ms, for paired things."""
        both = [t for t in self.lost if t in self.deleted]
        return ([(self.lost[t] - self.deleted[t]) * 1000 for t in both],
                [(self.noticed[t] - self.deleted[t]) * 1000 for t in both])


    def slowest(self, since: float, count: int = 10) -> list[list[float]]:
        """The slowest notices as [seconds after ``since`` the thing was deleted, ms]:
        clustered times point at a pause (garbage collection, a busy loop), not at load."""
        both = [t for t in self.lost if t in self.deleted]
        worst = sorted(both, key=lambda t: self.lost[t] - self.deleted[t], reverse=True)
        return [[round(self.deleted[t] - since, 3), round((self.lost[t] - self.deleted[t]) * 1000,
                                                          1)] for t in worst[:count]]


    def by_second(self, since: float, limit: int = 300) -> list[float]:
        """The worst notice (ms) of things deleted in each second after ``since``."""
        worst: dict[int, float] = {}
        for t in self.lost:
            if t in self.deleted:
                second = int(self.deleted[t] - since)
                if 0 <= second < limit:
                    worst[second] = max(worst.get(second, 0.0),
                                        (self.lost[t] - self.deleted[t]) * 1000)
        return [round(worst.get(i, 0.0), 1) for i in range(max(worst, default=-1) + 1)]


def distribution(ms: list[float]) -> dict[str, Any]:
    ordered = sorted(ms)
    return {"count": len(ordered), "p50_ms": percentile(ordered, 50),
            "p95_ms": percentile(ordered, 95), "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1] if ordered else None}


class DetectionRecorder:
    def __init__(self, broker: BrokerAddress) -> None:
        self._broker = broker
        self._pump = Pump()
        self._client: Client | None = None
        self.current: Detection | None = None
        self.received = 0

    async def start(self) -> None:
        self._client = Client(
            self._broker.client_options(CLIENT_ID, clean_session=True, max_inflight=1000),
            self._pump, on_message=self._on_message)
        await self._client.connect()
        await self._client.subscribe([topics.execution_event("+", "deleted"),
                                      topics.DEVICE_EVENTS_FILTER])

    def expect(self, job_id: str, count: int) -> Detection:
        self.current = Detection(job_id, count)
        return self.current

    def _on_message(self, topic: str, payload: bytes) -> None:
        now = time.time()
        self.received += 1
        d = self.current
        if d is None:
            return
        body = json.loads(payload)
        if topic.startswith("$aws/events/"):
            thing = thing_from_arn(body.get("thingArn"))
            if body.get("jobId") == d.job_id and thing is not None:
                d.deleted.setdefault(thing, now)
            return
        if body.get("kind") != "lost_access" or body.get("jobId") != d.job_id:
            return
        thing = body.get("thingName")
        if thing not in d.lost:
            d.lost[thing] = now
            d.noticed[thing] = float(body.get("timestamp", now))
            if len(d.lost) >= d.expected:
                d.done.set()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        await self._pump.close()

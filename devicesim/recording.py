"""A worker process's part of a drill's history, and its live progress feed.

One writer per process (as in Jepsen): a ``devicesim run`` worker of a drill records what
its own devices do (:class:`~devicesim.engine.Fleet` ``record``) into its own JSON Lines
file, :class:`HistoryPart`; the drill merges the parts at the end and checks each is whole
(the count of lines against the count the worker reports in its summary). What a device
*does* (:func:`in_device_history`: its requests and its events) is the device's to record;
what it is *sent* (replies, pushes) is recorded by the service that sent it, in the order it
sent it, which is what judging the service needs (an update accepted before or after a
removal is a question of the service's order, not of when the device heard of it).

The drill's live view (``when`` conditions, settling) needs far less than the history: the
:class:`ProgressFeed` publishes, every ``interval`` seconds while anything changed, one
compact batch of the devices' events (kind, job, step, status, seq: no payloads, no NVM)
and the number of requests still waiting for a reply, on
``devicesim/workers/{worker_id}/progress`` (QoS 1)::

    {"worker": "0", "events": [[time, thing, kind, jobId, step, status, seq], ...],
     "unanswered": 3}

:func:`progress_ops` turns a batch back into history ops for the drill's progress tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import IO, Any

from devicesim.mqtt import Client, ClientOptions, Pump
from devicesim.wire.history import Op, OpType

log = logging.getLogger(__name__)

PROGRESS_FILTER = "devicesim/workers/+/progress"


def in_device_history(op: Op) -> bool:
    """A device's own part of the history: its requests (``invoke``) and its events."""
    return op.type is OpType.INVOKE or op.f.startswith("device:")


def progress_topic(worker_id: str) -> str:
    return f"devicesim/workers/{worker_id}/progress"


class HistoryPart:
    """Appends ops to a JSON Lines file (buffered); :attr:`ops` counts the lines written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ops = 0
        self._out: IO[str] | None = path.open("w", encoding="utf-8")

    def record(self, op: Op) -> None:
        """Write the op if it is the device's to record (:func:`in_device_history`)."""
        if self._out is None or not in_device_history(op):
            return
        self._out.write(op.to_line())
        self._out.write("\n")
        self.ops += 1

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


class ProgressFeed:
    """Collects device events and request/reply bookkeeping from the ops a fleet records,
    and publishes them in batches (see the module docstring)."""

    def __init__(self, worker_id: str, host: str, port: int, *, interval: float = 0.1) -> None:
        self.worker_id = worker_id
        self._host, self._port, self._interval = host, port, interval
        self._events: list[list[Any]] = []
        self._waiting: set[tuple[str, str, str]] = set()
        self._changed = False
        self._pump = Pump()
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None

    def record(self, op: Op) -> None:
        if op.f.startswith("device:"):
            v = op.value
            self._events.append([op.time, op.process, op.f[len("device:"):], v.get("jobId"),
                                 v.get("step"), v.get("status"), v.get("seq")])
            self._changed = True
            return
        token = op.value.get("clientToken")
        if not isinstance(token, str):
            return
        key = (op.process, op.f, token)
        if op.type is OpType.INVOKE:
            self._waiting.add(key)
        elif op.type in (OpType.OK, OpType.FAIL):
            self._waiting.discard(key)
        self._changed = True

    @property
    def unanswered(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        self._client = Client(
            ClientOptions(client_id=f"devicesim-worker-{self.worker_id}", host=self._host,
                          port=self._port, clean_session=True, max_inflight=0),
            self._pump, on_message=lambda topic, payload: None)
        await self._client.connect()
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="progress-feed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.publish()

    def publish(self) -> None:
        """Send what changed since the last batch (nothing if nothing did)."""
        if not self._changed or self._client is None:
            return
        batch = {"worker": self.worker_id, "events": self._events,
                 "unanswered": len(self._waiting)}
        self._events, self._changed = [], False
        self._client.publish(progress_topic(self.worker_id),
                             json.dumps(batch, separators=(",", ":")).encode())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.publish()
        if self._client is not None:
            await self._client.close()
        await self._pump.close()


def progress_ops(payload: bytes) -> tuple[str, list[Op], int] | None:
    """A progress batch as (worker id, device-event ops, unanswered requests); None if it
    is not one."""
    try:
        batch = json.loads(payload)
        ops = [Op(time=float(t), process=str(thing), type=OpType.INFO, f=f"device:{kind}",
                  value={k: v for k, v in (("jobId", job), ("step", step), ("status", status),
                                           ("seq", seq)) if v is not None})
               for t, thing, kind, job, step, status, seq in batch["events"]]
        return str(batch["worker"]), ops, int(batch["unanswered"])
    except (ValueError, KeyError, TypeError) as e:
        log.warning("not a progress batch error=%s", e)
        return None

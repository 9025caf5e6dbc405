"""A worker process's part of a drill's history, and its live progress feed.

One writer per process (as in Jepsen): a ``devicesim run`` worker of a drill records what
its own devices do (:class:`~devicesim.engine.Fleet` ``record``) into its own JSON Lines
file, :class:`HistoryPart`; at the end it sends the part to the drill over the broker
(:mod:`devicesim.joining`), which merges the parts and checks each is whole (the count of
lines against the count the worker reports). What a device
*does* (:func:`in_device_history`: its requests and its events) is the device's to record;
what it is *sent* (replies, pushes) is recorded by the service that sent it, in the order it
sent it, which is what judging the service needs (an update accepted before or after a
removal is a question of the service's order, not of when the device heard of it).

The drill's live view (``when`` conditions, settling) needs far less than the history: the
:class:`ProgressFeed` hands over, every ``interval`` seconds while anything changed, one
compact batch of the devices' events (kind, job, step, status, seq: no payloads, no NVM)
and the number of requests still waiting for a reply; a worker that joined a drill
publishes it on the drill's ``progress/{shard}`` topic (:mod:`devicesim.wire.joining`)::

    {"worker": "0", "run": "3f2a...", "events": [[time, thing, kind, jobId, step, status,
     seq], ...], "unanswered": 3}

:func:`progress_batch` turns a batch back into history ops for the drill's progress tracker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from devicesim.wire.history import Op, OpType

log = logging.getLogger(__name__)


def in_device_history(op: Op) -> bool:
    """A device's own part of the history: its requests (``invoke``) and its events."""
    return op.type is OpType.INVOKE or op.f.startswith("device:")


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


RequestKey = tuple[str, str, str]  # thing, operation, clientToken


class Waiting:
    """Device requests still waiting for a reply, by (thing, operation, clientToken). A
    request stops waiting when its reply comes, when its device records ``lost_access`` for
    the job it was about (the device gave it up: a reply lost with a killed service or an
    offline clean session is then no longer awaited), or when the device loses power
    (:meth:`forget`)."""

    #: replies remembered, so that a request seen again after its reply (a redelivery)
    #: does not wait again; bounded, so memory holds steady however long the run
    RECENT = 10_000

    def __init__(self) -> None:
        self._jobs: dict[RequestKey, object] = {}  # key -> the jobId it was about
        self._done: dict[RequestKey, None] = {}  # recently answered, oldest first

    def observe(self, op: Op) -> bool:
        """Take an op into account; True if it was about a request."""
        if op.f == "device:lost_access":
            job = op.value.get("jobId")
            for key in [k for k, j in self._jobs.items() if k[0] == op.process and j == job]:
                del self._jobs[key]
            return False
        token = op.value.get("clientToken")
        if not isinstance(token, str) or op.f.startswith("device:"):
            return False
        key = (op.process, op.f, token)
        if op.type is OpType.INVOKE:
            if key not in self._done:
                self._jobs[key] = op.value.get("jobId")
        elif op.type in (OpType.OK, OpType.FAIL):
            self._jobs.pop(key, None)
            self._done[key] = None
            if len(self._done) > self.RECENT:
                del self._done[next(iter(self._done))]
        else:
            return False
        return True

    def answer(self, key: RequestKey) -> None:
        self._jobs.pop(key, None)

    def forget(self, things: Iterable[str]) -> None:
        lost = set(things)
        self._jobs = {k: j for k, j in self._jobs.items() if k[0] not in lost}

    def __iter__(self) -> Iterator[RequestKey]:
        return iter(list(self._jobs))

    def __len__(self) -> int:
        return len(self._jobs)


class ProgressFeed:
    """Collects device events and request/reply bookkeeping from the ops a fleet records,
    and hands them to ``publish`` in batches (see the module docstring)."""

    def __init__(self, worker_id: str, publish: Callable[[bytes], None], *,
                 run: str = "", interval: float = 0.1) -> None:
        self.worker_id, self.run = worker_id, run
        self._publish, self._interval = publish, interval
        self._events: list[list[Any]] = []
        self._waiting = Waiting()
        self._changed = False
        self._task: asyncio.Task[None] | None = None

    def record(self, op: Op) -> None:
        if self._waiting.observe(op):
            self._changed = True
        if op.f.startswith("device:"):
            v = op.value
            self._events.append([op.time, op.process, op.f[len("device:"):], v.get("jobId"),
                                 v.get("step"), v.get("status"), v.get("seq")])
            self._changed = True

    @property
    def unanswered(self) -> int:
        return len(self._waiting)

    def forget(self, things: list[str]) -> None:
        """These devices lost their power: what they waited for went with their RAM."""
        self._waiting.forget(things)
        self._changed = True

    def waiting(self) -> list[list[str]]:
        """The requests still without a reply, as ``[thing, operation, clientToken]``."""
        return sorted(list(key) for key in self._waiting)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="progress-feed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()

    def flush(self) -> None:
        """Send what changed since the last batch (nothing if nothing did)."""
        if not self._changed:
            return
        batch = {"worker": self.worker_id, "run": self.run, "events": self._events,
                 "unanswered": len(self._waiting)}
        self._events, self._changed = [], False
        self._publish(orjson.dumps(batch))

    async def close(self) -> None:
        """Stop the timer and send the last batch."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()


@dataclass(frozen=True, slots=True)
class ProgressBatch:
    worker: str
    run: str
    ops: list[Op]
    unanswered: int


def progress_batch(payload: bytes) -> ProgressBatch | None:
    """A progress batch as device-event ops (None, logged, if it is not one)."""
    try:
        batch = orjson.loads(payload)
        ops = [Op(time=float(t), process=str(thing), type=OpType.INFO, f=f"device:{kind}",
                  value={k: v for k, v in (("jobId", job), ("step", step), ("status", status),
                                           ("seq", seq)) if v is not None})
               for t, thing, kind, job, step, status, seq in batch["events"]]
        return ProgressBatch(str(batch["worker"]), str(batch.get("run", "")), ops,
                             int(batch["unanswered"]))
    except (ValueError, KeyError, TypeError) as e:
        log.warning("not a progress batch error=%s", e)
        return None

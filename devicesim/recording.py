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
    request stops waiting when its reply comes; when its device sends the same operation
    about the same job again under another token (it gave up waiting and retried: the
    request or its reply may have been lost in a network fault, and nothing will answer
    it); when its device records ``lost_access`` for the job it was about (it gave the job
    up: a reply lost with a killed service or an offline clean session is then no longer
    awaited); or when the device loses power (:meth:`forget`). Whether a request nobody
    answered was excused is the checker's to judge (``answered``); this only says what is
    still worth waiting for."""

    #: replies remembered, so that a request seen again after its reply (a redelivery)
    #: does not wait again; bounded, so memory holds steady however long the run
    RECENT = 10_000

    def __init__(self) -> None:
        # thing -> (operation, clientToken) -> the jobId it was about: a device has one
        # request (or a few) outstanding, so each rule looks at its own device's only
        self._things: dict[str, dict[tuple[str, str], object]] = {}
        self._count = 0
        self._done: dict[RequestKey, None] = {}  # recently answered, oldest first

    def observe(self, op: Op) -> bool:
        """Take an op into account; True if it was about a request."""
        if op.f == "device:lost_access":
            job = op.value.get("jobId")
            self._drop(op.process, lambda _f, j: j == job)
            return False
        token = op.value.get("clientToken")
        if not isinstance(token, str) or op.f.startswith("device:"):
            return False
        key = (op.process, op.f, token)
        if op.type is OpType.INVOKE:
            if key not in self._done:
                job = op.value.get("jobId")
                self._drop(op.process, lambda f, j: f == op.f and j == job)
                self._things.setdefault(op.process, {})[(op.f, token)] = job
                self._count += 1
        elif op.type in (OpType.OK, OpType.FAIL):
            self.answer(key)
            self._done[key] = None
            if len(self._done) > self.RECENT:
                del self._done[next(iter(self._done))]
        else:
            return False
        return True

    def answered(self, key: RequestKey) -> bool:
        """Whether a reply to ``key`` was seen (lately: :data:`RECENT` are remembered)."""
        return key in self._done

    def answer(self, key: RequestKey) -> None:
        thing, f, token = key
        self._drop(thing, lambda g, _j: False, token=(f, token))

    def forget(self, things: Iterable[str]) -> None:
        for thing in things:
            self._count -= len(self._things.pop(thing, {}))

    def _drop(self, thing: str, which: Callable[[str, object], bool], *,
              token: tuple[str, str] | None = None) -> None:
        """Stop waiting for ``thing``'s request ``token`` and those ``which(operation,
        jobId)`` selects."""
        mine = self._things.get(thing)
        if not mine:
            return
        gone = [k for k, job in mine.items() if k == token or which(k[0], job)]
        for k in gone:
            del mine[k]
        self._count -= len(gone)
        if not mine:
            del self._things[thing]

    def __iter__(self) -> Iterator[RequestKey]:
        return iter([(thing, f, token) for thing, mine in self._things.items()
                     for f, token in mine])

    def __len__(self) -> int:
        return self._count


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

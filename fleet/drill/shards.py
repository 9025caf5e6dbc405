"""The drill's end of the device workers that join it over the broker.

A drill with ``--workers N`` (processes it starts here) or ``--shards N`` (processes started
anywhere that reach the broker: ``devicesim run --join SESSION --shard i/N``) shares nothing
with them but the broker (:mod:`devicesim.wire.joining` has the messages). The hub publishes
the retained invitation, hears which shards joined and their progress batches (fed to the
drill's live view), tells them to stop, collects each one's history part and summary and
confirms it; at the end it clears the invitation so no late worker joins a finished drill.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from devicesim.mqtt import Client, OnFailure, Pump
from devicesim.recording import progress_batch
from devicesim.wire.history import Op
from devicesim.wire.joining import (
    Invitation,
    JoinError,
    PartAssembler,
    PowerCommand,
    message,
    parse_topic,
    power_message,
    run_of,
    topic,
)
from fleet.broker import BrokerAddress

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Part:
    """One shard's history part as it arrived: its ops' JSON Lines and its summary."""

    shard: int
    lines: list[bytes]
    summary: dict[str, Any]


class ShardHub:
    def __init__(self, broker: BrokerAddress, session: str, invitation: Invitation, *,
                 listener: Callable[[Op], None], on_change: Callable[[], None],
                 on_joined: Callable[[int, dict[str, Any]], None],
                 on_failure: OnFailure | None = None) -> None:
        self.session, self.invitation = session, invitation
        self._listener, self._on_change, self._on_joined = listener, on_change, on_joined
        self._pump = Pump(on_failure=on_failure)
        self._client = Client(
            broker.client_options(f"devicesim-drill-{session}", clean_session=False,
                                  max_inflight=0),
            self._pump, on_message=self._on_message)
        #: shard -> what it said when it joined (host, pid)
        self.joined: dict[int, dict[str, Any]] = {}
        #: shard -> requests still unanswered in its last progress batch
        self.unanswered: dict[int, int] = {}
        #: progress messages received (the drill's "quiet" check watches it)
        self.received = 0
        self._parts: dict[int, PartAssembler] = {}
        self.parts: dict[int, Part] = {}
        #: shard -> why its part could not be used
        self.broken: dict[int, str] = {}
        self._powered: dict[int, set[int]] = {}  # power command id -> shards done
        self._power_done = asyncio.Event()
        self._power_ids = itertools.count(1)

    @property
    def shards(self) -> int:
        return self.invitation.shards

    async def start(self) -> None:
        """Subscribe, then invite (retained): a worker may be waiting already."""
        await self._client.connect()
        await self._client.subscribe([topic(self.session, kind, "+")
                                      for kind in ("joined", "progress", "part", "powered")])
        self._client.publish(topic(self.session, "invitation"), self.invitation.to_payload(),
                             retain=True)

    def stop_shards(self) -> None:
        self._client.publish(topic(self.session, "stop"), message(self.invitation.run))

    async def power(self, action: str, things: list[str], *, clean_session: bool = False,
                    seconds: float = 60.0) -> None:
        """Have the workers cut (``off``) or restore (``on``) the power of ``things``, each
        of its own; returns once every shard that joined is done (a TimeoutError if one is
        not within ``seconds``)."""
        command = PowerCommand(next(self._power_ids), action, things, clean_session)
        self._powered[command.id] = set()
        self._client.publish(topic(self.session, "power"),
                             power_message(self.invitation.run, command))
        async with asyncio.timeout(seconds):
            while not set(self.joined) <= self._powered[command.id]:
                self._power_done.clear()
                await self._power_done.wait()
        del self._powered[command.id]

    def settled(self, shard: int) -> bool:
        """Shard's part arrived (whole or broken)."""
        return shard in self.parts or shard in self.broken

    async def close(self) -> None:
        """Clear the invitation, and disconnect."""
        self._client.publish(topic(self.session, "invitation"), b"", retain=True)
        await self._client.close()
        await self._pump.close()

    def _on_message(self, name: str, payload: bytes) -> None:
        try:
            kind, shard = parse_topic(self.session, name)
        except JoinError as e:
            log.warning("ignored message topic=%s error=%s", name, e)
            return
        if shard is None or not 0 <= shard < self.shards:
            log.warning("ignored message of an unknown shard topic=%s", name)
            return
        if run_of(payload) != self.invitation.run:
            return  # an earlier run's worker
        if kind == "progress":
            self._progress(shard, payload)
        elif kind == "joined":
            if shard not in self.joined:
                self.joined[shard] = {k: v for k, v in _json(payload).items()
                                     if k not in ("run", "shard")}
                self._on_joined(shard, self.joined[shard])
        elif kind == "part":
            self._part(shard, payload)
        elif kind == "powered":
            done = self._powered.get(int(_json(payload).get("id", 0)))
            if done is not None:
                done.add(shard)
                self._power_done.set()
        self._on_change()

    def _progress(self, shard: int, payload: bytes) -> None:
        self.received += 1
        batch = progress_batch(payload)
        if batch is None:
            return
        self.unanswered[shard] = batch.unanswered
        for op in batch.ops:
            self._listener(op)

    def _part(self, shard: int, payload: bytes) -> None:
        if self.settled(shard):
            return  # a duplicate (QoS 1 may redeliver)
        assembler = self._parts.setdefault(shard, PartAssembler())
        try:
            assembler.add(payload)
            if not assembler.complete:
                return
            lines = assembler.lines()
        except JoinError as e:
            self.broken[shard] = str(e)
            del self._parts[shard]
            return
        assert assembler.summary is not None
        self.parts[shard] = Part(shard, lines, assembler.summary)
        del self._parts[shard]
        self._client.publish(topic(self.session, "received", shard),
                             message(self.invitation.run))


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}

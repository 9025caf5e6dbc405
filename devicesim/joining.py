"""A device worker's end of a drill it joined over the broker (``devicesim run --join``).

The worker of shard ``i`` of ``n`` connects with its own persistent MQTT session
(``devicesim-shard-{session}-{i}``), takes the drill's retained invitation (the fleet: run
id, prefix, total, mix, seed), announces itself, streams progress batches while its devices
run, and when the drill says stop, sends its history part and summary and waits for the
drill to confirm it arrived whole. The messages are :mod:`devicesim.wire.joining`'s; this is
the thin asyncio shell around them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from devicesim.mqtt import PRIVILEGED_USER, Client, ClientOptions, OnFailure, Pump
from devicesim.wire.joining import (
    Invitation,
    JoinError,
    message,
    parse_topic,
    part_messages,
    power_command,
    run_of,
    topic,
)

log = logging.getLogger(__name__)


class DrillLink:
    """One worker's connection to the drill of ``session``, as shard ``shard`` of
    ``shards``."""

    def __init__(self, host: str, port: int, session: str, shard: int, shards: int, *,
                 secret: str | None = None, on_failure: OnFailure | None = None) -> None:
        """``secret``: of the privileged identity, on a broker running the devicesim_aws
        plugin (the drill's topics are not a device's)."""
        self.session, self.shard, self.shards = session, shard, shards
        self._pump = Pump(on_failure=on_failure)
        self._client = Client(
            ClientOptions(client_id=f"devicesim-shard-{session}-{shard}", host=host,
                          port=port, clean_session=False, max_inflight=0,
                          username=PRIVILEGED_USER if secret else None, password=secret),
            self._pump, on_message=self._on_message)
        self._invited: asyncio.Future[Invitation] = asyncio.get_running_loop().create_future()
        #: carries out the drill's power commands (``action``, ``things``, ``clean_session``)
        #: on this worker's devices; set by the worker once its fleet runs
        self.on_power: Callable[[str, list[str], bool], Awaitable[None]] | None = None
        self.invitation: Invitation | None = None
        #: set when the drill says stop
        self.stopped = asyncio.Event()
        self._received = asyncio.Event()

    async def join(self) -> Invitation:
        """Connect, wait for the drill's invitation (unbounded: the caller bounds it) and
        announce this shard. A JoinError if the drill's shard count is not this worker's."""
        await self._client.connect()
        await self._client.subscribe([topic(self.session, "invitation"),
                                      topic(self.session, "stop"),
                                      topic(self.session, "power"),
                                      topic(self.session, "received", self.shard)])
        invitation = self.invitation = await self._invited
        self._client.publish(topic(self.session, "joined", self.shard), message(
            invitation.run, shard=self.shard, pid=os.getpid(), host=socket.gethostname()))
        return invitation

    def progress(self, payload: bytes) -> None:
        """Publish a progress batch (:class:`devicesim.recording.ProgressFeed`)."""
        self._client.publish(topic(self.session, "progress", self.shard), payload)

    async def send_part(self, lines: Iterator[bytes], summary: dict[str, Any],
                        patience: float) -> bool:
        """Send the history part and summary; True once the drill confirmed it arrived
        whole, False if it did not within ``patience`` seconds."""
        assert self.invitation is not None
        for payload in part_messages(self.invitation.run, self.shard, lines, summary):
            self._client.publish(topic(self.session, "part", self.shard), payload)
            await asyncio.sleep(0)  # let the loop write while the next chunk compresses
        try:
            async with asyncio.timeout(patience):
                await self._received.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self._client.close()
        await self._pump.close()

    def _on_message(self, name: str, payload: bytes) -> None:
        kind, _ = parse_topic(self.session, name)
        if kind == "invitation":
            self._invite(payload)
            return
        if self.invitation is None or run_of(payload) != self.invitation.run:
            return  # an earlier run's, or before we joined
        if kind == "stop":
            self.stopped.set()
        elif kind == "received":
            self._received.set()
        elif kind == "power":
            asyncio.get_running_loop().create_task(self._power(payload))

    async def _power(self, payload: bytes) -> None:
        """Carry out a power command on this worker's devices, then say it is done (one
        that cannot be read, or fails, is reported and not acknowledged: the drill waits
        for it in vain and says so)."""
        assert self.invitation is not None
        try:
            command = power_command(payload)
            if self.on_power is not None:
                await self.on_power(command.action, command.things, command.clean_session)
        except Exception as e:
            log.exception("power command failed")
            self._pump.report(f"shard {self.shard} power command", e)
            return
        self._client.publish(topic(self.session, "powered", self.shard),
                             message(self.invitation.run, id=command.id))

    def _invite(self, payload: bytes) -> None:
        if not payload or self._invited.done():
            return  # cleared by a drill that ended, or a later run while we serve one
        try:
            invitation = Invitation.from_payload(payload)
            if invitation.shards != self.shards:
                raise JoinError(f"drill {invitation.drill!r} has {invitation.shards} shards; "
                                f"this worker is shard {self.shard}/{self.shards}")
        except JoinError as e:
            self._invited.set_exception(e)
            return
        self._invited.set_result(invitation)


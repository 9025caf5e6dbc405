"""The jobs service shell: store + MQTT data plane + HTTP control plane + timers.

One asyncio task owns the store. MQTT requests go through :class:`DataPlane`; control-plane
calls through the HTTP server; after either, the store's outbox (notifications, events) is
published. A timer task sleeps until the store's next due sweep or timeout and ticks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devicesim.mqtt import Client, ClientOptions, Pump
from devicesim.wire import topics
from fleet.broker import BrokerAddress
from fleet.service.controlplane.server import ControlPlane
from fleet.service.dataplane import DataPlane
from fleet.service.settings import ServiceSettings
from fleet.service.store import JobsStore, Publish

log = logging.getLogger(__name__)

SERVICE_CLIENT_ID = "devicesim-jobs-service"
TIMER_POLL = 1.0
#: executions swept per tick before the loop serves requests again
TICK_CHUNK = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    broker: BrokerAddress
    state: Path
    settings: ServiceSettings = ServiceSettings()
    http_host: str = "127.0.0.1"
    http_port: int = 0
    http: bool = True
    seed: int = 0
    username: str | None = None
    password: str | None = None


class JobsService:
    """Runs until :meth:`stop`; ``endpoint`` is the control plane's URL once started."""

    def __init__(self, config: ServiceConfig, *, now: Callable[[], float] = time.time) -> None:
        self.config = config
        self._now = now
        self.store = JobsStore(config.state, config.settings, now=now,
                               rng=random.Random(config.seed))
        self.dataplane = DataPlane(self.store, now)
        self._pump = Pump()
        self._client: Client | None = None
        self._wake = asyncio.Event()
        self._inbox: list[tuple[str, bytes]] = []
        self._timer: asyncio.Task[None] | None = None
        self._control: ControlPlane | None = None
        self.endpoint: str | None = None

    async def start(self) -> None:
        b = self.config.broker
        self._client = Client(
            ClientOptions(client_id=SERVICE_CLIENT_ID, host=b.host, port=b.port,
                          clean_session=False, keepalive=30, max_inflight=0,
                          mqtt5=True, no_local=True,
                          username=self.config.username, password=self.config.password),
            self._pump, on_message=self._on_message)
        await self._client.connect()
        await self._client.subscribe([topics.SERVICE_FILTER])
        self._timer = asyncio.get_running_loop().create_task(self._run_timers(),
                                                             name="jobs-timers")
        if self.config.http:
            control = ControlPlane(self.store, on_change=self.flush)
            self.endpoint = await control.start(self.config.http_host, self.config.http_port)
            self._control = control
        log.info("jobs service ready broker=%s endpoint=%s", b.url, self.endpoint)

    async def stop(self) -> None:
        if self._control is not None:
            await self._control.stop()
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._client is not None:
            await self._client.close()
        await self._pump.close()
        self.store.close()

    # -- MQTT ----------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes) -> None:
        # Requests read from the socket in one go are answered as one batch: one SQLite
        # commit for all of them (group commit), replies published after it.
        self._inbox.append((topic, payload))
        if len(self._inbox) == 1:
            asyncio.get_running_loop().call_soon(self._answer_inbox)

    def _answer_inbox(self) -> None:
        inbox, self._inbox = self._inbox, []
        out: list[Publish] = []
        with self.store.batch():
            for topic, payload in inbox:
                out.extend(self.dataplane.handle(topic, payload))
        self._publish(out)

    def _publish(self, effects: list[Publish]) -> None:
        if effects:
            assert self._client is not None
            for effect in effects:
                self._client.publish(effect.topic, effect.payload, qos=1)

    def flush(self) -> None:
        """Publish what control-plane calls caused; re-plan the timers."""
        self._publish(self.store.drain())
        self._wake.set()

    # -- timers (deletion sweep, step and in-progress timeouts) --------------------------

    async def _run_timers(self) -> None:
        while True:
            # Data-plane requests can arm step timers without waking us: look again at least
            # every TIMER_POLL seconds (AWS itself may time out up to 60 s late, spec §6).
            due = self.store.next_due()
            delay = TIMER_POLL if due is None else min(TIMER_POLL, max(0.0, due - self._now()))
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                continue
            try:
                with self.store.batch():  # one commit per chunk
                    more = self.store.tick(limit=TICK_CHUNK)
            except Exception:  # never let a timer bug stop the sweep for good
                log.exception("tick failed")
                more = False
                await asyncio.sleep(0.1)
            self._publish(self.store.drain())
            if more:  # a burst: let requests in between chunks
                await asyncio.sleep(0)

"""The fleet engine: N simulated devices on one asyncio loop, each a pure agent in a thin shell.

:class:`DeviceShell` owns one MQTT connection (client id = thing name, persistent session),
feeds the agent every message, connection change and timer, and carries out the agent's
actions in order: publish, publish a device event (numbered ``seq`` 1, 2, ...), persist the
NVM, arm or cancel a timer. :class:`Fleet` builds the shells, ramps connects (at most
``connect_concurrency`` in flight, below Mosquitto's backlog of 100) and reports counts.

The simulated NVM lives in memory, and in ``{state_dir}/{thing}.json`` when a state dir is
given, so a reboot (:meth:`DeviceShell.reboot`) — or a new ``devicesim run`` — resumes from
what the device had persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from devicesim import nvm as nvm_store
from devicesim.agent import (
    Agent,
    AgentConfig,
    CancelTimer,
    Connected,
    Disconnected,
    EmitEvent,
    Event,
    MessageReceived,
    Publish,
    Rebooted,
    SaveNvm,
    SetTimer,
    TimerFired,
)
from devicesim.behaviours import Behaviour, resolve
from devicesim.mqtt import Client, ClientOptions, Pump
from devicesim.nvm import Nvm
from devicesim.wire import topics

if TYPE_CHECKING:
    from devicesim.sdk import SdkTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetConfig:
    host: str
    port: int
    prefix: str = "dev-"
    count: int = 1
    start: int = 0
    #: behaviour name -> weight; one name with weight 1.0 for a uniform fleet
    mix: dict[str, float] = field(default_factory=lambda: {"reference": 1.0})
    seed: int = 1
    state_dir: Path | None = None
    connect_concurrency: int = 64
    keepalive: int = 60
    agent: AgentConfig = field(default_factory=AgentConfig)
    width: int = 4

    def thing_names(self) -> list[str]:
        return [f"{self.prefix}{i:0{self.width}d}" for i in range(self.start,
                                                                   self.start + self.count)]


def assign_behaviours(things: list[str], mix: dict[str, float], seed: int) -> dict[str, str]:
    """Deterministic: behaviour counts follow the weights (largest remainder), shuffled by
    the seed, so the same seed gives every thing the same behaviour on every host."""
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("mix: weights must add up to more than 0")
    exact = {name: weight / total * len(things) for name, weight in mix.items()}
    counts = {name: int(value) for name, value in exact.items()}
    leftovers = sorted(exact, key=lambda n: exact[n] - counts[n], reverse=True)
    for name in leftovers[: len(things) - sum(counts.values())]:
        counts[name] += 1
    names = [name for name, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(names)
    return dict(zip(things, names, strict=True))


class DeviceShell:
    """One device: an :class:`Agent` plus its MQTT connection, timers and NVM file."""

    def __init__(self, thing: str, behaviour: Behaviour, config: FleetConfig, pump: Pump,
                 *, now: Callable[[], float] = time.time) -> None:
        self.thing = thing
        self.behaviour = behaviour
        self._config = config
        self._now = now
        self._loop = asyncio.get_running_loop()
        self._nvm_path = None if config.state_dir is None else config.state_dir / f"{thing}.json"
        self._saved = self._load_nvm()
        self._rng = random.Random(f"{config.seed}:{thing}")  # str seeds are stable
        self.agent = self._default_agent(self._saved)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._seq = 0
        self._pump = pump
        self._client = self._make_client(clean_session=False)
        self._starting = False

    def _make_client(self, *, clean_session: bool) -> Client | SdkTransport:
        config = self._config
        if getattr(self.behaviour, "transport", "mqtt") == "sdk":
            from devicesim.sdk import SdkTransport  # awscrt only where a device uses it

            return SdkTransport(self.thing, config.host, config.port,
                                on_message=self._on_message,
                                on_connection=self._on_connection,
                                keepalive=config.keepalive)
        return Client(
            ClientOptions(client_id=self.thing, host=config.host, port=config.port,
                          clean_session=clean_session, keepalive=config.keepalive),
            self._pump, on_message=self._on_message, on_connection=self._on_connection)

    def _default_agent(self, nvm: Nvm) -> Agent:
        return Agent(self.thing, self.behaviour, nvm, self._rng, self._config.agent)

    def _load_nvm(self) -> Nvm:
        if self._nvm_path is not None:
            with contextlib.suppress(FileNotFoundError):
                return nvm_store.load(self._nvm_path)
        return Nvm.factory()

    def _filters(self) -> list[str]:
        filters = topics.device_subscriptions(self.thing)
        if not self.behaviour.subscribes_notify_next:
            filters = [f for f in filters if not f.endswith("/notify-next")]
        return filters

    async def start(self, gate: asyncio.Semaphore | None = None) -> None:
        """Connect (inside ``gate``, which bounds connects in flight: Mosquitto's listen
        backlog is 100), subscribe if the broker has no session for us, tell the agent."""
        self._starting = True
        try:
            async with gate or contextlib.nullcontext():
                session_present = await self._client.connect()
            if not session_present:
                await self._client.subscribe(self._filters())
        finally:
            self._starting = False
        self._feed(Connected(session_present=session_present))

    async def stop(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        await self._client.close()

    async def power_off(self) -> None:
        """Lose power: RAM (agent, timers) and the connection are gone; the NVM stays."""
        await self.stop()

    async def power_on(self, *, clean_session: bool = False) -> None:
        """Boot from the NVM and reconnect; with ``clean_session`` the broker forgets what
        it queued for the device meanwhile (a device that does not keep MQTT sessions)."""
        self._client = self._make_client(clean_session=clean_session)
        self.agent = self._default_agent(self._saved)
        self._feed(Rebooted(nvm=self._saved))
        await self.start()

    async def reboot(self, *, clean_session: bool = False) -> None:
        """A simulated power cycle."""
        await self.power_off()
        await self.power_on(clean_session=clean_session)

    @property
    def events(self) -> int:
        """How many device events this device published (its last ``seq``)."""
        return self._seq

    @property
    def saved_nvm(self) -> Nvm:
        return self._saved

    def cut_network(self) -> None:
        """Drop the connection abruptly; the client reconnects by itself."""
        self._client.drop()

    # -- agent plumbing ------------------------------------------------------------------

    def _on_connection(self, session_present: bool) -> None:
        """Reconnects after :meth:`start` (the first connect is handled there); the client
        has already subscribed again if the broker lost the session."""
        if self._starting:
            return
        if self._client.connected:
            self._feed(Connected(session_present=session_present))
        else:
            self._feed(Disconnected())

    def _on_message(self, topic: str, payload: bytes) -> None:
        self._feed(MessageReceived(topic, payload))

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self._feed(TimerFired(key))

    def _feed(self, event: Event) -> None:
        for action in self.agent.handle(event, self._now()):
            if isinstance(action, Publish):
                self._client.publish(action.topic, action.payload, action.qos)
            elif isinstance(action, EmitEvent):
                self._seq += 1
                event_out = dataclasses.replace(action.event, seq=self._seq)
                self._client.publish(topics.device_events(self.thing), event_out.to_json())
            elif isinstance(action, SaveNvm):
                self._saved = action.nvm
                if self._nvm_path is not None:
                    nvm_store.save(self._nvm_path, action.nvm)
            elif isinstance(action, SetTimer):
                old = self._timers.pop(action.key, None)
                if old is not None:
                    old.cancel()
                delay = max(0.0, action.at - self._now())
                self._timers[action.key] = self._loop.call_later(delay, self._fire, action.key)
            elif isinstance(action, CancelTimer):
                handle = self._timers.pop(action.key, None)
                if handle is not None:
                    handle.cancel()


class Fleet:
    """Many devices on this loop. ``start()`` ramps the connects; ``stop()`` disconnects."""

    def __init__(self, config: FleetConfig, *, now: Callable[[], float] = time.time) -> None:
        self.config = config
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        self._now = now
        self._pump = Pump()
        self.assignment = assign_behaviours(config.thing_names(), config.mix, config.seed)
        self.devices: dict[str, DeviceShell] = {}

    async def start(self) -> float:
        """Connect and subscribe every device; returns the seconds it took."""
        began = time.monotonic()
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        behaviours: dict[str, Behaviour] = {}

        async def one(thing: str) -> None:
            name = self.assignment[thing]
            shell = DeviceShell(thing, behaviours.get(name) or resolve(name), self.config,
                                self._pump, now=self._now)
            self.devices[thing] = shell
            await shell.start(gate)

        # behaviours are stateless policy objects: one instance per name is shared
        for name in set(self.assignment.values()):
            behaviours[name] = resolve(name)
        await asyncio.gather(*(one(t) for t in self.assignment))
        # thousands of long-lived device objects: keep them out of the collector's full
        # passes (those paused the loop for hundreds of ms at 5,000 devices)
        gc.collect()
        gc.freeze()
        return time.monotonic() - began

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.devices.values()),
                             return_exceptions=True)
        await self._pump.close()

    def states(self) -> Counter[str]:
        return Counter(d.agent.state.value for d in self.devices.values())

    def event_counts(self) -> dict[str, int]:
        """How many device events each device has published (its last ``seq``)."""
        return {thing: d.events for thing, d in self.devices.items()}

    def nvm_summaries(self) -> dict[str, dict[str, object]]:
        """Each device's NVM as persisted (what a reboot would resume from)."""
        return {thing: d.saved_nvm.summary().to_dict() for thing, d in self.devices.items()}

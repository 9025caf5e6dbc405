"""The fleet engine: N simulated devices on one asyncio loop, each a pure agent in a thin shell.

:class:`DeviceShell` owns one MQTT connection (client id = thing name, persistent session),
feeds the agent every message, connection change and timer, and carries out the agent's
actions in order: publish, publish a device event (numbered ``seq`` 1, 2, ...), persist the
NVM, arm or cancel a timer. :class:`Fleet` builds the shells, ramps connects (at most
``connect_concurrency`` in flight, below Mosquitto's backlog of 100) and reports counts.

One fleet, however it is split: a :class:`FleetConfig` names its own range of things
(``start``, ``count``) inside the whole fleet (``total`` things), and behaviours are assigned
over the whole fleet (:func:`assign_behaviours`, through :func:`fleet_assignment`), so one
process or any number of worker processes give every thing the same behaviour.

Supervision: an exception while a device handles an event (a behaviour plugin bug, an agent
bug) is logged with its ``thing_name``, published as the device's ``error`` event, recorded
in :attr:`Fleet.failures` and reported as ``on_failure(f"device {thing}", error)``; the
device goes on with its next event. :meth:`Fleet.start` either connects every device or
stops those it did connect and raises one :class:`FleetStartError`.

Recording: with ``record`` (a callable taking :class:`~devicesim.wire.history.Op`), every
device records what it does and sees, in the history's vocabulary, when it happens: each
request it publishes (``invoke``), each reply and push it receives, each device event it
publishes. A drill keeps these ops (one writer per process) instead of receiving every
message of the fleet a second time through a broker-side recorder.

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
from typing import TYPE_CHECKING, Any

import orjson

from devicesim import nvm as nvm_store
from devicesim.agent import (
    Action,
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
from devicesim.http import HttpTransport
from devicesim.mqtt import Client, ClientOptions, OnFailure, Pump
from devicesim.nvm import Nvm
from devicesim.wire import topics
from devicesim.wire.events import DeviceEvent, DeviceEventKind
from devicesim.wire.history import Op, OpType, classify

if TYPE_CHECKING:
    from devicesim.sdk import SdkTransport

log = logging.getLogger(__name__)

#: as the agent's own ``error`` events
_MAX_ERROR_REASON = 500

#: where a device's history ops go (see "Recording" above)
Record = Callable[[Op], None]


class FleetStartError(Exception):
    """Some devices failed to connect (or subscribe); the others were stopped."""

    def __init__(self, failed: list[tuple[str, BaseException]], devices: int) -> None:
        thing, first = failed[0]
        which = (f"all {devices} devices" if len(failed) == devices else
                 f"{len(failed)} of {devices} devices")
        rest = "" if len(failed) == devices else " (the others were stopped)"
        super().__init__(f"{which} failed to connect{rest}; first: {thing}: {describe(first)}")
        self.failed = failed


def describe(error: BaseException) -> str:
    """An exception as one line: ``Type: message``."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
    #: things in the whole fleet this config is a range of (None: ``start + count``)
    total: int | None = None
    #: publish each device event on ``devicesim/{thing}/events``; a drill's devices only
    #: record them (``record``), which spares the broker a third of the fleet's messages
    publish_events: bool = True
    #: subscribe to the reply topics of the device's requests, as a plain broker needs; on
    #: AWS, or a broker running the devicesim_aws plugin, replies reach the requester
    #: unasked, and a device may subscribe to nothing but ``notify-next``
    subscribe_replies: bool = True
    #: mutual TLS (``mqtts://``, the secure profile or AWS IoT Core): the CA that signed the
    #: broker's certificate, and the directory of each thing's ``<thing>.crt`` / ``.key``
    tls_ca: Path | None = None
    cert_dir: Path | None = None
    #: the jobs data plane over HTTPS (``http://HOST:PORT``): where ``http`` devices send
    #: their requests
    jobs_data: str | None = None

    def __post_init__(self) -> None:
        if self.total is not None and self.total < self.start + self.count:
            raise ValueError(f"total ({self.total}) is less than start + count "
                             f"({self.start + self.count})")

    @property
    def fleet_size(self) -> int:
        """Things in the whole fleet: ``total``, or ``start + count``."""
        return self.start + self.count if self.total is None else self.total

    def thing_name(self, index: int) -> str:
        return f"{self.prefix}{index:0{self.width}d}"

    def thing_names(self) -> list[str]:
        """The things of this range (this process's devices)."""
        return [self.thing_name(i) for i in range(self.start, self.start + self.count)]

    def fleet_thing_names(self) -> list[str]:
        """Every thing of the whole fleet, index 0 to ``fleet_size - 1``."""
        return [self.thing_name(i) for i in range(self.fleet_size)]


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


def fleet_assignment(config: FleetConfig) -> dict[str, str]:
    """The behaviours of ``config``'s own range, as assigned over the whole fleet: the same
    for a thing whichever range (worker process, shard) it falls in."""
    whole = assign_behaviours(config.fleet_thing_names(), config.mix, config.seed)
    return {thing: whole[thing] for thing in config.thing_names()}


def worker_ranges(start: int, count: int, workers: int) -> list[tuple[int, int]]:
    """(start, count) of each worker process of ``--workers`` (empty ranges left out)."""
    per = -(-count // workers)
    ranges = [(start + w * per, min(per, count - w * per)) for w in range(workers)]
    return [(s, c) for s, c in ranges if c > 0]


class DeviceShell:
    """One device: an :class:`Agent` plus its MQTT connection, timers and NVM file."""

    def __init__(self, thing: str, behaviour: Behaviour, config: FleetConfig, pump: Pump,
                 *, now: Callable[[], float] = time.time,
                 on_failure: OnFailure | None = None, record: Record | None = None) -> None:
        self.thing = thing
        self.behaviour = behaviour
        self._config = config
        self._now = now
        self._on_failure = on_failure
        self._record = record
        self._loop = asyncio.get_running_loop()
        self._nvm_path = None if config.state_dir is None else config.state_dir / f"{thing}.json"
        self._saved = self._load_nvm()
        self._rng = random.Random(f"{config.seed}:{thing}")  # str seeds are stable
        self.agent = self._default_agent(self._saved)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._seq = 0
        #: what it received, by kind (notify, notify-next, replies): for a drill's message
        #: accounting
        self.received: Counter[str] = Counter()
        self._pump = pump
        self._client = self._make_client(clean_session=self._clean)
        self._starting = False

    @property
    def _clean(self) -> bool:
        return bool(getattr(self.behaviour, "clean_session", False))

    def _make_client(self, *, clean_session: bool) -> Client | SdkTransport | HttpTransport:
        config = self._config
        tls = None
        if config.tls_ca is not None:
            cert_dir = config.cert_dir or Path(".")
            tls = (str(config.tls_ca), str(cert_dir / f"{self.thing}.crt"),
                   str(cert_dir / f"{self.thing}.key"))
        if getattr(self.behaviour, "transport", "mqtt") == "sdk":
            from devicesim.sdk import SdkTransport  # awscrt only where a device uses it

            return SdkTransport(self.thing, config.host, config.port,
                                on_message=self._on_message,
                                on_connection=self._on_connection,
                                keepalive=config.keepalive, record=self._record,
                                now=self._now, tls=tls)
        client = Client(
            ClientOptions(client_id=self.thing, host=config.host, port=config.port,
                          clean_session=clean_session, keepalive=config.keepalive,
                          tls_ca=tls[0] if tls else None, tls_cert=tls[1] if tls else None,
                          tls_key=tls[2] if tls else None),
            self._pump, on_message=self._on_message, on_connection=self._on_connection)
        if getattr(self.behaviour, "transport", "mqtt") == "http":
            if config.jobs_data is None:
                raise ValueError(f"{self.thing}: the http behaviour needs the jobs data "
                                 "endpoint (--jobs-data URL; a drill gives its own)")
            return HttpTransport(self.thing, client, config.jobs_data,
                                 on_message=self._on_message,
                                 ca=str(config.tls_ca) if config.tls_ca else None,
                                 now=self._now)
        return client

    def _default_agent(self, nvm: Nvm) -> Agent:
        return Agent(self.thing, self.behaviour, nvm, self._rng, self._config.agent)

    def _load_nvm(self) -> Nvm:
        if self._nvm_path is not None:
            with contextlib.suppress(FileNotFoundError):
                return nvm_store.load(self._nvm_path)
        return Nvm.factory()

    def _filters(self) -> list[str]:
        filters = topics.device_subscriptions(self.thing)
        if not self._config.subscribe_replies:  # AWS semantics: replies come unasked
            filters = [f for f in filters if f.endswith("/notify-next")]
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
            filters = self._filters()
            if not session_present and filters:
                await self._client.subscribe(filters)
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
        self._client = self._make_client(clean_session=clean_session or self._clean)
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

    @property
    def connected(self) -> bool:
        return self._client.connected

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
        self.received["replies" if topics.is_reply(topic) else
                      "notify-next" if topic.endswith("/notify-next") else "notify"] += 1
        if self._record is not None and not (
                getattr(self._client, "records_requests", False) and topics.is_reply(topic)):
            # (a transport that records its requests records their replies: with the token
            # on the wire, which is not the one handed to the agent)
            self._record(classify(topic, payload, self._now()))
        self._feed(MessageReceived(topic, payload))

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self._feed(TimerFired(key))

    def _feed(self, event: Event) -> None:
        """Hand ``event`` to the agent and carry out its actions. Whatever raises here (a
        behaviour plugin, the agent, persisting the NVM) is supervised: logged, reported,
        published as an ``error`` event; the device goes on with its next event."""
        try:
            for action in self.agent.handle(event, self._now()):
                self._act(action)
        except Exception as e:  # any bug: the device must not stall or fail silently
            log.exception("device failed thing_name=%s event=%s", self.thing,
                          type(event).__name__)
            self._failed(e)

    def _failed(self, error: Exception) -> None:
        if self._on_failure is not None:
            try:
                self._on_failure(f"device {self.thing}", error)
            except Exception:  # a broken supervisor must not take the device down with it
                log.exception("on_failure raised thing_name=%s", self.thing)
        reason = describe(error)[:_MAX_ERROR_REASON]
        try:
            self._emit(DeviceEvent(kind=DeviceEventKind.ERROR, thing_name=self.thing,
                                   timestamp=self._now(), reason=reason))
        except Exception:  # the connection may be what failed: the failure is reported
            log.exception("error event not published thing_name=%s", self.thing)

    def _emit(self, event: DeviceEvent) -> None:
        """Publish (``publish_events``) and record a device event with the next ``seq``
        (used only once it is queued)."""
        seq = self._seq + 1
        body = dataclasses.replace(event, seq=seq).to_dict()
        if self._config.publish_events:
            self._client.publish(topics.device_events(self.thing), orjson.dumps(body))
        self._seq = seq
        if self._record is not None:
            self._record(Op(time=self._now(), process=self.thing, type=OpType.INFO,
                            f=f"device:{body['kind']}", value=body))

    def _act(self, action: Action) -> None:
        if isinstance(action, Publish):
            self._client.publish(action.topic, action.payload, action.qos)
            if self._record is not None and not getattr(self._client, "records_requests",
                                                        False):
                self._record(classify(action.topic, action.payload, self._now()))
        elif isinstance(action, EmitEvent):
            self._emit(action.event)
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
    """Many devices on this loop. ``start()`` ramps the connects; ``stop()`` disconnects.

    ``on_failure(where, error)`` hears of every failure the fleet survived: a device's
    (``where`` = ``"device {thing}"``) and its MQTT clients' and pump's; each is also kept as
    one line in :attr:`failures`.
    """

    def __init__(self, config: FleetConfig, *, now: Callable[[], float] = time.time,
                 on_failure: OnFailure | None = None, record: Record | None = None) -> None:
        self.config = config
        self._record = record
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
        self._now = now
        self._on_failure = on_failure
        #: one line per failure survived, ``"{where}: {Type}: {message}"``, in order
        self.failures: list[str] = []
        self._pump = Pump(on_failure=self._failed)
        self.assignment = fleet_assignment(config)
        self.devices: dict[str, DeviceShell] = {}

    def _failed(self, where: str, error: BaseException) -> None:
        self.failures.append(f"{where}: {describe(error)}")
        if self._on_failure is not None:
            self._on_failure(where, error)

    async def start(self) -> float:
        """Connect and subscribe every device; returns the seconds it took.

        If any device fails to, the connects still in flight are cancelled, every device is
        stopped and :class:`FleetStartError` names how many failed and the first error."""
        began = time.monotonic()
        gate = asyncio.Semaphore(self.config.connect_concurrency)
        # behaviours are stateless policy objects: one instance per name is shared
        behaviours = {name: resolve(name) for name in set(self.assignment.values())}
        failed: list[tuple[str, BaseException]] = []

        async def one(thing: str) -> None:
            try:
                shell = DeviceShell(thing, behaviours[self.assignment[thing]], self.config,
                                    self._pump, now=self._now, on_failure=self._failed,
                                    record=self._record)
                self.devices[thing] = shell
                await shell.start(gate)
            except Exception as e:  # whatever it is, start() raises it as FleetStartError
                failed.append((thing, e))
                raise

        try:
            async with asyncio.TaskGroup() as group:  # one failure cancels the others
                for thing in self.assignment:
                    group.create_task(one(thing), name=f"connect {thing}")
        except BaseException as e:  # failed or cancelled: leave no device connected
            await self.stop()
            if failed and isinstance(e, Exception):  # not a cancellation or interrupt
                raise FleetStartError(failed, len(self.assignment)) from failed[0][1]
            raise
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

    def received(self) -> Counter[str]:
        """What the devices received, by kind (``notify``, ``notify-next``, ``replies``),
        over the fleet."""
        total: Counter[str] = Counter()
        for d in self.devices.values():
            total.update(d.received)
        return total

    def nvm_summaries(self) -> dict[str, dict[str, object]]:
        """Each device's NVM as persisted (what a reboot would resume from)."""
        return {thing: d.saved_nvm.summary().to_dict() for thing, d in self.devices.items()}

    def summary(self) -> dict[str, Any]:
        """What ``devicesim run --summary`` writes: per device its behaviour, event count
        (last ``seq``) and persisted NVM summary, and the failures survived::

            {"things": {"dev-0000": {"behaviour": "reference", "events": 7,
                                     "nvm": {"activeSlot": "A", ...}}, ...},
             "failures": ["device dev-0003: RuntimeError: boom", ...]}
        """
        nvm = self.nvm_summaries()
        return {"things": {thing: {"behaviour": self.assignment[thing], "events": d.events,
                                   "nvm": nvm[thing], "received": dict(d.received)}
                           for thing, d in sorted(self.devices.items())},
                "failures": list(self.failures)}

"""Running a drill: broker, jobs service, recorder, fleet, controller; then the checker.

The runner is the only place that wires the parts together. Each process records what it
already sees, Jepsen-style, one writer per process: in-process devices and the jobs service
hand their ops to the recorder directly (a device its requests and events, the service the
replies, pushes and jobs events it publishes, in its own order); device worker processes --
started here (``workers``) or anywhere that reaches the broker (``shards``) -- join the drill
over the broker (:mod:`fleet.drill.shards`), record their own history parts and send only
compact progress batches for the live view; the controller's calls and the runner's own
markers are recorded directly. No process receives every message of the fleet a second
time. After the schedule settled (or timed out, or a component failed), the runner drains:
it tells the workers to stop and collects their parts and summaries (event counts, NVM,
requests unanswered) over the broker, checking each part holds as many ops as its worker
wrote, and waits, bounded, until the recorder holds every device event (by count) and a
reply to every request. Then the final state is recorded and the checker — a pure function
of the history — gives the verdict; the ``complete`` invariant judges the markers written here
(``timeout``, ``stalled``, ``interrupted``, ``failure``, ``drain``,
``final-state.eventCounts``, ``end``).

Supervision: the service, the recorder and the fleet report an unexpected error through
``on_failure``; the runner records a ``failure`` marker and stops the schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from devicesim.behaviours import IMPORT_PATH_ENV
from devicesim.documents import stretched
from devicesim.engine import Fleet, FleetConfig, assign_behaviours
from devicesim.metrics import LiveMetrics
from devicesim.mqtt import SECRET_ENV
from devicesim.recording import in_device_history
from devicesim.wire import history, topics
from devicesim.wire.history import Op, OpType, fault
from devicesim.wire.joining import Invitation
from fleet import certs
from fleet.broker import BrokerAddress, BrokerError, EmbeddedBroker, probe
from fleet.checker import Verdict, analyse
from fleet.checker.timeline import EXTERNAL, PARTITIONING, Timeline
from fleet.drill import resources
from fleet.drill.controller import Controller, ControllerError, iot_client
from fleet.drill.progress import Progress
from fleet.drill.proxy import ProxyError, ProxyProcess, capacity
from fleet.drill.recorder import Recorder
from fleet.drill.shards import ShardHub
from fleet.drill.spec import MESSAGE_ACTIONS, NETWORK_ACTIONS, Drill, Step, When
from fleet.provision import provision
from fleet.service.faults import MessageFault
from fleet.service.settings import ServiceSettings
from fleet.service.shell import JobsService, ServiceConfig
from fleet.service.up import ready_info

log = logging.getLogger(__name__)

#: with devices in worker processes: how long the recorder must hear nothing before a
#: settled-looking fleet counts as settled
QUIET_SECONDS = 0.5
#: how long the drain waits for the last device events and replies to reach the recorder
DRAIN_SECONDS = 10.0
#: the same after an interrupt (someone is waiting for the drill to stop)
INTERRUPTED_DRAIN = 2.0
#: how long the drain waits for the workers' history parts after telling them to stop
PART_SECONDS = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """AWS IoT Core, or any AWS-compatible endpoint, as the target of a drill: no local
    broker or jobs service. Devices connect to ``endpoint`` (``mqtts://``) with their
    provisioned certificates (``cert_dir``, as ``fleet provision`` writes them); the
    controller calls the control plane at ``control_endpoint`` (None: AWS's, from the
    default credential chain and ``region``)."""

    endpoint: BrokerAddress
    ca: Path
    cert_dir: Path
    control_endpoint: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    broker_url: str | None = None
    #: device processes started here, joining over the broker (1: devices in this process)
    workers: int = 1
    #: device processes started elsewhere that join over the broker
    #: (``devicesim run --join SESSION --shard i/N``); 0: none (see ``workers``)
    shards: int = 0
    #: the name workers join by (default: the drill's name; a unique one for ``workers``)
    session: str | None = None
    #: with ``shards``: how long to wait for every shard to join (the drill's clock starts
    #: once they have)
    join_seconds: float = 300.0
    #: the secure profile: devices provisioned (fleet provision's calls, through boto3) and
    #: connecting with mutual TLS to the embedded broker's TLS listener
    secure: bool = False
    #: run against an AWS-compatible target instead of a local broker and service
    target: Target | None = None
    #: where to write, once the drill is ready for its external devices, how each connects
    #: (JSON, the shape of ``fleet up``'s ready file plus ``external``)
    ready_file: Path | None = None
    #: serve Prometheus metrics on 127.0.0.1 at this port while the drill runs (0: a free
    #: one, said through ``status``)
    metrics_port: int | None = None
    #: given the drill's live figures (:meth:`_Run.snapshot`) twice a second
    live: Callable[[dict[str, str]], None] | None = None
    report_dir: Path | None = None
    status: Callable[[str], None] | None = None
    #: set (to the signal's name) to stop the drill early: the schedule is cancelled, the
    #: run drains briefly and ends with an ``interrupted`` end marker, history and verdict
    interrupt: Interrupt | None = None


class Interrupt:
    """A request to stop a drill early, e.g. from a signal handler."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event = asyncio.Event()

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    async def wait(self) -> str:
        await self._event.wait()
        assert self.reason is not None
        return self.reason


@dataclass(frozen=True, slots=True)
class DrillResult:
    verdict: Verdict
    history_path: Path
    ops: list[Op]
    timed_out: bool
    interrupted: str | None = None
    #: what the verdict was judged on (the report page draws from it)
    timeline: Timeline | None = None


class Aborted(Exception):
    """A component failed: the schedule stops (the ``failure`` marker says why)."""


class Stalled(Exception):
    """Nothing happened for the drill's ``stall_seconds`` (or, its argument says, the shards
    did not all join within ``join_seconds``): the schedule stops (the ``stalled`` marker says
    what it waited for and what it had seen)."""


class _Run:
    """One drill run's live parts."""

    def __init__(self, drill: Drill, options: RunOptions, workdir: Path) -> None:
        self.drill, self.options, self.workdir = drill, options, workdir
        self.rng = random.Random(drill.seed)
        self.progress = Progress()
        self.changed = asyncio.Event()
        self.started = time.time()
        #: when the current wave began (a soak's ``at`` times count from it)
        self.wave_started = self.started
        #: a soak: why it stops after the current wave (None: it goes on)
        self.stopping: str | None = None
        self.broker: EmbeddedBroker | None = None
        self.address: BrokerAddress | None = None
        self.service: JobsService | None = None
        self.service_config: ServiceConfig | None = None
        self.recorder: Recorder | None = None
        self.fleet: Fleet | None = None
        self.workers: list[asyncio.subprocess.Process] = []
        self.hub: ShardHub | None = None
        #: the network proxy the devices connect through (drills with network faults)
        self.proxy: ProxyProcess | None = None
        self.proxy_address: BrokerAddress | None = None
        #: the devices the proxy cuts or black-holes now
        self.partitioned: set[str] = set()
        self._timeout: asyncio.Timeout | None = None  # the schedule's (moved by joined())
        self.failed = False
        self.waiting_for = "the fleet to connect"
        self.last_op = time.monotonic()
        # a stall must outlast every budget, or a device that never reacts would end the
        # history before its deadline and escape judgement
        b = drill.budgets
        self.stall_seconds = max(drill.stall_seconds, 1.0 + max(
            b.notice_seconds, b.recover_seconds, b.reply_timeout_seconds))
        self._early: list[Op] = []  # markers written before the recorder started
        self.event_counts: dict[str, int] = {}
        #: what the simulated devices received, by kind (notify, notify-next, replies)
        self.received: Counter[str] = Counter()
        self.nvm: dict[str, Any] = {}
        #: requests of worker processes' devices still unanswered when they stopped
        self.unanswered = 0
        self.targets: dict[str, list[str]] = {}
        #: the thing groups the drill made: their direct members, their parent, and the
        #: continuous jobs on each (they reach what joins the group)
        self.groups: dict[str, list[str]] = {}
        self.group_parent: dict[str, str | None] = {}
        self.continuous: dict[str, list[str]] = {}
        self.powered_off: list[str] = []
        #: the simulated devices, then the external ones (the drill's things)
        self.simulated = FleetConfig(host="", port=0, prefix=drill.prefix,
                                     count=drill.devices).thing_names()
        self.external = list(drill.external.things)
        clash = sorted(set(self.external) & set(self.simulated))
        if clash:
            raise ValueError(f"external device {clash[0]} has the name of a simulated device "
                             f"(prefix {drill.prefix!r}): rename it or change the prefix")
        self.things = self.simulated + self.external
        self.progress.external = frozenset(self.external)
        self.certs: certs.CertDir | None = None
        #: the control plane's URL (None: AWS's own)
        self.control_endpoint: str | None = None
        self.metrics = LiveMetrics() if options.metrics_port is not None else None
        #: for the live view: devices connected now, lost access noticed, recovered, faults
        self.online: set[str] = set()
        self.tally: Counter[str] = Counter()
        self.step = "waiting"

    # -- recording -----------------------------------------------------------------------

    def mark(self, f: str, **value: Any) -> None:
        op = Op(time=time.time(), process="drill", type=OpType.INFO, f=f, value=value)
        self.observe(op)
        if self.recorder is None:
            self._early.append(op)
        else:
            self.recorder.record(op)

    def fail(self, where: str, error: BaseException) -> None:
        """``on_failure`` of every component: recorded as a ``failure`` marker, and the
        schedule stops (the checker's ``complete`` fails the run)."""
        log.error("component failed where=%s error=%r", where, error)
        self.mark("failure", where=where, error=f"{type(error).__name__}: {error}")
        self.failed = True
        self.changed.set()

    def record(self, op: Op) -> None:
        """An op recorded by the in-process service: history, and the live view."""
        assert self.recorder is not None
        self.recorder.record(op)
        self.on_op(op)

    def record_device(self, op: Op) -> None:
        """An op recorded by an in-process device: its requests and events go into the
        history (:func:`~devicesim.recording.in_device_history`), everything into the live
        view (which waits for replies before the drill ends). Against a target whose
        service is not ours, what the device is sent (replies, pushes) goes in too: nobody
        else can record it."""
        assert self.recorder is not None
        if in_device_history(op) or self.options.target is not None:
            self.recorder.record(op)
        self.on_op(op)

    def record_call(self, op: Op) -> None:
        """A controller call: history and metrics."""
        assert self.recorder is not None
        self.recorder.record(op)
        self.observe(op)

    def observe(self, op: Op) -> None:
        """Count an op for the live view and the metrics (every op the run sees once)."""
        if self.metrics is not None:
            self.metrics.observe(op)
        kind = fault(op)
        if kind is not None and not kind.startswith("dropped:"):  # the faults, not each push
            self.tally["faults"] += 1

    def on_op(self, op: Op) -> None:
        self.observe(op)
        if op.f in ("device:connected", "presence:connected"):
            self.online.add(op.process)
        elif op.f in ("device:disconnected", "device:rebooted", "presence:disconnected"):
            self.online.discard(op.process)
        elif op.f in ("device:lost_access", "device:recovered"):
            self.tally[op.f] += 1
        self.progress.observe(op)
        self.last_op = time.monotonic()
        self.changed.set()

    async def until(self, condition: Callable[[], bool], deadline: float | None = None, *,
                    abortable: bool = True) -> None:
        """Wait for ``condition`` to hold, re-checking on each recorded op (and once at
        ``deadline``, for time-based conditions). The drill's own timeout bounds it; a
        component failure ends it with :class:`Aborted`, and so does a stall, with
        :class:`Stalled`: nothing recorded for the drill's ``stall_seconds`` while it was not
        waiting for a time (unless not ``abortable``)."""
        while not condition():
            if self.failed and abortable:
                raise Aborted
            self.changed.clear()
            now = time.time()
            delay = None
            if deadline is not None and deadline > now:
                delay = deadline - now
            elif abortable:
                quiet = time.monotonic() - self.last_op
                if quiet >= self.stall_seconds:
                    raise Stalled
                delay = self.stall_seconds - quiet
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.changed.wait()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self.options.target is not None:
            await self.start_on_target(self.options.target)
            return
        drill, options = self.drill, self.options
        if options.broker_url and self.external:
            raise ValueError("external devices need the embedded broker (its plugin tells the "
                             "drill when they connect and go)")
        if options.broker_url:
            self.address = BrokerAddress.parse(options.broker_url).privileged()
            if await asyncio.to_thread(probe, self.address) != 0:
                raise ConnectionError(f"broker {self.address.url} refused the connection")
        else:
            self.certs = None if not options.secure else \
                await asyncio.to_thread(certs.ensure, self.workdir / "certs")
            try:
                self.broker = EmbeddedBroker(work_dir=self.workdir / "broker",
                                             secure=self.certs, presence=bool(self.external))
            except BrokerError as e:
                raise ValueError(f"external devices: {e}") from None
            self.address = await asyncio.to_thread(self.broker.start)
            if self.broker.tls_address is not None:  # every client speaks TLS there
                self.address = self.broker.tls_address
        if drill.network:
            await self.start_proxy()
        # what no process of ours records: the external devices' connects and disconnects
        # (their requests: the service records them as it receives them)
        recorder = Recorder(self.address, listener=self.on_op, on_failure=self.fail,
                            filters=[topics.presence(t) for t in self.external],
                            spill=self.spill)
        self.recorder = recorder
        for op in self._early:
            recorder.record(op)
        self.service_config = ServiceConfig(
            broker=self.address, state=self.workdir / "jobs.db", settings=drill.service,
            seed=drill.seed,
            authority=certs.Authority.load(self.certs) if self.certs is not None else None,
            https=None if self.certs is None else (self.certs.server, self.certs.server_key),
            # (certs are made only for the embedded broker's secure profile)
            principals=None if self.certs is None or self.broker is None
            else self.broker.principals_path, record_requests_of=frozenset(self.external))
        self.service = JobsService(self.service_config, on_failure=self.fail,
                                   record=self.record)
        await self.service.start()
        await recorder.start()
        if self.certs is not None:
            self.status(f"provisioning {len(self.things)} things (certificates, policy)")
            assert self.service.endpoint is not None
            await asyncio.to_thread(provision, iot_client(self.service.endpoint,
                                                          verify=str(self.certs.ca)),
                                    self.things, self.workdir / "devices")
            self.started = time.time()  # the drill's clock starts with a provisioned fleet
        mix = self.mark_start(broker=self.address.url, endpoint=self.service.endpoint,
                              workers=max(1, self.options.workers), shards=self.options.shards,
                              brokerSemantics="aws" if self.address.aws_semantics else "plain",
                              secure=self.certs is not None)
        self.control_endpoint = self.service.endpoint
        await self.start_fleet(mix)
        if self.external:
            self.invite_external()

    async def start_proxy(self) -> None:
        """The network proxy in front of the broker's plain listener: the devices connect
        through it (:mod:`fleet.drill.proxy`)."""
        assert self.address is not None
        if self.certs is not None or self.address.tls:
            raise ValueError("network faults: not with --secure or a TLS broker (the proxy "
                             "reads each device's client id from its MQTT CONNECT, which "
                             "TLS hides)")
        if self.options.shards:
            raise ValueError("network faults: not with --shards (the proxy listens on this "
                             "host's loopback only)")
        if len(self.things) > capacity():
            raise ValueError(f"network faults: at most {capacity()} devices go through the "
                             f"proxy (open-files limit), not {len(self.things)}")
        self.proxy = ProxyProcess((self.address.host, self.address.port))
        port = await self.proxy.start(on_exit=lambda status: self.fail(
            "network proxy", ProxyError(f"exited with status {status}")))
        self.proxy_address = BrokerAddress("127.0.0.1", port)
        self.status(f"network proxy {self.proxy_address.url} in front of {self.address.url}")

    @property
    def spill(self) -> Path | None:
        """A soak's history goes to disk as it is recorded (its memory must not grow)."""
        return None if self.drill.duration is None else self.workdir / "history.spill"

    def mark_start(self, **where: Any) -> dict[str, float]:
        """The ``start`` marker (the drill, its fleet, its requirements, and ``where``);
        the behaviour mix."""
        drill = self.drill
        mix = drill.mix or {drill.behaviour: 1.0}
        behaviours = assign_behaviours(self.simulated, mix, drill.seed)
        behaviours.update({t: EXTERNAL for t in self.external})
        self.mark("start", drill=drill.name, seed=drill.seed, devices=drill.devices, mix=mix,
                  behaviours=behaviours, requirements=drill.checks.to_json(), pace=drill.pace,
                  **({"external": self.external} if self.external else {}), **where)
        return mix

    async def start_on_target(self, target: Target) -> None:
        """No broker or service of ours: the devices (in this process) connect to the
        target with their certificates and record all they see."""
        drill = self.drill
        if self.options.workers > 1 or self.options.shards:
            raise ValueError("--target: the devices run in the drill's process")
        if self.external:
            raise ValueError("--target: external devices take part in local drills only "
                             "(point them at AWS yourself)")
        if drill.network:
            raise ValueError("--target: network faults need the drill's proxy in front of a "
                             "local broker")
        ours = sorted({s.action for s in drill.steps
                       if s.action in MESSAGE_ACTIONS or s.action == "restart-service"})
        if ours:
            raise ValueError(f"--target: {', '.join(ours)} need the drill's own jobs service")
        missing = [t for t in self.things if not (target.cert_dir / f"{t}.crt").exists()]
        if missing:
            raise ValueError(f"--target: no certificate for {len(missing)} things in "
                             f"{target.cert_dir} (first {missing[0]}): fleet provision "
                             f"--prefix {drill.prefix} --count {drill.devices} --cert-dir "
                             f"{target.cert_dir} first")
        self.address = target.endpoint
        self.control_endpoint = target.control_endpoint
        self.recorder = Recorder(target.endpoint, listener=self.on_op, on_failure=self.fail,
                                 filters=[], spill=self.spill)
        for op in self._early:
            self.recorder.record(op)
        if drill.service != ServiceSettings():
            self.status("the drill's [service] settings do not apply to --target: its service "
                        "has its own (a slower deletion sweep means fewer devices mid-step)")
        mix = self.mark_start(broker=target.endpoint.url,
                              endpoint=target.control_endpoint or "aws", workers=1, shards=0,
                              brokerSemantics="aws", secure=True, target="aws",
                              serviceSettingsApplied=drill.service == ServiceSettings())
        self.fleet = Fleet(FleetConfig(
            host=target.endpoint.host, port=target.endpoint.port, prefix=drill.prefix,
            count=drill.devices, mix=mix, seed=drill.seed, publish_events=False,
            subscribe_replies=False, tls_ca=target.ca, cert_dir=target.cert_dir),
            on_failure=self.fail, record=self.record_device)
        await self.fleet.start()

    async def joined(self) -> None:
        """With ``shards``: until every shard joined, bounded by ``join_seconds`` (a
        :class:`Stalled` then); the drill's clock starts after."""
        hub = self.hub
        if hub is None or not self.options.shards:
            return
        seconds = self.options.join_seconds
        await self.hold_clock(lambda: len(hub.joined) >= hub.shards, seconds, lambda: (
            f"{hub.shards - len(hub.joined)} of {hub.shards} shards to join (devicesim run "
            f"--join {hub.session} --shard i/{hub.shards}) within {seconds:g} s"),
            lambda: f"not every shard joined within {seconds:g} s")

    def invite_external(self) -> None:
        """Say how each external device connects (and write it to the ready file)."""
        assert self.broker is not None
        assert self.service is not None
        where = self.proxy_address or self.broker.tls_address or self.broker.address
        devices = self.workdir / "devices"
        info = ready_info(self.broker.address, self.service.endpoint, self.workdir,
                          tls=self.broker.tls_address, certs=self.certs,
                          jobs_data=self.service.jobs_data_endpoint)
        info["drill"] = {"name": self.drill.name, "pid": os.getpid()}
        info["external"] = external = {}
        for thing in self.external:
            how: dict[str, Any] = {"clientId": thing, "host": where.host, "port": where.port,
                                   "url": where.url}
            if self.certs is not None:
                how.update(ca=str(self.certs.ca), cert=str(devices / f"{thing}.crt"),
                           key=str(devices / f"{thing}.key"))
            external[thing] = how
        if self.options.ready_file is not None:  # removed when the drill ends (stop)
            path = self.options.ready_file
            path.parent.mkdir(parents=True, exist_ok=True)
            certs.write_file(path, json.dumps(info, indent=2).encode(), secret=True)
        for thing, how in external.items():
            tls = f", CA {how['ca']}, certificate {how['cert']}, key {how['key']}" \
                if self.certs is not None else ""
            self.status(f"external device {thing}: connect to {where.url} as client id "
                        f"{thing}{tls}")
        self.status(f"waiting up to {self.drill.external.connect_seconds:g} s for "
                    f"{len(self.external)} external device(s) to connect (replies reach a "
                    f"device unasked, as on AWS IoT)")

    async def connected(self) -> None:
        """Until every external device connected, bounded by the drill's
        ``external.connect_seconds`` (a :class:`Stalled` then); the drill's clock starts
        after."""
        if not self.external:
            return
        seconds = self.drill.external.connect_seconds

        def missing() -> list[str]:
            return [t for t in self.external if t not in self.progress.connected]

        await self.hold_clock(lambda: not missing(), seconds, lambda: (
            f"external device(s) {', '.join(missing())} to connect within {seconds:g} s"),
            lambda: f"external device(s) {', '.join(missing())} did not connect within "
                    f"{seconds:g} s")

    async def hold_clock(self, condition: Callable[[], bool], seconds: float,
                         waiting: Callable[[], str], late: Callable[[], str]) -> None:
        """Until ``condition`` holds, bounded by ``seconds`` (:class:`Stalled` with ``late``
        then); the drill's clock (its ``at`` times and timeout) does not run meanwhile."""
        began = time.time()
        limit = time.monotonic() + seconds
        while not condition():
            self.waiting_for = waiting()
            if self.failed:
                raise Aborted
            left = limit - time.monotonic()
            if left <= 0:
                raise Stalled(late())
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.changed.wait()
        waited = time.time() - began
        self.started += waited
        self.wave_started += waited
        self.last_op = time.monotonic()
        if self._timeout is not None:
            self._timeout.reschedule(self._timeout.when() + waited)  # type: ignore[operator]

    async def ready(self) -> None:
        """Until every device is connected and idle."""
        await self.joined()
        await self.connected()
        self.waiting_for = "every device to connect and report idle"
        await self.until(lambda: self.progress.idle(self.things))
        self.mark("fleet-ready", seconds=round(time.time() - self.started, 3))

    @property
    def deadline(self) -> float:
        """The schedule's end at the latest: its timeout after the start (a soak: after its
        duration, for the last wave)."""
        return self.started + (self.drill.duration or 0.0) + self.drill.timeout

    async def start_fleet(self, mix: dict[str, float]) -> None:
        assert self.address is not None
        drill, options = self.drill, self.options
        shards = options.shards or max(1, options.workers)
        tls = None if self.broker is None else self.broker.tls_address
        # where devices connect: TLS in the secure profile, the proxy with network faults
        devices = tls or self.proxy_address or self.address
        tls_ca = None if tls is None or self.certs is None else self.certs.ca
        cert_dir = None if tls_ca is None else self.workdir / "devices"
        if not drill.devices:
            return  # external devices only
        if shards == 1:
            self.fleet = Fleet(FleetConfig(host=devices.host, port=devices.port,
                                           prefix=drill.prefix, count=drill.devices, mix=mix,
                                           seed=drill.seed, publish_events=False,
                                           subscribe_replies=not self.address.aws_semantics,
                                           tls_ca=tls_ca, cert_dir=cert_dir,
                                           jobs_data=self.jobs_data),
                               on_failure=self.fail,
                               record=self.record_device)
            await self.fleet.start()
            return
        run = uuid.uuid4().hex
        session = options.session or (drill.name if options.shards else
                                      f"{drill.name}-{run[:8]}")
        self.hub = ShardHub(self.address, session, Invitation(
            run=run, drill=drill.name, prefix=drill.prefix, total=drill.devices, mix=mix,
            seed=drill.seed, shards=shards, subscribe_replies=not self.address.aws_semantics,
            tls=None if tls is None else {"url": tls.url, "tls_ca": str(tls_ca),
                                          "cert_dir": str(cert_dir)},
            devices=None if self.proxy_address is None else self.proxy_address.url,
            jobs_data=self.jobs_data),
            listener=self.on_op, on_change=self.changed.set,
            on_joined=lambda shard, info: self.mark("shard-joined", shard=shard, **info),
            on_failure=self.fail)
        await self.hub.start()
        self.mark("invitation", session=session, run=run, shards=shards)
        if options.shards:
            self.status(f"waiting for {shards} shards: devicesim run --broker "
                        f"{self.address.url} --join {session} --shard i/{shards}")
            return
        # the workers' links to the drill: the plain listener (a privileged client with its
        # secret; their devices speak TLS in the secure profile)
        link = self.address if self.broker is None else self.broker.address
        env = {**os.environ, IMPORT_PATH_ENV: _import_path()}
        if self.address.secret is not None:  # the drill's topics are not a device's
            env[SECRET_ENV] = self.address.secret
        for w in range(shards):
            self.workers.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "devicesim.cli", "run", "--broker", link.url,
                "--join", session, "--shard", f"{w}/{shards}", "--quiet",
                stdin=asyncio.subprocess.DEVNULL, env=env))

    async def tick(self, every: float = 0.5) -> None:
        """Twice a second: the metrics' states (the service's executions by status, the
        devices by their last event) and the live view's figures."""
        while True:
            executions = self.service.store.status_counts() if self.service is not None \
                else None
            if self.metrics is not None:
                if executions is not None:
                    self.metrics.set_executions(executions)
                self.metrics.set_device_states(Counter(self.progress.last_kind.values()))
            if self.options.live is not None:
                self.options.live(self.snapshot(executions))
            await asyncio.sleep(every)

    def snapshot(self, executions: Mapping[str, int] | None) -> dict[str, str]:
        """The live figures of the drill: what is known before the checker runs (its
        violations come with the verdict, at the end)."""
        now = time.time()
        fields = {"now": self.step if self.step != "waiting" else
                  "waiting for " + self.waiting_for,
                  "devices": f"{len(self.online & set(self.things))}/{len(self.things)} "
                             f"connected",
                  "executions": ", ".join(f"{s} {n}" for s, n in sorted(
                      (executions or {}).items())) or "none yet",
                  "faults fired": str(self.tally["faults"]),
                  "lost access": f"{self.tally['device:lost_access']} noticed, "
                                 f"{self.tally['device:recovered']} recovered",
                  "elapsed": f"{max(0.0, now - self.started):.0f} s",
                  "left": f"at most {max(0.0, self.deadline - now):.0f} s (the drill's "
                          f"timeout)"}
        if self.external:
            fields["external"] = f"{len(self.online & set(self.external))}/" \
                                 f"{len(self.external)} connected"
        return fields

    async def stop(self) -> None:
        if self.external and self.options.ready_file is not None:
            self.options.ready_file.unlink(missing_ok=True)  # nothing to connect to any more
        if self.fleet is not None:
            await self.fleet.stop()
        await self.stop_workers()
        if self.hub is not None:
            await self.hub.close()
        if self.proxy is not None:
            await self.proxy.close()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.service is not None:
            await self.service.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.close)

    # -- the schedule ----------------------------------------------------------------------

    async def stop_workers(self) -> None:
        """SIGTERM the device worker processes and wait (bounded) for them to exit; each
        writes its summary first. One that does not exit is killed."""
        for proc in self.workers:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.workers:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                self.fail(f"device worker pid {proc.pid}",
                          TimeoutError("did not exit within 10 s of SIGTERM (killed)"))
        self.workers = []

    async def collect_parts(self, seconds: float) -> None:
        """Tell the workers to stop and wait, bounded, for each shard's history part (a
        worker started here that exited without one, or a shard that never joined, counts
        as done); merge the parts into
        the recorder, take their event counts, NVM and unanswered requests. A missing or
        broken part and every device failure a summary lists is a failure."""
        hub, recorder = self.hub, self.recorder
        assert hub is not None
        assert recorder is not None
        hub.stop_shards()
        exited = [asyncio.ensure_future(p.wait()) for p in self.workers]
        for waiter in exited:
            waiter.add_done_callback(lambda _: self.changed.set())

        def done() -> bool:
            return all(hub.settled(i) or i not in hub.joined
                       or (i < len(exited) and exited[i].done()) for i in range(hub.shards))

        self.waiting_for = "the device workers' history parts"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.until(done, abortable=False)
        for waiter in exited:
            waiter.cancel()
        await self.stop_workers()
        for i in range(hub.shards):
            where = f"device shard {i}"
            part = hub.parts.get(i)
            if part is None:
                why = hub.broken.get(i) or ("never joined" if i not in hub.joined else
                                            f"sent no history part within {seconds:g} s")
                self.fail(where, RuntimeError(why))
                continue
            try:
                with history.bulk():
                    for line in part.lines:
                        recorder.record(Op.from_line(line))
                for thing, info in part.summary["things"].items():
                    self.event_counts[thing] = int(info["events"])
                    self.received.update({str(k): int(v) for k, v in
                                          dict(info.get("received", {})).items()})
                    self.nvm[thing] = info["nvm"]
                for line in part.summary.get("failures", []):
                    self.fail(where, RuntimeError(str(line)))
                waiting = part.summary.get("unansweredRequests")
                if isinstance(waiting, list):  # a reply the service lost is accounted for,
                    # and one it sent as the worker stopped (a polling device's last poll)
                    self.unanswered += sum(
                        1 for key in map(tuple, waiting)
                        if key not in self.progress.lost_replies
                        and not self.progress.unanswered.answered(key))
                else:
                    self.unanswered += int(part.summary.get("unanswered", 0))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                self.fail(where, RuntimeError(f"unusable history part: {e}"))

    async def schedule(self, controller: Controller, interrupt: Interrupt | None) -> str:
        """Run the schedule (fleet ready, then the steps) until it is done, the drill's
        timeout, a stall, a component failure, or an interrupt; the markers say which.
        Returns ``"done"``, ``"timeout"`` or the interrupt's reason."""
        self.last_op = time.monotonic()  # the stall clock starts with the schedule, not
        # before start-up (provisioning a secure fleet takes a while)
        task = asyncio.create_task(self._schedule(controller), name="drill-schedule")
        stop = asyncio.create_task(interrupt.wait()) if interrupt is not None else None
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time()
                                          + max(0.0, self.deadline - time.time())) as timeout:
                self._timeout = timeout
                await asyncio.wait({t for t in (task, stop) if t is not None},
                                   return_when=asyncio.FIRST_COMPLETED)
                if self.drill.duration is not None and not task.done():
                    # a soak ends after the wave under way (a second signal cuts it short)
                    assert interrupt is not None
                    assert interrupt.reason is not None
                    self.stopping = interrupt.reason
                    self.mark("soak-stopping", reason=interrupt.reason)
                    self.status(f"{interrupt.reason}: the soak ends after this wave")
                    await asyncio.wait({task})
        except TimeoutError:
            await _cancel(task)
            self.mark("timeout", seconds=self.drill.timeout, waitingFor=self.waiting_for)
            return "timeout"
        finally:
            if stop is not None:
                await _cancel(stop)
        if not task.done():
            await _cancel(task)
            assert interrupt is not None
            assert interrupt.reason is not None
            self.mark("interrupted", reason=interrupt.reason, waitingFor=self.waiting_for)
            return interrupt.reason
        try:
            task.result()
        except Aborted:
            pass  # the failure marker says why
        except Stalled as e:
            seen = self.progress.summary()
            if self.hub is not None:
                seen["shardsJoined"] = sorted(self.hub.joined)
            why = {"reason": e.args[0]} if e.args else {"seconds": self.stall_seconds}
            self.mark("stalled", **why, waitingFor=self.waiting_for, seen=seen)
        return "done"

    async def _schedule(self, controller: Controller) -> None:
        await self.ready()
        if self.drill.duration is None:
            await self.run_steps(controller)
            return
        sampler = asyncio.create_task(self.sample_resources())
        try:
            await self.run_waves(controller, self.drill.duration)
        finally:
            await _cancel(sampler)

    async def run_waves(self, controller: Controller, duration: float) -> None:
        """A soak: the steps again and again, each wave's jobs named ``<job>-w<n>``, until
        ``duration`` seconds passed or it was told to stop (after the wave under way)."""
        wave = 0
        while True:
            self.wave_started = time.time()
            self.mark("wave", wave=wave)
            await self.run_steps(controller, f"-w{wave}")
            done = [job for job in self.targets if job.endswith(f"-w{wave}")]
            self.progress.forget_jobs(done)  # (memory must not grow with the waves)
            for job in done:
                del self.targets[job]
            wave += 1
            if self.stopping is not None or time.time() - self.started >= duration:
                break
        self.mark("soak-end", waves=wave, reason=self.stopping or "duration",
                  seconds=round(time.time() - self.started, 3))

    async def sample_resources(self) -> None:
        """Every few seconds (a 120th of the duration, 1 to 30 s), the memory and open
        files of every process of the drill, as a ``resources`` marker."""
        every = max(1.0, min(30.0, (self.drill.duration or 0.0) / 120))
        while True:
            pids = {"drill": os.getpid()}
            if self.broker is not None and self.broker.pid is not None:
                pids["broker"] = self.broker.pid
            if self.proxy is not None and self.proxy.pid is not None:
                pids["proxy"] = self.proxy.pid
            pids.update({f"worker-{i}": p.pid for i, p in enumerate(self.workers)})
            self.mark("resources", processes=await asyncio.to_thread(resources.sample, pids))
            await asyncio.sleep(every)

    async def run_steps(self, controller: Controller, suffix: str = "") -> None:
        for index, step in enumerate(self.drill.steps):
            if suffix:  # a soak's wave: its own jobs
                step = dataclasses.replace(
                    step, job=None if step.job is None else step.job + suffix,
                    jobs=tuple(j + suffix for j in step.jobs))
            when = step.when
            self.waiting_for = f"step {index + 1} ({step.action} {step.job or ''}".rstrip() + \
                f") to become due: {_describe(when)}"
            at = None if when.at is None else self.wave_started + when.at * self.drill.pace
            await self.until(lambda s=step: self.progress.reached(  # type: ignore[misc]
                s.when, s.job, (time.time() - self.wave_started) / self.drill.pace), at)
            self.step = f"step {index + 1}/{len(self.drill.steps)}: {step.action} " \
                        f"{step.job or ''}".rstrip()
            self.status(self.step)
            await self.act(step, controller)
            self.step = "waiting"

    def status(self, text: str) -> None:
        if self.options.status is not None:
            self.options.status(text)

    def sample(self, things: list[str], fraction: float) -> list[str]:
        n = round(len(things) * fraction)
        return sorted(self.rng.sample(things, n)) if n < len(things) else list(things)

    @property
    def jobs_data(self) -> str | None:
        """Where ``http`` devices send their requests: the drill's own service's HTTPS data
        plane (None against an external target)."""
        return None if self.service is None else self.service.jobs_data_endpoint

    def group_members(self, group: str) -> list[str]:
        """The things in ``group`` and the groups below it, as the drill made them."""
        below = [g for g in self.groups if self._under(g, group)]
        return sorted({t for g in below for t in self.groups[g]})

    def _under(self, group: str, ancestor: str) -> bool:
        seen: set[str] = set()
        current: str | None = group
        while current is not None and current not in seen:
            if current == ancestor:
                return True
            seen.add(current)
            current = self.group_parent.get(current)
        return False

    async def regroup(self, step: Step, controller: Controller) -> None:
        """create-group, add-to-group, remove-from-group (things registered as they join)."""
        group = step.group
        assert group is not None
        members = self.groups.setdefault(group, [])
        if step.action == "create-group":
            self.group_parent[group] = step.parent
            chosen = self.sample(self.simulated, step.fraction)
            await controller.group_members(group, chosen, create=True, parent=step.parent)
        elif step.action == "add-to-group":
            chosen = self.sample([t for t in self.simulated if t not in members],
                                 step.fraction)
            await controller.group_members(group, chosen)
        else:
            chosen = self.sample(list(members), step.fraction)
            await controller.group_members(group, chosen, add=False)
        if step.action == "remove-from-group":
            self.groups[group] = [t for t in members if t not in chosen]
        else:
            members.extend(chosen)
        for g, jobs in self.continuous.items():  # continuous jobs on it reach them, or not
            if not self._under(group, g):
                continue
            reached = set(self.group_members(g))
            for job in jobs:
                old = self.targets.setdefault(job, [])
                now = [t for t in old if t in reached or t in self.external] + \
                    [t for t in chosen if t in reached and t not in old]
                self.targets[job] = now
                self.progress.expect_more(job, len(now) - len(old))
        self.mark("group", action=step.action, group=group, things=chosen)

    async def act(self, step: Step, controller: Controller) -> None:
        action, job = step.action, step.job
        if action == "create-job":
            assert job is not None
            assert step.document is not None
            # every job targets the external devices: they are the ones under test
            members = self.group_members(step.group) if step.group else \
                self.sample(self.simulated, step.targets)
            targets = members + self.external
            self.targets[job] = targets
            self.progress.expect(job, len(targets))
            extra: dict[str, Any] = {}
            if step.timeout_minutes is not None:
                extra["timeoutConfig"] = {"inProgressTimeoutInMinutes": step.timeout_minutes}
            for member, config in (("jobExecutionsRolloutConfig", step.rollout),
                                   ("abortConfig", step.abort),
                                   ("jobExecutionsRetryConfig", step.retry)):
                if config is not None:
                    extra[member] = config
            if step.target_selection != "SNAPSHOT":
                extra["targetSelection"] = step.target_selection
            document = step.document if self.drill.pace == 1 else \
                stretched(step.document, self.drill.pace)
            if step.group:
                if step.target_selection == "CONTINUOUS":
                    self.continuous.setdefault(step.group, []).append(job)
                await controller.create_job(job, self.external, document,
                                            groups=(step.group,), **extra)
            else:
                await controller.create_job(job, targets, document, **extra)
        elif action in ("create-group", "add-to-group", "remove-from-group"):
            await self.regroup(step, controller)
        elif action in ("force-delete-job", "delete-job", "force-delete-jobs"):
            jobs = list(step.jobs) or ([job] if job is not None else [])
            before = {j: self.progress.deletions[j] for j in jobs}
            force = action != "delete-job"
            await asyncio.gather(*(controller.delete_job(j, force=force) for j in before))
            if step.wait:
                await self.deleted(controller, before)
        elif action in ("force-cancel-job", "cancel-job"):
            assert job is not None
            await controller.cancel_job(job, force=action == "force-cancel-job")
        elif action in ("force-cancel-executions", "force-delete-executions"):
            assert job is not None
            for thing in self.sample(self.targets.get(job, []), step.fraction):
                with contextlib.suppress(ControllerError):  # recorded; may be gone already
                    if action == "force-cancel-executions":
                        await controller.cancel_job_execution(job, thing)
                    else:
                        await controller.delete_job_execution(job, thing, 1)
        elif action == "power-off":
            assert job is not None
            running = sorted(self.progress.running(job) - set(self.external))
            self.powered_off = self.sample(running, step.fraction)
            await self.power("off", self.powered_off)
            self.progress.forget_requests(self.powered_off)
            self.mark("power-off", things=self.powered_off)
        elif action == "power-on":
            things, self.powered_off = self.powered_off, []
            self.mark("power-on", things=things, cleanSession=step.clean_session)
            await self.power("on", things, clean_session=step.clean_session)
        elif action in MESSAGE_ACTIONS:
            self.fault_messages(step)
        elif action in NETWORK_ACTIONS:
            await self.network(step)
        elif action == "restart-broker":
            await self.restart_broker(kill=step.kill)
        elif action == "restart-service":
            await self.restart_service(step.seconds)
        elif action == "settle":
            self.waiting_for = "the fleet to settle (every device idle, nothing pending)"
            await self.until(self.settled)
            while self.needs_quiet and not await self.quiet():
                await self.until(self.settled)

    async def power(self, action: str, things: list[str], *,
                    clean_session: bool = False) -> None:
        """Cut (``off``) or restore (``on``) the power of simulated devices: here, or by
        their workers (:meth:`ShardHub.power`)."""
        if self.fleet is not None:
            await asyncio.gather(*(
                self.fleet.devices[t].power_off() if action == "off" else
                self.fleet.devices[t].power_on(clean_session=clean_session) for t in things))
        elif self.hub is not None:
            try:
                await self.hub.power(action, things, clean_session=clean_session)
            except TimeoutError:
                self.fail("device workers", TimeoutError(
                    f"power-{action} of {len(things)} devices not done within 60 s"))
                raise Aborted from None
        elif things:
            raise ValueError(f"power-{action}: no simulated devices run here")

    def fault_messages(self, step: Step) -> None:
        """An MQTT-level fault at the jobs service (drop, duplicate, delay, reorder), or the
        heal of all, recorded as it takes effect."""
        if self.service is None:
            raise ValueError(f"{step.action}: needs the drill's own jobs service")
        kind = MESSAGE_ACTIONS[step.action]
        if kind is None:
            self.service.heal_messages()
            self.mark("notify-heal" if step.action == "heal-notify" else "message-heal")
            return
        assert step.job is not None
        # a device has one message fault at a time: a later step picks among the others
        faulted = self.service.message_faults
        things = self.sample([t for t in self.targets.get(step.job, []) if t not in faulted],
                             step.fraction)
        fault = MessageFault(kind, step.messages, step.seconds)
        self.service.fault_messages(things, fault)
        if kind == "drop":
            self.mark("notify-drop", things=things)
        else:
            self.mark("message-fault", kind=kind, messages=step.messages, things=things,
                      **({"seconds": step.seconds} if step.seconds else {}))

    async def network(self, step: Step) -> None:
        """A network fault at the proxy, or the heal of all: recorded once in effect, with
        the open connections it hit and when it was asked of the proxy (``start``: a device
        may record its cut connection before the marker is written); for the heal, the
        bytes it had held."""
        kind = NETWORK_ACTIONS[step.action]
        if kind is None:
            answer = await self._proxy(heal=None)
            self.partitioned.clear()
            self.mark("network-heal", released=answer["released"],
                      connections=answer["connections"])
            return
        # a device has one network fault at a time: a later step leaves the cut and the
        # black-holed ones alone until the heal
        pool = [t for t in (self.targets.get(step.job, []) if step.job is not None
                            else self.things) if t not in self.partitioned]
        things = self.sample(pool, step.fraction)
        if kind in PARTITIONING:
            self.partitioned.update(things)
        start = time.time()  # the proxy acts before it answers: a device may see it first
        answer = await self._proxy(fault=kind, things=things, seconds=step.seconds,
                                   rate=step.rate)
        detail = {"seconds": step.seconds} if kind == "delay" else \
            {"rate": step.rate} if kind == "throttle" else {}
        self.mark("network-fault", kind=kind, things=things, connections=answer["connections"],
                  start=round(start, 6), **detail)

    async def deleted(self, controller: Controller, before: dict[str, int]) -> None:
        """Until each job's deletion completed: told by its ``deleted`` jobs event when
        events are on (no polling), else by DescribeJob answering ResourceNotFound."""
        if self.drill.service.job_events and self.service is not None:
            await self.until(lambda: all(self.progress.deletions[j] > n
                                         for j, n in before.items()))
        else:
            await asyncio.gather(*(controller.wait_deleted(j, interval=0.2) for j in before))

    def settled(self) -> bool:
        """Every device idle and nothing pending. In-process devices record as they act,
        so their last recorded event is what they are doing now; devices in worker processes
        report late, and a target's service tells us nothing of what it holds pending:
        :meth:`quiet` allows for both."""
        idle = self.progress.idle(self.things)
        if self.service is None:
            return idle and not self.progress.unanswered
        return idle and self.service.store.pending_count() == 0

    @property
    def needs_quiet(self) -> bool:
        return self.fleet is None or self.service is None or bool(self.external)

    async def quiet(self, seconds: float = QUIET_SECONDS) -> bool:
        """When the drill cannot know everything at once (devices in other processes, a
        target's service), the fleet counts as settled only if it looks settled after
        every op heard for ``seconds``: a late report of work changes that, a device
        that polls and finds nothing to do does not."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while self.settled():
            self.changed.clear()
            if loop.time() >= end:
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(end):
                    await self.changed.wait()
        return False

    async def restart_broker(self, *, kill: bool) -> None:
        if self.broker is None:
            raise ValueError("restart-broker: only possible on the embedded broker")
        if kill:
            # a crash loses what the broker did not save yet; let one full autosave happen
            # first (the second save line starts after the first finished), so the sessions
            # and subscriptions of the drill's own recorder and service survive the crash
            for _ in range(2):
                await asyncio.to_thread(self.broker.wait_for_autosave)
        start = time.time()
        await asyncio.to_thread(self.broker.kill if kill else self.broker.stop)
        await asyncio.to_thread(self.broker.restart)
        self.mark("broker-outage", start=start, end=time.time(), kill=kill)

    async def _proxy(self, **command: Any) -> dict[str, Any]:
        """A command to the network proxy; one it refuses (or a proxy gone) fails the run."""
        assert self.proxy is not None
        try:
            return await self.proxy.command(**command)
        except ProxyError as e:
            self.fail("network proxy", e)
            raise Aborted from None

    async def restart_service(self, down: float) -> None:
        """Kill the jobs service (:meth:`JobsService.crash`), keep it down for ``down``
        seconds, and start a new one from its state file, its control plane on the same
        port; recorded as a ``service-outage`` marker."""
        if self.service is None or self.service_config is None:
            raise ValueError("restart-service: needs the drill's own jobs service")
        assert self.service.endpoint is not None
        port = urllib.parse.urlsplit(self.service.endpoint).port
        data_port = urllib.parse.urlsplit(self.service.jobs_data_endpoint or "").port
        start = time.time()
        await self.service.crash()
        self.status(f"jobs service killed; restarting in {down:g} s")
        await asyncio.sleep(down)  # the outage itself
        self.service = JobsService(dataclasses.replace(
            self.service_config, http_port=port or 0, jobs_data_port=data_port or 0),
            on_failure=self.fail, record=self.record)
        end = time.time()  # it is back: what it answers from here on counts after the outage
        await self.service.start()
        self.mark("service-outage", start=start, end=end, kill=True)

    async def drain(self, seconds: float = DRAIN_SECONDS) -> None:
        """Until the recorder has every event the devices published (their counts: the
        in-process fleet's, or the worker summaries') and a reply to every request it saw,
        bounded by :data:`DRAIN_SECONDS`; recorded as the ``drain`` marker."""
        if self.recorder is None:
            return
        if self.fleet is not None:
            self.event_counts = self.fleet.event_counts()
            self.received = self.fleet.received()
            self.nvm = self.fleet.nvm_summaries()
        elif self.hub is not None:
            await self.collect_parts(PART_SECONDS)
        recorder, counts = self.recorder, self.event_counts
        began = time.time()

        def unanswered() -> int:
            return len(self.progress.unanswered) + self.unanswered

        def done() -> bool:
            return recorder.has_events(counts) and not unanswered()

        if self.fleet is not None:  # replies may still be on their way to the devices
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.until(done, abortable=False)
        behind = [t for t, n in counts.items() if not recorder.has_events({t: n})]
        self.mark("drain", complete=done(), seconds=round(time.time() - began, 3),
                  unanswered=unanswered(), devicesMissingEvents=len(behind),
                  missingFrom=behind[:20])

    async def final_state(self, controller: Controller) -> None:
        if self.service is None:  # a target: what its control plane says
            executions = [e for job in self.targets
                          for e in await controller.executions(job)]
            jobs = [{"jobId": job, "status": status} for job in self.targets
                    if (status := await controller.job_status(job)) is not None]
            self.mark("final-state", executions=executions, jobs=jobs, devices=self.nvm,
                      eventCounts=self.event_counts, received=dict(self.received))
            return
        store = self.service.store
        executions = [{"thingName": e.thing_name, "jobId": e.job_id,
                       "executionNumber": e.execution_number, "status": e.status.value,
                       "versionNumber": e.version_number} for e in store.all_executions()]
        jobs = [{"jobId": j.job_id, "status": j.status.value} for j in store.list_jobs()[0]]
        self.mark("final-state", executions=executions, jobs=jobs, devices=self.nvm,
                  eventCounts=self.event_counts, received=dict(self.received))


def _import_path() -> str:
    """The folders on this process's ``sys.path``, for its device workers to import a
    behaviour plugin from as this process could (one on pytest's ``pythonpath``, a test's
    rootdir, a folder the caller added): they look there after their own."""
    return os.pathsep.join(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.wait({task})


def _describe(when: When) -> str:
    parts = []
    if when.at is not None:
        parts.append(f"{when.at:g} s after the start")
    if when.started is not None:
        parts.append(f"{when.started:.0%} of its targets started")
    if when.succeeded is not None:
        parts.append(f"{when.succeeded:.0%} of its targets succeeded")
    if when.step is not None:
        parts.append(f"{when.fraction:.0%} of its targets reached step {when.step!r}")
    return ", ".join(parts) or "now"


async def _control_plane(run_: _Run, target: Target | None) -> tuple[Any, str, str]:
    """A boto3 client of the drill's control plane, its region and account (a target's:
    from a provisioned thing's ARN)."""
    if target is None:
        verify = None if run_.certs is None else str(run_.certs.ca)
        return iot_client(run_.control_endpoint, verify=verify), "us-east-1", "123456789012"
    try:
        client = iot_client(target.control_endpoint, region=target.region or (
            "us-east-1" if target.control_endpoint else None))
        arn = (await asyncio.to_thread(client.describe_thing,
                                       thingName=run_.things[0]))["thingArn"]
    except (BotoCoreError, ClientError) as e:
        raise ValueError(f"--target: the control plane: {e}") from None
    _, _, _, region, account, _ = str(arn).split(":", 5)
    return client, region, account


async def run(drill: Drill, options: RunOptions) -> DrillResult:
    """Run one drill; the history goes to ``options.report_dir`` (default: a temp dir)."""
    report_dir = options.report_dir or Path(tempfile.mkdtemp(prefix="devicesim-report-"))
    with tempfile.TemporaryDirectory(prefix="devicesim-drill-") as tmp:
        run_ = _Run(drill, options, Path(tmp))
        timed_out = False
        interrupted: str | None = None
        sampler: asyncio.Task[None] | None = None
        try:
            await run_.start()
            assert run_.recorder is not None
            target = options.target
            client, region, account = await _control_plane(run_, target)
            controller = Controller(client, run_.record_call, region=region,
                                    account_id=account)
            if run_.metrics is not None and options.metrics_port is not None:
                port = run_.metrics.serve(options.metrics_port)
                run_.status(f"metrics http://127.0.0.1:{port}/metrics")
            if run_.metrics is not None or options.live is not None:
                sampler = asyncio.create_task(run_.tick())
            outcome = await run_.schedule(controller, options.interrupt)
            if options.live is not None:  # the figures as the schedule ended
                options.live(run_.snapshot(None if run_.service is None else
                                           run_.service.store.status_counts()))
            timed_out = outcome == "timeout"
            if outcome not in ("done", "timeout"):
                interrupted = outcome
            await run_.drain(DRAIN_SECONDS if interrupted is None else INTERRUPTED_DRAIN)
            await run_.final_state(controller)
            end: dict[str, Any] = {"seconds": round(time.time() - run_.started, 3)}
            if interrupted is not None:
                end["interrupted"] = interrupted
            run_.mark("end", **end)
        finally:
            if sampler is not None:
                await _cancel(sampler)
            if run_.metrics is not None:
                run_.metrics.close()
            if run_.proxy is not None:
                with contextlib.suppress(ProxyError):
                    run_.mark("proxy-stats", **(await run_.proxy.command(stats=True))["stats"])
            if run_.recorder is not None:
                run_.mark("recorder-stats", **run_.recorder.stats())
            await run_.stop()
        assert run_.recorder is not None
        with history.bulk():
            ops = sorted(run_.recorder.all_ops(), key=lambda op: op.time)
            report_dir.mkdir(parents=True, exist_ok=True)
            history_path = report_dir / "history.jsonl"
            with history_path.open("w", encoding="utf-8") as out:
                history.write(ops, out)
            timeline, verdict = analyse(ops, drill.budgets)
        return DrillResult(verdict=verdict, history_path=history_path, ops=ops,
                           timed_out=timed_out, interrupted=interrupted, timeline=timeline)

"""The jobs service shell: store + MQTT data plane + HTTP control plane + timers.

One asyncio task owns the store. MQTT requests go through :class:`DataPlane`; control-plane
calls through the HTTP server; after either, the store's outbox (notifications, events) is
published. A timer task sleeps until the store's next due sweep or timeout and ticks it.

Supervision: nothing here stops silently. A request batch, a publish or a timer iteration that
raises is logged, reported through ``on_failure`` (:data:`devicesim.mqtt.OnFailure`, also
given to the MQTT pump) and the service goes on serving; see :meth:`JobsService._answer_inbox`
for what the store keeps when one request of a batch fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from devicesim.mqtt import Client, OnFailure, Pump
from devicesim.wire import topics
from devicesim.wire.history import Op, OpType, classify
from fleet.broker import BrokerAddress
from fleet.certs import Authority
from fleet.service.controlplane.server import JOBS_DATA, ControlPlane
from fleet.service.controlplane.sigv4 import Verifier
from fleet.service.dataplane import DataPlane
from fleet.service.faults import MessageFault
from fleet.service.registry import Registry
from fleet.service.settings import ServiceSettings
from fleet.service.store import JobsStore, Publish

log = logging.getLogger(__name__)

SERVICE_CLIENT_ID = "devicesim-jobs-service"
TIMER_POLL = 1.0
#: first pause after a failed timer iteration; doubles up to TIMER_POLL while it keeps failing
TIMER_RETRY = 0.1
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
    #: the HTTPS data plane (``iot-jobs-data``): its own port (0: a free one), with ``http``
    jobs_data_port: int = 0
    seed: int = 0
    #: access key id -> secret: the control plane then requires SigV4 signatures
    credentials: Mapping[str, str] | None = None
    #: the CA that CreateKeysAndCertificate signs with (``fleet certs``); None: refused
    authority: Authority | None = None
    #: the principals file the broker's devicesim_aws plugin reads (secure profile)
    principals: Path | None = None
    #: the control plane over HTTPS with this certificate and key (secure profile)
    https: tuple[Path, Path] | None = None
    #: things whose requests the service records as it receives them, before it answers
    #: (devices that record nothing themselves: a drill's external devices)
    record_requests_of: frozenset[str] = frozenset()
    #: record every device's requests so (``fleet up --metrics-port``: live metrics)
    record_all_requests: bool = False
    #: its MQTT client id, and whether its session outlives the connection: a service
    #: restarted on its state (a drill's restart-service, ``fleet up`` again) then receives
    #: what devices sent meanwhile. A service that is not restarted may take a client id of
    #: its own and a clean session, so that services on one broker one after another
    #: (tests) leave no session behind
    client_id: str = SERVICE_CLIENT_ID
    persistent_session: bool = True


class JobsService:
    """Runs until :meth:`stop`; ``endpoint`` is the control plane's URL once started."""

    def __init__(self, config: ServiceConfig, *, now: Callable[[], float] = time.time,
                 on_failure: OnFailure | None = None,
                 record: Callable[[Op], None] | None = None) -> None:
        """``record``: the service records what it publishes -- replies, pushes, jobs
        events -- in the order it publishes them (its part of a drill's history), and the
        requests of ``config.record_requests_of`` as it receives them."""
        self.config = config
        self._now = now
        self._record = record
        #: MQTT-level faults a drill injected, per thing (:mod:`fleet.service.faults`)
        self.message_faults: dict[str, MessageFault] = {}
        self._fault_rng = random.Random(f"{config.seed}:message-faults")
        self._held: dict[asyncio.TimerHandle, Publish] = {}  # delayed publishes
        self.store = JobsStore(config.state, config.settings, now=now,
                               rng=random.Random(config.seed))
        self.dataplane = DataPlane(self.store, now)
        self.registry = Registry(config.state, region=config.settings.region,
                                 account_id=config.settings.account_id,
                                 authority=config.authority, principals=config.principals,
                                 now=now)
        self._pump = Pump(on_failure=on_failure)
        self._client: Client | None = None
        self._wake = asyncio.Event()
        self._inbox: list[tuple[str, bytes, str | None]] = []
        #: crashed (:meth:`crash`): it answers nothing more
        self._dead = False
        self._timer: asyncio.Task[None] | None = None
        self._control: ControlPlane | None = None
        self._jobs_data: ControlPlane | None = None
        self.endpoint: str | None = None
        #: the HTTPS data plane's URL once started
        self.jobs_data_endpoint: str | None = None

    async def start(self) -> None:
        b = self.config.broker
        self._client = Client(
            b.client_options(self.config.client_id,
                             clean_session=not self.config.persistent_session, keepalive=30,
                             max_inflight=0, mqtt5=True, no_local=True, manual_ack=True),
            self._pump, on_message=lambda topic, payload: self._on_message(topic, payload, None),
            on_message_from=self._on_message)
        await self._client.connect()
        await self._client.subscribe([topics.SERVICE_FILTER])
        self._timer = asyncio.get_running_loop().create_task(self._run_timers(),
                                                             name="jobs-timers")
        self._timer.add_done_callback(self._timers_ended)
        if self.config.http:
            verifier = None if self.config.credentials is None else \
                Verifier(self.config.credentials)
            context = None
            if self.config.https is not None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(*self.config.https)
            jobs_data = ControlPlane(self.store, on_change=self.flush, verifier=verifier,
                                     api=JOBS_DATA, dataplane=self.dataplane,
                                     record_reply=self._record_reply)
            self.jobs_data_endpoint = await jobs_data.start(
                self.config.http_host, self.config.jobs_data_port, ssl_context=context)
            self._jobs_data = jobs_data
            control = ControlPlane(self.store, on_change=self.flush, verifier=verifier,
                                   registry=self.registry, endpoint_address=b.host,
                                   jobs_endpoint=self.jobs_data_endpoint.split("://", 1)[1])
            self.endpoint = await control.start(self.config.http_host, self.config.http_port,
                                                ssl_context=context)
            self._control = control
        log.info("jobs service ready broker=%s endpoint=%s", b.url, self.endpoint)

    async def _stop_http(self) -> None:
        for server in (self._control, self._jobs_data):
            if server is not None:
                await server.stop()

    async def stop(self) -> None:
        await self._stop_http()
        await self._halt()  # what a fault held back is lost with it
        if self._client is not None:
            await self._client.close()
        await self._close()

    async def crash(self) -> None:
        """Die as a SIGKILL right after its last write would leave things: the control
        plane's socket closes, the timers stop, the MQTT connection goes without a
        DISCONNECT (the broker keeps its persistent session and queues what devices send
        meanwhile), and all it held in memory is lost: requests received but not answered
        yet (it acknowledges a request only once its batch committed, so the broker sends
        those again to the new service), and messages a message fault held back (recorded
        as dropped, ``reason`` ``service killed``). What it committed is in its state file;
        what it published reached the kernel (a killed process's socket still sends that
        before its FIN). A new service started from the same state carries on."""
        if self._client is not None:
            await self._client.flushed()
        self._dead = True  # what arrives from here on is lost with it (and sent again)
        await self._stop_http()
        await self._halt(record_lost=True)
        self._inbox = []  # not acknowledged: the broker sends them again
        if self._client is not None:
            self._client.abort()
        await self._close()

    async def _halt(self, *, record_lost: bool = False) -> None:
        """Stop the timers and forget what message faults held back."""
        if self._timer is not None:
            self._timer.cancel()
            # without raising: an error the task ended with was reported by _timers_ended,
            # and the rest of the service must still be closed
            await asyncio.wait([self._timer])
        for handle, effect in self._held.items():  # decided, never published
            handle.cancel()
            if record_lost:
                self._record_dropped(effect, reason="service killed")
        self._held.clear()

    async def _close(self) -> None:
        await self._pump.close()
        self.store.close()
        self.registry.close()

    # -- MQTT ----------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, requester: str | None) -> None:
        # Requests read from the socket in one go are answered as one batch: one SQLite
        # commit for all of them (group commit), replies published after it. ``requester``:
        # the client the broker plugin says sent it; its replies go to that client only.
        if self._dead:
            return  # killed: never acknowledged, the broker sends it to the next service
        self._inbox.append((topic, payload, requester))
        if len(self._inbox) == 1:
            asyncio.get_running_loop().call_soon(self._answer_inbox)

    def _answer_inbox(self) -> None:
        """Answer the requests received together, as one group commit.

        Each store operation a request causes is its own savepoint inside the batch: the
        store rolls that savepoint back when the operation raises, and the data plane turns
        any exception it sees into an ``InternalError`` reply. What can still escape
        :meth:`DataPlane.handle` is a failure outside a store operation (topic parsing, the
        reply's encoding, draining the outbox). The store then holds that request's
        operation whole or not at all, never half, so the batch goes on: the failing request
        is logged and reported and gets no reply (the device retries after its timeout, as
        for a lost message); the others are answered and committed with it; effects of a
        committed operation still in the outbox are published after the commit. If the batch
        itself fails (BEGIN or COMMIT raising), it is reported and nothing of it is
        published: no reply announces a change that may not have been committed.
        """
        if self._dead or not self._inbox:
            return  # the service was killed after this was scheduled
        inbox, self._inbox = self._inbox, []
        out: list[Publish] = []
        reply_to: dict[int, str] = {}  # index in out -> the requester of that reply
        try:
            with self.store.batch():
                for topic, payload, requester in inbox:
                    if self._record is not None and (self.config.record_requests_of or
                                                     self.config.record_all_requests):
                        self._record_request(topic, payload)
                    try:
                        effects = self.dataplane.handle(topic, payload)
                    except Exception as e:  # one bad request must not cost the batch
                        log.exception("request failed topic=%s", topic)
                        self._pump.report(f"jobs service request {topic}", e)
                        continue
                    if requester is not None:
                        for i, effect in enumerate(effects, start=len(out)):
                            if topics.is_reply(effect.topic):
                                reply_to[i] = requester
                    out.extend(effects)
                out.extend(self.store.drain())  # left behind by a request that failed
        except Exception as e:
            log.exception("request batch failed requests=%d", len(inbox))
            self._pump.report("jobs service batch", e)
            return
        # committed: only now may the broker forget the requests (a service killed before
        # this gets them again from its session when it is back)
        assert self._client is not None
        self._client.ack_received()
        self._publish(out, reply_to)
        if self.store.wants_tick():
            self._wake.set()

    def _record_request(self, topic: str, payload: bytes) -> None:
        assert self._record is not None
        parsed = topics.parse_jobs_topic(topic)
        if parsed is not None and (self.config.record_all_requests or
                                   parsed.thing_name in self.config.record_requests_of):
            self._record(classify(topic, payload, self._now()))

    def _publish(self, effects: list[Publish], reply_to: dict[int, str] | None = None
                 ) -> None:
        """Publish each effect (``reply_to``: by index, the client a reply goes to alone),
        as the drill's message faults say; one that cannot be queued is reported, the rest
        still go."""
        for i, effect in enumerate(effects):
            requester = reply_to.get(i) if reply_to else None
            fault = self._fault_of(effect) if self.message_faults else None
            if fault is None:
                self._send(effect, requester)
                continue
            delays = fault.delays(self._fault_rng)
            if not delays:
                self._record_dropped(effect)
            for delay in delays:
                if delay <= 0:
                    self._send(effect, requester)
                else:
                    self._hold(delay, effect, requester)

    def _send(self, effect: Publish, requester: str | None, held: float = 0.0) -> None:
        """Publish one effect and record it (``held``: seconds a message fault held it back;
        the record says so, as ``heldSeconds``, so that the checker knows when the service
        decided what it says)."""
        client = self._client
        assert client is not None
        try:
            client.publish(effect.topic, effect.payload, qos=1, reply_to=requester)
            if self._record is not None:
                op = classify(effect.topic, effect.payload, self._now())
                if held:
                    op.value["heldSeconds"] = round(held, 6)
                self._record(op)
        except Exception as e:  # MqttError, or paho refusing the payload
            log.exception("publish failed topic=%s bytes=%d", effect.topic,
                          len(effect.payload))
            self._pump.report(f"jobs service publish {effect.topic}", e)

    def _record_reply(self, reply: Publish) -> None:
        """An HTTPS data-plane reply, recorded as the MQTT reply it stands for."""
        if self._record is not None:
            self._record(classify(reply.topic, reply.payload, self._now()))

    def _record_dropped(self, effect: Publish, **why: str) -> None:
        """Record a message the service decided and did not publish, as
        ``dropped:<what it was>``."""
        if self._record is not None:
            op = classify(effect.topic, effect.payload, self._now())
            self._record(dataclasses.replace(op, type=OpType.INFO, f=f"dropped:{op.f}",
                                             value={**op.value, **why}))

    def _hold(self, delay: float, effect: Publish, requester: str | None) -> None:
        def send() -> None:
            self._held.pop(handle, None)
            self._send(effect, requester, held=delay)

        handle = asyncio.get_running_loop().call_later(delay, send)
        self._held[handle] = effect

    def fault_messages(self, things: Iterable[str], fault: MessageFault) -> None:
        """A fault for drills: from now on, the messages ``fault`` names to ``things`` are
        dropped, duplicated, delayed or reordered (:mod:`fleet.service.faults`); each one
        dropped is recorded, as ``dropped:notify`` / ``dropped:notify-next``, each copy
        published when it is. :meth:`heal_messages` ends every fault (messages already held
        back still go out when due)."""
        for thing in things:
            self.message_faults[thing] = fault

    def heal_messages(self) -> None:
        self.message_faults = {}

    def _fault_of(self, effect: Publish) -> MessageFault | None:
        parsed = topics.parse_jobs_topic(effect.topic)
        if parsed is None:
            return None
        fault = self.message_faults.get(parsed.thing_name)
        return fault if fault is not None and fault.hits(parsed.kind) else None

    def flush(self) -> None:
        """Publish what control-plane calls caused; re-plan the timers."""
        self._publish(self.store.drain())
        self._wake.set()

    # -- timers (deletion sweep, step and in-progress timeouts) --------------------------

    async def _run_timers(self) -> None:
        """Tick the store when due, forever. An iteration that raises (tick, publish, even
        the wait) is logged and reported; the loop pauses, longer while it keeps failing,
        and carries on. A failed tick's batch was rolled back whole: the next one redoes it.
        """
        retry = TIMER_RETRY
        while True:
            try:
                more = await self._timer_iteration()
            except Exception as e:  # never let a timer bug stop the sweep for good
                log.exception("timers failed retry_in=%.1f", retry)
                self._pump.report("jobs service timers", e)
                await asyncio.sleep(retry)
                retry = min(retry * 2, TIMER_POLL)
                continue
            retry = TIMER_RETRY
            if more:  # a burst: let requests in between chunks
                await asyncio.sleep(0)

    def _timers_ended(self, task: asyncio.Task[None]) -> None:
        # _run_timers only ends by cancellation (stop) or by what it cannot catch
        # (a BaseException that is not an Exception): that one must not go unnoticed
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        log.error("timers stopped error=%r", error, exc_info=error)
        self._pump.report("jobs service timers", error)

    async def _timer_iteration(self) -> bool:
        """Wait until something is due (or a wake-up), else tick one chunk; True if more is
        due already."""
        # Data-plane requests can arm step timers without waking us: look again at least
        # every TIMER_POLL seconds (AWS itself may time out up to 60 s late, spec §6).
        due = self.store.next_due()
        delay = TIMER_POLL if due is None else min(TIMER_POLL, max(0.0, due - self._now()))
        self._wake.clear()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            return False
        with self.store.batch():  # one commit per chunk
            more = self.store.tick(limit=TICK_CHUNK)
        self._publish(self.store.drain())
        return more

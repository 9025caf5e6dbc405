"""paho-mqtt driven by the asyncio loop: no thread per client, one shared housekeeping timer.

PERF.md measured this shape at ~2× aiomqtt's throughput and half its memory per client, so
the device fleet and the jobs service both use it. paho's socket callbacks register the
socket with the loop (``add_reader`` / ``add_writer``); :class:`Pump` calls ``loop_misc``
(keepalive pings, retries) for every client once a second from a single task.

Received messages are handed to a plain synchronous callback ``on_message(topic, payload)``
that runs on the loop: the pure cores behind it do no I/O.

Errors: paho's own return codes are turned into :class:`MqttError` at this seam only.
Supervision: an exception from a client's housekeeping, socket callbacks, reconnect loop or
the handlers behind it never ends the connection or the pump; it is logged and handed to the
pump's ``on_failure`` (:data:`OnFailure`), which decides whether the run fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

#: seconds to wait for CONNACK or SUBACK
REPLY_TIMEOUT = 10.0

OnMessage = Callable[[str, bytes], None]
#: ``on_message_from(topic, payload, requester)``: the client id the devicesim_aws broker
#: plugin tagged a request with (None on a plain broker); MQTT 5 clients only
OnMessageFrom = Callable[[str, bytes, str | None], None]
#: the user properties by which the devicesim_aws plugin routes a Jobs reply to its requester
REQUESTER_PROPERTY = "devicesim-requester"
REPLY_TO_PROPERTY = "devicesim-reply-to"
#: the privileged identity on a broker running the devicesim_aws plugin (the jobs service,
#: recorders, a drill's links to its workers), and where a process started by hand finds
#: its secret
PRIVILEGED_USER = "devicesim"
SECRET_ENV = "DEVICESIM_BROKER_SECRET"
OnConnection = Callable[[bool], None]  # session_present on connect; False on disconnect
#: Supervision: a long-lived component reports an unexpected error it survived (or did not)
#: as ``on_failure(where, error)``, ``where`` naming the component and its context
#: (``"mqtt-pump"``, ``"device dev-0001 timer"``, ...). A drill records it and fails the run.
OnFailure = Callable[[str, BaseException], None]


class MqttError(Exception):
    """Connecting, subscribing or publishing failed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientOptions:
    client_id: str
    host: str
    port: int
    clean_session: bool = False
    keepalive: int = 60
    username: str | None = None
    password: str | None = None
    max_inflight: int = 20
    reconnect_min_delay: float = 0.05
    reconnect_max_delay: float = 2.0
    #: MQTT 5 (persistent sessions through a session expiry interval) instead of 3.1.1
    mqtt5: bool = False
    #: MQTT 5 "No Local": the broker does not send back what this client published itself
    #: (the jobs service subscribes to a wildcard that also covers its own replies)
    no_local: bool = False
    session_expiry: int = 3600
    #: acknowledge QoS 1 messages only when told (:meth:`Client.ack_received`), e.g. once
    #: what they asked for is committed: a client that dies before then gets them again
    manual_ack: bool = False
    #: TLS (``mqtts://``): the CA that signed the broker's certificate, and this client's
    #: certificate and key (mutual TLS, as AWS IoT Core requires of devices)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


@dataclass(slots=True)
class _Waiters:
    connack: asyncio.Future[bool] | None = None
    suback: dict[int, asyncio.Future[None]] = field(default_factory=dict)


class Pump:
    """Owns the housekeeping timer for every client on one event loop, and their supervision.

    A client whose ``misc()`` raises is logged and reported; the others are still served. The
    pump task itself, should it end with an error, is reported and started again. Clients
    report errors they survived (a raising message handler, ...) through :meth:`report`.
    Without ``on_failure`` the failure is only logged (``log.exception`` where it was caught).
    """

    def __init__(self, interval: float = 1.0, *, on_failure: OnFailure | None = None) -> None:
        self._clients: set[Client] = set()
        self._interval = interval
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def add(self, client: Client) -> None:
        self._clients.add(client)
        self._closing = False
        if self._task is None or self._task.done():
            self._start()

    def discard(self, client: Client) -> None:
        self._clients.discard(client)

    def report(self, where: str, error: BaseException) -> None:
        """Hand a failure some component survived (or did not) to ``on_failure``."""
        if self._on_failure is None:
            return
        try:
            self._on_failure(where, error)
        except Exception:  # a broken supervisor must not take the component down with it
            log.exception("on_failure raised where=%s", where)

    def _start(self) -> None:
        task = asyncio.get_running_loop().create_task(self._run(), name="mqtt-pump")
        task.add_done_callback(self._ended)
        self._task = task

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is None:  # no clients left; the next add() starts it again
            return
        log.error("mqtt pump failed clients=%d error=%r", len(self._clients), error,
                  exc_info=error)
        self.report("mqtt-pump", error)
        if task is self._task and self._clients and not self._closing:
            self._start()

    async def _run(self) -> None:
        while self._clients:
            await asyncio.sleep(self._interval)
            for client in list(self._clients):
                try:
                    client.misc()
                except Exception as e:  # one client's bug must not starve the keepalives of all
                    client_id = client.options.client_id
                    log.exception("mqtt housekeeping failed client_id=%s", client_id)
                    self.report(f"mqtt client {client_id}", e)

    async def close(self) -> None:
        self._closing = True
        task = self._task
        if task is not None:
            task.cancel()
            # waits without raising: an error the task ended with was reported by _ended
            await asyncio.wait([task])


class Client:
    """One MQTT connection; reconnects by itself until :meth:`close`."""

    def __init__(self, options: ClientOptions, pump: Pump, *, on_message: OnMessage,
                 on_connection: OnConnection | None = None,
                 on_message_from: OnMessageFrom | None = None) -> None:
        """``on_message_from``, if given, is called instead of ``on_message`` with the
        requester a broker running the devicesim_aws plugin tagged the message with."""
        self.options = options
        self._pump = pump
        self._on_message = on_message
        self._on_message_from = on_message_from
        self._on_connection = on_connection
        self._loop = asyncio.get_running_loop()
        self._waiters = _Waiters()
        self._closing = False
        self._subscriptions: dict[str, int] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._backoff = options.reconnect_min_delay
        self._written = asyncio.Event()  # see flushed()
        self._unacked: list[tuple[int, int]] = []  # (mid, qos) with manual_ack
        self._reply_to: dict[str, _ReplyTo] = {}  # requester -> its packed properties
        self.connected = False
        if options.mqtt5:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=options.client_id,
                            protocol=paho.MQTTv5, manual_ack=options.manual_ack)
        else:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=options.client_id,
                            clean_session=options.clean_session, protocol=paho.MQTTv311,
                            manual_ack=options.manual_ack)
        if options.username is not None:
            c.username_pw_set(options.username, options.password)
        if options.tls_ca is not None:
            c.tls_set(ca_certs=options.tls_ca, certfile=options.tls_cert,
                      keyfile=options.tls_key)
        c.max_inflight_messages_set(options.max_inflight)
        c.max_queued_messages_set(0)
        c.on_socket_open = self._socket_open
        c.on_socket_close = self._socket_close
        c.on_socket_register_write = self._register_write
        c.on_socket_unregister_write = self._unregister_write
        c.on_connect = self._connected
        c.on_disconnect = self._disconnected
        c.on_subscribe = self._subscribed
        c.on_message = self._message
        self._paho = c

    # -- public ------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Connect and wait for CONNACK; returns session_present."""
        self._closing = False
        self._pump.add(self)
        self._waiters.connack = self._loop.create_future()
        try:
            o = self.options
            if o.mqtt5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = 0 if o.clean_session else o.session_expiry
                self._paho.connect_async(o.host, o.port, o.keepalive,
                                         clean_start=o.clean_session, properties=props)
            else:
                self._paho.connect_async(o.host, o.port, o.keepalive)
            self._check(self._paho.reconnect(), "connect")
        except OSError as e:
            raise MqttError(f"connect to {self.options.host}:{self.options.port}: {e}") from e
        async with asyncio.timeout(REPLY_TIMEOUT):
            return await self._waiters.connack

    async def subscribe(self, filters: list[str], qos: int = 1) -> None:
        """Subscribe and wait for SUBACK; after a reconnect on which the broker had lost the
        session (restarted without it), the client subscribes again by itself."""
        self._subscriptions.update(dict.fromkeys(filters, qos))
        result, mid = self._paho.subscribe([self._option(f, qos) for f in filters])
        self._check(result, "subscribe")
        assert mid is not None
        waiter = self._waiters.suback[mid] = self._loop.create_future()
        async with asyncio.timeout(REPLY_TIMEOUT):
            await waiter

    def _option(self, topic_filter: str, qos: int) -> tuple[str, Any]:
        if self.options.mqtt5:
            return (topic_filter, SubscribeOptions(qos=qos, noLocal=self.options.no_local))
        return (topic_filter, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
                reply_to: str | None = None) -> None:
        """Queue a publish; QoS 1 messages survive a reconnect of a persistent session.
        ``reply_to`` (MQTT 5): a broker running the devicesim_aws plugin delivers the message
        to that client only (a Jobs reply to its requester)."""
        props = None
        if reply_to is not None and self.options.mqtt5:
            props = self._reply_to.get(reply_to)
            if props is None:
                props = self._reply_to[reply_to] = _ReplyTo(reply_to)
        info = self._paho.publish(topic, payload, qos, retain, props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish {topic}: {paho.error_string(info.rc)}")

    async def close(self) -> None:
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        self._paho.disconnect()
        self._pump.discard(self)
        # let the loop write DISCONNECT and see the socket close
        await asyncio.sleep(0)

    async def flushed(self, seconds: float = 5.0) -> None:
        """Until everything published so far was handed to the kernel (bounded)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while self.connected and self._paho.want_write():
                    self._written.clear()
                    await self._written.wait()  # set when paho has nothing left to write

    def abort(self) -> None:
        """Die as a killed process's connection does: no DISCONNECT, no reconnect; what was
        handed to the kernel still goes out before the FIN (so the broker, seeing no
        DISCONNECT, treats it as an unexpected loss and keeps the session)."""
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        self._pump.discard(self)
        self.drop()

    def drop(self) -> None:
        """Close the socket abruptly (a simulated network cut); the client reconnects."""
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def misc(self) -> None:
        self._paho.loop_misc()

    # -- paho callbacks (run on the loop) ------------------------------------------------

    def _socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: small publishes would wait for delayed ACKs (~40 ms)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.add_reader(sock, self._read)

    def _socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.add_writer(sock, self._write)

    def _unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)
        self._written.set()

    def _read(self) -> None:
        try:
            self._paho.loop_read(64)
            # TLS: records already decrypted into the SSL buffer wake no selector
            sock = self._paho.socket()
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                self._paho.loop_read(64)
                sock = self._paho.socket()
        except Exception as e:  # else only asyncio's handler would log it
            log.exception("mqtt read failed client_id=%s", self.options.client_id)
            self._report("read", e)

    def _write(self) -> None:
        try:
            self._paho.loop_write()
        except Exception as e:
            log.exception("mqtt write failed client_id=%s", self.options.client_id)
            self._report("write", e)

    def _report(self, what: str, error: Exception) -> None:
        """An error this client survived (logged where caught), reported through the pump."""
        self._pump.report(f"mqtt client {self.options.client_id} {what}", error)

    def _notify_connection(self, session_present: bool) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(session_present)
        except Exception as e:  # a handler bug must not break paho's CONNACK/close handling
            log.exception("on_connection failed client_id=%s connected=%s",
                          self.options.client_id, session_present)
            self._report("on_connection", e)

    def _connected(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                   reason: ReasonCode, properties: object) -> None:
        waiter = self._waiters.connack
        if reason.is_failure:
            if waiter is not None and not waiter.done():
                waiter.set_exception(MqttError(f"{self.options.client_id}: CONNACK {reason}"))
            return
        self.connected = True
        self._backoff = self.options.reconnect_min_delay
        session_present = bool(flags.session_present)
        if waiter is not None and not waiter.done():
            waiter.set_result(session_present)
        elif not session_present and self._subscriptions:
            # a reconnect, and the broker forgot us (e.g. SIGKILLed before its autosave):
            # SUBSCRIBE goes out before anything published from now on
            self._paho.subscribe([self._option(f, q) for f, q in self._subscriptions.items()])
            log.info("resubscribed client_id=%s filters=%d", self.options.client_id,
                     len(self._subscriptions))
        self._notify_connection(session_present)

    def _disconnected(self, client: paho.Client, userdata: object,
                      flags: paho.DisconnectFlags, reason: ReasonCode, properties: object
                      ) -> None:
        was_connected, self.connected = self.connected, False
        self._unacked.clear()  # their message ids meant something on that connection only
        if self._closing:
            return
        log.info("disconnected client_id=%s reason=%s", self.options.client_id, reason)
        if was_connected:
            self._notify_connection(False)
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = self._loop.create_task(self._reconnect())

    def _subscribed(self, client: paho.Client, userdata: object, mid: int,
                    reasons: list[ReasonCode], properties: object) -> None:
        waiter = self._waiters.suback.pop(mid, None)
        if waiter is None or waiter.done():
            return
        failed = [r for r in reasons if r.is_failure]
        if failed:
            waiter.set_exception(MqttError(f"subscribe refused: {failed[0]}"))
        else:
            waiter.set_result(None)

    def ack_received(self) -> None:
        """With ``manual_ack``: acknowledge every QoS 1 message received so far (on this
        connection: what a lost connection did not acknowledge, the broker sends again)."""
        unacked, self._unacked = self._unacked, []
        for mid, qos in unacked:
            self._paho.ack(mid, qos)

    def _message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self.options.manual_ack and msg.qos > 0:
            self._unacked.append((msg.mid, msg.qos))
        try:
            if self._on_message_from is not None:
                self._on_message_from(msg.topic, bytes(msg.payload), _requester(msg))
            else:
                self._on_message(msg.topic, bytes(msg.payload))
        except Exception as e:  # a handler bug must not kill the connection
            log.exception("on_message failed client_id=%s topic=%s", self.options.client_id,
                          msg.topic)
            self._report(f"on_message {msg.topic}", e)

    async def _reconnect(self) -> None:
        # the backoff grows with every attempt until a CONNACK accepts one (_connected): a
        # connection closed before its CONNACK (a proxy or broker refusing it) is a failed
        # attempt too, not a reason to start again from the shortest delay
        while not self._closing and not self.connected:
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, self.options.reconnect_max_delay)
            try:
                self._paho.reconnect()
                return
            except OSError as e:
                log.debug("reconnect failed client_id=%s error=%s", self.options.client_id, e)
            except Exception as e:  # not a network error: a bug; report it and keep trying
                log.exception("reconnect failed client_id=%s", self.options.client_id)
                self._report("reconnect", e)

    def _check(self, rc: MQTTErrorCode, what: str) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"{self.options.client_id}: {what}: {paho.error_string(rc)}")


class _ReplyTo(Properties):
    """The PUBLISH properties naming a reply's requester, packed once per requester (paho
    packs properties on every publish: ~50 us a reply, a sixth of the service's CPU)."""

    def __init__(self, requester: str) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.UserProperty = (REPLY_TO_PROPERTY, requester)
        # object.__setattr__: paho's own refuses names that are not MQTT properties
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        packed: bytes = self.__dict__["_packed"]
        return packed


def _requester(msg: paho.MQTTMessage) -> str | None:
    """The last ``devicesim-requester`` user property of a message (the broker plugin
    appends its own after any the sender set), or None."""
    props = getattr(msg, "properties", None)
    pairs = getattr(props, "UserProperty", None) if props is not None else None
    if not pairs:
        return None
    found = None
    for key, value in pairs:
        if key == REQUESTER_PROPERTY:
            found = value
    return found

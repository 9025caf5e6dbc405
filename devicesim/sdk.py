"""A device transport built on the official AWS IoT Device SDK jobs client.

``SdkTransport`` gives the same pure agent (:mod:`devicesim.agent`) a different network
stack: an awscrt MQTT 5 client (plain TCP, ``disable_metrics=True`` so Mosquitto sees an
anonymous client) and ``awsiot.iotjobs.IotJobsClientV2``. The agent's request publishes are
turned into V2 operations (start-next, describe, update, get-pending); the SDK's responses
and modelled errors are turned back into the accepted / rejected messages the agent expects,
with the agent's own clientToken (V2 replaces it with a UUID on the wire and correlates by
it, so the service must echo it). ``notify-next`` arrives through the SDK's stream.

awscrt calls back on its native threads; everything is handed to the asyncio loop with
``call_soon_threadsafe``.

Recording: the request on the wire carries the SDK's token, not the agent's, and the service
answers (and records its reply) with that one; so this transport records each request
itself (``record``), once its response shows the wire token, timed when it was handed to
the SDK, and then the response as it came, with that token
(:attr:`SdkTransport.records_requests`).

Order: the agent's actions must reach the broker in the order it took them, but the SDK
publishes a request only after its own subscribe round trip. So while a request is in
flight, what the agent publishes next (device events, the next request) waits in a queue
until the request is answered or failed: a ``lost_access`` event can never overtake the
update the device sent before noticing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import awsiot
from awscrt import io, mqtt5
from awscrt import mqtt_request_response as rr
from awsiot import iotjobs

from devicesim.mqtt import OnConnection, OnMessage
from devicesim.wire import topics
from devicesim.wire.codec import camel
from devicesim.wire.history import Op, classify

log = logging.getLogger(__name__)

SESSION_EXPIRY_SECONDS = 3600
#: as the agent's default reply timeout: a lost request holds the queue no longer than that
OPERATION_TIMEOUT_SECONDS = 10


def to_wire(value: Any) -> Any:
    """An SDK shape (or value) as the JSON the service sent: camelCase, epoch seconds."""
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, awsiot.ModeledClass):
        names = [n for cls in type(value).__mro__ for n in getattr(cls, "__slots__", ())]
        return {camel(n): to_wire(getattr(value, n)) for n in names
                if getattr(value, n, None) is not None}
    return value


class SdkTransport:
    """One device's connection through the AWS IoT Device SDK (the ``sdk`` behaviour)."""

    #: the shell must not record this transport's requests, nor the replies to them: it
    #: does (see the module doc)
    records_requests = True

    def __init__(self, thing: str, host: str, port: int, *, on_message: OnMessage,
                 on_connection: OnConnection, keepalive: int = 60,
                 record: Callable[[Op], None] | None = None,
                 now: Callable[[], float] = time.time,
                 tls: tuple[str, str, str] | None = None) -> None:
        """``tls``: (CA, certificate, key) files: mutual TLS, as on AWS IoT Core."""
        self.thing = thing
        self._record, self._now = record, now
        self._on_message = on_message
        self._on_connection = on_connection
        self._loop = asyncio.get_running_loop()
        self._connected: asyncio.Future[bool] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._closing = False
        self._queue: deque[tuple[str, bytes]] = deque()
        self._busy = False  # a request is in flight: the queue waits for its answer
        self.connected = False
        tls_ctx = None
        if tls is not None:
            ca, cert, key = tls
            options = io.TlsContextOptions.create_client_with_mtls_from_path(cert, key)
            options.override_default_trust_store_from_path(None, ca)
            tls_ctx = io.ClientTlsContext(options)
        self._client = mqtt5.Client(mqtt5.ClientOptions(
            host_name=host, port=port, disable_metrics=True, tls_ctx=tls_ctx,
            connect_options=mqtt5.ConnectPacket(
                client_id=thing, keep_alive_interval_sec=keepalive,
                session_expiry_interval_sec=SESSION_EXPIRY_SECONDS),
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            min_reconnect_delay_ms=50, max_reconnect_delay_ms=2000,
            on_lifecycle_event_connection_success_fn=self._crt_connected,
            on_lifecycle_event_disconnection_fn=self._crt_disconnected,
            on_lifecycle_event_stopped_fn=self._crt_stopped))
        self._jobs = iotjobs.IotJobsClientV2(self._client, rr.ClientOptions(
            max_request_response_subscriptions=4, max_streaming_subscriptions=2,
            operation_timeout_in_seconds=OPERATION_TIMEOUT_SECONDS))
        self._stream: Any = None

    # -- the transport interface (as devicesim.mqtt.Client) ------------------------------

    async def connect(self) -> bool:
        self._connected = self._loop.create_future()
        self._client.start()
        async with asyncio.timeout(10):
            session_present = await self._connected
        return session_present

    async def subscribe(self, filters: list[str]) -> None:
        """The SDK subscribes per operation; only the notify-next stream is opened here."""
        if self._stream is None and any(f.endswith("/notify-next") for f in filters):
            opened: asyncio.Future[None] = self._loop.create_future()

            def status(event: rr.SubscriptionStatusEvent) -> None:
                if event.type == rr.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
                    self._loop.call_soon_threadsafe(_resolve, opened)

            self._stream = self._jobs.create_next_job_execution_changed_stream(
                iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=self.thing),
                awsiot.ServiceStreamOptions(incoming_event_listener=self._next_changed,
                                            subscription_status_listener=status))
            self._stream.open()
            async with asyncio.timeout(10):
                await opened

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._queue.append((topic, payload))
        self._drain_queue()

    def _drain_queue(self) -> None:
        while self._queue and not self._busy and not self._closing:
            topic, payload = self._queue.popleft()
            parsed = topics.parse_jobs_topic(topic)
            if parsed is None or parsed.kind is not topics.Kind.REQUEST:
                self._client.publish(mqtt5.PublishPacket(topic=topic, payload=payload,
                                                         qos=mqtt5.QoS.AT_LEAST_ONCE))
                continue
            request = json.loads(payload)
            token = request.get("clientToken")
            self._busy = True
            sent = self._now()
            self._call(parsed, request).add_done_callback(
                lambda f, topic=topic, token=token, request=request, sent=sent:
                self._loop.call_soon_threadsafe(self._answer, topic, token, f, request, sent))

    async def close(self) -> None:
        """Stop the client and wait until awscrt says it stopped; nothing is delivered to
        the device afterwards (its RAM is gone)."""
        self._closing = True
        self._queue.clear()
        self._stream = None
        self._stopped = self._loop.create_future()
        self._client.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._stopped

    def drop(self) -> None:
        """awscrt offers no abrupt close; stop and start again (a clean reconnect)."""
        self._client.stop()
        self._client.start()

    # -- agent requests -> SDK operations -> agent replies ---------------------------------

    def _call(self, parsed: topics.JobsTopic, r: dict[str, Any]) -> Any:
        """The V2 operation for a request: a concurrent Future of the response."""
        jobs, thing = self._jobs, self.thing
        if parsed.operation is topics.Operation.START_NEXT:
            return jobs.start_next_pending_job_execution(
                iotjobs.StartNextPendingJobExecutionRequest(
                    thing_name=thing, status_details=r.get("statusDetails"),
                    step_timeout_in_minutes=r.get("stepTimeoutInMinutes")))
        if parsed.operation is topics.Operation.GET_PENDING:
            return jobs.get_pending_job_executions(
                iotjobs.GetPendingJobExecutionsRequest(thing_name=thing))
        if parsed.operation is topics.Operation.DESCRIBE:
            return jobs.describe_job_execution(iotjobs.DescribeJobExecutionRequest(
                thing_name=thing, job_id=parsed.job_id,
                execution_number=r.get("executionNumber"),
                include_job_document=r.get("includeJobDocument")))
        return jobs.update_job_execution(iotjobs.UpdateJobExecutionRequest(
            thing_name=thing, job_id=parsed.job_id, status=r.get("status"),
            status_details=r.get("statusDetails"), expected_version=r.get("expectedVersion"),
            execution_number=r.get("executionNumber"),
            include_job_execution_state=r.get("includeJobExecutionState"),
            include_job_document=r.get("includeJobDocument"),
            step_timeout_in_minutes=r.get("stepTimeoutInMinutes")))

    def _answer(self, request_topic: str, token: str | None, future: Future[Any],
                request: dict[str, Any], sent: float) -> None:
        self._busy = False
        if self._closing:
            return
        self._drain_queue()  # what the agent published meanwhile goes first
        try:
            response = future.result()
            topic, body = topics.accepted(request_topic), to_wire(response)
        except awsiot.V2ServiceException as e:
            if e.modeled_error is None:  # a timeout or a dropped connection: the agent retries
                log.info("sdk request failed thing_name=%s topic=%s error=%s", self.thing,
                         request_topic, e.inner_error)
                self._record_request(request_topic, request, token, sent)
                return
            topic, body = topics.rejected(request_topic), to_wire(e.modeled_error)
        self._record_request(request_topic, request, body.get("clientToken"), sent)
        if self._record is not None:  # as it came: for a drill's live view of the replies
            self._record(classify(topic, json.dumps(body).encode(), self._now()))
        if token is None:
            body.pop("clientToken", None)
        else:
            body["clientToken"] = token
        self._on_message(topic, json.dumps(body).encode())

    def _record_request(self, topic: str, request: dict[str, Any], wire_token: object,
                        sent: float) -> None:
        if self._record is None:
            return
        body = {**request, "clientToken": wire_token} if isinstance(wire_token, str) \
            else request
        self._record(classify(topic, json.dumps(body).encode(), sent))

    def _next_changed(self, event: iotjobs.NextJobExecutionChangedEvent) -> None:
        payload = json.dumps(to_wire(event)).encode()
        self._loop.call_soon_threadsafe(self._pushed, payload)

    def _pushed(self, payload: bytes) -> None:
        if not self._closing:
            self._on_message(topics.notify_next(self.thing), payload)

    # -- lifecycle (CRT threads) ---------------------------------------------------------

    def _crt_connected(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        session_present = bool(data.connack_packet and data.connack_packet.session_present)
        self._loop.call_soon_threadsafe(self._on_connected, session_present)

    def _on_connected(self, session_present: bool) -> None:
        if self._closing:
            return
        self.connected = True
        waiter = self._connected
        if waiter is not None and not waiter.done():
            waiter.set_result(session_present)
        else:
            self._on_connection(session_present)

    def _crt_stopped(self, data: mqtt5.LifecycleStoppedData) -> None:
        self._loop.call_soon_threadsafe(self._on_stopped)

    def _on_stopped(self) -> None:
        self.connected = False
        if self._stopped is not None:
            _resolve(self._stopped)

    def _crt_disconnected(self, data: mqtt5.LifecycleDisconnectData) -> None:
        self._loop.call_soon_threadsafe(self._on_disconnected)

    def _on_disconnected(self) -> None:
        if self.connected and not self._closing:
            self.connected = False
            self._on_connection(False)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


"""A device transport that asks over HTTPS: the ``http`` behaviour.

The agent (:mod:`devicesim.agent`) speaks the MQTT Jobs API; ``HttpTransport`` sends its
requests to the jobs data plane over HTTP instead (``iot-jobs-data``: GetPendingJobExecutions,
StartNextPendingJobExecution, DescribeJobExecution, UpdateJobExecution) and hands each
answer back to the agent as the ``/accepted`` or ``/rejected`` message it expects, with its
clientToken. Everything else -- the connection, ``notify-next``, device events -- goes over
MQTT as for any device: a device that polls over HTTPS still hears of new work that way (or
polls, as the ``poll`` behaviour would).

The request carries the agent's clientToken in the ``x-devicesim-client-token`` header (the
HTTP API has no clientToken), so that the service records its reply as it would the MQTT
one. A request that gets no HTTP answer (connection refused, a timeout) gets no reply: the
agent retries after its reply timeout, as for a lost MQTT reply. HTTP errors carry no
``executionState`` (as on AWS): the rejection the agent gets has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from devicesim.mqtt import Client
from devicesim.wire import topics

log = logging.getLogger(__name__)

CLIENT_TOKEN_HEADER = "x-devicesim-client-token"
#: how long one HTTP request may take before it counts as lost
REQUEST_SECONDS = 10.0
#: AWS exception name -> the MQTT rejection code the agent understands
_CODES = {
    "InvalidRequestException": "InvalidRequest",
    "ResourceNotFoundException": "ResourceNotFound",
    "InvalidStateTransitionException": "InvalidStateTransition",
    "VersionConflictException": "VersionMismatch",
    "TerminalStateException": "TerminalStateReached",
    "ThrottlingException": "RequestThrottled",
    "CertificateValidationException": "InvalidRequest",
}


def http_request(operation: topics.Operation, thing: str, job_id: str | None,
                 body: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path with query, JSON body) of the HTTP request for an MQTT one."""
    base = f"/things/{quote(thing, safe='')}/jobs"
    fields = {k: v for k, v in body.items() if k != "clientToken"}
    if operation is topics.Operation.GET_PENDING:
        return "GET", base, None
    if operation is topics.Operation.START_NEXT:
        return "PUT", f"{base}/$next", fields
    assert job_id is not None
    path = f"{base}/{quote(job_id, safe='')}"
    if operation is topics.Operation.DESCRIBE:
        query = {k: (str(v).lower() if isinstance(v, bool) else str(v))
                 for k, v in fields.items() if k in ("includeJobDocument", "executionNumber")}
        return "GET", f"{path}?{urlencode(query)}" if query else path, None
    return "POST", path, fields


def mqtt_reply(status: int, body: dict[str, Any], error_type: str | None,
               token: str | None, now: float) -> tuple[bool, dict[str, Any]]:
    """(accepted, the MQTT reply body) of an HTTP answer."""
    if status == 200:
        reply = dict(body)
        for holder in (reply, reply.get("execution")):
            if isinstance(holder, dict) and isinstance(holder.get("jobDocument"), str):
                with contextlib.suppress(ValueError):
                    holder["jobDocument"] = json.loads(holder["jobDocument"])
        accepted = True
    else:
        code = (error_type or "").split(":")[0]
        reply = {"code": _CODES.get(code, "InternalError"),
                 "message": str(body.get("message", body.get("Message", "")))}
        accepted = False
    reply["timestamp"] = int(now)
    if token is not None:
        reply["clientToken"] = token
    return accepted, reply


class HttpTransport:
    """One device's transport: requests over HTTPS, the rest over its MQTT ``client``."""

    records_requests = False  # its requests are recorded as published; replies by the service

    def __init__(self, thing: str, client: Client, endpoint: str, *,
                 on_message: Callable[[str, bytes], None],
                 ca: str | None = None, now: Callable[[], float] = time.time) -> None:
        self.thing = thing
        self._mqtt = client
        self._endpoint = endpoint.rstrip("/")
        self._on_message = on_message
        self._now = now
        self._ssl = ssl.create_default_context(cafile=ca) if ca else None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- the transport interface (as devicesim.mqtt.Client) ------------------------------

    @property
    def connected(self) -> bool:
        return self._mqtt.connected

    async def connect(self) -> bool:
        self._closing = False
        return await self._mqtt.connect()

    async def subscribe(self, filters: list[str], qos: int = 1) -> None:
        await self._mqtt.subscribe(filters, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        parsed = topics.parse_jobs_topic(topic)
        if parsed is None or parsed.kind is not topics.Kind.REQUEST or \
                parsed.operation is None:
            self._mqtt.publish(topic, payload, qos)
            return
        task = asyncio.get_running_loop().create_task(
            self._ask(topic, parsed.operation, parsed.job_id, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drop(self) -> None:
        self._mqtt.drop()

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._mqtt.close()

    # -- requests ------------------------------------------------------------------------

    async def _ask(self, topic: str, operation: topics.Operation, job_id: str | None,
                   payload: bytes) -> None:
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            body = {}
        token = body.get("clientToken") if isinstance(body.get("clientToken"), str) else None
        method, path, fields = http_request(operation, self.thing, job_id, body)
        headers = {} if token is None else {CLIENT_TOKEN_HEADER: token}
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_SECONDS))
        try:
            async with self._session.request(method, self._endpoint + path, json=fields,
                                             headers=headers, ssl=self._ssl or True) as r:
                text = await r.text()
                status, error_type = r.status, r.headers.get("x-amzn-ErrorType")
        except (aiohttp.ClientError, TimeoutError) as e:  # lost: the agent retries
            log.info("http request failed thing_name=%s topic=%s error=%s", self.thing,
                     topic, e)
            return
        try:
            answer = json.loads(text) if text.strip() else {}
        except ValueError:
            answer = {"message": text[:200]}
        accepted, reply = mqtt_reply(status, answer if isinstance(answer, dict) else {},
                                     error_type, token, self._now())
        if not self._closing:
            self._on_message(topics.accepted(topic) if accepted else topics.rejected(topic),
                             json.dumps(reply).encode())

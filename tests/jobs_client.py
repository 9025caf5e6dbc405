"""A test-side device speaking the Jobs MQTT API through aiomqtt (a client we did not write).

It subscribes like a device, sends requests with unique clientTokens and awaits the reply
matching that token; pushes (notify, notify-next) land in queues. No sleeps: every wait is
an awaited event under a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiomqtt

from devicesim.wire import topics


@dataclass(frozen=True)
class Reply:
    kind: str  # "accepted" | "rejected"
    topic: str
    body: dict[str, Any]

    @property
    def code(self) -> str | None:
        return self.body.get("code")


class JobsClient:
    def __init__(self, client: aiomqtt.Client, thing: str) -> None:
        self.client = client
        self.thing = thing
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self.untokened: asyncio.Queue[Reply] = asyncio.Queue()
        self.notify: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.notify_next: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def _listen(self) -> None:
        async for message in self.client.messages:
            topic = str(message.topic)
            parsed = topics.parse_jobs_topic(topic)
            if parsed is None or parsed.kind in (topics.Kind.REQUEST, topics.Kind.INVALID):
                continue  # our own requests come back through the wildcard
            body = json.loads(message.payload) if message.payload else {}
            if parsed.kind is topics.Kind.NOTIFY:
                self.notify.put_nowait(body)
            elif parsed.kind is topics.Kind.NOTIFY_NEXT:
                self.notify_next.put_nowait(body)
            elif parsed.kind in (topics.Kind.ACCEPTED, topics.Kind.REJECTED):
                reply = Reply(parsed.kind.value, topic, body)
                waiter = self._waiting.pop(body.get("clientToken", ""), None)
                if waiter is not None:
                    waiter.set_result(reply)
                else:
                    self.untokened.put_nowait(reply)

    async def request(self, topic: str, body: dict[str, Any] | None = None, *,
                      raw: bytes | None = None, token: bool = True,
                      within: float = 5.0) -> Reply:
        body = dict(body or {})
        if raw is None and token:
            body.setdefault("clientToken", f"{self.thing}-{next(self._tokens)}")
        payload = raw if raw is not None else json.dumps(body).encode()
        if raw is not None or "clientToken" not in body:
            await self.client.publish(topic, payload, qos=1)
            async with asyncio.timeout(within):
                return await self.untokened.get()
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[body["clientToken"]] = waiter
        await self.client.publish(topic, payload, qos=1)
        async with asyncio.timeout(within):
            return await waiter

    # conveniences named after the AWS operations
    async def get_pending(self) -> Reply:
        return await self.request(topics.get_pending(self.thing))

    async def start_next(self, **body: Any) -> Reply:
        return await self.request(topics.start_next(self.thing), body)

    async def describe(self, job_id: str, **body: Any) -> Reply:
        return await self.request(topics.describe(self.thing, job_id), body)

    async def update(self, job_id: str, **body: Any) -> Reply:
        return await self.request(topics.update(self.thing, job_id), body)

    async def next_notify_next(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            return await self.notify_next.get()

    async def next_notify(self, within: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            return await self.notify.get()


@contextlib.asynccontextmanager
async def jobs_client(host: str, port: int, thing: str) -> AsyncIterator[JobsClient]:
    async with aiomqtt.Client(host, port, identifier=thing) as client:
        # everything under the thing's jobs prefix, so replies to invalid topics arrive too
        await client.subscribe(f"{topics.jobs_prefix(thing)}/#", qos=1)
        jc = JobsClient(client, thing)
        task = asyncio.create_task(jc._listen())
        try:
            yield jc
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

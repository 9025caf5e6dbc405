"""AWS IoT Core's broker semantics on Mosquitto (the devicesim_aws plugin), with clients we
did not write (aiomqtt, MQTT 3.1.1 and 5) on the real broker and the real jobs service:

* a device subscribed to nothing but ``notify-next`` gets the replies to its own requests
  -- accepted and rejected, also after a force-delete -- exactly once;
* a device that also subscribed to its reply topics gets each once, not twice;
* device B's subscription to A's reply topics is refused and B gets nothing of A's;
* A's publish to B's update topic changes nothing for B;
* the privileged identity cannot be claimed without its secret;
* a broker without the plugin says so (and a drill's report names what is missing).

"Exactly once" without sleeping: a duplicate of reply 1 (same publisher, same subscriber,
QoS 1) would arrive before reply 2, so once reply 2 is in, reply 1 is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from devicesim.wire import topics
from fleet.broker import BrokerAddress, EmbeddedBroker
from fleet.checker.metrics import compute
from fleet.checker.model import AWS_SEMANTICS, Budgets
from fleet.checker.report import broker_line
from fleet.service.shell import JobsService, ServiceConfig

pytestmark = pytest.mark.broker

WITHIN = 10.0
SEED = 11
_tokens = itertools.count(1)


@pytest.fixture(scope="module")
def aws_broker(broker: EmbeddedBroker) -> BrokerAddress:
    """The session broker, which must run the plugin: the project's set-up builds it."""
    assert broker.aws_semantics, "the devicesim_aws plugin was not built (make setup)"
    return broker.address


@pytest.fixture
async def service(aws_broker: BrokerAddress, tmp_path: Path) -> AsyncIterator[JobsService]:
    service = JobsService(ServiceConfig(broker=aws_broker, state=tmp_path / "jobs.db",
                                        http=False, seed=SEED))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


class Device:
    """An aiomqtt client keeping every message it receives, in order."""

    def __init__(self, client: aiomqtt.Client, thing: str) -> None:
        self.client, self.thing = client, thing
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._arrived = asyncio.Event()

    async def listen(self) -> None:
        async for message in self.client.messages:
            body = json.loads(message.payload) if message.payload else {}
            self.messages.append((str(message.topic), body))
            self._arrived.set()

    async def request(self, topic: str, body: dict[str, Any] | None = None
                      ) -> tuple[str, dict[str, Any]]:
        """Publish a request with a fresh clientToken; its reply (topic, body)."""
        token = f"t{next(_tokens)}"
        await self.client.publish(topic, json.dumps({**(body or {}), "clientToken": token}),
                                  qos=1)
        async with asyncio.timeout(WITHIN):
            while True:
                for reply in self.messages:
                    if reply[1].get("clientToken") == token:
                        return reply
                self._arrived.clear()
                await self._arrived.wait()

    def replies(self, token: str) -> int:
        return sum(body.get("clientToken") == token for _, body in self.messages)


@contextlib.asynccontextmanager
async def device(broker: BrokerAddress, thing: str, subscriptions: list[str], *,
                 v5: bool = False) -> AsyncIterator[Device]:
    version = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(broker.host, broker.port, identifier=thing,
                              protocol=version) as client:
        for f in subscriptions:
            await client.subscribe(f, qos=1)
        d = Device(client, thing)
        task = asyncio.create_task(d.listen())
        try:
            yield d
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def codes(granted: Any) -> list[int]:
    """SUBACK results as numbers (MQTT 3.1.1: granted QoS or 0x80; 5: reason codes)."""
    return [g.value if hasattr(g, "value") else int(g) for g in granted]


def thing_name(tag: str) -> str:
    name = f"sem-{tag}-{uuid.uuid4().hex[:6]}"
    print(f"thing={name} seed={SEED}")
    return name


def create_job(service: JobsService, job_id: str, thing: str) -> None:
    arn = f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"
    service.store.create_job(job_id, targets=[arn], document=json.dumps({"steps": []}))
    service.flush()


@pytest.mark.parametrize("v5", [False, True])
async def test_replies_reach_a_device_that_subscribed_only_to_notify_next_once(
        aws_broker: BrokerAddress, service: JobsService, v5: bool) -> None:
    thing = thing_name("unasked")
    prefix = topics.jobs_prefix(thing)
    async with device(aws_broker, thing, [f"{prefix}/notify-next"], v5=v5) as d:
        first = await d.request(topics.get_pending(thing))
        assert first[0] == f"{prefix}/get/accepted"
        create_job(service, "job-1", thing)
        started = await d.request(topics.start_next(thing))
        assert started[0] == f"{prefix}/start-next/accepted"
        assert started[1]["execution"]["jobId"] == "job-1"
        service.store.delete_job("job-1", force=True)  # the operator's force-delete
        service.flush()
        rejected = await d.request(topics.update(thing, "job-1"), {"status": "SUCCEEDED"})
        assert rejected[0] == f"{prefix}/job-1/update/rejected"
        assert rejected[1]["code"] == "ResourceNotFound"
        last = await d.request(topics.get_pending(thing))  # every earlier duplicate is in
        tokens = [body["clientToken"] for _, body in (first, started, rejected, last)]
        assert [d.replies(t) for t in tokens] == [1, 1, 1, 1], d.messages


async def test_a_device_also_subscribed_to_its_replies_gets_each_once(
        aws_broker: BrokerAddress, service: JobsService) -> None:
    thing = thing_name("subscribed")
    async with device(aws_broker, thing, topics.device_subscriptions(thing)) as d:
        one = await d.request(topics.get_pending(thing))
        two = await d.request(topics.describe(thing, "no-such-job"))
        assert two[1]["code"] == "ResourceNotFound"
        await d.request(topics.get_pending(thing))
        assert d.replies(one[1]["clientToken"]) == d.replies(two[1]["clientToken"]) == 1


@pytest.mark.parametrize(("v5", "refused"), [(False, 0x80), (True, 0x87)])
async def test_another_devices_replies_cannot_be_subscribed_to(
        aws_broker: BrokerAddress, service: JobsService, v5: bool, refused: int) -> None:
    a, b = thing_name("a"), thing_name("b")
    async with device(aws_broker, a, [], v5=v5) as da, \
            device(aws_broker, b, [f"{topics.jobs_prefix(b)}/notify-next"], v5=v5) as db:
        granted = await db.client.subscribe(f"{topics.jobs_prefix(a)}/#", qos=1)
        assert codes(granted) == [refused]
        wildcard = await db.client.subscribe("$aws/things/+/jobs/#", qos=1)
        assert codes(wildcard) == [refused]
        await da.request(topics.get_pending(a))
        await da.request(topics.describe(a, "no-such-job"))
        await db.request(topics.get_pending(b))  # after A's, on the same broker
        assert [t for t, _ in db.messages] == [f"{topics.jobs_prefix(b)}/get/accepted"]


async def test_a_device_cannot_act_on_another_things_execution(
        aws_broker: BrokerAddress, service: JobsService) -> None:
    a, b = thing_name("a"), thing_name("b")
    create_job(service, "job-b", b)
    async with device(aws_broker, a, [], v5=True) as da, device(aws_broker, b, []) as db:
        started = await db.request(topics.start_next(b))
        version = started[1]["execution"]["versionNumber"]
        # A claims B's execution succeeded: the broker drops it (PUBACK 0x87 for MQTT 5)
        await da.client.publish(topics.update(b, "job-b"), json.dumps(
            {"status": "SUCCEEDED", "clientToken": "forged"}), qos=1)
        await da.request(topics.get_pending(a))  # the forged update would have come first
        execution = service.store.describe_job_execution("job-b", b)
        assert (execution.status.value, execution.version_number) == ("IN_PROGRESS", version)
        assert not db.replies("forged")


async def test_the_privileged_identity_needs_its_secret(aws_broker: BrokerAddress) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(aws_broker.host, aws_broker.port, identifier="claimant",
                                  username="devicesim", password="guess"):
            pass
    async with aiomqtt.Client(aws_broker.host, aws_broker.port, identifier="watcher",
                              username=aws_broker.username,
                              password=aws_broker.password) as client:
        granted = await client.subscribe("$aws/things/+/jobs/#", qos=1)
        assert codes(granted) == [1]


def test_a_broker_without_the_plugin_says_so() -> None:
    with EmbeddedBroker(plugin=False) as plain:
        assert not plain.aws_semantics
        assert plain.address.secret is None
        assert plain.address.username is None
        assert "devicesim_aws" not in (plain.work_dir / "mosquitto.conf").read_text().split(
            "plain Mosquitto semantics")[-1]
    with EmbeddedBroker(plugin=True) as aws:
        assert aws.aws_semantics
        conf = aws.work_dir / "mosquitto.conf"
        assert conf.stat().st_mode & 0o777 == 0o600  # it holds the secret
        assert f"plugin_opt_secret {aws.address.secret}" in conf.read_text()


@pytest.mark.parametrize(("semantics", "missing"), [("aws", ()), ("plain", AWS_SEMANTICS),
                                                    (None, None)])
def test_a_report_names_the_aws_semantics_its_broker_lacked(semantics: str | None,
                                                          missing: tuple[str, ...] | None
                                                          ) -> None:
    from devicesim.wire.history import Op, OpType
    from fleet.checker.timeline import build

    value = {} if semantics is None else {"brokerSemantics": semantics}
    ops = [Op(time=1.0, process="drill", type=OpType.INFO, f="start", value=value),
           Op(time=2.0, process="drill", type=OpType.INFO, f="end", value={})]
    metrics = compute(build(ops), Budgets())
    assert metrics.missing_semantics == missing
    if missing:
        assert broker_line(missing).startswith(
            "plain Mosquitto, without AWS IoT Core's Jobs replies reach their requester only "
            "and per-thing authorization")


async def test_lifecycle_events_for_devices_only(tmp_path: Path) -> None:
    """With ``presence``, the plugin publishes AWS IoT's lifecycle events when a device
    connects and goes, and none for the privileged identity (one that connected first would
    have been announced first: the broker sends its own messages to a subscriber in order)."""
    with EmbeddedBroker(work_dir=tmp_path, presence=True) as broker:
        address = broker.address
        privileged = {"username": address.username, "password": address.secret}
        seen: list[tuple[str, dict[str, Any]]] = []
        async with aiomqtt.Client(address.host, address.port, identifier="watcher",
                                  **privileged) as watcher:
            await watcher.subscribe(topics.presence("+"), qos=1)
            async with aiomqtt.Client(address.host, address.port, identifier="tool",
                                      **privileged):
                pass
            async with aiomqtt.Client(address.host, address.port, identifier="board-1"):
                pass  # connects, then disconnects cleanly
            async with asyncio.timeout(WITHIN):
                async for message in watcher.messages:
                    seen.append((str(message.topic), json.loads(message.payload)))
                    if len(seen) == 2:
                        break
    assert [t for t, _ in seen] == ["$aws/events/presence/connected/board-1",
                                    "$aws/events/presence/disconnected/board-1"]
    connected = seen[0][1]
    assert connected["clientId"] == "board-1"
    assert connected["eventType"] == "connected"
    assert connected["ipAddress"] == "127.0.0.1"
    assert isinstance(connected["timestamp"], int)
    assert seen[1][1]["eventType"] == "disconnected"
    assert seen[1][1]["timestamp"] >= connected["timestamp"]

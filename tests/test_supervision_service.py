"""Supervision against a real Mosquitto: a fault injected into one MQTT client, the jobs
service or the recorder is reported through ``on_failure`` and the component keeps working.

Faults are real exceptions raised once from a real object's method (replaced on that one
instance); the broker is never faked. Every wait is an awaited event under a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from devicesim.mqtt import Client, ClientOptions, OnConnection, Pump
from devicesim.wire import topics
from devicesim.wire.history import Op
from fleet.broker import BrokerAddress
from fleet.drill import recorder as recorder_module
from fleet.drill.recorder import Recorder
from fleet.service.shell import JobsService, ServiceConfig
from tests.jobs_client import JobsClient, jobs_client

pytestmark = pytest.mark.broker

WITHIN = 5.0
DOC = json.dumps({"operation": "sleep", "seconds": 1})


class Injected(RuntimeError):
    """The fault a test raises on purpose."""


class Failures:
    """An ``on_failure`` that keeps what it was told and lets a test await it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, BaseException]] = []
        self._changed = asyncio.Event()

    def __call__(self, where: str, error: BaseException) -> None:
        self.seen.append((where, error))
        self._changed.set()

    async def wait_for(self, prefix: str, within: float = WITHIN) -> tuple[str, BaseException]:
        async with asyncio.timeout(within):
            while True:
                for where, error in self.seen:
                    if where.startswith(prefix):
                        return where, error
                self._changed.clear()
                await self._changed.wait()


def raising_once(real: Callable[..., Any], error: BaseException,
                 when: Callable[..., bool] = lambda *args: True) -> Callable[..., Any]:
    """``real``, except that its first call for which ``when(*args)`` holds raises."""
    armed = [True]

    def call(*args: Any, **kwargs: Any) -> Any:
        if armed[0] and when(*args):
            armed[0] = False
            raise error
        return real(*args, **kwargs)
    return call


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# -- the MQTT pump and client ---------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.put_nowait((topic, payload))

    async def next(self) -> tuple[str, bytes]:
        async with asyncio.timeout(WITHIN):
            return await self.messages.get()


@pytest.fixture
async def clients(broker_address: BrokerAddress
                  ) -> AsyncIterator[Callable[..., Any]]:
    """``await connect(pump, name, on_message=..., on_connection=...)`` -> a connected
    client; every client and pump is closed afterwards."""
    opened: list[Client] = []
    pumps: list[Pump] = []

    async def connect(pump: Pump, name: str, on_message: Callable[[str, bytes], None],
                      on_connection: OnConnection | None = None) -> Client:
        if pump not in pumps:
            pumps.append(pump)
        # privileged: these clients use test topics of their own, not a thing's
        client = Client(ClientOptions(client_id=unique(name), host=broker_address.host,
                                      port=broker_address.port, clean_session=True,
                                      username=broker_address.username,
                                      password=broker_address.password),
                        pump, on_message=on_message, on_connection=on_connection)
        opened.append(client)
        await client.connect()
        return client

    yield connect
    for client in opened:
        await client.close()
    for pump in pumps:
        await pump.close()


class Calls:
    """Wraps a client's real ``misc`` and lets a test await its next call."""

    def __init__(self, client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = client.misc
        self._called = asyncio.Event()
        monkeypatch.setattr(client, "misc", self)

    def __call__(self) -> None:
        self._called.set()
        self._real()

    async def next(self) -> None:
        self._called.clear()
        async with asyncio.timeout(WITHIN):
            await self._called.wait()


async def round_trip(sender: Client, receiver: Client, inbox: Inbox) -> None:
    topic = unique("supervision/round-trip")
    await receiver.subscribe([topic])
    sender.publish(topic, b"ping")
    assert await inbox.next() == (topic, b"ping")


async def test_pump_reports_a_raising_client_and_keeps_the_others_alive(
        clients: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    failures = Failures()
    pump = Pump(interval=0.02, on_failure=failures)
    inbox = Inbox()
    bad: Client = await clients(pump, "pump-bad", inbox)
    good: Client = await clients(pump, "pump-good", inbox)
    error = Injected("misc")
    monkeypatch.setattr(bad, "misc", raising_once(bad.misc, error))
    good_calls = Calls(good, monkeypatch)

    where, reported = await failures.wait_for("mqtt client")
    assert (where, reported) == (f"mqtt client {bad.options.client_id}", error)
    await good_calls.next()  # the pump went on after the raising client
    bad_calls = Calls(bad, monkeypatch)
    await bad_calls.next()  # ... and keeps serving the client that raised
    assert bad.connected
    assert good.connected
    await round_trip(good, bad, inbox)
    assert len(failures.seen) == 1


class PumpKiller(BaseException):
    """Not an Exception: escapes the per-client guard and ends the pump task itself."""


async def test_pump_task_that_dies_is_reported_and_restarted(
        clients: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    failures = Failures()
    pump = Pump(interval=0.02, on_failure=failures)
    client: Client = await clients(pump, "pump-dies", Inbox())
    error = PumpKiller("pump task")
    monkeypatch.setattr(client, "misc", raising_once(client.misc, error))

    assert await failures.wait_for("mqtt-pump") == ("mqtt-pump", error)
    calls = Calls(client, monkeypatch)
    await calls.next()  # a new pump task drives the housekeeping again


async def test_raising_handler_is_reported_and_the_next_message_arrives(
        clients: Callable[..., Any]) -> None:
    failures = Failures()
    pump = Pump(on_failure=failures)
    inbox = Inbox()
    error = Injected("handler")
    receiver: Client = await clients(pump, "handler", raising_once(inbox, error))
    sender: Client = await clients(pump, "sender", Inbox())
    topic = unique("supervision/handler")
    await receiver.subscribe([topic])

    sender.publish(topic, b"first")
    where, reported = await failures.wait_for(f"mqtt client {receiver.options.client_id}")
    assert (where, reported) == (f"mqtt client {receiver.options.client_id} on_message "
                                 f"{topic}", error)
    sender.publish(topic, b"second")
    assert await inbox.next() == (topic, b"second")
    assert receiver.connected


async def test_raising_connection_handler_is_reported_and_the_client_works(
        clients: Callable[..., Any]) -> None:
    failures = Failures()
    pump = Pump(on_failure=failures)
    inbox = Inbox()
    error = Injected("on_connection")

    def on_connection(session_present: bool) -> None:
        raise error

    client: Client = await clients(pump, "on-connection", inbox, on_connection)
    where, reported = await failures.wait_for("mqtt client")
    assert (where, reported) == (f"mqtt client {client.options.client_id} on_connection",
                                 error)
    await round_trip(client, client, inbox)


# -- the jobs service -----------------------------------------------------------------------


def arn(thing: str) -> str:
    return f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"


@pytest.fixture
def failures() -> Failures:
    return Failures()


@pytest.fixture
async def service(broker_address: BrokerAddress, tmp_path: Path, failures: Failures
                  ) -> AsyncIterator[JobsService]:
    svc = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db",
                                    http=False), on_failure=failures)
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def device(broker_address: BrokerAddress) -> AsyncIterator[JobsClient]:
    async with jobs_client(broker_address.host, broker_address.port, unique("dev")) as client:
        yield client


async def queued_job(service: JobsService, device: JobsClient) -> str:
    job_id = unique("job")
    service.store.create_job(job_id, targets=[arn(device.thing)], document=DOC)
    service.flush()
    pushed = await device.next_notify_next()
    assert pushed["execution"]["jobId"] == job_id
    return job_id


async def swept(service: JobsService, device: JobsClient, job_id: str) -> None:
    """Delete the job; the timer loop's sweep removes the execution and says so."""
    service.store.delete_job(job_id, force=True)
    service.flush()
    while True:  # until the head of the pending list is gone
        pushed = await device.next_notify_next()
        if "execution" not in pushed:
            break
    assert service.store.all_executions() == []


async def still_answers(device: JobsClient) -> None:
    reply = await device.get_pending()
    assert reply.kind == "accepted"
    assert (reply.body["inProgressJobs"], reply.body["queuedJobs"]) == ([], [])


@pytest.mark.parametrize("method", ["next_due", "tick"])
async def test_timer_loop_survives_a_raising_store_call(
        service: JobsService, device: JobsClient, failures: Failures,
        monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    job_id = await queued_job(service, device)
    error = Injected(method)
    monkeypatch.setattr(service.store, method, raising_once(getattr(service.store, method),
                                                            error))
    await swept(service, device, job_id)
    assert await failures.wait_for("jobs service timers") == ("jobs service timers", error)
    await still_answers(device)


async def test_timer_loop_survives_a_raising_publish(
        service: JobsService, device: JobsClient, failures: Failures,
        monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = await queued_job(service, device)
    client = service._client
    assert client is not None
    error = Injected("publish")
    notify = topics.notify(device.thing)
    monkeypatch.setattr(client, "publish", raising_once(
        client.publish, error, lambda topic, *rest: topic == notify))
    await swept(service, device, job_id)  # notify-next goes out after the failed notify
    where, reported = await failures.wait_for("jobs service publish")
    assert (where, reported) == (f"jobs service publish {notify}", error)
    await still_answers(device)


class TimerKiller(BaseException):
    """Not an Exception: ends the timer task, which must not go unnoticed."""


async def test_timer_task_killed_is_reported_and_the_service_still_stops(
        broker_address: BrokerAddress, tmp_path: Path, failures: Failures,
        monkeypatch: pytest.MonkeyPatch) -> None:
    svc = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db",
                                    http=False), on_failure=failures)
    error = TimerKiller("timers")
    monkeypatch.setattr(svc.store, "next_due", raising_once(svc.store.next_due, error))
    await svc.start()
    try:
        assert await failures.wait_for("jobs service timers") == ("jobs service timers",
                                                                  error)
    finally:
        await svc.stop()  # does not raise the error again, and closes the rest
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        svc.store.pending_count()


async def test_failing_request_keeps_its_committed_change_and_the_service_serves(
        service: JobsService, device: JobsClient, failures: Failures,
        monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = await queued_job(service, device)
    started = await device.start_next()
    assert started.body["execution"]["status"] == "IN_PROGRESS"
    # the update commits its savepoint, then the data plane fails draining its effects
    error = Injected("drain")
    monkeypatch.setattr(service.store, "drain", raising_once(service.store.drain, error))
    update = topics.update(device.thing, job_id)
    await device.client.publish(update, json.dumps({"status": "SUCCEEDED"}), qos=1)

    where, reported = await failures.wait_for("jobs service request")
    assert (where, reported) == (f"jobs service request {update}", error)
    pushed = await device.next_notify_next()  # the committed change is still announced
    assert "execution" not in pushed
    execution = service.store.describe_job_execution(job_id, device.thing)
    assert execution.status.value == "SUCCEEDED"
    await still_answers(device)


# -- the recorder ---------------------------------------------------------------------------


class Recorded:
    """A recorder listener that lets a test await the op it wants."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._changed = asyncio.Event()

    def __call__(self, op: Op) -> None:
        self.ops.append(op)
        self._changed.set()

    async def until(self, predicate: Callable[[list[Op]], bool]) -> None:
        async with asyncio.timeout(WITHIN):
            while not predicate(self.ops):
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def recording(broker_address: BrokerAddress, failures: Failures,
                    listener: Callable[[Op], None]) -> AsyncIterator[Recorder]:
    recorder = Recorder(broker_address, client_id=unique("recorder"), listener=listener,
                        on_failure=failures)
    await recorder.start()
    try:
        yield recorder
    finally:
        await recorder.stop()


async def publish_event(device: JobsClient, seq: int) -> None:
    body = {"kind": "test", "seq": seq}
    await device.client.publish(f"devicesim/{device.thing}/events", json.dumps(body), qos=1)


async def test_recorder_reports_a_raising_listener_and_keeps_recording(
        broker_address: BrokerAddress, device: JobsClient, failures: Failures) -> None:
    recorded = Recorded()
    error = Injected("listener")
    listener = raising_once(recorded, error)
    async with recording(broker_address, failures, listener) as recorder:
        await publish_event(device, 1)
        where, reported = await failures.wait_for("recorder")
        assert (where, reported) == (f"recorder {recorder._client_id} listener device:test",
                                     error)
        await publish_event(device, 2)
        await recorded.until(lambda ops: any(op.value.get("seq") == 2 for op in ops))
        assert recorder.has_events({device.thing: 2})  # the op the listener failed on too
        assert [op.value["seq"] for op in recorder.ops
                if op.process == device.thing] == [1, 2]


async def test_recorder_records_a_message_it_fails_to_classify(
        broker_address: BrokerAddress, device: JobsClient, failures: Failures,
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = Recorded()
    error = Injected("classify")
    monkeypatch.setattr(recorder_module, "classify",
                        raising_once(recorder_module.classify, error))
    async with recording(broker_address, failures, recorded) as recorder:
        await publish_event(device, 1)
        await recorded.until(lambda ops: bool(ops))
        where, reported = await failures.wait_for("recorder")
        topic = f"devicesim/{device.thing}/events"
        assert (where, reported) == (f"recorder {recorder._client_id} classify {topic}", error)
        (op,) = recorded.ops
        assert (op.process, op.f, op.value["topic"]) == ("unknown", "message", topic)
        assert json.loads(op.value["payload"]) == {"kind": "test", "seq": 1}
        assert recorder.stats()["unclassified"] == 1
        await publish_event(device, 2)  # the next one is classified as usual
        await recorded.until(lambda ops: any(op.value.get("seq") == 2 for op in ops))


async def test_a_killed_service_comes_back_from_its_state_and_answers_what_it_missed(
        broker_address: BrokerAddress, tmp_path: Path, device: JobsClient,
        failures: Failures) -> None:
    """crash(): what it committed survives in its state file, and a request sent while it
    was down waits in its MQTT session and is answered by the service started after."""
    config = ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db", http=False)
    first = JobsService(config, on_failure=failures)
    await first.start()
    job_id = await queued_job(first, device)
    await first.crash()
    # while nobody serves: the broker acknowledges it for the service's session
    await device.client.publish(topics.get_pending(device.thing), b"{}", qos=1)
    second = JobsService(config, on_failure=failures)
    await second.start()
    try:
        async with asyncio.timeout(WITHIN):
            reply = await device.untokened.get()
        assert reply.kind == "accepted"
        assert [j["jobId"] for j in reply.body["queuedJobs"]] == [job_id]
        assert [e.job_id for e in second.store.all_executions()] == [job_id]
    finally:
        await second.stop()
    assert not failures.seen


async def test_a_request_arriving_while_the_service_is_killed_is_left_to_the_next_one(
        broker_address: BrokerAddress, tmp_path: Path, failures: Failures) -> None:
    """A request read from the socket while ``crash`` runs is lost with the service (the
    broker sends it again to the next one): never answered from a closed database."""
    svc = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db",
                                    http=False), on_failure=failures)
    await svc.start()
    pump = svc._pump  # noqa: SLF001 - the moment inside the kill: its MQTT pump stops
    close_pump = pump.close

    async def a_request_arrives_meanwhile() -> None:
        await close_pump()  # the last message read, as the database closes
        svc._on_message(topics.get_pending("t1"), b"{}", None)  # noqa: SLF001

    pump.close = a_request_arrives_meanwhile  # type: ignore[method-assign]
    await svc.crash()
    # what was scheduled ran after the database closed: it must have done nothing
    loop_turns = [asyncio.get_running_loop().create_future() for _ in range(3)]
    for turn in loop_turns:
        asyncio.get_running_loop().call_soon(turn.set_result, None)
        await turn
    assert failures.seen == []

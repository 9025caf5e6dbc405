"""``fleet up`` as a real process: ready file, and durability across SIGKILL mid-updates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from devicesim.mqtt import SECRET_ENV
from devicesim.wire import topics
from fleet.broker import BrokerAddress
from fleet.service.store import JobsStore
from tests.jobs_client import JobsClient, jobs_client

pytestmark = pytest.mark.broker

FLEET = [sys.executable, "-m", "fleet.cli"]
THINGS = [f"durable-{i}" for i in range(4)]


class FleetUp:
    def __init__(self, broker: BrokerAddress, state: Path) -> None:
        self.broker, self.state = broker, state
        self.ready_file = state.parent / "ready.json"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> dict[str, object]:
        self.proc = await asyncio.create_subprocess_exec(
            *FLEET, "up", "--broker", self.broker.url, "--state", str(self.state),
            "--ready-file", str(self.ready_file), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, SECRET_ENV: self.broker.secret or ""})
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            line = await self.proc.stdout.readline()  # printed once everything is ready
        assert line.startswith(b"fleet up:"), line + await self.proc.stderr.read()  # type: ignore[union-attr]
        info: dict[str, object] = json.loads(self.ready_file.read_text())
        return info

    async def signal(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        async with asyncio.timeout(20):
            return await self.proc.wait()


@pytest.fixture
async def fleet_up(broker_address: BrokerAddress, tmp_path: Path) -> AsyncIterator[FleetUp]:
    up = FleetUp(broker_address, tmp_path / "jobs.db")
    yield up
    if up.proc is not None and up.proc.returncode is None:
        up.proc.kill()
        await up.proc.wait()


async def test_ready_file_and_clean_stop(fleet_up: FleetUp) -> None:
    info = await fleet_up.start()
    broker = fleet_up.broker
    mqtt = {"host": broker.host, "port": broker.port, "url": broker.url,
            "awsSemantics": broker.aws_semantics}
    if broker.secret is not None:  # the privileged identity, for tools that watch everything
        mqtt["privileged"] = {"username": "devicesim", "password": broker.secret}
    assert info["mqtt"] == mqtt
    assert fleet_up.ready_file.stat().st_mode & 0o777 == 0o600
    assert str(info["http"]["endpoint"]).startswith("http://127.0.0.1:")  # type: ignore[index]
    assert await fleet_up.signal(signal.SIGTERM) == 0
    assert not fleet_up.ready_file.exists()


async def _updater(client: JobsClient, job_id: str, versions: dict[str, int],
                   stop: asyncio.Event, progress: asyncio.Event) -> None:
    """Send IN_PROGRESS updates back to back, tracking the last version the service accepted
    (or reported in a VersionMismatch / describe after a lost reply)."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            reply = await client.update(job_id, status="IN_PROGRESS",
                                        expectedVersion=versions[client.thing],
                                        statusDetails={"n": str(n)},
                                        includeJobExecutionState=True, within=3)
        except TimeoutError:  # the service died with our request: ask again once it is back
            while True:
                try:
                    reply = await client.describe(job_id, within=3)
                    break
                except TimeoutError:
                    continue
            versions[client.thing] = reply.body["execution"]["versionNumber"]
            progress.set()
            continue
        state = reply.body["executionState"]
        versions[client.thing] = state["versionNumber"]
        progress.set()


async def _until(condition: Callable[[], bool], progress: asyncio.Event,
                 tasks: list[asyncio.Task[None]]) -> None:
    """Wait (on the updaters' progress, not a clock) until ``condition`` holds; an updater
    that fails fails the test at once."""
    while not condition():
        progress.clear()
        waiter = asyncio.ensure_future(progress.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        for task in done - {waiter}:
            task.result()


async def test_sigkill_mid_updates_loses_nothing(fleet_up: FleetUp, tmp_path: Path) -> None:
    store = JobsStore(fleet_up.state, now=lambda: 1_700_000_000.0)
    for i, thing in enumerate(THINGS):
        store.create_job(f"durable-job-{i}", document='{"operation": "sleep"}',
                         targets=[f"arn:aws:iot:us-east-1:123456789012:thing/{thing}"])
        store.start_next(thing)
    store.close()
    info = await fleet_up.start()
    host, port = fleet_up.broker.host, fleet_up.broker.port
    versions = dict.fromkeys(THINGS, 2)
    stop, progress = asyncio.Event(), asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(jobs_client(host, port, t)) for t in THINGS]
        tasks = [asyncio.create_task(_updater(c, f"durable-job-{i}", versions, stop, progress))
                 for i, c in enumerate(clients)]
        async with asyncio.timeout(30):
            await _until(lambda: sum(versions.values()) >= 2 * len(THINGS) + 40, progress,
                         tasks)
        assert await fleet_up.signal(signal.SIGKILL) == -signal.SIGKILL
        killed_at = dict(versions)
        assert int(info["pid"]) != os.getpid()  # type: ignore[call-overload]
        await fleet_up.start()
        async with asyncio.timeout(30):
            await _until(lambda: all(versions[t] >= killed_at[t] + 5 for t in THINGS),
                         progress, tasks)
        stop.set()
        async with asyncio.timeout(15):
            await asyncio.gather(*tasks)
    assert await fleet_up.signal(signal.SIGTERM) == 0
    store = JobsStore(fleet_up.state, now=lambda: 1_700_000_000.0)
    try:
        for i, thing in enumerate(THINGS):
            execution = store.describe_job_execution(f"durable-job-{i}", thing)
            assert execution.status == "IN_PROGRESS"
            assert execution.version_number == versions[thing], thing
        assert len(store.list_jobs()[0]) == len(THINGS)
    finally:
        store.close()


async def test_bad_broker_url_is_a_one_line_error(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *FLEET, "up", "--broker", "http://nope", "--state", str(tmp_path / "s.db"),
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip().count("\n") == 0
    assert "http://nope" in err.decode()


def test_topics_reference() -> None:  # keep the import of topics honest for this module
    assert topics.SERVICE_FILTER == "$aws/things/+/jobs/#"

"""One fleet however it is split, ``devicesim run --summary``, and supervised devices.

* Behaviours are assigned over the whole fleet: any split into worker ranges (or shards)
  gives every thing the behaviour the whole-fleet assignment (what a drill records) gives it
  — pure, and once for real through ``devicesim run --workers 2 --summary``.
* A behaviour plugin that raises while a device handles an event is reported through
  ``on_failure`` with the thing name, published as the device's ``error`` event and kept in
  the summary; the other devices still complete their job; ``devicesim run`` exits 1 with one
  line per failure.
* A failed :meth:`Fleet.start` raises one :class:`FleetStartError` and leaves no task and no
  connection behind.

Integration tests use the session Mosquitto (``broker_address``), a unique thing-name prefix
each, and wait for recorded device events under ``asyncio.timeout`` (no sleeps).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import socket
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from devicesim.behaviours import Behaviour
from devicesim.cli import main
from devicesim.engine import (
    Fleet,
    FleetConfig,
    FleetStartError,
    assign_behaviours,
    fleet_assignment,
    worker_ranges,
)
from devicesim.wire.joining import shard_range
from fleet.broker import BrokerAddress
from fleet.drill.recorder import Recorder
from fleet.service.shell import JobsService, ServiceConfig
from tests.test_devices import WAIT, Watch, arn, firmware

REPO = Path(__file__).resolve().parents[1]
MIX = {"reference": 0.9, "stuck": 0.1}
MIX_ARG = "reference=0.9,stuck=0.1"
SEEDS = [1, 7, 20240611]
_serial = itertools.count(1)


def _prefix(kind: str) -> str:
    return f"{kind}{next(_serial):02d}{uuid.uuid4().hex[:4]}-"


# --- behaviour plugins with a bug (resolved as tests.test_fleet_split:Class) -----------------


class RaisesOnNotifyNext(Behaviour):
    """Its ``starts_from_notify_next`` hook raises: the agent consults it on a notify-next."""

    name = "raises-on-notify-next"

    @property  # type: ignore[override]
    def starts_from_notify_next(self) -> bool:
        raise RuntimeError("plugin bug: starts_from_notify_next")


class RaisesOnBoot(Behaviour):
    """Its ``poll_interval`` hook raises: the agent consults it when it first connects."""

    name = "raises-on-boot"

    @property  # type: ignore[override]
    def poll_interval(self) -> float | None:
        raise RuntimeError("plugin bug: poll_interval")


class RaisesOnSubscribe(Behaviour):
    """Its ``subscribes_notify_next`` raises: the shell consults it while starting, after
    the connect (so the fleet must stop a device that did connect)."""

    name = "raises-on-subscribe"

    @property  # type: ignore[override]
    def subscribes_notify_next(self) -> bool:
        raise RuntimeError("plugin bug: subscribes_notify_next")


def plugin(cls: type[Behaviour]) -> str:
    return f"{__name__}:{cls.__name__}"


# --- 1. one fleet, however it is split (pure) -------------------------------------------------


@pytest.mark.parametrize("size", [10, 20])
@pytest.mark.parametrize("seed", SEEDS)
def test_any_split_assigns_the_whole_fleets_behaviours(size: int, seed: int) -> None:
    print(f"seed={seed} size={size}")
    whole = FleetConfig(host="", port=0, count=size, mix=MIX, seed=seed)
    expected = assign_behaviours(whole.thing_names(), MIX, seed)
    assert Counter(expected.values()) == {"reference": size * 9 // 10, "stuck": size // 10}
    for workers in (1, 2, 3):
        union: dict[str, str] = {}
        for start, count in worker_ranges(0, size, workers):
            part = fleet_assignment(FleetConfig(host="", port=0, start=start, count=count,
                                                total=size, mix=MIX, seed=seed))
            assert not union.keys() & part.keys()
            union |= part
        assert union == expected, f"workers={workers}"
        shards: dict[str, str] = {}
        for i in range(workers):
            start, count = shard_range(i, workers, size)
            shards |= fleet_assignment(FleetConfig(host="", port=0, start=start, count=count,
                                                   total=size, mix=MIX, seed=seed))
        assert shards == expected, f"shards={workers}"


def test_total_defaults_to_start_plus_count() -> None:
    seed = SEEDS[0]
    print(f"seed={seed}")
    upper = FleetConfig(host="", port=0, start=5, count=5, mix=MIX, seed=seed)
    assert upper.fleet_size == 10
    whole = assign_behaviours(FleetConfig(host="", port=0, count=10).thing_names(), MIX, seed)
    assert fleet_assignment(upper) == {t: whole[t] for t in upper.thing_names()}
    with pytest.raises(ValueError, match=r"total \(9\) is less than start \+ count \(10\)"):
        FleetConfig(host="", port=0, start=5, count=5, total=9)


def test_cli_rejects_a_total_smaller_than_the_range(capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    code = main(["run", "--broker", "mqtt://127.0.0.1:1", "--start", "5", "--count", "5",
                 "--total", "9"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["devicesim run: --total (9) must be at least --start + "
                                "--count (10)"]


# --- helpers for real runs ---------------------------------------------------------------------


@pytest.fixture
async def watch(broker_address: BrokerAddress) -> AsyncIterator[Watch]:
    """Every device event (and jobs message) on the broker, as recorded ops."""
    watch = Watch()
    recorder = Recorder(broker_address, listener=watch,
                        client_id=f"recorder-fs-{uuid.uuid4().hex[:8]}")
    await recorder.start()
    try:
        yield watch
    finally:
        await recorder.stop()
        assert recorder.stats()["missingDeviceEvents"] == 0, recorder.stats()


async def devicesim_run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devicesim.cli", "run", *args, cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def until_each(watch: Watch, things: list[str], kind: str,
                     proc: asyncio.subprocess.Process) -> None:
    """Each thing published ``kind``; if not, the process's output says why."""
    try:
        for thing in things:
            await watch.event(thing, kind)
    except AssertionError:
        if proc.returncode is None:
            proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"exit={proc.returncode}\nstdout:\n{out.decode()}\n"
                             f"stderr:\n{err.decode()}") from None


async def terminate(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(WAIT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# --- 2. devicesim run --workers 2 --summary: the whole fleet's behaviours -----------------


@pytest.mark.broker
async def test_workers_summary_reports_the_whole_fleet_assignment(
        broker_address: BrokerAddress, watch: Watch, tmp_path: Path) -> None:
    seed, count, prefix = SEEDS[2], 10, _prefix("fs")
    print(f"seed={seed} prefix={prefix}")
    things = FleetConfig(host="", port=0, prefix=prefix, count=count).thing_names()
    summary_path = tmp_path / "summary.json"
    proc = await devicesim_run("--broker", broker_address.url, "--prefix", prefix,
                               "--count", str(count), "--workers", "2", "--mix", MIX_ARG,
                               "--seed", str(seed), "--summary", str(summary_path),
                               "--quiet")
    await until_each(watch, things, "connected", proc)

    code, _, err = await terminate(proc)

    assert code == 0, err
    summary = json.loads(summary_path.read_text())
    expected = assign_behaviours(things, MIX, seed)  # what the drill runner records
    assert {t: v["behaviour"] for t, v in summary["things"].items()} == expected
    # over 5 things per worker, the old per-range assignment gave no device "stuck"
    assert Counter(expected.values()) == {"reference": 9, "stuck": 1}
    assert summary["failures"] == []
    for thing, value in summary["things"].items():
        assert value["events"] >= 1, thing  # at least its connected event
        assert value["nvm"]["activeSlot"] in ("A", "B"), thing
    assert _names(tmp_path) == ["summary.json"]  # the workers' parts were merged and removed


@pytest.mark.broker
async def test_no_event_topic_records_events_without_publishing_them(
        broker_address: BrokerAddress, watch: Watch, tmp_path: Path) -> None:
    # a drill's workers: the history part has every device event, the broker carries none
    quiet, loud = _prefix("ne"), _prefix("ev")
    history_path = tmp_path / "part.jsonl"
    proc = await devicesim_run("--broker", broker_address.url, "--prefix", quiet,
                               "--count", "2", "--no-event-topic", "--history",
                               str(history_path), "--duration", "1", "--quiet")
    async with asyncio.timeout(WAIT):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    ops = [json.loads(line) for line in history_path.read_text().splitlines()]
    things = FleetConfig(host="", port=0, prefix=quiet, count=2).thing_names()
    for thing in things:
        kinds = [op["f"] for op in ops if op["process"] == thing]
        assert kinds[0] == "device:connected", kinds
    # a device started after those exited publishes its events: once they arrive, the
    # earlier ones would have too
    control = await devicesim_run("--broker", broker_address.url, "--prefix", loud,
                                  "--count", "1", "--quiet")
    await until_each(watch, [f"{loud}0000"], "connected", control)
    await terminate(control)
    assert not [op for op in watch.ops if op.process in things and op.f.startswith("device:")]


# --- 3. supervised devices -------------------------------------------------------------------


@pytest.mark.broker
async def test_a_raising_plugin_is_reported_and_the_others_complete_their_job(
        broker_address: BrokerAddress, watch: Watch, tmp_path: Path) -> None:
    seed, prefix = SEEDS[2], _prefix("fb")
    print(f"seed={seed} prefix={prefix}")
    service = JobsService(ServiceConfig(broker=broker_address, state=tmp_path / "jobs.db",
                                        http=False, seed=seed))
    await service.start()
    reported: list[tuple[str, BaseException]] = []
    fleet = Fleet(FleetConfig(host=broker_address.host, port=broker_address.port,
                              prefix=prefix, count=3, seed=seed,
                              mix={"reference": 2.0, plugin(RaisesOnNotifyNext): 1.0}),
                  on_failure=lambda where, error: reported.append((where, error)))
    try:
        await fleet.start()
        roles = Counter(fleet.assignment.values())
        assert roles == {"reference": 2, plugin(RaisesOnNotifyNext): 1}
        (broken,) = [t for t, b in fleet.assignment.items() if b != "reference"]
        others = [t for t in fleet.devices if t != broken]
        for thing in fleet.devices:
            await watch.event(thing, "idle")

        service.store.create_job("fw-1", targets=[arn(t) for t in fleet.devices],
                                 document=json.dumps(firmware("2.0.0")))
        service.flush()

        error = await watch.event(broken, "error")
        for thing in others:
            await watch.event(thing, "job_finished", jobId="fw-1", status="SUCCEEDED")
    finally:
        await fleet.stop()
        await service.stop()

    assert watch.ops[error].value["reason"] == \
        "RuntimeError: plugin bug: starts_from_notify_next"
    assert [(where, str(e)) for where, e in reported] == [
        (f"device {broken}", "plugin bug: starts_from_notify_next")]
    line = f"device {broken}: RuntimeError: plugin bug: starts_from_notify_next"
    assert fleet.failures == [line]
    summary = fleet.summary()
    assert summary["failures"] == [line]
    assert summary["things"][broken]["events"] == fleet.devices[broken].events
    assert all(fleet.devices[t].saved_nvm.active_image.version == "2.0.0" for t in others)


@pytest.mark.broker
async def test_run_exits_1_with_one_line_per_failure(
        broker_address: BrokerAddress, watch: Watch, tmp_path: Path) -> None:
    seed, prefix = SEEDS[0], _prefix("fc")
    print(f"seed={seed} prefix={prefix}")
    things = FleetConfig(host="", port=0, prefix=prefix, count=2).thing_names()
    summary_path = tmp_path / "summary.json"
    proc = await devicesim_run("--broker", broker_address.url, "--prefix", prefix,
                               "--count", "2", "--behaviour", plugin(RaisesOnBoot),
                               "--seed", str(seed), "--summary", str(summary_path),
                               "--quiet", "--log-level", "CRITICAL")
    await until_each(watch, things, "error", proc)

    code, _, err = await terminate(proc)

    lines = [f"device {t}: RuntimeError: plugin bug: poll_interval" for t in things]
    assert code == 1, err
    # in the order they happened
    assert sorted(err.splitlines()) == [f"devicesim run: failure: {line}" for line in lines]
    summary = json.loads(summary_path.read_text())
    assert sorted(summary["failures"]) == lines
    # every event it counted was published (and recorded), the error event last
    assert {t: v["events"] for t, v in summary["things"].items()} == {
        t: len(watch.events(t)) for t in things}
    assert all(watch.events(t)[-1]["kind"] == "error" for t in things)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _assert_nothing_left(fleet: Fleet) -> None:
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not [t for t, d in fleet.devices.items() if d.connected]


async def test_start_without_a_broker_raises_one_error_and_leaves_nothing_behind() -> None:
    port, prefix = _free_port(), _prefix("fn")
    fleet = Fleet(FleetConfig(host="127.0.0.1", port=port, prefix=prefix, count=5))

    with pytest.raises(FleetStartError) as caught:
        await fleet.start()

    message = str(caught.value)
    print(message)
    # every connect is refused at once, so each fails before the first failure cancels it
    assert re.match(rf"(all 5|[1-4] of 5) devices failed to connect.*; first: {prefix}\d{{4}}: "
                    rf"MqttError: connect to 127\.0\.0\.1:{port}: ", message), message
    _assert_nothing_left(fleet)


@pytest.mark.broker
async def test_start_failing_after_others_connected_stops_them(
        broker_address: BrokerAddress) -> None:
    seed, prefix = SEEDS[0], _prefix("fs")
    print(f"seed={seed} prefix={prefix}")
    fleet = Fleet(FleetConfig(host=broker_address.host, port=broker_address.port,
                              prefix=prefix, count=4, seed=seed,
                              mix={"reference": 3.0, plugin(RaisesOnSubscribe): 1.0}))
    (broken,) = [t for t, b in fleet.assignment.items() if b != "reference"]

    with pytest.raises(FleetStartError) as caught:
        await fleet.start()

    assert str(caught.value) == (
        f"1 of 4 devices failed to connect (the others were stopped); first: {broken}: "
        "RuntimeError: plugin bug: subscribes_notify_next")
    assert isinstance(caught.value.__cause__, RuntimeError)
    _assert_nothing_left(fleet)

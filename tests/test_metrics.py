"""Live metrics (``--metrics-port``): the op -> metric mapping on hand-written ops, and
``/metrics`` scraped during a real drill (and its live view's figures) and a real
``devicesim run``, their counters moving."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devicesim.metrics import LiveMetrics
from devicesim.wire.history import Op, OpType
from fleet.broker import EmbeddedBroker
from fleet.drill import spec
from fleet.drill.runner import RunOptions, run

WITHIN = 30.0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` text -> {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def op(t: float, process: str, f: str, type_: OpType = OpType.INFO, **v: Any) -> Op:
    return Op(time=t, process=process, type=type_, f=f, value=v)


def test_ops_map_to_metrics() -> None:
    m = LiveMetrics()
    for o in (
        op(1.0, "dev-1", "device:connected"), op(1.0, "dev-2", "device:connected"),
        op(1.1, "dev-1", "UpdateJobExecution", OpType.INVOKE, clientToken="a",
           payload={"status": "SUCCEEDED"}),
        op(1.15, "dev-1", "UpdateJobExecution", OpType.OK, clientToken="a"),
        op(1.2, "dev-2", "UpdateJobExecution", OpType.INVOKE, clientToken="b",
           payload={"status": "IN_PROGRESS"}),
        op(1.3, "dev-2", "UpdateJobExecution", OpType.FAIL, clientToken="b",
           code="ResourceNotFound"),
        op(1.3, "dev-2", "notify-next"),
        op(1.4, "dev-2", "device:lost_access", reason="notify-next"),
        op(1.5, "dev-2", "device:disconnected"),
        op(1.6, "controller", "DeleteJob", OpType.OK, request={"jobId": "j", "force": True}),
        op(1.7, "drill", "power-off", things=["dev-1"]),
        op(1.8, "board-1", "presence:connected"),
    ):
        m.observe(o)
    m.set_executions({"IN_PROGRESS": 3})
    got = samples(generate_latest(m.registry).decode())
    assert value(got, "devicesim_requests_total", api="UpdateJobExecution") == 2
    assert value(got, "devicesim_replies_total", api="UpdateJobExecution",
                 code="accepted") == 1
    assert value(got, "devicesim_replies_total", api="UpdateJobExecution",
                 code="ResourceNotFound") == 1
    assert value(got, "devicesim_round_trip_seconds_count", api="UpdateJobExecution") == 2
    assert value(got, "devicesim_round_trip_seconds_sum",
                 api="UpdateJobExecution") == pytest.approx(0.15)
    assert value(got, "devicesim_terminal_updates_total", status="SUCCEEDED") == 1
    assert value(got, "devicesim_pushes_total", kind="notify-next") == 1
    assert value(got, "devicesim_lost_access_total", reason="notify-next") == 1
    assert value(got, "devicesim_devices_connected") == 2  # dev-1 and board-1
    assert value(got, "devicesim_controller_calls_total", api="DeleteJob", outcome="ok") == 1
    assert value(got, "devicesim_faults_total", kind="DeleteJob --force") == 1
    assert value(got, "devicesim_faults_total", kind="power-off") == 1
    assert value(got, "devicesim_executions", status="IN_PROGRESS") == 3
    assert value(got, "devicesim_executions", status="QUEUED") == 0


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return samples(await response.text())


@pytest.mark.broker
@pytest.mark.slow
async def test_metrics_move_during_a_drill(tmp_path: Path) -> None:
    drill = dataclasses.replace(spec.load("force-delete"), devices=12)
    print(f"drill {drill.name} seed={drill.seed} devices={drill.devices}")
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    deleting = asyncio.Event()
    scraped: dict[str, Any] = {}

    def status(text: str) -> None:
        found = re.search(r"metrics (http://\S+)", text)
        if found and not url.done():
            url.set_result(found.group(1))
        if "force-delete-job" in text:
            deleting.set()

    snapshots: list[dict[str, str]] = []
    task = asyncio.create_task(run(drill, RunOptions(report_dir=tmp_path, metrics_port=0,
                                                     status=status, live=snapshots.append)))
    try:
        async with asyncio.timeout(WITHIN):
            endpoint = await url
            scraped["early"] = await scrape(endpoint)
            await deleting.wait()
            # the delete is under way: wait until the devices have noticed it
            while True:
                later = await scrape(endpoint)
                if value(later, "devicesim_lost_access_total", reason="notify-next"):
                    break
                await asyncio.sleep(0.1)  # polling an HTTP endpoint, bounded by WITHIN
            scraped["later"] = later
            result = await task
    finally:
        if not task.done():
            task.cancel()
    early, later = scraped["early"], scraped["later"]
    assert value(later, "devicesim_devices_connected") == 12
    requests = "devicesim_requests_total"
    assert value(later, requests, api="UpdateJobExecution") > \
        value(early, requests, api="UpdateJobExecution")
    assert value(later, "devicesim_faults_total", kind="DeleteJob --force") == 1
    assert value(later, "devicesim_controller_calls_total", api="CreateJob", outcome="ok") >= 1
    assert sum(v for (name, _), v in later.items() if name == "devicesim_executions") > 0
    assert result.verdict.passed
    # the live view's figures moved the same way
    assert any(s["devices"] == "12/12 connected" for s in snapshots)
    assert any(s["faults fired"] == "1" for s in snapshots)
    assert any(s["lost access"] != "0 noticed, 0 recovered" for s in snapshots)
    assert any("IN_PROGRESS" in s["executions"] for s in snapshots)
    # the server is gone with the drill
    with pytest.raises(aiohttp.ClientError):
        await scrape(endpoint)


@pytest.mark.broker
async def test_devicesim_run_serves_metrics(broker: EmbeddedBroker) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devicesim.cli", "run", "--broker", broker.address.url,
        "--count", "3", "--prefix", "metrics-", "--duration", "30", "--metrics-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WITHIN):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "devicesim run exited"
                found = re.search(r"metrics (http://\S+)", line)
                if found:
                    break
            got = await scrape(found.group(1))
        assert value(got, "devicesim_devices_connected") == 3
        assert value(got, "devicesim_requests_total", api="StartNextPendingJobExecution") >= 3
        assert sum(v for (name, _), v in got.items() if name == "devicesim_devices") == 3
    finally:
        proc.terminate()
        await proc.wait()


def test_the_grafana_dashboard_queries_metrics_that_exist() -> None:
    import json

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "examples" / "grafana" /
                            "devicesim-dashboard.json").read_text())
    m = LiveMetrics()
    m.observe(op(0.0, "dev-1", "UpdateJobExecution", OpType.INVOKE, clientToken="a"))
    m.observe(op(0.1, "dev-1", "UpdateJobExecution", OpType.OK, clientToken="a"))
    served = {s.name for family in m.registry.collect() for s in family.samples} | {
        family.name for family in m.registry.collect()}
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"devicesim_[a-z_]+", target["expr"])}
    assert used
    assert used <= served | {f"{n}_total" for n in served}, used - served

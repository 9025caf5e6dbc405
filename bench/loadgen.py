"""Child process: a closed-loop load generator of raw ``devicesim.mqtt`` clients.

``python -m bench.loadgen --broker mqtt://HOST:PORT`` then commands (see
:mod:`bench.control`):

- ``connect(prefix, count, width)``: one client per thing (client id = thing name,
  persistent session, the device subscriptions of ``topics.device_subscriptions``), at
  most 64 connects in flight.
- ``start_next()``: every device sends StartNextPendingJobExecution and keeps the execution
  it gets (the bench created one job for all of them).
- ``light(kind, seconds)``: device 0 alone, sequential requests: the latency floor.
- ``run(kind, seconds, warmup)``: every device closed loop, one request in flight each;
  ``kind`` is ``update`` (UpdateJobExecution IN_PROGRESS with statusDetails) or ``describe``
  (DescribeJobExecution). Only accepted replies in the window count; events
  ``measure-start`` / ``measure-end`` bracket the window so the parent can sample the
  service and the broker over exactly the same time.

The generator is deliberately lean (``json.dumps`` of a literal, no message classes): it
stands in for devices and must not be what limits the service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from bench import control, procinfo
from devicesim.loop import run_main
from devicesim.mqtt import Client, ClientOptions, Pump
from devicesim.wire import topics
from fleet.broker import BrokerAddress
from fleet.checker.metrics import percentile

CONNECT_CONCURRENCY = 64
REPLY_TIMEOUT = 30.0


class Device:
    __slots__ = ("thing", "gen", "client", "job_id", "token", "sent", "n", "kind", "topic")

    def __init__(self, thing: str, gen: LoadGenerator) -> None:
        self.thing = thing
        self.gen = gen
        self.client: Client | None = None
        self.job_id: str | None = None
        self.token = ""
        self.sent = 0.0
        self.n = 0
        self.kind = "start-next"
        self.topic = topics.start_next(thing)

    def aim(self, kind: str) -> None:
        self.kind = kind
        if kind == "start-next":
            self.topic = topics.start_next(self.thing)
        else:
            assert self.job_id is not None
            build = topics.update if kind == "update" else topics.describe
            self.topic = build(self.thing, self.job_id)

    def send(self) -> None:
        self.n += 1
        self.token = f"{self.n}:{self.thing}"
        if self.kind == "update":
            body: dict[str, Any] = {"status": "IN_PROGRESS", "clientToken": self.token,
                                    "statusDetails": {"step": "bench", "n": str(self.n)}}
        else:
            body = {"clientToken": self.token}
        assert self.client is not None
        self.sent = time.perf_counter()
        self.client.publish(self.topic, json.dumps(body).encode(), 1)

    def on_message(self, topic: str, payload: bytes) -> None:
        if not topic.startswith(self.topic) or topic == self.topic:
            return  # a push (notify, notify-next) or a stale reply
        obj = json.loads(payload)
        if obj.get("clientToken") != self.token:
            return
        self.gen.replied(self, topic.endswith("/accepted"), obj, time.perf_counter())


class LoadGenerator:
    def __init__(self, broker: BrokerAddress) -> None:
        self.broker = broker
        self.pump = Pump()
        self.devices: list[Device] = []
        self.running = False
        self.window = (0.0, 0.0)
        self.latencies: list[float] = []
        self.accepted = 0
        self.rejected = 0
        self.outstanding = 0
        self.settled = asyncio.Event()

    def handlers(self) -> dict[str, control.Handler]:
        return {"connect": self.connect, "start_next": self.start_next, "light": self.light,
                "run": self.run, "close": self.close}

    def replied(self, device: Device, accepted: bool, obj: dict[str, Any], now: float) -> None:
        if device.kind == "start-next":
            execution = obj.get("execution") or {}
            device.job_id = execution.get("jobId")
        elif self.window[0] <= now < self.window[1]:
            if accepted:
                self.accepted += 1
                self.latencies.append(now - device.sent)
            else:
                self.rejected += 1
        if self.running:
            device.send()
        else:
            device.token = ""
            self.outstanding -= 1
            if self.outstanding <= 0:
                self.settled.set()

    async def connect(self, prefix: str, count: int, width: int) -> dict[str, Any]:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        rss_before = procinfo.vm_rss_kb()
        began = time.monotonic()

        async def one(device: Device) -> None:
            device.client = Client(
                ClientOptions(client_id=device.thing, host=self.broker.host,
                              port=self.broker.port, clean_session=False, keepalive=60),
                self.pump, on_message=device.on_message)
            async with gate:
                if not await device.client.connect():
                    await device.client.subscribe(topics.device_subscriptions(device.thing))

        self.devices = [Device(f"{prefix}{i:0{width}d}", self) for i in range(count)]
        await asyncio.gather(*(one(d) for d in self.devices))
        return {"seconds": time.monotonic() - began,
                "rss_kb_per_client": (procinfo.vm_rss_kb() - rss_before) / max(1, count)}

    async def _round(self, devices: list[Device], kind: str, seconds: float, warmup: float
                     ) -> dict[str, Any]:
        """Closed loop over ``devices`` for ``warmup + seconds``; figures of the window."""
        for d in devices:
            d.aim(kind)
        began = time.perf_counter()
        self.window = (began + warmup, began + warmup + seconds)
        self.latencies, self.accepted, self.rejected = [], 0, 0
        self.outstanding = len(devices)
        self.settled.clear()
        self.running = True
        for d in devices:
            d.send()
        await asyncio.sleep(warmup)
        control.emit("measure-start")
        cpu0 = procinfo.sample("self", time.perf_counter())
        await asyncio.sleep(max(0.0, self.window[1] - time.perf_counter()))
        cpu1 = procinfo.sample("self", time.perf_counter())
        control.emit("measure-end")
        self.running = False
        async with asyncio.timeout(REPLY_TIMEOUT):
            await self.settled.wait()
        ms = sorted(x * 1000 for x in self.latencies)
        return {"kind": kind, "devices": len(devices), "seconds": seconds,
                "round_trips": self.accepted, "rejected": self.rejected,
                "round_trips_per_second": self.accepted / seconds if seconds else None,
                "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                "max_ms": ms[-1] if ms else None,
                "cpu_fraction": procinfo.cpu_fraction(cpu0, cpu1),
                "cpu_seconds": cpu1.cpu - cpu0.cpu}

    async def start_next(self) -> dict[str, Any]:
        result = await self._round(self.devices, "start-next", 0.0, 0.0)
        missing = [d.thing for d in self.devices if d.job_id is None]
        if missing:
            raise control.BenchError(f"start-next gave no execution to {len(missing)} "
                                     f"devices, e.g. {missing[0]}")
        return result

    async def light(self, kind: str, seconds: float) -> dict[str, Any]:
        return await self._round(self.devices[:1], kind, seconds, 0.1)

    async def run(self, kind: str, seconds: float, warmup: float) -> dict[str, Any]:
        return await self._round(self.devices, kind, seconds, warmup)

    async def close(self) -> dict[str, Any]:
        for d in self.devices:
            if d.client is not None:
                await d.client.close()
        await self.pump.close()
        return {}


async def run(args: argparse.Namespace) -> None:
    gen = LoadGenerator(BrokerAddress.parse(args.broker))
    try:
        await control.serve(gen.handlers())
    finally:
        await gen.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--broker", required=True)
    control.child_logging()
    run_main(run(parser.parse_args()))


if __name__ == "__main__":
    main()

"""Child process: a ``devicesim.engine.Fleet`` of N reference devices under bench control.

``python -m bench.fleetproc --broker mqtt://HOST:PORT --prefix P --count N --seed S`` then
commands (see :mod:`bench.control`):

- ``start(within)``: VmRSS after imports, ``Fleet.start()`` (connect + subscribe seconds),
  wait until every device is idle (its first start-next answered), VmRSS again.
- ``idle_cpu(seconds)``: CPU share of this process with everything connected and idle.
- ``wait_states(state, count, within)``: until ``count`` devices are in ``state``.
- ``cpu()``: CPU seconds so far (the parent brackets a phase with two calls).
- ``pauses(reset)``: garbage-collector pauses and event-loop stalls since the last reset
  (:mod:`bench.pauses`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from typing import Any

from bench import control, procinfo
from bench.pauses import Pauses
from devicesim.engine import Fleet, FleetConfig
from devicesim.loop import run_main
from fleet.broker import BrokerAddress

POLL = 0.02


class FleetProcess:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.fleet: Fleet | None = None
        self.watch = Pauses()

    def handlers(self) -> dict[str, control.Handler]:
        return {"start": self.start, "idle_cpu": self.idle_cpu,
                "wait_states": self.wait_states, "cpu": self.cpu, "pauses": self.watch.report}

    async def start(self, within: float) -> dict[str, Any]:
        gc.collect()
        rss_before = procinfo.vm_rss_kb()
        self.fleet = Fleet(self.config)
        connect_seconds = await self.fleet.start()
        idle = await self.wait_states("idle", self.config.count, within)
        gc.collect()
        rss_after = procinfo.vm_rss_kb()
        return {"connect_seconds": connect_seconds, "idle_after": idle["seconds"],
                "rss_before_kb": rss_before, "rss_after_kb": rss_after,
                "rss_kb_per_device": (rss_after - rss_before) / self.config.count}

    async def idle_cpu(self, seconds: float) -> dict[str, Any]:
        before = procinfo.sample("self", time.monotonic())
        await asyncio.sleep(seconds)
        after = procinfo.sample("self", time.monotonic())
        return {"cpu_fraction": procinfo.cpu_fraction(before, after),
                "seconds": after.wall - before.wall}

    async def wait_states(self, state: str, count: int, within: float) -> dict[str, Any]:
        assert self.fleet is not None
        began = time.monotonic()
        async with asyncio.timeout(within):
            while True:
                states = self.fleet.states()
                if states[state] >= count:
                    break
                await asyncio.sleep(POLL)  # the engine has no change notification: poll
        return {"seconds": time.monotonic() - began, "states": dict(states)}

    async def cpu(self) -> dict[str, Any]:
        return {"cpu": procinfo.cpu_seconds(), "wall": time.monotonic(),
                "rss_kb": procinfo.vm_rss_kb()}

    async def close(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()


async def run(args: argparse.Namespace) -> None:
    broker = BrokerAddress.parse(args.broker)
    proc = FleetProcess(FleetConfig(host=broker.host, port=broker.port, prefix=args.prefix,
                                    count=args.count, width=args.width,
                                    mix={"reference": 1.0}, seed=args.seed))
    try:
        await control.serve(proc.handlers())
    finally:
        await proc.watch.loop.stop()
        await proc.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleetproc")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", default="dev-")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--width", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    control.child_logging()
    run_main(run(parser.parse_args()))


if __name__ == "__main__":
    main()
